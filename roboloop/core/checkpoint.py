"""Checkpoint directories: nothing pickled holds code, and a killed write never leaves a broken checkpoint.

::

    <dir>/config.json        {"type": <policy name>, "config": {...}}   (the policy's typed config)
    <dir>/spec.json          PolicySpec
    <dir>/model.safetensors  weights and normalizer statistics (the EMA weights when training used EMA)
    <dir>/train_state.pt     optimizer, scheduler, RNG states, step, raw weights (for resume only; tensors
                             and plain containers, loaded with ``weights_only=True``)
    <dir>/meta.json          format version, roboloop version, git commit, dataset fingerprint, step, time

The directory is written under a temporary name and renamed into place. Replacing an existing checkpoint
moves the old one aside first; if a run dies between the two renames the old one is moved back on load.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from roboloop.core.config import config_from_dict, config_to_dict
from roboloop.core.errors import CheckpointError, ConfigError
from roboloop.core.spec import PolicySpec

if TYPE_CHECKING:
    from roboloop.core.policy import Policy

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
CONFIG_FILE, SPEC_FILE, MODEL_FILE, TRAIN_STATE_FILE, META_FILE = (
    "config.json", "spec.json", "model.safetensors", "train_state.pt", "meta.json")


def git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5, check=True)
        return out.stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        return None


def file_fingerprint(path: str | Path) -> str:
    """sha256 of a file's bytes (a dataset's identity in meta.json)."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            digest.update(chunk)
    return digest.hexdigest()


def _write_json(path: Path, data: Any) -> None:
    path.write_text(json.dumps(data, indent=2) + "\n")


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_checkpoint_dir(path: str | Path) -> Iterator[Path]:
    """Write a checkpoint directory atomically: fill the yielded temporary directory; on success it replaces
    ``path`` (files fsynced, the previous checkpoint kept as ``.<name>.old`` until the new one is in place, so
    a run killed at any moment leaves either the old or the new checkpoint; see ``_recover``)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
    old = path.parent / f".{path.name}.old"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    try:
        yield tmp
        for f in tmp.rglob("*"):
            if f.is_file():
                with open(f, "rb") as fh:
                    os.fsync(fh.fileno())
        if path.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(path, old)
        os.replace(tmp, path)
        _fsync_dir(path.parent)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def base_meta(meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """``meta.json`` contents: format and package versions, git commit, time, plus ``meta``."""
    from roboloop import __version__

    return {"format_version": FORMAT_VERSION, "roboloop_version": __version__, "git_commit": git_commit(),
            "saved_at": time.strftime("%Y-%m-%dT%H:%M:%S"), **(meta or {})}


def save_checkpoint(path: str | Path, policy: Policy, *, state_dict: dict[str, torch.Tensor] | None = None,
                    train_state: dict[str, Any] | None = None, meta: dict[str, Any] | None = None) -> Path:
    """Write ``policy`` (or ``state_dict`` in its place, e.g. EMA weights) as checkpoint directory ``path``."""
    with atomic_checkpoint_dir(path) as tmp:
        weights = state_dict if state_dict is not None else policy.state_dict()
        # safetensors refuses shared or non-contiguous storage: store independent contiguous copies.
        save_file({k: v.detach().cpu().contiguous().clone() for k, v in weights.items()}, str(tmp / MODEL_FILE))
        _write_json(tmp / CONFIG_FILE, {"type": policy.name, "config": config_to_dict(policy.config)})
        _write_json(tmp / SPEC_FILE, policy.spec.to_dict())
        _write_json(tmp / META_FILE, base_meta(meta))
        if train_state is not None:
            torch.save(train_state, tmp / TRAIN_STATE_FILE)
        policy.save_parts(tmp)
    return Path(path)


def save_train_state(path: str | Path, train_state: dict[str, Any], *, meta: dict[str, Any] | None = None) -> Path:
    """A resumable checkpoint without a policy (e.g. an RL actor on a plain vector env): ``train_state.pt``
    (tensors, numbers, strings: loadable with ``weights_only=True``) and ``meta.json``, written atomically."""
    with atomic_checkpoint_dir(path) as tmp:
        torch.save(train_state, tmp / TRAIN_STATE_FILE)
        _write_json(tmp / META_FILE, base_meta(meta))
    return Path(path)


def _recover(path: Path) -> None:
    """A run killed between "move the old checkpoint aside" and "move the new one in": restore the old one."""
    old = path.parent / f".{path.name}.old"
    if not path.exists() and old.exists():
        logger.warning("restoring %s from an interrupted checkpoint write", path)
        os.replace(old, path)


def checkpoint_exists(path: str | Path) -> bool:
    path = Path(path)
    _recover(path)
    return (path / MODEL_FILE).exists()


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise CheckpointError(f"{str(path.parent)!r} is not a checkpoint: {path.name} is missing") from None
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{str(path)!r} is corrupt: {err}") from err


def read_policy_config(path: str | Path) -> tuple[str, dict[str, Any]]:
    """The policy type and its config, as saved in ``<path>/config.json`` (plain JSON values)."""
    path = Path(path)
    _recover(path)
    if not path.is_dir():
        raise CheckpointError(f"checkpoint {str(path)!r} does not exist (expected a directory)")
    data = _read_json(path / CONFIG_FILE)
    if not isinstance(data, dict) or "type" not in data or not isinstance(data.get("config"), dict):
        raise CheckpointError(f"{str(path / CONFIG_FILE)!r} has no policy type/config")
    return str(data["type"]), data["config"]


def read_policy_type(path: str | Path) -> str:
    return read_policy_config(path)[0]


def load_policy(path: str | Path, *, device: str | torch.device = "cpu",
                expected: type[Policy] | None = None) -> Policy:
    """Build the checkpoint's policy from its config and spec, load its weights strictly, return it in eval mode."""
    from roboloop.offline_rl.policy import RLActorPolicy
    from roboloop.policies import POLICIES
    from roboloop.residual_rl.policy import ResidualPolicy

    known = {**POLICIES, ResidualPolicy.name: ResidualPolicy, RLActorPolicy.name: RLActorPolicy}
    path = Path(path)
    policy_type = read_policy_type(path)
    if expected is not None and policy_type != expected.name:
        raise CheckpointError(f"{str(path)!r} holds a {policy_type!r} policy, not a {expected.name!r} one")
    if policy_type not in known:
        raise CheckpointError(f"{str(path)!r} holds an unknown policy type {policy_type!r}; "
                              f"known: {sorted(known)}")
    cls = known[policy_type]
    try:
        config = config_from_dict(cls.config_cls, _read_json(path / CONFIG_FILE)["config"])
    except (ConfigError, TypeError) as err:
        raise CheckpointError(f"{str(path)!r}: config does not fit this version's {policy_type!r} "
                              f"policy: {err}") from err
    spec = PolicySpec.from_dict(_read_json(path / SPEC_FILE))
    policy = cls.from_checkpoint_parts(config, spec, path)
    if not (path / MODEL_FILE).exists():
        raise CheckpointError(f"{str(path)!r} has no {MODEL_FILE}")
    try:
        weights = load_file(str(path / MODEL_FILE))
    except (SafetensorError, OSError) as err:
        raise CheckpointError(f"{str(path / MODEL_FILE)!r} is corrupt: {err}") from err
    load_state_dict_strict(policy, weights, source=str(path))
    return policy.to(device).eval()


