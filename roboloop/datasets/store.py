"""The episode store: robomimic's HDF5 layout, written by roboloop and readable by robomimic itself.

Layout (robomimic's, extended)::

    data/                       attrs: total (steps), env_args (JSON), roboloop_format
      demo_<N>/                 attrs: num_samples, success, source, policy_id, seed, return,
                                       randomization (JSON), plus any extra episode attributes
        obs/<key>               (T, ...) observation before each action; images uint8 (T, H, W, 3)
        next_obs/<key>          (T, ...) observation after each action (for images: a virtual
                                dataset over obs[1:] plus next_obs_final/<key>, so frames are stored once)
        actions                 (T, action_dim) float32
        rewards                 (T,) float32
        dones                   (T,) uint8, robomimic's name for ``terminated``
        terminated, truncated   (T,) bool, kept apart end to end
        states                  (T, state_dim) float64: simulator state before each action (replay)
    mask/<filter>               demo names (bytes), e.g. mask/success

Writes are whole episodes. An episode is written under a hidden name (``data/.pending_demo_N``) and
then renamed to ``demo_N`` in one link operation, after which the file is flushed; readers only
see ``demo_<int>`` groups. Metadata-cache evictions are disabled, so between flushes only raw data
(in space no committed object refers to) reaches the disk, and SIGINT/SIGTERM are deferred until
an append has completed. Together: a collection killed at any moment leaves a file in which every
finished episode reads back, and re-opening it for appending removes the unfinished leftover. (The
cache that disabling evictions lets grow is dropped by reopening the file every few thousand
episodes, so appends stay constant-time.) One window remains inside ``flush()`` itself: HDF5 writes the
metadata first and the superblock last, so a kill between the two leaves a superblock whose end-of-allocation
address is below metadata that is already on disk, and HDF5 refuses the file ("addr overflow"). Opening
repairs that the way ``h5clear --increment`` does: the writer raises the superblock's end-of-allocation to
the file's size in place, a reader sees the repaired value through a read-only view of the file.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import shutil
import signal
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import h5py
import numpy as np

from roboloop.core.errors import DatasetError

FORMAT_VERSION = 1
# With evictions disabled the metadata cache only grows, and every flush walks all of it; past this size
# the writer closes and reopens the file (safe right after a commit), which keeps appends O(1).
_MAX_METADATA_CACHE_BYTES = 8 * 2**20
_DEMO_RE = re.compile(r"^demo_(\d+)$")
PENDING_PREFIX = ".pending_"
# robomimic's EnvType.GYM_TYPE; our envs are Gymnasium envs.
ROBOMIMIC_GYM_ENV_TYPE = 2


@dataclass
class Episode:
    """One episode in memory. ``T`` = number of actions.

    Attributes:
        observations: key -> (T + 1, ...) array: the observation before each action plus the last one.
        actions: (T, action_dim).
        rewards: (T,).
        terminated: (T,) bool, the MDP ended (success, failure): do not bootstrap.
        truncated: (T,) bool, cut by a time limit: bootstrap.
        states: (T, state_dim) simulator states before each action (may be empty for real-robot data).
        attrs: per-episode attributes (``success``, ``source``, ``policy_id``, ``seed``, ``randomization``...).
    """

    observations: dict[str, np.ndarray]
    actions: np.ndarray
    rewards: np.ndarray
    terminated: np.ndarray
    truncated: np.ndarray
    states: np.ndarray | None = None
    attrs: dict[str, Any] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.actions)

    def validate(self) -> None:
        """Raise :class:`DatasetError` naming the first inconsistent field."""
        T = len(self.actions)
        if T == 0:
            raise DatasetError("episode has no steps")
        if self.actions.ndim != 2:
            raise DatasetError(f"actions must be (T, action_dim), got shape {self.actions.shape}")
        for name in ("rewards", "terminated", "truncated"):
            if getattr(self, name).shape != (T,):
                raise DatasetError(f"{name} must have shape ({T},), got {getattr(self, name).shape}")
        if not self.observations:
            raise DatasetError("episode has no observations")
        for key, value in self.observations.items():
            if len(value) != T + 1:
                raise DatasetError(f"observation {key!r} has {len(value)} frames, expected T + 1 = {T + 1}")
        if self.states is not None and len(self.states) and len(self.states) != T:
            raise DatasetError(f"states has {len(self.states)} rows, expected T = {T}")
        if not np.isfinite(self.actions).all():
            raise DatasetError("actions contain NaN or inf")


@contextlib.contextmanager
def _deferred_signals() -> Iterator[None]:
    """Hold SIGINT/SIGTERM until the block finishes, so Ctrl-C or `kill` never splits an append."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = {sig: signal.signal(sig, lambda s, _f: received.append(s)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        for sig in received:
            signal.raise_signal(sig)


