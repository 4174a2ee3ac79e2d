"""Self-improvement (SAIL-style): a BC policy rolls out on a task variant its demonstrations did not cover, keeps what
succeeded, adds it to its dataset and is finetuned on the result, round after round.

Round r rolls the current policy out for ``episodes_per_round`` fresh seeded episodes on the variant (these episodes
are also round r's measurement of success), appends the successful ones (all of them with ``keep="all"``: SAIL
finds that filtering matters little) to a copy of the demonstrations, and continues training the policy on the
whole file for ``train.steps`` steps. With ``keep_demonstrations=False`` the demonstrations stay out of the
finetuning data, which then holds only the kept rollouts of every round so far, as SAIL finetunes on its own
trajectories: on a variant whose dynamics differ (a delayed robot), the demonstrations show what worked without
the difference and pull the policy back towards it. The policy's normalizer is kept from behavior cloning, so the
finetuned weights see observations scaled as before. After the last round the final policy is measured the same way.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from roboloop.core.checkpoint import load_policy, read_meta
from roboloop.core.errors import ConfigError, InputError
from roboloop.core.policy import Policy
from roboloop.datasets.collection import CollectConfig, collect
from roboloop.datasets.store import EpisodeStore, grow_dataset
from roboloop.envs.evaluation import env_kwargs_for
from roboloop.sim2real.deploy import PolicyActor
from roboloop.training import BCTrainer, TrainConfig
from roboloop.utils.io import prepare_run_dir, write_json

ROLLOUT_SOURCE = "self_improvement"


@dataclass
class SelfImproveConfig:
    """``roboloop self-improve CHECKPOINT env_kwargs.randomization...=...``: SAIL-style self-improvement.

    Attributes:
        checkpoint: A BC policy (its meta names the task and the demonstrations it was cloned from).
        dataset: The demonstrations to start from (default: the checkpoint's training dataset).
        env_kwargs: The variant, on top of the checkpoint's env_kwargs (e.g. a wider pose range).
        rounds: Rollout-and-finetune rounds.
        episodes_per_round: Rollouts per round (and for the final measurement).
        keep: ``success`` (keep successful rollouts) or ``all``.
        keep_demonstrations: Finetune on demonstrations + kept rollouts (True) or on the kept rollouts alone.
        n_envs: Parallel envs for the rollouts.
        train: Finetuning per round (``steps`` each round; the rest as in behavior cloning).
        seed: Round r's rollouts use seeds ``seed + 100_000 r + k``.
        resume: Continue a killed run in ``out_dir``.
        out_dir: Output directory (``{task}`` is filled in).
    """

    checkpoint: str | None = None
    dataset: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    rounds: int = 3
    episodes_per_round: int = 100
    keep: str = "success"
    keep_demonstrations: bool = True
    n_envs: int = 4
    train: TrainConfig = field(default_factory=lambda: TrainConfig(steps=3000, progress=False))
    seed: int = 500_000
    resume: bool = False
    out_dir: str = "outputs/self_improve/{task}"

    def __post_init__(self) -> None:
        if self.checkpoint is None:
            raise ConfigError("self-improve needs the checkpoint of a BC policy")
        if self.keep not in ("success", "all"):
            raise ConfigError(f"keep must be 'success' or 'all', got {self.keep!r}")
        if min(self.rounds, self.episodes_per_round, self.n_envs) < 1:
            raise ConfigError("self-improve rounds, episodes_per_round and n_envs must be >= 1")


@dataclass
class RoundResult:
    round: int
    checkpoint: str
    successes: int
    episodes: int
    kept: int  # rollouts added to the dataset after this measurement (0 for the final one)
    dataset_episodes: int

    @property
    def success_rate(self) -> float:
        return self.successes / self.episodes


def _rollouts(policy: Policy, task: str, env_kwargs: dict[str, Any], cfg: SelfImproveConfig, r: int,
              path: Path) -> None:
    if path.exists():
        return  # measured before a restart
    views = env_kwargs_for(policy.spec, {})  # the cameras the policy reads, at its image size
    tmp = path.with_name(f".{path.name}.partial")
    collect(CollectConfig(task=task, n_episodes=cfg.episodes_per_round, cameras=views.get("cameras", []),
                          image_size=views.get("image_size", [84])[0],
                          n_envs=cfg.n_envs, seed=cfg.seed + 100_000 * r, output=str(tmp), env_kwargs=env_kwargs,
                          source=ROLLOUT_SOURCE, progress=False),
            actors=[PolicyActor(policy) for _ in range(cfg.n_envs)], policy_id=f"round{r}")
    tmp.replace(path)


def _episodes(path: Path) -> int:
    with EpisodeStore(path) as store:
        return len(store)


def self_improve(cfg: SelfImproveConfig, progress: Callable[[RoundResult], None] | None = None) -> list[RoundResult]:
    """Run the rounds (see the module docstring); returns one result per measured policy (rounds + 1).

    Args:
        progress: Called with each round's result once it is measured.
    """
    from roboloop.datasets.sampler import SequenceDataset

    assert cfg.checkpoint is not None  # checked by the config
    meta = read_meta(cfg.checkpoint)
    task = meta.get("task")
    demos = cfg.dataset or meta.get("dataset")
    if task is None or demos is None:
        raise InputError(f"{cfg.checkpoint} does not record its task and dataset: is it a BC checkpoint?")
    if not Path(demos).exists():
        raise InputError(f"the demonstrations {demos} are gone: pass dataset=<episode file>")
    env_kwargs = {**meta.get("env_kwargs", {}), **cfg.env_kwargs}
    out = Path(cfg.out_dir.replace("{task}", task))
    prepare_run_dir(out, resume=cfg.resume)
    dataset = Path(demos)

    results: list[RoundResult] = []
    checkpoint = cfg.checkpoint
    for r in range(cfg.rounds + 1):
        policy = load_policy(checkpoint)
        rollouts = out / f"round{r}" / "rollouts.hdf5"
        rollouts.parent.mkdir(parents=True, exist_ok=True)
        _rollouts(policy, task, env_kwargs, cfg, r, rollouts)
        with EpisodeStore(rollouts) as store:
            successes, episodes = sum(store.attrs(i)["success"] for i in range(len(store))), len(store)
        kept = 0
        if r < cfg.rounds:
            grown = out / f"round{r + 1}" / "dataset.hdf5"  # what policy r + 1 is finetuned on
            grown.parent.mkdir(parents=True, exist_ok=True)
            previous = dataset if (r > 0 or cfg.keep_demonstrations) else None
            kept = episodes if cfg.keep == "all" else successes  # what grow_dataset appends
            if kept == 0 and previous is None:
                raise InputError(f"round {r}: no rollout succeeded, and keep_demonstrations=false leaves nothing to "
                                 f"finetune on (keep=all, or keep the demonstrations)")
            grow_dataset(previous, rollouts, cfg.keep, grown)
            dataset = grown
        size = _episodes(dataset)
        results.append(RoundResult(r, checkpoint, successes, episodes, kept, size))
        if progress is not None:
            progress(results[-1])
        if r == cfg.rounds:
            break
        # Finetune on the grown dataset (demonstrations unless left out + kept rollouts), from the current weights
        # and normalizer.
        spec = policy.spec
        data = SequenceDataset(dataset, obs_keys=list(spec.obs_shapes), n_obs_steps=spec.n_obs_steps,
                               horizon=spec.horizon, n_action_steps=spec.n_action_steps)
        run_dir = out / f"round{r + 1}"
        trainer = BCTrainer(policy, data, replace(cfg.train, resume=True), run_dir,
                            meta={**meta, "dataset": str(dataset), "self_improve_round": r + 1, "init": checkpoint})
        checkpoint = str(trainer.fit().last_checkpoint)
    write_json(out / "rounds.json", [{**vars(x), "success_rate": x.success_rate} for x in results])
    return results


__all__: Sequence[str] = ["RoundResult", "SelfImproveConfig", "self_improve"]