def load_state_dict_strict(module: torch.nn.Module, weights: dict[str, torch.Tensor], *, source: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the missing, unexpected and misshapen keys."""
    own = module.state_dict()
    missing = sorted(set(own) - set(weights))
    unexpected = sorted(set(weights) - set(own))
    shapes = [f"{k}: {tuple(weights[k].shape)} vs {tuple(v.shape)}" for k, v in own.items()
              if k in weights and weights[k].shape != v.shape]
    if missing or unexpected or shapes:
        raise CheckpointError(f"{source}: weights do not fit the policy (missing {missing[:5]}, unexpected "
                              f"{unexpected[:5]}, shape mismatches {shapes[:5]})")
    module.load_state_dict(weights, strict=True)


def train_state_exists(path: str | Path) -> bool:
    """Whether ``path`` holds a resumable training state (a policy checkpoint or a policy-less one)."""
    path = Path(path)
    _recover(path)
    return (path / TRAIN_STATE_FILE).exists()


def read_train_state(path: str | Path) -> dict[str, Any]:
    _recover(Path(path))
    file = Path(path) / TRAIN_STATE_FILE
    if not file.exists():
        raise CheckpointError(f"{str(path)!r} has no {TRAIN_STATE_FILE}: it cannot be resumed from")
    try:
        return torch.load(file, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises several types for truncated/corrupt archives
        raise CheckpointError(f"{str(file)!r} is corrupt: {err}") from err


def read_meta(path: str | Path) -> dict[str, Any]:
    return _read_json(Path(path) / META_FILE)
