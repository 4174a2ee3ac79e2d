"""``ResidualVecEnv``: the frozen base policy as part of the environment, so any PPO trains the residual head.

The wrapped env is a roboloop vector env (dict observations, ``AutoresetMode.DISABLED``, as
``roboloop.datasets.collection.make_vector_env`` builds it). Outwardly the wrapper is an ordinary
``gymnasium.vector.VectorEnv`` with flat ``Box`` spaces and gymnasium's ``SAME_STEP`` autoreset: our PPO and
stable-baselines3's see nothing but a vector of floats in and out.

* Observation (float32): the head's input, ``ResidualPolicy.head_obs``: the normalized current low-dim
  observation and, in ``step`` mode, the normalized base action for this step.
* Action: the head's delta in [-1, 1], (Da,) in ``step`` mode, (Ta * Da,) in ``chunk`` mode; the wrapper
  applies ``ResidualPolicy.compose`` and steps the inner env.
* ``step`` mode: one wrapper step is one env step. The base runs batched over all sub-envs whose chunk queue is
  empty (once every Ta steps, the same ``ChunkExecutor`` as in evaluation), so what PPO trains on is exactly
  what ``roboloop eval`` runs. Sub-env episodes end at different times, though, and each restarts its chunk
  schedule, so after a while some sub-env needs a new chunk at almost every step and the base runs about once
  per step on a few rows (measured on PegInsert with 16 envs: 0.88 calls per step), at nearly the cost of a full
  batch. ``align_chunks=True`` cuts a restarted sub-env's first chunk short, at the running sub-envs' next
  replanning step, so they all replan in one call (0.32 calls per step, 19% more env steps/s): the base then
  replans the new episode a few steps early, from its current observation, which is what a receding-horizon
  policy does anyway, but not on evaluation's exact schedule.
* ``chunk`` mode: one wrapper step executes a whole chunk (Ta env steps); its reward is the sum over them. A
  sub-env whose episode ends inside the chunk is reset at once and runs its base alone for the rest of the chunk
  (the head's next decision for it is at the next chunk boundary).

``step_async`` / ``step_wait`` split a step as gymnasium's ``AsyncVectorEnv`` does: the whole step (the inner
env's physics, resets and the base's planning for the stepped envs) runs on the wrapper's worker thread while the
caller computes something else, e.g. the actions of another group of envs (``PPO`` with several env groups, each
group's wrapper on its own thread). MuJoCo releases the GIL while it integrates (~87% of a PegInsert step) and
torch while its kernels run, so two groups keep both cores busy. When the inner env is an ``AsyncVectorEnv`` its
worker processes run the physics instead and the base plans in ``step_wait``, on the caller's thread.

The base samples (a diffusion base's noise) from the wrapper's own ``torch.Generator``, reseeded at the start of
every ``reset``/``step``/``step_async`` from the global torch RNG on the caller's thread: a seeded caller gets the
same episodes whichever thread plans and however threads interleave, and ``step`` and ``step_async`` agree.

``shaping > 0`` adds potential-based shaping (Ng et al., 1999) to the task's reward: ``F = gamma * Phi(s') -
Phi(s)`` with ``Phi = shaping * sum of the env's shaped terms`` (``info["reward_*"]``: reach, align, insert on
PegInsert; ``shaping_terms`` picks some of them) and ``Phi = 0`` after termination. The shaped return differs from
the sparse one by ``-Phi(s_0)``, which no policy changes, so the optimal policy is the sparse task's (exactly in
``step`` mode, where a wrapper step is one env step and ``gamma`` is PPO's); the dense terms only tell PPO which
near-misses were nearer, and only until the critic has learned ``-Phi``. ``shaping_mode="dense"`` instead adds
``Phi(s')`` itself at every step (each term clipped below at ``-shaping_floor``): an objective of its own, which
on PegInsert (the misalignment over the last centimetre as a cost) is what let the head learn.

A finished episode's last head observation is in ``infos["final_obs"]`` and its info in ``infos["final_info"]``
(masks ``_final_obs``/``_final_info``), as gymnasium's SAME_STEP vector envs do, so truncation can bootstrap.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, VectorEnv

from roboloop.core.errors import ConfigError, InputError
from roboloop.core.spec import PolicySpec
from roboloop.envs.executor import ChunkExecutor
from roboloop.residual_rl.policy import ResidualPolicy

SHAPING_MODES = ("potential", "dense")


def env_info(infos: dict[str, Any], i: int) -> dict[str, Any]:
    """Sub-env ``i``'s own info dict out of a vector env's batched ``infos`` (keys whose mask is set for it)."""
    out: dict[str, Any] = {}
    for key, value in infos.items():
        if key.startswith("_"):
            continue
        if isinstance(value, dict):
            out[key] = env_info(value, i)
        elif infos.get(f"_{key}", np.ones(len(value), dtype=bool))[i]:
            item = value[i]
            out[key] = item.item() if isinstance(item, np.generic) else item
    return out


def generator_from_global_rng(device: torch.device | str) -> torch.Generator:
    """A new generator on ``device`` seeded with one draw from the global torch RNG: the stream a
    ``ResidualVecEnv`` step plans from (a seeded caller reproduces it)."""
    return torch.Generator(device=device).manual_seed(int(torch.randint(0, 2**62, (), dtype=torch.int64)))


class ResidualVecEnv(VectorEnv):
    """Wraps ``envs`` so that its actions are residual deltas on top of ``policy.base``.

    Args:
        envs: Roboloop vector env with ``AutoresetMode.DISABLED`` whose spaces fit the base's spec.
        policy: The residual policy whose head is being trained (its base runs inside the wrapper).
        shaping: Coefficient of the reward shaping (0: the task's reward alone, ResiP's setting).
        gamma: The discount of the shaping term (PPO's).
        shaping_terms: Which shaped terms form ``Phi`` (names without ``reward_``; None: all the env reports).
        shaping_mode: ``potential``: ``reward + gamma * Phi(s') - Phi(s)`` (Ng et al. 1999), which leaves the
            optimal policy the task's; once the critic has learned ``-Phi`` the advantages are the sparse task's
            again, so it mostly helps early. ``dense``: ``reward + Phi(s')`` at every step, a dense objective of
            its own: with terms that are costs (<= 0, e.g. PegInsert's misalignment) and episodes that end on
            success, it asks for the same thing sooner, and a correction keeps paying in every later step.
        shaping_floor: Each term is clipped below at ``-shaping_floor`` (None: not clipped), so that states far
            from the goal all weigh the same and the shaping only tells apart the ones near it (PegInsert's
            ``align`` is in cm: a floor of 1 counts only the last centimetre).
        align_chunks: Step mode: a sub-env that starts an episode executes its first chunk only up to the running
            sub-envs' next replanning step, so the base plans for all of them in one call (see above). False
            keeps evaluation's schedule exactly (every episode replans at its steps 0, Ta, 2 Ta, ...).
    """

    def __init__(self, envs: VectorEnv, policy: ResidualPolicy, *, shaping: float = 0.0, gamma: float = 0.99,
                 shaping_terms: Sequence[str] | None = None, shaping_mode: str = "potential",
                 shaping_floor: float | None = None, align_chunks: bool = False) -> None:
        if envs.metadata.get("autoreset_mode") != AutoresetMode.DISABLED:
            raise ConfigError("ResidualVecEnv needs an inner vector env with autoreset_mode=AutoresetMode.DISABLED "
                              "(it resets finished sub-envs itself); use make_vector_env")
        env_spec = PolicySpec.from_env(envs, obs_keys=list(policy.spec.obs_shapes))
        policy.spec.check_compatible(env_spec, what="the environment")
        if not np.allclose(env_spec.action_low, policy.spec.action_low) or not np.allclose(
                env_spec.action_high, policy.spec.action_high):
            raise InputError(f"the environment's action bounds {env_spec.action_low}..{env_spec.action_high} differ "
                             f"from the base policy's {policy.spec.action_low}..{policy.spec.action_high}")
        self.envs = envs
        self.policy = policy
        self.num_envs = envs.num_envs
        self.mode = policy.config.mode
        spec = policy.spec
        self.chunk_size = spec.n_action_steps
        head_in = policy.head.obs_dim  # observation [+ base action [+ previous action]]
        head_out = spec.action_dim * (1 if self.mode == "step" else self.chunk_size)
        self.single_observation_space = gym.spaces.Box(-np.inf, np.inf, (head_in,), np.float32)
        self.single_action_space = gym.spaces.Box(-1.0, 1.0, (head_out,), np.float32)  # compose() clips to it
        self.observation_space = gym.vector.utils.batch_space(self.single_observation_space, self.num_envs)
        self.action_space = gym.vector.utils.batch_space(self.single_action_space, self.num_envs)
        self.metadata = {**envs.metadata, "autoreset_mode": AutoresetMode.SAME_STEP}
        self.render_mode = envs.render_mode
        self.spec = None
        # The base's chunk queue and observation history, per sub-env: the evaluation runner's executor.
        self.executor = ChunkExecutor(policy.base, self.num_envs)
        self._base_action = np.zeros((self.num_envs, spec.action_dim), dtype=np.float32)  # step mode
        self._base_chunk = np.zeros((self.num_envs, self.chunk_size, spec.action_dim), dtype=np.float32)
        # The action each sub-env executed last (raw zeros after a reset), for a head that sees it.
        self._previous_action = np.zeros((self.num_envs, spec.action_dim), dtype=np.float32)
        self._raw_obs: dict[str, np.ndarray] = {}
        self.base_queries = 0
        self._generator = torch.Generator(device=policy.device)  # the base's noise; every reset/step renews it
        self._worker: ThreadPoolExecutor | None = None  # the thread of step_async, made on first use
        self._finish: Callable[[], tuple[Any, ...]] | None = None  # completes the step step_async started
        if shaping < 0 or not 0 < gamma <= 1:
            raise ConfigError(f"shaping must be >= 0 and gamma in (0, 1], got {shaping}, {gamma}")
        self.shaping, self.gamma = float(shaping), float(gamma)
        self.shaping_terms = None if shaping_terms is None else [f"reward_{t}" for t in shaping_terms]
        if self.shaping_terms is not None and not self.shaping_terms:
            raise ConfigError("shaping_terms is empty: name at least one of the env's shaped terms, or pass None")
        if shaping_mode not in SHAPING_MODES:
            raise ConfigError(f"shaping_mode must be one of {', '.join(SHAPING_MODES)}, got {shaping_mode!r}")
        if shaping_floor is not None and not shaping_floor > 0:
            raise ConfigError(f"shaping_floor must be > 0 or None, got {shaping_floor}")
        self.shaping_mode, self.shaping_floor = shaping_mode, shaping_floor
        self.align_chunks = bool(align_chunks)
        self._potential_based = bool(self.shaping) and shaping_mode == "potential"  # tracks Phi(s) per sub-env
        self._potential = np.zeros(self.num_envs)  # Phi of each sub-env's current state

    # ------------------------------------------------------------------------------ gymnasium API
    def reset(self, *, seed: int | list[int | None] | None = None,
              options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict[str, Any]]:
        self._reseed()
        obs, infos = self.envs.reset(seed=seed, options=options)
        self._check(obs, None, np.arange(self.num_envs))
        if self._potential_based:
            self._potential[:] = self._potentials(infos)
        self.executor.reset()
        self._previous_action[:] = 0.0
        self._raw_obs = {k: np.array(v) for k, v in obs.items()}
        ids = np.arange(self.num_envs)
        if self.mode == "chunk":
            self.executor.observe(self._raw_obs)
        self._plan(ids)
        return self._head_obs(ids), infos

    def step(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        self._reseed()
        if self.mode == "step":
            return self._finish_step(self.envs.step(self._env_actions(actions)))
        return self._step_chunk(self._checked_delta(actions).reshape(self.num_envs, self.chunk_size, -1))

    def step_async(self, actions: np.ndarray) -> None:
        """Start a step with head actions ``actions``; ``step_wait`` returns what ``step`` would have."""
        if self._finish is not None:
            raise InputError("step_async called again before step_wait")
        self._reseed()
        if self.mode == "step":
            env_actions = self._env_actions(actions)
            if isinstance(self.envs, AsyncVectorEnv):  # worker processes step the physics
                self.envs.step_async(env_actions)
                self._finish = lambda: self._finish_step(self.envs.step_wait())
                return

            def work() -> tuple[Any, ...]:
                return self._finish_step(self.envs.step(env_actions))
        else:
            delta = self._checked_delta(actions).reshape(self.num_envs, self.chunk_size, -1)

            def work() -> tuple[Any, ...]:
                return self._step_chunk(delta)  # a chunk interleaves physics and base planning
        if self._worker is None:
            # torch.set_num_threads takes full effect only in the thread that calls it (OpenMP's thread count is a
            # per-thread setting, whatever get_num_threads reports): without it this thread's kernels ran on every
            # core, and two groups' threads measured no faster than one (1.7x with it).
            self._worker = ThreadPoolExecutor(max_workers=1, thread_name_prefix="residual-step",
                                              initializer=torch.set_num_threads, initargs=(torch.get_num_threads(),))
        self._finish = self._worker.submit(work).result

    def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, dict[str, Any]]:
        finish, self._finish = self._finish, None
        if finish is None:
            raise InputError("step_wait called without a step_async")
        return finish()

    def close_extras(self, **kwargs: Any) -> None:
        if self._worker is not None:
            self._worker.shutdown(wait=True)
        self.envs.close()

    # ------------------------------------------------------------------------------ internals
    def _reseed(self) -> None:
        """The base's generator for the coming reset or step, from the global torch RNG (caller's thread)."""
        self._generator = generator_from_global_rng(self.policy.device)

    def _checked_delta(self, actions: np.ndarray) -> np.ndarray:
        delta = np.asarray(actions, dtype=np.float32).reshape(self.num_envs, -1)
        if delta.shape[1] != self.single_action_space.shape[0]:
            raise InputError(f"residual actions have shape {np.shape(actions)}, expected "
                             f"({self.num_envs}, {self.single_action_space.shape[0]})")
        if not np.isfinite(delta).all():
            raise InputError(f"residual actions of sub-env(s) {np.flatnonzero(~np.isfinite(delta).all(1)).tolist()} "
                             f"contain NaN or inf")
        return delta

    def _env_actions(self, actions: np.ndarray) -> np.ndarray:
        """Step mode: the env actions for head deltas ``actions`` on the current base actions (remembered as the
        previous action of the next step)."""
        env_actions = self._compose(self._base_action, self._checked_delta(actions))
        self._previous_action[:] = env_actions
        return env_actions

    def _compose(self, base: np.ndarray, delta: np.ndarray) -> np.ndarray:
        with torch.no_grad():
            device = self.policy.device
            out = self.policy.compose(torch.from_numpy(base).to(device), torch.from_numpy(delta).to(device))
        return out.cpu().numpy().astype(np.float32)

    def _plan(self, ids: np.ndarray) -> None:
        """The base's next action (step mode) or chunk (chunk mode) for sub-envs ``ids`` from their history."""
        active = np.zeros(self.num_envs, dtype=bool)
        active[ids] = True
        if self.mode == "step":
            before = self.executor.n_queries
            self._base_action[ids] = self.executor.act(self._raw_obs, active=active, generator=self._generator)[ids]
            self.base_queries += self.executor.n_queries - before
            return
        batch = self.executor.observation_history(ids)  # chunk mode: the caller has observed already
        with torch.no_grad():
            chunk = self.policy.base.act({k: torch.from_numpy(v).to(self.policy.device) for k, v in batch.items()},
                                         generator=self._generator)
        self.base_queries += 1
        self._base_chunk[ids] = chunk.cpu().numpy()

    def _head_obs(self, ids: np.ndarray) -> np.ndarray:
        history = self.executor.observation_history(ids)
        with torch.no_grad():
            batch = {k: torch.from_numpy(v).to(self.policy.device) for k, v in history.items()}
            base = torch.from_numpy(self._base_action[ids]).to(self.policy.device) if self.mode == "step" else None
            previous = torch.from_numpy(self._previous_action[ids]).to(self.policy.device) if (
                self.policy.sees_previous_action) else None
            return self.policy.head_obs(batch, base, previous).cpu().numpy().astype(np.float32)

    def _check(self, obs: dict[str, np.ndarray], rewards: np.ndarray | None, ids: np.ndarray) -> None:
        for key in self.policy.spec.lowdim_keys:
            bad = ids[~np.isfinite(np.asarray(obs[key])[ids]).reshape(len(ids), -1).all(axis=1)]
            if bad.size:
                raise InputError(f"observation {key!r} of sub-env(s) {bad.tolist()} contains NaN or inf")
        if rewards is not None and not np.isfinite(rewards[ids]).all():
            raise InputError(f"reward of sub-env(s) {ids[~np.isfinite(rewards[ids])].tolist()} is NaN or inf")

    def _advance(self, stepped: tuple[Any, ...], infos_out: dict[str, Any], running: np.ndarray
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Take in the inner env's step result ``stepped`` (every sub-env stepped once); sub-envs that finished
        record their final head observation and info into ``infos_out`` when ``running`` (their episode belongs
        to the current transition) and are reset; the base plans the next step."""
        obs, rewards, terminated, truncated, infos = stepped
        rewards = np.asarray(rewards, dtype=np.float64)
        self._check(obs, rewards, np.arange(self.num_envs))
        if self.shaping and not self._potential_based:  # dense: Phi(s') itself
            rewards = rewards + self._potentials(infos)
        elif self._potential_based:
            potential = np.where(np.asarray(terminated), 0.0, self._potentials(infos))
            rewards = rewards + self.gamma * potential - self._potential
            self._potential = potential
        self._raw_obs = {k: np.array(v) for k, v in obs.items()}
        done = np.asarray(terminated) | np.asarray(truncated)
        alive, finished = np.flatnonzero(~done), np.flatnonzero(done)
        # One planning call for all: the alive envs' next base action and the finished ones' at their final
        # observation (for their final head observation).
        if self.mode == "step":
            self._plan(np.arange(self.num_envs))
        else:
            self.executor.observe(self._raw_obs)
        if finished.size:
            final_obs = self._head_obs(finished)
            for row, i in enumerate(finished):
                if running[i]:
                    self._add_info(infos_out, {"final_obs": final_obs[row], "final_info": env_info(infos, i)}, i)
            mask = np.zeros(self.num_envs, dtype=bool)
            mask[finished] = True
            new_obs, reset_infos = self.envs.reset(options={"reset_mask": mask})
            self._check(new_obs, None, finished)
            if self._potential_based:
                self._potential[finished] = self._potentials(reset_infos)[finished]
            for k in self._raw_obs:
                self._raw_obs[k][finished] = np.asarray(new_obs[k])[finished]
            self.executor.reset(finished)
            self._previous_action[finished] = 0.0
            if self.mode == "step":
                self._plan(finished)
                if self.align_chunks and alive.size:
                    # The new episodes' first chunks end where the running ones' do: all replan in one call.
                    self.executor.limit_queue(finished, self.executor.n_queued(int(alive[0])))
            else:
                self.executor.observe(self._raw_obs, active=mask)
        return rewards, np.asarray(terminated), np.asarray(truncated), done

    def _potentials(self, infos: dict[str, Any]) -> np.ndarray:
        """Phi (N,) from the sub-envs' shaped reward terms in ``infos``, each clipped below at ``-shaping_floor``
        (rows not reported are 0)."""
        reported = [key for key in infos if key.startswith("reward_")]
        if not reported:
            raise ConfigError(f"reward shaping needs the env's shaped reward terms (info['reward_*']); the env reports "
                              f"{sorted(k for k in infos if not k.startswith('_'))}")
        terms = reported if self.shaping_terms is None else self.shaping_terms
        missing = sorted(set(terms) - set(reported))
        if missing:
            names = [m[len("reward_"):] for m in missing]
            raise ConfigError(f"shaping_terms {names} are not shaped terms of this env; it reports "
                              f"{sorted(k[len('reward_'):] for k in reported)}")
        total = np.zeros(self.num_envs)
        for key in terms:
            values = np.asarray(infos[key], dtype=np.float64)
            if self.shaping_floor is not None:
                values = np.maximum(values, -self.shaping_floor)
            total += np.where(infos.get(f"_{key}", np.ones(self.num_envs, dtype=bool)), values, 0.0)
        return self.shaping * total

    def _finish_step(self, stepped: tuple[Any, ...]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                                dict[str, Any]]:
        """Step mode: the wrapper's step result from the inner env's."""
        infos: dict[str, Any] = {}
        rewards, terminated, truncated, _ = self._advance(stepped, infos, np.ones(self.num_envs, dtype=bool))
        return self._head_obs(np.arange(self.num_envs)), rewards, terminated, truncated, infos

    def _step_chunk(self, delta: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray,
                                                      dict[str, Any]]:
        n = self.num_envs
        infos: dict[str, Any] = {}
        total = np.zeros(n, dtype=np.float64)
        terminated, truncated = np.zeros(n, dtype=bool), np.zeros(n, dtype=bool)
        running = np.ones(n, dtype=bool)  # still in the episode this transition started in
        chunk = self._compose(self._base_chunk, delta)  # (N, Ta, Da)
        # Sub-envs whose episode ends inside the chunk restart at once and run their new episode's own base
        # chunk, from its first action, for the rest of this one.
        position = np.zeros(n, dtype=np.int64)  # index of each sub-env's next action in its base chunk
        rows = np.arange(n)
        for j in range(self.chunk_size):
            actions = np.where(running[:, None], chunk[:, j], self._base_chunk[rows, position])
            rewards, term, trunc, done = self._advance(self.envs.step(actions), infos, running)
            total += np.where(running, rewards, 0.0)
            terminated |= running & term
            truncated |= running & trunc
            position += 1
            restarted = np.flatnonzero(done)
            if restarted.size and j < self.chunk_size - 1:
                self._plan(restarted)
                position[restarted] = 0
            running &= ~done
        self._plan(np.arange(n))  # every sub-env starts a new chunk at the next wrapper step
        return self._head_obs(np.arange(n)), total, terminated, truncated, infos
