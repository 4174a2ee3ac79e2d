"""``PolicySpec``: what a policy consumes and produces. Derived from an env or a dataset, never hand-written."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from roboloop.core.errors import CheckpointError, ConfigError, InputError

STATE_KEY = "observation.state"
IMAGE_PREFIX = "observation.images."


def check_horizons(n_obs_steps: int, horizon: int, n_action_steps: int) -> None:
    """The executed actions (from the current step, index To-1 of the chunk) must lie inside the chunk."""
    if n_obs_steps < 1 or horizon < 1 or n_action_steps < 1:
        raise ConfigError(f"n_obs_steps, horizon and n_action_steps must be >= 1, got "
                          f"{n_obs_steps}, {horizon}, {n_action_steps}")
    if n_action_steps > horizon - n_obs_steps + 1:
        raise ConfigError(f"n_action_steps ({n_action_steps}) must be <= horizon - n_obs_steps + 1 "
                          f"({horizon - n_obs_steps + 1}): the executed actions must lie inside the chunk")


@dataclass(frozen=True)
class PolicySpec:
    """Observation keys and per-step shapes, action size and bounds, and the three horizons.

    Observation shapes are those of one raw step: ``(D,)`` float for state vectors, ``(H, W, 3)`` uint8
    for camera images. A policy takes raw observations of shape ``(B, To, *shape)`` and returns raw
    actions ``(B, Ta, action_dim)`` within ``[action_low, action_high]``.
    """

    obs_shapes: dict[str, tuple[int, ...]]
    action_dim: int
    action_low: tuple[float, ...]
    action_high: tuple[float, ...]
    n_obs_steps: int = 1  # To
    horizon: int = 1  # Tp
    n_action_steps: int = 1  # Ta

    def __post_init__(self) -> None:
        object.__setattr__(self, "obs_shapes", {k: tuple(int(d) for d in v) for k, v in self.obs_shapes.items()})
        object.__setattr__(self, "action_low", tuple(float(x) for x in self.action_low))
        object.__setattr__(self, "action_high", tuple(float(x) for x in self.action_high))
        if not self.obs_shapes:
            raise ConfigError("a policy needs at least one observation key")
        for key, shape in self.obs_shapes.items():
            if len(shape) not in (1, 3) or (len(shape) == 3 and shape[-1] != 3):
                raise ConfigError(f"observation {key!r} has shape {shape}: expected (D,) or (H, W, 3)")
        if self.action_dim < 1 or len(self.action_low) != self.action_dim or len(self.action_high) != self.action_dim:
            raise ConfigError(f"action bounds must have action_dim={self.action_dim} entries, got "
                              f"{len(self.action_low)} and {len(self.action_high)}")
        if any(lo >= hi for lo, hi in zip(self.action_low, self.action_high)):
            raise ConfigError(f"action_low must be < action_high, got {self.action_low} and {self.action_high}")
        check_horizons(self.n_obs_steps, self.horizon, self.n_action_steps)

    # ----------------------------------------------------------------------------------------- views
    @property
    def image_keys(self) -> list[str]:
        return [k for k, s in self.obs_shapes.items() if len(s) == 3]

    @property
    def lowdim_keys(self) -> list[str]:
        return [k for k, s in self.obs_shapes.items() if len(s) == 1]

    def flat_dim(self, keys: Sequence[str] | None = None) -> int:
        """Width of low-dimensional keys (all of them by default) flattened and concatenated: what a head over flat
        vectors (a residual head, an RL actor, a critic) reads per step."""
        return sum(int(np.prod(self.obs_shapes[k])) for k in (self.lowdim_keys if keys is None else keys))

    def with_horizons(self, n_obs_steps: int, horizon: int, n_action_steps: int) -> PolicySpec:
        return replace(self, n_obs_steps=n_obs_steps, horizon=horizon, n_action_steps=n_action_steps)

    # ---------------------------------------------------------------------------------- derivation
    @classmethod
    def from_spaces(cls, observation_space: Any, action_space: Any, *, obs_keys: Sequence[str] | None = None,
                    n_obs_steps: int = 1, horizon: int = 1, n_action_steps: int = 1) -> PolicySpec:
        """From a (single) env's Dict observation space and Box action space."""
        spaces = dict(observation_space.spaces)
        keys = list(obs_keys) if obs_keys is not None else list(spaces)
        missing = [k for k in keys if k not in spaces]
        if missing:
            raise InputError(f"the env has no observation key(s) {missing}; it has {sorted(spaces)}")
        return cls(obs_shapes={k: spaces[k].shape for k in keys}, action_dim=int(np.prod(action_space.shape)),
                   action_low=tuple(np.asarray(action_space.low, dtype=float).ravel()),
                   action_high=tuple(np.asarray(action_space.high, dtype=float).ravel()),
                   n_obs_steps=n_obs_steps, horizon=horizon, n_action_steps=n_action_steps)

    @classmethod
    def from_env(cls, env: Any, **kwargs: Any) -> PolicySpec:
        obs_space = getattr(env, "single_observation_space", env.observation_space)
        act_space = getattr(env, "single_action_space", env.action_space)
        return cls.from_spaces(obs_space, act_space, **kwargs)

    @classmethod
    def from_dataset(cls, path: str | Path, *, obs_keys: Sequence[str] | None = None, n_obs_steps: int = 1,
                     horizon: int = 1, n_action_steps: int = 1) -> PolicySpec:
        """From an episode file: shapes from its first episode, action bounds from the env that recorded it."""
        from roboloop.datasets.store import EpisodeStore
        from roboloop.envs import make, task_info

        with EpisodeStore(path) as store:
            keys = list(obs_keys) if obs_keys is not None else store.obs_keys
            missing = [k for k in keys if k not in store.obs_keys]
            if missing:
                raise InputError(f"{str(path)!r} has no observation key(s) {missing}; it has {store.obs_keys}")
            first = store.demos[0]
            shapes = {k: tuple(store.dataset(first, f"obs/{k}").shape[1:]) for k in keys}
            action_dim = int(store.dataset(first, "actions").shape[1])
            task = store.env_args.get("roboloop", {}).get("task")
        if task is not None:
            env = make(task_info(task).name)
            low, high = env.action_space.low, env.action_space.high
            env.close()
        else:  # a file from elsewhere: actions are bounded by what the data spans
            from roboloop.datasets.stats import compute_stats

            stats = compute_stats(path, obs_keys=[])["action"]
            low, high = stats["min"], stats["max"]
        if len(low) != action_dim:
            raise InputError(f"{str(path)!r}: actions have {action_dim} dims but the env's action space has {len(low)}")
        return cls(obs_shapes=shapes, action_dim=action_dim, action_low=tuple(low), action_high=tuple(high),
                   n_obs_steps=n_obs_steps, horizon=horizon, n_action_steps=n_action_steps)

    # ----------------------------------------------------------------------------------- checking
    def check_compatible(self, other: PolicySpec, *, what: str = "the dataset") -> None:
        """Raise when ``other`` (e.g. derived from a dataset or env) does not fit this policy's spec."""
        missing = [k for k in self.obs_shapes if k not in other.obs_shapes]
        if missing:
            raise InputError(f"{what} has no observation key(s) {missing} that the policy needs "
                             f"(it has {sorted(other.obs_shapes)})")
        for key, shape in self.obs_shapes.items():
            if other.obs_shapes[key] != shape:
                raise InputError(f"{what}: observation {key!r} has shape {other.obs_shapes[key]}, "
                                 f"the policy expects {shape}")
        if other.action_dim != self.action_dim:
            raise InputError(f"{what} has {other.action_dim}-dim actions, the policy expects {self.action_dim}")

    def check_obs(self, obs: Mapping[str, Any]) -> int:
        """Validate a raw observation batch ``{key: (B, To, *shape)}``; returns B."""
        missing = [k for k in self.obs_shapes if k not in obs]
        if missing:
            raise InputError(f"observation is missing key(s) {missing}; got {sorted(obs)}")
        batch = None
        for key, shape in self.obs_shapes.items():
            got = tuple(obs[key].shape)
            if got[1:] != (self.n_obs_steps, *shape):
                raise InputError(f"observation {key!r} has shape {got}, expected (B, {self.n_obs_steps}, "
                                 f"{', '.join(map(str, shape))}) (B, n_obs_steps, ...)")
            if batch is not None and got[0] != batch:
                raise InputError(f"observation {key!r} has batch size {got[0]}, other keys have {batch}")
            batch = got[0]
        return int(batch)

    # ------------------------------------------------------------------------------ serialization
    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["obs_shapes"] = {k: list(v) for k, v in self.obs_shapes.items()}
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> PolicySpec:
        try:
            return cls(**{**data, "obs_shapes": {k: tuple(v) for k, v in data["obs_shapes"].items()}})
        except (TypeError, KeyError) as err:
            raise CheckpointError(f"invalid policy spec {dict(data)}: {err}") from err

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)
