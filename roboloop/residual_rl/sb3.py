"""stable-baselines3 on roboloop vector envs: the compatibility path for users who already train with SB3, and the
reference our PPO is measured against.

``SB3VecEnv`` adapts any gymnasium vector env with ``SAME_STEP`` autoreset (a ``ResidualVecEnv``, or
``SyncVectorEnv(..., autoreset_mode=AutoresetMode.SAME_STEP)``) to SB3's ``VecEnv`` API. SB3 bootstraps a
time-limit truncation from ``infos[i]["terminal_observation"]`` when ``infos[i]["TimeLimit.truncated"]`` is
set, so ``terminated`` and ``truncated`` keep their meaning across the boundary.

``sb3_ppo(envs, cfg)`` builds SB3's PPO with the settings of a ``PPOConfig`` that SB3 can express (rollout
length, epochs, minibatch size, gamma, lambda, clip range, coefficients, gradient clipping, target KL, the
actor's learning rate with linear annealing, initial log std, the head's widths and activation).
SB3 cannot express separate actor and critic learning rates, a zero-initialized mean layer without bias, a
fixed standard deviation, running reward normalization inside the algorithm (``VecNormalize`` does it as a
wrapper) or a critic warm-up; those stay at SB3's behaviour and ``SB3_DIFFERENCES`` lists them.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv

from roboloop.core.errors import ConfigError
from roboloop.residual_rl.env import env_info
from roboloop.residual_rl.ppo import PPOConfig
from roboloop.utils.sb3 import silence_logger

SB3_DIFFERENCES = (
    "one learning rate (the actor's) for actor and critic",
    "mean layer with bias, orthogonal init with gain 0.01 (SB3's ortho_init), not zero",
    "reward normalization by VecNormalize(norm_obs=False) rather than inside PPO",
    "no critic warm-up",
)


def _sb3() -> Any:
    try:
        import stable_baselines3
    except ImportError as err:  # a dependency: only a broken install gets here
        raise ConfigError("stable-baselines3 is not installed: pip install -c constraints.txt -e .") from err
    return stable_baselines3


def make_sb3_vec_env(envs: VectorEnv) -> Any:
    """An SB3 ``VecEnv`` over ``envs`` (a gymnasium vector env with SAME_STEP autoreset)."""
    from stable_baselines3.common.vec_env import VecEnv

    if envs.metadata.get("autoreset_mode") != AutoresetMode.SAME_STEP:
        raise ConfigError("SB3VecEnv needs a vector env with SAME_STEP autoreset (a ResidualVecEnv, or "
                          "SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP))")

    class SB3VecEnv(VecEnv):
        """gymnasium SAME_STEP vector env -> SB3 VecEnv (finished episodes report their final observation)."""

        def __init__(self) -> None:
            self.envs = envs
            self._actions: np.ndarray | None = None
            super().__init__(envs.num_envs, envs.single_observation_space, envs.single_action_space)

        def reset(self) -> np.ndarray:
            seeds = None if all(s is None for s in self._seeds) else list(self._seeds)
            obs, infos = self.envs.reset(seed=seeds)
            self.reset_infos = [env_info(infos, i) for i in range(self.num_envs)]
            self._reset_seeds()
            return obs

        def step_async(self, actions: np.ndarray) -> None:
            self._actions = np.asarray(actions)

        def step_wait(self) -> tuple[np.ndarray, np.ndarray, np.ndarray, list[dict[str, Any]]]:
            assert self._actions is not None, "step_async first"
            obs, rewards, terminated, truncated, infos = self.envs.step(self._actions)
            done = np.asarray(terminated) | np.asarray(truncated)
            out = []
            for i in range(self.num_envs):
                if done[i]:
                    info = dict(env_info(infos.get("final_info", {}), i))
                    info["terminal_observation"] = infos["final_obs"][i]
                    info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                else:
                    info = env_info(infos, i)
                out.append(info)
            return obs, np.asarray(rewards, dtype=np.float32), done, out

        def close(self) -> None:
            self.envs.close()

        def get_attr(self, attr_name: str, indices: Any = None) -> list[Any]:
            if attr_name == "render_mode":
                return [getattr(self.envs, "render_mode", None)] * len(self._indices(indices))
            raise AttributeError(f"SB3VecEnv does not forward attribute {attr_name!r}")

        def set_attr(self, attr_name: str, value: Any, indices: Any = None) -> None:
            raise AttributeError(f"SB3VecEnv does not forward attribute {attr_name!r}")

        def env_method(self, method_name: str, *args: Any, indices: Any = None, **kwargs: Any) -> list[Any]:
            raise AttributeError(f"SB3VecEnv does not forward method {method_name!r}")

        def env_is_wrapped(self, wrapper_class: type, indices: Any = None) -> list[bool]:
            return [False] * len(self._indices(indices))

        def _indices(self, indices: Any) -> Sequence[int]:
            if indices is None:
                return range(self.num_envs)
            return [indices] if isinstance(indices, int) else list(indices)

    return SB3VecEnv()


def sb3_ppo(envs: VectorEnv, cfg: PPOConfig, *, hidden_dims: Sequence[int] = (256, 256), activation: str = "relu",
            init_logstd: float = -1.0, learn_std: bool = True, verbose: int = 0) -> Any:
    """SB3's PPO on ``envs`` with ``cfg``'s settings where SB3 has them (see ``SB3_DIFFERENCES``). Returns the
    ``stable_baselines3.PPO`` model; train it with ``model.learn(cfg.total_env_steps)``.

    ``learn_std=False`` keeps the log std at ``init_logstd``, as ``ResidualConfig.learn_std=False`` (ResiP's
    choice) does for ours. SB3 has no option for it; its log std is a plain parameter, frozen here, so Adam
    (which skips parameters without gradients) never moves it.
    """
    import torch
    from stable_baselines3.common.vec_env import VecNormalize

    sb3 = _sb3()
    venv = make_sb3_vec_env(envs)
    if cfg.normalize_reward:
        venv = VecNormalize(venv, norm_obs=False, norm_reward=True, clip_reward=cfg.reward_clip, gamma=cfg.gamma)
    batch = cfg.n_steps * envs.num_envs
    act = {"relu": torch.nn.ReLU, "tanh": torch.nn.Tanh}[activation]
    lr = (lambda progress: progress * cfg.actor_lr) if cfg.anneal_lr else cfg.actor_lr
    model = sb3.PPO(
        "MlpPolicy", venv, learning_rate=lr, n_steps=cfg.n_steps, batch_size=batch // cfg.n_minibatches,
        n_epochs=cfg.n_epochs, gamma=cfg.gamma, gae_lambda=cfg.gae_lambda, clip_range=cfg.clip_coef,
        clip_range_vf=cfg.clip_coef if cfg.clip_vloss else None, normalize_advantage=cfg.normalize_advantage,
        ent_coef=cfg.ent_coef, vf_coef=cfg.vf_coef, max_grad_norm=cfg.max_grad_norm, target_kl=cfg.target_kl,
        seed=cfg.seed, device="cpu" if cfg.device == "auto" else cfg.device, verbose=verbose,
        policy_kwargs={"net_arch": {"pi": list(hidden_dims), "vf": list(cfg.critic_hidden_dims)},
                       "activation_fn": act, "log_std_init": init_logstd})
    if not learn_std:
        model.policy.log_std.requires_grad_(False)
    return model if verbose else silence_logger(model)