def _disable_metadata_evictions(f: h5py.File) -> None:
    config = f.id.get_mdc_config()
    config.evictions_enabled = False
    config.incr_mode = 0  # H5C_incr__off: required with evictions disabled
    config.flash_incr_mode = 0
    config.decr_mode = 0
    f.id.set_mdc_config(config)


_HDF5_SIGNATURE = b"\x89HDF\r\n\x1a\n"


def _stale_end_of_allocation(path: Path) -> tuple[int, bytes] | None:
    """``(offset, bytes)`` to write over the superblock's end-of-allocation address when a version 0/1
    superblock (h5py's default format, 8-byte addresses) records less allocated space than the file holds: the
    mark of a writer killed inside ``flush()``. ``None`` for a consistent file or another format (left to HDF5)."""
    with open(path, "rb") as fh:
        head = fh.read(56)
        size = os.fstat(fh.fileno()).st_size
    if len(head) < 56 or head[:8] != _HDF5_SIGNATURE or head[8] not in (0, 1) or head[13] != 8:
        return None
    base_offset = 24 if head[8] == 0 else 28  # version 1 adds 4 bytes (indexed storage K) before the addresses
    base = int.from_bytes(head[base_offset : base_offset + 8], "little")
    eoa_offset = base_offset + 16  # after the base and free-space addresses; the value is relative to the base
    if base + int.from_bytes(head[eoa_offset : eoa_offset + 8], "little") >= size:
        return None
    return eoa_offset, (size - base).to_bytes(8, "little")


def _repair_end_of_allocation(path: Path, offset: int, value: bytes) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        fh.write(value)
        fh.flush()
        os.fsync(fh.fileno())


class _EndOfAllocationView(io.FileIO):
    """A read-only file whose superblock reads as repaired (see the module docstring); for h5py's fileobj driver."""

    def __init__(self, path: Path, offset: int, value: bytes) -> None:
        super().__init__(path, "rb")
        self._offset, self._value = offset, value

    def readinto(self, buffer: Any) -> int:
        start = self.tell()
        n = super().readinto(buffer) or 0
        lo, hi = max(start, self._offset), min(start + n, self._offset + len(self._value))
        if lo < hi:  # the read covers (part of) the end-of-allocation field
            memoryview(buffer).cast("B")[lo - start : hi - start] = self._value[lo - self._offset : hi - self._offset]
        return n


def _open_h5(path: Path, mode: str) -> h5py.File:
    if mode == "r" and not path.exists():
        raise DatasetError(f"episode file {str(path)!r} does not exist")
    try:
        stale = _stale_end_of_allocation(path) if mode != "w" and path.exists() else None
        if stale is not None and mode == "a":
            _repair_end_of_allocation(path, *stale)
        elif stale is not None:
            return h5py.File(_EndOfAllocationView(path, *stale), "r")
        return h5py.File(path, mode, locking=False)
    except OSError as err:
        raise DatasetError(
            f"{str(path)!r} is not a readable HDF5 episode file (corrupt, truncated or not HDF5): {err}"
        ) from err


def _demo_names(data: h5py.Group) -> list[str]:
    names = [n for n in data if _DEMO_RE.match(n)]
    return sorted(names, key=lambda n: int(n[5:]))


