"""``roboloop train-offline`` and ``roboloop finetune-online``: IQL, Cal-QL or RLPD-style SAC on an episode file.

``train-offline algo=iql|calql|rlpd dataset=<episode file>`` trains on the dataset alone (``train.offline_steps``);
``finetune-online init=<a train-offline run> train.online_env_steps=N`` continues that agent in the task's env
with mixed offline/online batches. Outputs in ``out_dir``: ``policy/`` (an ``rl_actor`` checkpoint that ``roboloop
eval`` runs), ``critic/`` (for ``roboloop eval ... steer=<out_dir>/critic``), ``checkpoints/last`` (resume),
``train_log.jsonl``, ``tb/`` and ``history.json`` (the evaluations so far, rewritten at each one).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv
from omegaconf import MISSING

from roboloop.cli.train_bc import evaluation_fn
from roboloop.core.checkpoint import read_meta, read_train_state, train_state_exists
from roboloop.core.errors import ConfigError, DatasetError, InputError
from roboloop.core.spec import PolicySpec
from roboloop.datasets.store import EpisodeStore
from roboloop.envs import task_info
from roboloop.envs.evaluation import EvalConfig
from roboloop.offline_rl.calql import CalQL, CalQLConfig
from roboloop.offline_rl.iql import IQL, IQLConfig
from roboloop.offline_rl.policy import RLActorConfig, RLActorPolicy, save_critic
from roboloop.offline_rl.replay import ReplayBuffer, replay_from_store
from roboloop.offline_rl.sac import SAC, SACConfig
from roboloop.offline_rl.trainer import OffPolicyConfig, OffPolicyTrainer

logger = logging.getLogger(__name__)
ALGOS = ("iql", "calql", "rlpd")
MINARI_PREFIX = "minari:"


@dataclass
class TrainOfflineConfig:
    """``roboloop train-offline algo=calql dataset=data/tiers/PegInsert/mixed.hdf5``.

    Attributes:
        algo: ``iql``, ``calql`` (Cal-QL; ``calql.calibrated=false`` is CQL) or ``rlpd`` (SAC with RLPD's choices).
        dataset: Episode file with rewards (e.g. from ``roboloop make-tiers``), or ``minari:<dataset id>`` for a
            local Minari dataset (``MINARI_DATASETS_PATH``; its Box or Dict-of-Box observations are matched to the
            task's by their flat size).
        init: A previous run's directory whose agent this run starts from (``finetune-online``).
        task: Task for evaluation and online steps (default: the dataset's).
        env_kwargs: Env constructor arguments on top of the dataset's.
        train: Steps, batch, online phase, mixing, logging, checkpoints, seed, resume.
        iql, calql, sac: Each algorithm's hyperparameters (only ``algo``'s are used).
        actor_hidden_dims: Widths of the actor.
        reward_scale, reward_bias: ``r <- scale * r + bias`` for offline and online data alike (Cal-QL's AntMaze
            setting is scale 10, bias -5 for example; identity by default).
        n_envs: Parallel envs of the online phase.
        eval: Evaluation episodes during and after training.
        out_dir: Output directory (``{task}`` and ``{algo}`` are filled in).
        device: ``cpu`` or ``cuda``.
    """

    algo: str = "iql"
    dataset: str = MISSING
    init: str | None = None
    task: str | None = None
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    train: OffPolicyConfig = field(default_factory=OffPolicyConfig)
    iql: IQLConfig = field(default_factory=IQLConfig)
    calql: CalQLConfig = field(default_factory=CalQLConfig)
    sac: SACConfig = field(default_factory=SACConfig)
    actor_hidden_dims: list[int] = field(default_factory=lambda: [256, 256])
    reward_scale: float = 1.0
    reward_bias: float = 0.0
    n_envs: int = 1
    eval: EvalConfig = field(default_factory=lambda: EvalConfig(n_episodes=20))
    out_dir: str = "outputs/train_offline/{task}_{algo}"
    device: str = "cpu"

    def __post_init__(self) -> None:
        if self.algo not in ALGOS:
            raise ConfigError(f"algo must be one of {ALGOS}, got {self.algo!r}")
        if self.n_envs < 1:
            raise ConfigError(f"n_envs must be >= 1, got {self.n_envs}")


def _dataset_task(path: Path) -> tuple[str, dict[str, Any]]:
    with EpisodeStore(path) as store:
        env_args = store.env_args
    roboloop_args = env_args.get("roboloop", {})
    task = roboloop_args.get("task") or env_args.get("env_name")
    if task is None:
        raise DatasetError(f"{str(path)!r} does not record its task (env_args); pass task=...")
    return task, dict(env_args.get("env_kwargs", {}))


def _offline_data(cfg: TrainOfflineConfig) -> tuple[ReplayBuffer, str, dict[str, Any]]:
    """The dataset's transitions, task and env kwargs: from an episode file, or from a Minari dataset."""
    gamma = _algo_config(cfg).gamma
    if not cfg.dataset.startswith(MINARI_PREFIX):
        path = Path(cfg.dataset)
        task, kwargs = _dataset_task(path)
        return replay_from_store(path, gamma=gamma, reward_scale=cfg.reward_scale,
                                 reward_bias=cfg.reward_bias), task, kwargs
    from roboloop.datasets.minari_io import minari_env_id, replay_from_minari

    dataset_id = cfg.dataset[len(MINARI_PREFIX):]
    task = cfg.task or minari_env_id(dataset_id)
    if task is None:
        raise DatasetError(f"Minari dataset {dataset_id!r} records no env: pass task=...")
    buffer = replay_from_minari(dataset_id, gamma=gamma, reward_scale=cfg.reward_scale, reward_bias=cfg.reward_bias)
    return buffer, task, {}  # a Box dataset's buffer has no obs_keys yet: train_offline matches them to the task


def _flat_env(env_id: str, env_kwargs: dict[str, Any]) -> gym.Env:
    return gym.wrappers.FlattenObservation(gym.make(env_id, **env_kwargs))


def build_agent(cfg: TrainOfflineConfig, spec: PolicySpec) -> tuple[RLActorPolicy, IQL | CalQL | SAC]:
    """The actor policy (what gets saved and evaluated) and the algorithm that trains its actor."""
    actor_type = "gaussian" if cfg.algo == "iql" else "tanh_gaussian"
    # The whole policy goes to the device, not only the actor the algorithm trains: evaluation sends observations
    # to the policy's device (that of its action bounds), and the actor must be there too.
    policy = RLActorPolicy(RLActorConfig(obs_keys=list(spec.obs_shapes), actor=actor_type,
                                         hidden_dims=list(cfg.actor_hidden_dims)), spec).to(cfg.device)
    if cfg.algo == "iql":
        low, high = torch.tensor(spec.action_low), torch.tensor(spec.action_high)
        return policy, IQL(policy.actor, policy.obs_dim, spec.action_dim, cfg.iql, cfg.device, action_low=low,
                           action_high=high)
    algorithm = {"calql": CalQL, "rlpd": SAC}[cfg.algo]
    return policy, algorithm(policy.actor, policy.obs_dim, spec.action_dim, _algo_config(cfg), cfg.device)


def _algo_config(cfg: TrainOfflineConfig) -> IQLConfig | CalQLConfig | SACConfig:
    """The sub-config of ``cfg.algo``."""
    return {"iql": cfg.iql, "calql": cfg.calql, "rlpd": cfg.sac}[cfg.algo]


def train_offline(cfg: TrainOfflineConfig) -> dict[str, Any]:
    dataset = cfg.dataset
    offline, data_task, data_kwargs = _offline_data(cfg)
    task = task_info(cfg.task or data_task).name
    env_kwargs = {**data_kwargs, **cfg.env_kwargs}
    probe = gym.make(task_info(task).env_id, **env_kwargs)
    if offline.obs_keys is None:  # a Box Minari dataset (e.g. Minari's mujoco/*): it is the task's one low-dim key
        keys = [k for k, space in probe.observation_space.spaces.items() if len(space.shape) < 3]
        if len(keys) != 1:
            raise InputError(f"{dataset!r} has flat (Box) observations, but {task} observes {keys}: which parts "
                             f"are which is ambiguous")
        offline.obs_keys = keys
    spec = PolicySpec.from_env(probe, obs_keys=offline.obs_keys, n_obs_steps=1, horizon=1, n_action_steps=1)
    probe.close()
    spec_dims = (spec.flat_dim(), spec.action_dim)
    if spec_dims != (offline.obs_dim, offline.action_dim):
        raise InputError(f"{dataset!r} has (observation, action) dims {(offline.obs_dim, offline.action_dim)}; "
                         f"{task}'s spaces give {spec_dims}")

    torch.manual_seed(cfg.train.seed)
    policy, agent = build_agent(cfg, spec)
    if cfg.init is not None:
        init_state = Path(cfg.init) / "checkpoints" / "last"
        if not train_state_exists(init_state):
            raise ConfigError(f"init={cfg.init!r} has no checkpoints/last to start from")
        agent.load_state_dict(read_train_state(init_state)["agent"])
    out_dir = Path(cfg.out_dir.replace("{task}", task).replace("{algo}", cfg.algo))
    envs = None
    if cfg.train.online_env_steps:
        env_id = task_info(task).env_id
        envs = SyncVectorEnv([lambda: _flat_env(env_id, env_kwargs) for _ in range(cfg.n_envs)],
                             autoreset_mode=AutoresetMode.SAME_STEP)
    evaluate_policy = evaluation_fn(task, cfg.eval, env_kwargs)
    trainer = OffPolicyTrainer(agent, offline, cfg.train, out_dir, envs=envs,
                               evaluate_fn=lambda _actor, updates: evaluate_policy(policy, updates),
                               meta={"task": task, "algo": cfg.algo, "dataset": dataset})
    try:
        result = trainer.learn()
    finally:
        if envs is not None:
            envs.close()
    policy.save(out_dir / "policy", meta={"task": task, "env_kwargs": env_kwargs, "algo": cfg.algo,
                                          "updates": result.updates})
    save_critic(out_dir / "critic", agent.critic, obs_keys=list(spec.obs_shapes),
                meta={"task": task, "algo": cfg.algo})
    return {"task": task, "out_dir": out_dir, "result": result}


def run_train_offline(cfg: TrainOfflineConfig) -> int:
    run = train_offline(cfg)
    result = run["result"]
    final = result.history[-1] if result.history else {}
    print(f"{cfg.algo} on {run['task']}: {result.updates} updates, {result.online_env_steps} online env steps in "
          f"{result.seconds:.0f} s")
    if "success_rate" in final:
        print(f"success: {100 * final['success_rate']:.1f}% over {cfg.eval.n_episodes} episodes, mean return "
              f"{final.get('mean_return', float('nan')):.4g}")
    print(f"policy: {run['out_dir'] / 'policy'}, critic: {run['out_dir'] / 'critic'}, "
          f"history: {run['out_dir'] / 'history.json'}")
    return 0


def run_finetune_online(cfg: TrainOfflineConfig) -> int:
    if cfg.init is None:
        raise ConfigError("finetune-online starts from a train-offline run: pass init=<its out_dir>")
    if cfg.train.online_env_steps < 1:
        raise ConfigError("finetune-online needs train.online_env_steps >= 1")
    init_meta = read_meta(Path(cfg.init) / "checkpoints" / "last")
    if init_meta.get("algo") not in (None, cfg.algo):
        raise ConfigError(f"init={cfg.init!r} was trained with algo={init_meta['algo']}, not {cfg.algo}")
    return run_train_offline(replace(cfg, train=replace(cfg.train, offline_steps=0)))


__all__ = ["TrainOfflineConfig", "run_finetune_online", "run_train_offline", "train_offline"]
