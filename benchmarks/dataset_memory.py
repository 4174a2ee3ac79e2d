"""Dataset memory: a 1M-step state dataset samples in < 2 GB, and image datasets are read lazily.

1. A synthetic 1,000,000-step state dataset (5000 episodes x 200 steps; ``observation.state``
   32-D float32, actions 7-D, simulator states 64-D float64 so the file is large, as real ones
   are) is written with :class:`EpisodeWriter` into a temporary directory. A fresh subprocess
   (so nothing of the writer is counted) then builds ``SequenceDataset(path, n_obs_steps=2,
   horizon=16, n_action_steps=8)``, samples 500 random batches of 256 with ``get_batch`` and
   iterates a torch ``DataLoader(batch_size=256, shuffle=True, collate_fn=collate)`` for 200
   batches. Figures: load time, samples/s of both, RSS after imports / after loading, and the peak
   RSS (``ru_maxrss``). Target: peak RSS < 2 GB (2e9 bytes; imports of torch included).
   Informational: the mean time of ``EpisodeWriter.append`` over the first and the last tenth of
   the episodes (whether appending slows down as the file grows) and the writer's peak RSS.

2. A synthetic image dataset (100 episodes x 100 steps of 84x84x3 uint8
   ``observation.images.front`` plus the state; gzip, one frame per chunk as the writer stores
   them) is loaded the same way in a fresh subprocess and sampled (200 random batches of 64, 2
   frames each). Figures: the decompressed image bytes in the file and how much the RSS grows
   from just before building the dataset to the end of sampling (the larger of the peak-RSS and
   current-RSS growth). Target: growth / decompressed bytes < 0.25. A loader that decompressed
   the images into memory would be at >= 1; the worker ends by loading the frames eagerly as a
   positive control of the measurement. The lazy growth is not zero: HDF5 keeps metadata
   (object headers, chunk indexes, free lists) of every episode it has touched, roughly 10 MB
   fixed plus some 0.05-0.1 MB per episode, independent of the number of frames; at 100 episodes
   that is about a tenth of the image bytes, hence the 0.25 threshold rather than one tied to the
   image size.

Why: state datasets of millions of steps must fit a laptop next to the training process, and image
datasets (tens of GB decompressed) can only be used if they stay on disk.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from common import Target, current_rss_mb, finish, markdown_table, parse_args, peak_rss_mb, target

NAME = "dataset_memory"
MAX_PEAK_RSS_MB = 2000.0  # 2 GB
MAX_IMAGE_GROWTH_RATIO = 0.25
STATE_KEY = "observation.state"
IMAGE_KEY = "observation.images.front"
ENV_ARGS = {"env_name": "synthetic", "env_type": 2, "env_kwargs": {}}


@dataclass(frozen=True)
class Sizes:
    """Dataset and sampling sizes of one run (full or quick)."""

    state_episodes: int
    state_steps: int
    batches: int
    loader_batches: int
    image_episodes: int
    image_steps: int
    image_batches: int


FULL = Sizes(state_episodes=5000, state_steps=200, batches=500, loader_batches=200,
             image_episodes=100, image_steps=100, image_batches=200)
QUICK = Sizes(state_episodes=250, state_steps=200, batches=50, loader_batches=20,
              image_episodes=50, image_steps=100, image_batches=50)


# ---------------------------------------------------------------------------------------- writing
def write_state_dataset(path: Path, episodes: int, steps: int) -> list[float]:
    """Write the synthetic state dataset; returns the seconds each append took."""
    from roboloop.datasets import Episode, EpisodeWriter

    rng = np.random.default_rng(0)
    append_s = []
    with EpisodeWriter(path, env_args=ENV_ARGS, mode="w") as writer:
        for _ in range(episodes):
            terminated = np.zeros(steps, dtype=bool)
            terminated[-1] = True
            episode = Episode(
                observations={STATE_KEY: rng.standard_normal((steps + 1, 32), dtype=np.float32)},
                actions=rng.uniform(-1, 1, (steps, 7)).astype(np.float32),
                rewards=np.zeros(steps, dtype=np.float32),
                terminated=terminated,
                truncated=np.zeros(steps, dtype=bool),
                states=rng.standard_normal((steps, 64)),
                attrs={"success": True, "source": "synthetic"},
            )
            t0 = time.perf_counter()
            writer.append(episode)
            append_s.append(time.perf_counter() - t0)
    return append_s


def synthetic_frames(rng: np.random.Generator, n: int) -> np.ndarray:
    """``n`` 84x84x3 frames of a blocky random scene panning sideways (compresses like a rendered scene)."""
    base = np.kron(rng.integers(0, 256, (12, 12, 3), dtype=np.uint8), np.ones((7, 7, 1), dtype=np.uint8))
    return np.stack([np.roll(base, t, axis=1) for t in range(n)])


def write_image_dataset(path: Path, episodes: int, steps: int) -> tuple[float, int]:
    """Write the synthetic image dataset; returns (seconds, decompressed bytes of the stored frames)."""
    from roboloop.datasets import Episode, EpisodeWriter

    rng = np.random.default_rng(1)
    t0 = time.perf_counter()
    frame_bytes = 0
    with EpisodeWriter(path, env_args=ENV_ARGS, mode="w") as writer:
        for _ in range(episodes):
            frames = synthetic_frames(rng, steps + 1)
            frame_bytes += frames.nbytes  # T frames in obs/ + the last one in next_obs_final/
            writer.append(Episode(
                observations={STATE_KEY: rng.standard_normal((steps + 1, 32), dtype=np.float32), IMAGE_KEY: frames},
                actions=rng.uniform(-1, 1, (steps, 7)).astype(np.float32),
                rewards=np.zeros(steps, dtype=np.float32),
                terminated=np.zeros(steps, dtype=bool),
                truncated=np.eye(1, steps, steps - 1, dtype=bool)[0],
                states=rng.standard_normal((steps, 64)),
            ))
    return time.perf_counter() - t0, frame_bytes


# ---------------------------------------------------------------------------------------- workers
def state_worker(path: str, batches: int, loader_batches: int) -> dict[str, Any]:
    """In a fresh process: load the state dataset, sample it, report memory and speed."""
    import torch
    from torch.utils.data import DataLoader

    from roboloop.datasets import SequenceDataset, collate

    out: dict[str, Any] = {"rss_after_imports_mb": current_rss_mb()}
    t0 = time.perf_counter()
    ds = SequenceDataset(path, n_obs_steps=2, horizon=16, n_action_steps=8)
    out["load_s"] = time.perf_counter() - t0
    out["rss_after_load_mb"] = current_rss_mb()
    out["samples"] = len(ds)
    out["steps"] = ds.num_steps

    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    for _ in range(batches):
        batch = ds.get_batch(rng.integers(0, len(ds), 256))
    out["get_batch_samples_per_s"] = batches * 256 / (time.perf_counter() - t0)
    out["batch_shapes"] = {k: list(v.shape) for k, v in batch.items()}

    torch.manual_seed(0)
    loader = DataLoader(ds, batch_size=256, shuffle=True, collate_fn=collate)
    t0 = time.perf_counter()
    n = 0
    for n, tensors in enumerate(loader, start=1):  # noqa: B007  (the last batch's shapes are reported)
        if n == loader_batches:
            break
    out["dataloader_samples_per_s"] = n * 256 / (time.perf_counter() - t0)
    out["dataloader_batch_shapes"] = {k: list(v.shape) for k, v in tensors.items()}
    out["rss_end_mb"] = current_rss_mb()
    out["peak_rss_mb"] = peak_rss_mb()
    return out


def image_worker(path: str, batches: int) -> dict[str, Any]:
    """In a fresh process: RSS growth from building and sampling the image dataset, then from loading it."""
    from roboloop.datasets import EpisodeStore, SequenceDataset

    out: dict[str, Any] = {"rss_before_mb": current_rss_mb(), "peak_before_mb": peak_rss_mb()}
    t0 = time.perf_counter()
    ds = SequenceDataset(path, n_obs_steps=2, horizon=16, n_action_steps=8)
    out["load_s"] = time.perf_counter() - t0
    out["rss_after_load_mb"] = current_rss_mb()
    out["image_keys"] = ds.image_keys
    rng = np.random.default_rng(0)
    t0 = time.perf_counter()
    frames_read = 0
    for _ in range(batches):
        batch = ds.get_batch(rng.integers(0, len(ds), 64))
        frames_read += batch[IMAGE_KEY].shape[0] * batch[IMAGE_KEY].shape[1]
    out["samples_per_s"] = batches * 64 / (time.perf_counter() - t0)
    out["frames_read"] = frames_read
    out["batch_shape"] = list(batch[IMAGE_KEY].shape)
    out["rss_end_mb"] = current_rss_mb()
    out["peak_end_mb"] = peak_rss_mb()

    # Positive control: what loading the images would cost (it validates the RSS measurement).
    with EpisodeStore(path) as store:
        eager = [store.read(demo, f"obs/{IMAGE_KEY}") for demo in store.demos]
        out["eager_rss_growth_mb"] = current_rss_mb() - out["rss_end_mb"]
        out["eager_bytes_mb"] = sum(a.nbytes for a in eager) / 1e6
    return out


def run_worker(kind: str, path: Path, sizes: Sizes, quick: bool) -> dict[str, Any]:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", kind, "--path", str(path),
           *(["--quick"] if quick else [])]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{kind} worker failed with exit status {proc.returncode}")
    return json.loads(proc.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------- main
def _extra_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--worker", choices=["state", "image"], help=argparse.SUPPRESS)
    parser.add_argument("--path", help=argparse.SUPPRESS)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv, _extra_args)
    sizes = QUICK if args.quick else FULL
    if args.worker == "state":
        print(json.dumps(state_worker(args.path, sizes.batches, sizes.loader_batches)))
        return 0
    if args.worker == "image":
        print(json.dumps(image_worker(args.path, sizes.image_batches)))
        return 0

    figures: dict[str, Any] = {"sizes": sizes.__dict__}
    targets: list[Target] = []
    with tempfile.TemporaryDirectory(prefix="roboloop-bench-memory-") as tmp:
        state_path = Path(tmp) / "state.hdf5"
        append_s = write_state_dataset(state_path, sizes.state_episodes, sizes.state_steps)
        write_s = sum(append_s)
        steps = sizes.state_episodes * sizes.state_steps
        print(f"wrote {steps} steps in {write_s:.1f} s", file=sys.stderr, flush=True)
        state = run_worker("state", state_path, sizes, args.quick)
        tenth = max(1, len(append_s) // 10)
        state.update(file_mb=state_path.stat().st_size / 1e6, write_s=write_s, write_steps_per_s=steps / write_s,
                     append_ms_first_tenth=1e3 * float(np.mean(append_s[:tenth])),
                     append_ms_last_tenth=1e3 * float(np.mean(append_s[-tenth:])),
                     writer_process_peak_rss_mb=peak_rss_mb())
        figures["state"] = state
        state_path.unlink()

        image_path = Path(tmp) / "images.hdf5"
        write_s, image_bytes = write_image_dataset(image_path, sizes.image_episodes, sizes.image_steps)
        image = run_worker("image", image_path, sizes, args.quick)
        growth = max(image["peak_end_mb"] - image["peak_before_mb"], image["rss_end_mb"] - image["rss_before_mb"])
        image.update(file_mb=image_path.stat().st_size / 1e6, write_s=write_s, decompressed_image_mb=image_bytes / 1e6,
                     rss_growth_mb=growth, growth_ratio=growth / (image_bytes / 1e6))
        figures["images"] = image

    targets.append(target("peak_rss_mb[1M-step state dataset]" if not args.quick else "peak_rss_mb[state dataset]",
                          round(state["peak_rss_mb"], 1), "<", MAX_PEAK_RSS_MB, f"{state['steps']} steps"))
    targets.append(target("image_rss_growth_ratio", round(image["growth_ratio"], 4), "<", MAX_IMAGE_GROWTH_RATIO,
                          f"{image['rss_growth_mb']:.1f} MB growth vs {image['decompressed_image_mb']:.0f} MB of "
                          "decompressed images"))
    state_rows = [
        ("steps / samples (windows)", f"{state['steps']:,} / {state['samples']:,}"),
        ("file size", f"{state['file_mb']:.0f} MB (written in {state['write_s']:.1f} s)"),
        ("EpisodeWriter.append, mean of first / last 10% of episodes",
         f"{state['append_ms_first_tenth']:.1f} / {state['append_ms_last_tenth']:.1f} ms"),
        ("writer process peak RSS (not a target)", f"{state['writer_process_peak_rss_mb']:.0f} MB"),
        ("load time (SequenceDataset)", f"{state['load_s']:.2f} s"),
        ("RSS after imports (torch, roboloop)", f"{state['rss_after_imports_mb']:.0f} MB"),
        ("RSS after load", f"{state['rss_after_load_mb']:.0f} MB"),
        ("peak RSS (ru_maxrss)", f"{state['peak_rss_mb']:.0f} MB"),
        ("get_batch(256) samples/s", f"{state['get_batch_samples_per_s']:,.0f}"),
        ("DataLoader(batch_size=256) samples/s", f"{state['dataloader_samples_per_s']:,.0f}"),
    ]
    image_rows = [
        ("episodes x steps", f"{sizes.image_episodes} x {sizes.image_steps} (84x84x3 uint8, gzip)"),
        ("file size", f"{image['file_mb']:.1f} MB"),
        ("decompressed image bytes", f"{image['decompressed_image_mb']:.1f} MB"),
        ("load time (SequenceDataset)", f"{image['load_s']:.2f} s"),
        ("RSS before / after load / after sampling", f"{image['rss_before_mb']:.0f} / "
         f"{image['rss_after_load_mb']:.0f} / {image['rss_end_mb']:.0f} MB"),
        ("RSS growth (load + sampling)", f"{image['rss_growth_mb']:.1f} MB"),
        ("growth / decompressed image bytes", f"{image['growth_ratio']:.4f}"),
        ("control: RSS growth when the obs frames are loaded eagerly",
         f"{image['eager_rss_growth_mb']:.1f} MB (for {image['eager_bytes_mb']:.1f} MB of frames)"),
        (f"get_batch(64) samples/s ({image['frames_read']:,} frames read)", f"{image['samples_per_s']:,.0f}"),
    ]
    table = "\n\n".join([
        f"State dataset ({sizes.state_episodes} episodes x {sizes.state_steps} steps), fresh process:",
        markdown_table(["figure", "value"], state_rows),
        "Image dataset, fresh process:",
        markdown_table(["figure", "value"], image_rows),
    ])
    return finish(NAME, figures, targets, table, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