def _attr_value(value: Any) -> Any:
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    return value


class EpisodeWriter:
    """Appends whole episodes to an episode file.

    Args:
        path: The HDF5 file.
        env_args: robomimic's ``env_args`` (``env_name``, ``env_type``, ``env_kwargs``); required for a new file.
        mode: ``"w"`` starts a new file (replacing one), ``"a"`` appends to an existing file (or starts one).
        image_compression: HDF5 filter for uint8 image observations (``"gzip"``, ``"lzf"`` or ``None``).
    """

    def __init__(self, path: str | Path, *, env_args: Mapping[str, Any] | None = None, mode: str = "w",
                 image_compression: str | None = "gzip") -> None:
        if mode not in ("w", "a"):
            raise ValueError(f"EpisodeWriter mode must be 'w' or 'a', got {mode!r}")
        self.path = Path(path)
        self.image_compression = image_compression
        self.path.parent.mkdir(parents=True, exist_ok=True)
        new = mode == "w" or not self.path.exists()
        self._file = _open_h5(self.path, "w" if new else "a")
        _disable_metadata_evictions(self._file)
        if new:
            if env_args is None:
                raise ValueError("a new episode file needs env_args")
            data = self._file.create_group("data")
            data.attrs["total"] = 0
            data.attrs["env_args"] = json.dumps(dict(env_args))
            data.attrs["roboloop_format"] = FORMAT_VERSION
            self._file.flush()
        else:
            if "data" not in self._file:
                raise DatasetError(f"{str(self.path)!r} has no 'data' group: not a robomimic-layout episode file")
            data = self._file["data"]
            for leftover in [n for n in data if n.startswith(PENDING_PREFIX)]:
                del data[leftover]  # an append that a killed run did not finish
            if env_args is not None and json.loads(data.attrs["env_args"]) != json.loads(json.dumps(dict(env_args))):
                raise DatasetError(f"cannot append to {str(self.path)!r}: it was recorded with different env_args")
        self._data = data
        names = _demo_names(data)
        self._next_index = int(names[-1][5:]) + 1 if names else 0

    @property
    def num_episodes(self) -> int:
        return len(_demo_names(self._data))

    def append(self, episode: Episode) -> str:
        """Write ``episode`` as the next ``demo_N``; returns that name once it is committed."""
        episode.validate()
        name = f"demo_{self._next_index}"
        pending = f"{PENDING_PREFIX}{name}"
        with _deferred_signals():
            group = self._data.create_group(pending)
            self._write_episode(group, episode, final_path=f"{self._data.name}/{name}")
            self._data.move(pending, name)  # the commit: one link rename
            self._data.attrs["total"] = int(self._data.attrs["total"]) + len(episode)
            self._file.flush()
            if self._file.id.get_mdc_size()[2] > _MAX_METADATA_CACHE_BYTES:
                self._reopen()
        self._next_index += 1
        return name

    def _reopen(self) -> None:
        self._file.close()
        self._file = _open_h5(self.path, "a")
        _disable_metadata_evictions(self._file)
        self._data = self._file["data"]

    def write_mask(self, name: str, demos: Sequence[str]) -> None:
        """Write (or replace) the filter key ``mask/<name>`` listing ``demos``."""
        masks = self._file.require_group("mask")
        with _deferred_signals():
            if name in masks:
                del masks[name]
            masks.create_dataset(name, data=np.array(sorted(demos, key=lambda n: int(n[5:])), dtype="S"))
            self._file.flush()

    def update_success_mask(self) -> None:
        """Rewrite ``mask/success`` from the episodes' ``success`` attributes (e.g. for BC on successes only)."""
        demos = [n for n in _demo_names(self._data) if bool(self._data[n].attrs.get("success", False))]
        self.write_mask("success", demos)

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    def __enter__(self) -> EpisodeWriter:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _write_episode(self, group: h5py.Group, ep: Episode, final_path: str) -> None:
        T = len(ep)
        group.attrs["num_samples"] = T
        for key, value in ep.attrs.items():
            if isinstance(value, Mapping | list | tuple) and not isinstance(value, str):
                value = json.dumps(value)
            if value is None:
                continue
            group.attrs[key] = value
        group.create_dataset("actions", data=np.asarray(ep.actions, dtype=np.float32))
        group.create_dataset("rewards", data=np.asarray(ep.rewards, dtype=np.float32))
        group.create_dataset("dones", data=np.asarray(ep.terminated, dtype=np.uint8))
        group.create_dataset("terminated", data=np.asarray(ep.terminated, dtype=bool))
        group.create_dataset("truncated", data=np.asarray(ep.truncated, dtype=bool))
        if ep.states is not None and len(ep.states):
            group.create_dataset("states", data=np.asarray(ep.states, dtype=np.float64))
        for key, frames in ep.observations.items():
            frames = np.asarray(frames)
            if frames.dtype == np.uint8 and frames.ndim == 4:
                self._write_image(group, key, frames, T, final_path)
            else:
                frames = frames.astype(np.float32) if frames.dtype == np.float64 else frames
                group.create_dataset(f"obs/{key}", data=frames[:T])
                group.create_dataset(f"next_obs/{key}", data=frames[1:])

    def _write_image(self, group: h5py.Group, key: str, frames: np.ndarray, T: int, final_path: str) -> None:
        frame_shape = frames.shape[1:]
        # One frame per chunk: the sampler reads random frames lazily.
        obs = group.create_dataset(f"obs/{key}", data=frames[:T], chunks=(1, *frame_shape),
                                   compression=self.image_compression)
        final = group.create_dataset(f"next_obs_final/{key}", data=frames[T:], chunks=(1, *frame_shape),
                                     compression=self.image_compression)
        # Virtual sources are resolved at read time, by path: name them where they will be after the commit.
        layout = h5py.VirtualLayout(shape=(T, *frame_shape), dtype=np.uint8)
        if T > 1:
            layout[: T - 1] = h5py.VirtualSource(".", f"{final_path}/obs/{key}", shape=obs.shape)[1:T]
        layout[T - 1 : T] = h5py.VirtualSource(".", f"{final_path}/next_obs_final/{key}", shape=final.shape)
        group.create_virtual_dataset(f"next_obs/{key}", layout)


