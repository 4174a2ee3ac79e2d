"""A collection killed at any moment leaves a file whose finished episodes all read back."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from roboloop.datasets import EpisodeStore, EpisodeWriter, SequenceDataset

COLLECT = [sys.executable, "-m", "roboloop.cli.main", "collect", "task=Lift", "n_episodes=100000", "progress=false",
           "cameras=[front]", "image_size=16"]


def _count_committed(path: Path) -> int:
    # The writer flushes after every committed episode; reading concurrently is fine (no file locking).
    try:
        with EpisodeStore(path) as store:
            return len(store)
    except Exception:
        return 0


def _check_every_episode(path: Path) -> int:
    with EpisodeStore(path) as store:
        for demo in store.demos:
            episode = store.episode(demo)
            assert len(episode) == store.num_samples(demo) > 0
            assert episode.attrs["success"] in (True, False)
        n = len(store)
    SequenceDataset(path, n_obs_steps=2, horizon=4, n_action_steps=2)  # and the sampler loads it
    return n


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM, signal.SIGINT], ids=lambda s: s.name)
def test_killed_collection_leaves_readable_episodes(tmp_path: Path, sig: signal.Signals) -> None:
    out = tmp_path / "killed.hdf5"
    proc = subprocess.Popen([*COLLECT, f"output={out}"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})
    deadline = time.monotonic() + 120
    try:
        while _count_committed(out) < 4:
            assert proc.poll() is None, "collection exited early"
            assert time.monotonic() < deadline, "collection too slow"
            time.sleep(0.05)
        # Kill at a random moment within the next episode or so.
        time.sleep(float(np.random.default_rng().uniform(0.0, 0.3)))
        proc.send_signal(sig)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    n = _check_every_episode(out)
    assert n >= 4
    # Appending to the file afterwards works and keeps every episode.
    from tests.conftest import synthetic_episode

    with EpisodeStore(out) as store:
        env_args = store.env_args
    with EpisodeWriter(out, env_args=env_args, mode="a") as writer:
        writer.append(synthetic_episode(0, 3))
    with EpisodeStore(out) as store:
        assert len(store) == n + 1


def test_sigkill_stress(tmp_path: Path) -> None:
    """Kill a fast state-only collection many times at random moments; every file must read back."""
    rng = np.random.default_rng(0)
    for i in range(6):
        out = tmp_path / f"stress{i}.hdf5"
        proc = subprocess.Popen([sys.executable, "-m", "roboloop.cli.main", "collect", "task=Lift",
                                 "n_episodes=100000", "progress=false", f"output={out}"],
                                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 60
        while _count_committed(out) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        time.sleep(float(rng.uniform(0.0, 0.5)))
        proc.kill()
        proc.wait()
        assert _check_every_episode(out) >= 2
