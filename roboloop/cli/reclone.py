"""Re-clone a policy's base in an identified simulation, at the rate and action scale it will be deployed with.

A policy trained at every control step that must hold its actions on the real robot (``hold_steps``, for a latency
it did not know) makes half as many decisions per episode while its base still moves by the distances it cloned, so
it can run out of time (on the real proxy's PegInsert the scripted expert times out in 10 of 40 episodes at the
nominal action scale). :func:`reclone_base` has the task's scripted expert demonstrate in the identified simulation
at that rate with a larger action scale, and clones a new base from those demonstrations with the old base's own
policy config (its architecture, horizons and normalization); ``roboloop sim2real reclone.enabled=true`` then trains
a new residual head on it. It is off by default: on the real proxy's PegInsert, continuing the held residual (with a
longer critic warm-up) reached 92/100 real episodes where the re-clone's residual reached 15/20.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from roboloop.cli.train_bc import TrainBCConfig, train_bc
from roboloop.cli.train_residual import residual_ppo_defaults
from roboloop.core.checkpoint import read_policy_config
from roboloop.core.config import config_from_dict
from roboloop.core.errors import ConfigError
from roboloop.datasets.collection import CollectConfig, collect
from roboloop.datasets.store import EpisodeStore
from roboloop.envs.evaluation import EvalConfig
from roboloop.residual_rl.policy import BASE_DIR, ResidualConfig, ResidualPolicy
from roboloop.residual_rl.ppo import PPOConfig
from roboloop.training import TrainConfig


@dataclass
class RecloneConfig:
    """How ``roboloop sim2real`` re-clones the base for a policy that must hold (see the module docstring).

    The re-clone replaces the retraining of the first iteration whose identified latency asks for holding
    (``hold_for_latency``) a policy trained at another rate; later iterations continue its residual as usual.

    Attributes:
        enabled: Re-clone (False, the default: continue the old residual at the new rate; on the real proxy's
            PegInsert that did better, see ``roboloop/configs/sim2real.yaml``).
        max_delta_pos_factor: The re-cloned policy's position action scale, as a multiple of the task's
            ``max_delta_pos`` (a real arm's controller is given it with ``hold_steps``, from the checkpoint's
            env_kwargs). On the real proxy's PegInsert (latency 1, holding every other step) the expert succeeds in
            17/20 episodes in 128 control steps at 1x, 20/20 in 73 at 2x and 20/20 in 61 at 3x. A larger
            scale makes cloning errors larger in metres: a residual on a base cloned at 4x learned slower than at 3x.
        n_demos: Successful expert demonstrations collected in the identified simulation.
        bc: The new base's behavior-cloning optimization (its policy config is the old base's).
        bc_eval_episodes: Episodes of each BC evaluation in the identified simulation (keeps the ``best``).
        residual: The new residual head.
        ppo: The new residual's PPO, from a zero head (a from-scratch recipe, not the continuation's).
    """

    enabled: bool = False
    max_delta_pos_factor: float = 3.0
    n_demos: int = 200
    bc: TrainConfig = field(default_factory=TrainConfig)
    bc_eval_episodes: int = 20
    residual: ResidualConfig = field(default_factory=ResidualConfig)
    ppo: PPOConfig = field(default_factory=residual_ppo_defaults)

    def __post_init__(self) -> None:
        if not 0 < self.max_delta_pos_factor <= 10:
            raise ConfigError(f"reclone.max_delta_pos_factor must be in (0, 10], got {self.max_delta_pos_factor}")
        if self.n_demos < 1 or self.bc_eval_episodes < 1:
            raise ConfigError("reclone.n_demos and reclone.bc_eval_episodes must be >= 1")


def base_of(checkpoint: str | Path) -> Path:
    """The BC policy of ``checkpoint``: itself, or the copy of its base that a residual checkpoint carries."""
    is_residual = read_policy_config(checkpoint)[0] == ResidualPolicy.name
    return Path(checkpoint) / BASE_DIR if is_residual else Path(checkpoint)


def reclone_base(checkpoint: str | Path, task: str, env_kwargs: dict[str, Any], cfg: RecloneConfig, out_dir: Path, *,
                 seed: int) -> tuple[Path, float | None]:
    """Collect ``cfg.n_demos`` successful expert demonstrations of ``task`` under ``env_kwargs`` (the identified
    simulation, with its ``hold_steps`` and ``max_delta_pos``) into ``out_dir/demos.hdf5``, and train a BC policy
    with ``checkpoint``'s base's policy config on them into ``out_dir``. Both steps resume: finished ones are kept.

    Returns the new base's checkpoint (``best`` by success in that simulation) and that success.
    """
    from roboloop.policies import POLICIES

    demos = out_dir / "demos.hdf5"
    if not demos.exists():  # collect writes it atomically: it exists only once complete
        collect(CollectConfig(task=task, n_episodes=cfg.n_demos, seed=seed, env_kwargs=env_kwargs,
                              success_only=True, output=str(demos), progress=False))
    with EpisodeStore(demos) as store:
        if len(store) < cfg.n_demos:
            raise ConfigError(f"{demos} holds {len(store)} of {cfg.n_demos} demonstrations: remove it to collect "
                              "them again")
    policy_type, policy_config = read_policy_config(base_of(checkpoint))
    policy = config_from_dict(POLICIES[policy_type].config_cls, policy_config)
    result = train_bc(TrainBCConfig(task=task, policy=policy, dataset=str(demos), env_kwargs=env_kwargs,
                                    out_dir=str(out_dir), train=replace(cfg.bc, resume=True),
                                    eval=EvalConfig(n_episodes=cfg.bc_eval_episodes, seed=seed + 500_000)))
    if result.best_checkpoint is not None:  # set only when a best checkpoint was saved
        return result.best_checkpoint, result.best_success
    return result.last_checkpoint, None