class EpisodeStore:
    """Read access to an episode file. Raises :class:`DatasetError` with the file and key on bad input."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._file = _open_h5(self.path, "r")
        if "data" not in self._file:
            self._file.close()
            raise DatasetError(f"{str(self.path)!r} has no 'data' group: not a robomimic-layout episode file")
        self._data = self._file["data"]
        self.demos: list[str] = _demo_names(self._data)

    def __len__(self) -> int:
        return len(self.demos)

    def __enter__(self) -> EpisodeStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        if self._file.id.valid:
            self._file.close()

    @property
    def env_args(self) -> dict[str, Any]:
        if "env_args" not in self._data.attrs:
            raise DatasetError(f"{str(self.path)!r}: data has no 'env_args' attribute")
        return json.loads(self._data.attrs["env_args"])

    @property
    def total_steps(self) -> int:
        return sum(self.num_samples(d) for d in self.demos)

    def _group(self, demo: str | int) -> h5py.Group:
        name = f"demo_{demo}" if isinstance(demo, int) else demo
        if name not in self.demos:
            raise DatasetError(f"{str(self.path)!r} has no episode {name!r} ({len(self.demos)} episodes)")
        return self._data[name]

    def num_samples(self, demo: str | int) -> int:
        return int(self._group(demo).attrs["num_samples"])

    def attrs(self, demo: str | int) -> dict[str, Any]:
        """Episode attributes, JSON-valued ones decoded."""
        out = {}
        for key, value in self._group(demo).attrs.items():
            value = _attr_value(value)
            if isinstance(value, str) and value[:1] in "{[":
                with contextlib.suppress(json.JSONDecodeError):
                    value = json.loads(value)
            out[key] = value
        return out

    def keys(self, demo: str | int | None = None) -> list[str]:
        """Dataset paths of one episode (the first if not given), e.g. ``obs/observation.state``."""
        group = self._group(demo if demo is not None else self.demos[0])
        found: list[str] = []
        group.visititems(lambda name, obj: found.append(name) if isinstance(obj, h5py.Dataset) else None)
        return sorted(found)

    @property
    def obs_keys(self) -> list[str]:
        if not self.demos:
            return []
        return sorted(self._group(self.demos[0])["obs"].keys())

    def dataset(self, demo: str | int, key: str) -> h5py.Dataset:
        """The HDF5 dataset ``key`` (``actions``, ``obs/<key>``...) of one episode, for lazy reads."""
        group = self._group(demo)
        if key not in group:
            raise DatasetError(f"{str(self.path)!r}: {group.name.split('/')[-1]} has no {key!r}; "
                               f"it has {self.keys(demo)}")
        obj = group[key]
        if not isinstance(obj, h5py.Dataset):
            raise DatasetError(f"{str(self.path)!r}: {key!r} in {group.name} is a group, not a dataset")
        return obj

    def read(self, demo: str | int, key: str) -> np.ndarray:
        try:
            return self.dataset(demo, key)[()]
        except (OSError, KeyError) as err:
            raise DatasetError(f"{str(self.path)!r}: cannot read {key!r} of {demo!r} (corrupt file?): {err}") from err

    def episode(self, demo: str | int, *, obs_keys: Sequence[str] | None = None) -> Episode:
        """Load one whole episode into memory."""
        keys = list(obs_keys) if obs_keys is not None else self.obs_keys
        T = self.num_samples(demo)
        observations = {}
        for key in keys:
            obs = self.read(demo, f"obs/{key}")
            last = self.read(demo, f"next_obs/{key}")[-1:]
            observations[key] = np.concatenate([obs, last])
        group = self._group(demo)
        return Episode(
            observations=observations,
            actions=self.read(demo, "actions"),
            rewards=self.read(demo, "rewards"),
            terminated=self.read(demo, "terminated") if "terminated" in group else self.read(demo, "dones") > 0,
            truncated=self.read(demo, "truncated") if "truncated" in group else np.zeros(T, dtype=bool),
            states=self.read(demo, "states") if "states" in group else None,
            attrs=self.attrs(demo),
        )

    def masks(self) -> dict[str, list[str]]:
        if "mask" not in self._file:
            return {}
        return {name: [_attr_value(v) for v in ds[()]] for name, ds in self._file["mask"].items()}

    def success_rate(self) -> float | None:
        """Fraction of episodes whose ``success`` attribute is true (None if no episode records it)."""
        flags = [self._group(d).attrs["success"] for d in self.demos if "success" in self._group(d).attrs]
        return float(np.mean(flags)) if flags else None


def grow_dataset(previous: str | Path | None, rollouts: str | Path, keep: str, path: Path) -> None:
    """``path``: a copy of ``previous`` plus the ``rollouts`` (``keep``: ``all`` or the successful ones), written
    whole or not at all (a killed run leaves no half-grown file, and a finished one is not grown twice).
    ``previous=None`` starts a new file with the rollouts' ``env_args``."""
    if path.exists():
        return
    tmp = path.with_name(f".{path.name}.partial")
    with EpisodeStore(rollouts) as store:
        episodes = [store.episode(i) for i in range(len(store)) if keep == "all" or store.attrs(i)["success"]]
        env_args = store.env_args
    if previous is not None:
        shutil.copyfile(previous, tmp)
    else:
        tmp.unlink(missing_ok=True)  # left by a killed run
    with EpisodeWriter(tmp, mode="a", env_args=None if previous is not None else env_args) as writer:
        for episode in episodes:
            writer.append(episode)
        writer.update_success_mask()
    tmp.replace(path)
