"""``ChunkExecutor``: runs a chunking policy step by step in a batch of environments.

A policy's ``act`` maps an observation history ``{key: (B, To, *shape)}`` to the chunk of Ta actions it
would execute from the current step on, ``(B, Ta, Da)``. Everything between that and an env that takes one
action per step lives here, per sub-environment:

* the observation history (after a reset the first observation is repeated To times, as Diffusion Policy's
  ``MultiStepWrapper`` does, so the policy never sees padding it was not trained on);
* the queue of actions still to execute: the policy is queried for an env only when its queue is empty,
  and only those envs are batched into the query (open-loop chunk execution);
* or, with ``temporal_ensemble_coeff``, ACT's temporal ensembling: the policy is queried every step and the
  executed action averages every prediction made so far for the current step.

A residual policy in per-step mode (``policy.corrects_each_step``) splits the two: the queue holds its frozen
base's chunk, and every step each queued base action is corrected from the current observation by
``policy.correct(history, base_action)``; a residual head that sees the previously executed action
(``policy.sees_previous_action``) gets each sub-env's last action from here (raw zeros after a reset).

Sub-envs are independent: ``reset(env_ids)`` clears only those, and ``act(obs, active=mask)`` leaves
finished or idle sub-envs untouched (they get zero actions and never reach the policy).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import torch

from roboloop.core.errors import ConfigError, InputError
from roboloop.core.policy import Policy

logger = logging.getLogger(__name__)


class ChunkExecutor:
    """Observation history and action queues of ``n_envs`` sub-environments around one policy.

    Args:
        policy: Any :class:`~roboloop.core.policy.Policy`; its spec gives To, Ta, the keys and shapes.
        n_envs: Number of sub-environments (the batch size of every ``act`` call).
        n_action_steps: Actions of each chunk executed before the policy is queried again (default: the
            policy's Ta; at most Ta). Fewer means more frequent replanning.
        temporal_ensemble_coeff: Query every step and average the predictions for the current step with
            weights ``exp(-coeff * i)``, ``i = 0`` for the oldest prediction (ACT's convention: ``coeff > 0``
            favours old predictions, which smooths the motion). Excludes ``n_action_steps``.
        deterministic: Passed to ``policy.act``.
        device: Where observations are sent before ``policy.act`` (default: the policy's device).
    """

    def __init__(
        self,
        policy: Policy,
        n_envs: int,
        *,
        n_action_steps: int | None = None,
        temporal_ensemble_coeff: float | None = None,
        deterministic: bool = True,
        device: str | torch.device | None = None,
    ) -> None:
        spec = policy.spec
        if n_envs < 1:
            raise ConfigError(f"n_envs must be >= 1, got {n_envs}")
        if temporal_ensemble_coeff is not None and n_action_steps is not None:
            raise ConfigError("temporal_ensemble_coeff and n_action_steps exclude each other: temporal ensembling "
                              "queries the policy every step and uses every predicted action")
        if temporal_ensemble_coeff is not None and not np.isfinite(temporal_ensemble_coeff):
            raise ConfigError(f"temporal_ensemble_coeff must be finite, got {temporal_ensemble_coeff}")
        if n_action_steps is not None and not 1 <= n_action_steps <= spec.n_action_steps:
            raise ConfigError(f"n_action_steps must be in [1, {spec.n_action_steps}] (the policy returns "
                              f"{spec.n_action_steps} actions per query), got {n_action_steps}")
        self.policy = policy
        # A per-step residual policy: chunks come from its base, every executed action from ``correct``.
        self.corrects_each_step = bool(getattr(policy, "corrects_each_step", False))
        self.chunk_policy: Policy = policy.base if self.corrects_each_step else policy  # type: ignore[attr-defined]
        self.sees_previous_action = self.corrects_each_step and bool(getattr(policy, "sees_previous_action", False))
        if self.corrects_each_step and temporal_ensemble_coeff is not None:
            raise ConfigError("temporal ensembling averages whole chunks; a per-step residual policy corrects "
                              "each action as it is executed")
        self.n_envs = int(n_envs)
        self.n_obs_steps = spec.n_obs_steps
        self.chunk_size = spec.n_action_steps  # Ta: actions per policy query
        self.n_action_steps = self.chunk_size if n_action_steps is None else int(n_action_steps)
        self.temporal_ensemble_coeff = temporal_ensemble_coeff
        self.deterministic = deterministic
        self.device = torch.device(device) if device is not None else policy.device
        self.action_dim = spec.action_dim
        self._keys = list(spec.obs_shapes)
        self._shapes = dict(spec.obs_shapes)
        self._image_keys = set(spec.image_keys)
        n, to, ta, da = self.n_envs, self.n_obs_steps, self.chunk_size, self.action_dim

        # History (n_envs, To, *shape) per key; oldest first, current observation last.
        self._history = {
            k: np.zeros((n, to, *s), dtype=np.uint8 if k in self._image_keys else np.float32)
            for k, s in self._shapes.items()
        }
        self._fresh = np.ones(n, dtype=bool)  # no observation since the last reset: fill the history on the next
        # Open-loop queue: the next action of env i is _queue[i, -_n_queued[i]].
        self._queue = np.zeros((n, self.n_action_steps, da), dtype=np.float32)
        self._n_queued = np.zeros(n, dtype=np.int64)
        # Temporal ensembling: _ensemble[i, a] is the chunk env i's policy returned a steps ago (a = 0: this
        # step), so its prediction for the current step is _ensemble[i, a, a]; only the last Ta chunks reach it.
        self._ensemble = np.zeros((n, ta, ta, da), dtype=np.float32)
        self._ensemble_valid = np.zeros((n, ta), dtype=bool)
        # A per-step residual policy: the action each env executed last (raw zeros after a reset).
        self._last_action = np.zeros((n, da), dtype=np.float32)
        self.n_queries = 0  # policy.act calls so far (useful for profiling and tests)

    # ------------------------------------------------------------------------------------------ API
    def reset(self, env_ids: Sequence[int] | np.ndarray | None = None) -> None:
        """Forget the history and pending actions of ``env_ids`` (all envs when None); resets the policy's
        per-env state for them too. Call it whenever those sub-envs start a new episode."""
        ids = np.arange(self.n_envs) if env_ids is None else self._check_ids(env_ids)
        self._fresh[ids] = True
        self._n_queued[ids] = 0
        self._ensemble_valid[ids] = False
        self._last_action[ids] = 0.0
        self.policy.reset(None if env_ids is None else torch.as_tensor(ids, dtype=torch.long))

    def act(self, obs: Mapping[str, np.ndarray], active: np.ndarray | None = None, *,
            generator: torch.Generator | None = None) -> np.ndarray:
        """One action per sub-env for the current step.

        Args:
            obs: The vector env's raw observations, ``{key: (n_envs, *shape)}`` (images ``(n_envs, H, W, 3)``
                uint8). Keys the policy does not read are ignored.
            active: ``(n_envs,)`` bool; inactive sub-envs (finished or idle) are skipped: their history and
                queue stay as they are, the policy is not queried for them and their action is zero.
            generator: What the policy samples from (``Policy.act``); None: the global torch RNG.

        Returns:
            ``(n_envs, Da)`` float32 actions in raw units.
        """
        active_ids = self._active_ids(active)
        actions = np.zeros((self.n_envs, self.action_dim), dtype=np.float32)
        if active_ids.size == 0:
            return actions
        self._append(obs, active_ids)
        if self.temporal_ensemble_coeff is not None:
            actions[active_ids] = self._ensembled(active_ids, generator)
            return actions
        empty = active_ids[self._n_queued[active_ids] == 0]
        if empty.size:
            chunk = self._query(empty, generator)
            self._queue[empty] = chunk[:, : self.n_action_steps]
            self._n_queued[empty] = self.n_action_steps
        actions[active_ids] = self._queue[active_ids, self.n_action_steps - self._n_queued[active_ids]]
        self._n_queued[active_ids] -= 1
        if self.corrects_each_step:
            batch = {k: torch.from_numpy(self._history[k][active_ids]).to(self.device) for k in self._keys}
            base_action = torch.from_numpy(actions[active_ids]).to(self.device)
            previous = torch.from_numpy(self._last_action[active_ids]).to(self.device) if (
                self.sees_previous_action) else None
            with torch.no_grad():
                corrected = self.policy.correct(batch, base_action, previous_action=previous,  # type: ignore[attr-defined]
                                                deterministic=self.deterministic, generator=generator)
            actions[active_ids] = corrected.detach().to("cpu", torch.float32).numpy()
            self._last_action[active_ids] = actions[active_ids]
        return actions

    def observe(self, obs: Mapping[str, np.ndarray], active: np.ndarray | None = None) -> None:
        """Push the current observation of the active sub-envs into their history without asking the policy
        for an action (for callers that plan chunks themselves, e.g. a chunk-mode residual env)."""
        active_ids = self._active_ids(active)
        if active_ids.size:
            self._append(obs, active_ids)

    def observation_history(self, env_ids: Sequence[int] | np.ndarray | None = None) -> dict[str, np.ndarray]:
        """The observation histories of ``env_ids`` (all when None) as a policy batch ``{key: (B, To, *shape)}``."""
        ids = np.arange(self.n_envs) if env_ids is None else self._check_ids(env_ids)
        return {k: h[ids].copy() for k, h in self._history.items()}

    def history(self, env_id: int) -> dict[str, np.ndarray]:
        """A copy of env ``env_id``'s observation history, ``{key: (To, *shape)}`` oldest first."""
        env_id = int(self._check_ids([env_id])[0])
        return {k: h[env_id].copy() for k, h in self._history.items()}

    def limit_queue(self, env_ids: Sequence[int] | np.ndarray, n_actions: int) -> None:
        """Keep at most the next ``n_actions`` queued actions of ``env_ids``: they query the policy again after
        those (``n_actions=0``: at their next ``act``). A vector env whose episodes end at different times can so
        bring a restarted sub-env back to the others' replanning steps, and query the policy for all at once."""
        ids = self._check_ids(env_ids)
        if n_actions < 0:
            raise ConfigError(f"n_actions must be >= 0, got {n_actions}")
        for i in ids[self._n_queued[ids] > n_actions]:
            # The queue is read from its end (the next action is _queue[i, -_n_queued[i]]): move the kept ones there.
            start = self.n_action_steps - self._n_queued[i]
            self._queue[i, self.n_action_steps - n_actions:] = self._queue[i, start:start + n_actions].copy()
            self._n_queued[i] = n_actions

    def n_queued(self, env_id: int) -> int:
        """Actions still queued for env ``env_id`` (always 0 with temporal ensembling)."""
        return int(self._n_queued[int(self._check_ids([env_id])[0])])

    # ------------------------------------------------------------------------------------ internals
    def _check_ids(self, env_ids: Sequence[int] | np.ndarray) -> np.ndarray:
        ids = np.asarray(env_ids, dtype=np.int64).reshape(-1)
        if ids.size and (ids.min() < 0 or ids.max() >= self.n_envs):
            raise InputError(f"env ids {ids.tolist()} out of range for {self.n_envs} envs")
        return ids

    def _active_ids(self, active: np.ndarray | None) -> np.ndarray:
        if active is None:
            return np.arange(self.n_envs)
        active = np.asarray(active)
        if active.shape != (self.n_envs,) or active.dtype != bool:
            raise InputError(f"active must be a ({self.n_envs},) bool array, got shape {active.shape} "
                             f"dtype {active.dtype}")
        return np.flatnonzero(active)

    def _append(self, obs: Mapping[str, np.ndarray], ids: np.ndarray) -> None:
        """Push the current observation of envs ``ids`` into their history (filling it after a reset)."""
        missing = [k for k in self._keys if k not in obs]
        if missing:
            raise InputError(f"observation is missing key(s) {missing} that the policy reads; got {sorted(obs)}")
        values = {}
        for key in self._keys:
            value = np.asarray(obs[key])
            if value.shape != (self.n_envs, *self._shapes[key]):
                raise InputError(f"observation {key!r} has shape {value.shape}, expected "
                                 f"{(self.n_envs, *self._shapes[key])} (n_envs, *shape)")
            if key in self._image_keys and value.dtype != np.uint8:
                raise InputError(f"image observation {key!r} must be uint8, got {value.dtype}")
            values[key] = value[ids]
        fresh = self._fresh[ids]
        for key, value in values.items():
            history = self._history[key]
            old = ids[~fresh]
            history[old, :-1] = history[old, 1:]
            history[old, -1] = value[~fresh]
            history[ids[fresh]] = value[fresh][:, None]  # broadcast over To
        self._fresh[ids] = False

    def _query(self, ids: np.ndarray, generator: torch.Generator | None = None) -> np.ndarray:
        """Run the policy on envs ``ids`` (one batch): returns their chunks, (len(ids), Ta, Da) float32."""
        batch = {k: torch.from_numpy(self._history[k][ids]).to(self.device) for k in self._keys}
        with torch.no_grad():
            # A per-step residual's base plans deterministically; the residual's exploration is the head's.
            deterministic = True if self.corrects_each_step else self.deterministic
            # Only given when there is one: a policy written before ``act`` took a generator still evaluates.
            sampling = {} if generator is None else {"generator": generator}
            chunk = self.chunk_policy.act(batch, deterministic=deterministic, **sampling)
        self.n_queries += 1
        expected = (len(ids), self.chunk_size, self.action_dim)
        if tuple(chunk.shape) != expected:
            raise InputError(f"{type(self.chunk_policy).__name__}.act returned shape {tuple(chunk.shape)}, expected "
                             f"{expected} (B, n_action_steps, action_dim)")
        return chunk.detach().to("cpu", torch.float32).numpy()

    def _ensembled(self, ids: np.ndarray, generator: torch.Generator | None = None) -> np.ndarray:
        """Temporal ensembling for envs ``ids``: (len(ids), Da), the weighted mean of every chunk's prediction
        for the current step."""
        chunk = self._query(ids, generator)
        # Age every stored chunk by one step, then store the new one at age 0.
        self._ensemble[ids, 1:] = self._ensemble[ids, :-1]
        self._ensemble_valid[ids, 1:] = self._ensemble_valid[ids, :-1]
        self._ensemble[ids, 0] = chunk
        self._ensemble_valid[ids, 0] = True
        ages = np.arange(self.chunk_size)
        predictions = self._ensemble[ids][:, ages, ages]  # (n, Ta, Da): the chunk of age a, entry a
        valid = self._ensemble_valid[ids]  # (n, Ta)
        # Valid ages are 0..m-1 (the m chunks since the reset); ACT's i counts from the oldest, age m-1.
        m = valid.sum(axis=1, keepdims=True)
        logits = np.where(valid, -self.temporal_ensemble_coeff * (m - 1 - ages), -np.inf)
        # Normalizing is a softmax: shift by the max so large coefficients cannot overflow.
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        weights /= weights.sum(axis=1, keepdims=True)
        return np.einsum("na,nad->nd", weights, predictions).astype(np.float32)
