"""Bad input: every kind of bad input gets a clear error that names the offending thing.

What is checked, case by case (Python API and the ``roboloop`` CLI): a missing episode file, a
corrupt one (random bytes; a truncated copy of a real collected file), a missing key, an action
with NaN, an action of the wrong shape, an unknown task, invalid config values (CLI:
``n_episodes=0``, ``noise=2``, ``n_episodes=abc``, an unknown key ``foo=1``; API: a misspelt
camera or randomization field), an unknown episode index, and a simulator state of the wrong size
passed to ``reset(options={"state": ...})``; also an intact file with one corrupted compressed image
chunk (the corruption only shows when that frame is read, e.g. while sampling); each for our env
and a Fetch adapter where it applies.

Residual RL (issue 4): a base checkpoint whose spec does not fit the env (CLI ``train-residual``), residual
actions with NaN, a NaN observation from the env, a residual checkpoint loaded without its base. Offline RL
(issue 5): a dataset without rewards (CLI ``train-offline``), a dataset whose spaces do not fit the env (CLI),
a Minari dataset with an unsupported (Discrete) action space. Sim-to-real (issue 6): a reset past the real robot's
episode budget, a policy that reads an observation the real robot does not provide, identification from too
little data (CLI ``sysid``).

A case passes when

* API: an exception is raised, it is a roboloop error or a ``ValueError`` (not an internal
  ``KeyError``/``AttributeError``/``OSError``... leaking out), and its message contains the
  expected substring (the file path, key, shape, task name or config key);
* CLI: the exit status is 2 and stderr is exactly one line ``roboloop <cmd>: error: ...`` that
  contains the expected substring (no traceback).

Why: a user who passes something wrong must learn what and where from the first line they read.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import h5py
import numpy as np
from common import REPO_ROOT, Target, finish, markdown_table, parse_args, target

import roboloop  # noqa: F401  (registers the env ids)
from roboloop.core.errors import RoboloopError
from roboloop.core.spec import PolicySpec
from roboloop.datasets import EpisodeStore, SequenceDataset
from roboloop.datasets.collection import CollectConfig, collect
from roboloop.datasets.replay import ReplayConfig, replay
from roboloop.envs import make
from roboloop.policies import MLPConfig, MLPPolicy
from roboloop.sim2real import RealProxy, RealRobotEnv
from roboloop.sim2real.deploy import deploy

NAME = "bad_input"
ROBOLOOP_CLI = Path(sys.executable).parent / "roboloop"
MESSAGE_WIDTH = 160


@dataclass
class Outcome:
    """What one bad input produced."""

    error_type: str  # exception class name, or "exit <code>" for the CLI
    message: str
    ok: bool
    why: str = ""  # what is wrong when not ok


@dataclass
class Case:
    """A bad input: a Python call expected to raise, or CLI arguments expected to exit 2."""

    name: str
    expect: str  # substring the message must contain
    call: Callable[[], Any] | None = None
    cli: list[str] | None = None


def run_api(call: Callable[[], Any], expect: str) -> Outcome:
    try:
        call()
    except Exception as err:  # noqa: BLE001  (the exception is what is being checked)
        message = str(err)
        problems = []
        if not isinstance(err, RoboloopError | ValueError):
            problems.append(f"{type(err).__name__} is not a roboloop error or ValueError")
        if expect not in message:
            problems.append(f"message does not contain {expect!r}")
        return Outcome(type(err).__name__, message, not problems, "; ".join(problems))
    return Outcome("no error", "", False, "no exception was raised")


def run_cli(args: list[str], expect: str, cwd: Path) -> Outcome:
    proc = subprocess.run([str(ROBOLOOP_CLI), *args], cwd=cwd, capture_output=True, text=True, timeout=300,
                          check=False)
    lines = proc.stderr.strip().splitlines()
    message = lines[-1] if lines else ""
    problems = []
    if proc.returncode != 2:
        problems.append(f"exit status {proc.returncode}, expected 2")
    if len(lines) != 1:
        problems.append(f"stderr has {len(lines)} lines, expected 1")
    if not message.startswith(f"roboloop {args[0]}: error: "):
        problems.append("stderr does not start with 'roboloop <cmd>: error: '")
    if expect not in message:
        problems.append(f"message does not contain {expect!r}")
    return Outcome(f"exit {proc.returncode}", message, not problems, "; ".join(problems))


def read_everything(path: Path) -> None:
    """Open an episode file and load every episode (what a truncated file must fail on, clearly)."""
    with EpisodeStore(path) as store:
        for demo in store.demos:
            store.episode(demo)


def corrupt_first_chunk(source: Path, copy: Path, dataset: str) -> None:
    """Copy ``source`` and overwrite the bytes of the first chunk of ``dataset`` (an intact file whose
    compressed image data no longer decompresses: the corruption only shows when that frame is read)."""
    shutil.copyfile(source, copy)
    with h5py.File(copy, "r") as f:
        chunk = f[dataset].id.get_chunk_info(0)
    with copy.open("r+b") as fh:
        fh.seek(chunk.byte_offset)
        fh.write(b"\xff" * chunk.size)


def sample_everything(path: Path) -> None:
    """Build a SequenceDataset and fetch every sample (reads every stored frame)."""
    ds = SequenceDataset(path)
    for start in range(0, len(ds), 256):
        ds.get_batch(np.arange(start, min(start + 256, len(ds))))


def step_with(task: str, action: np.ndarray) -> None:
    env = make(task)
    try:
        env.reset(seed=0)
        env.step(action)
    finally:
        env.close()


def reset_with_state(task: str, state: np.ndarray) -> None:
    env = make(task)
    try:
        env.reset(seed=0, options={"state": state})
    finally:
        env.close()


def tiny_base(real: Path, directory: Path) -> Path:
    """A (barely trained) MLP BC checkpoint of ``real``'s task: what a residual refines."""
    from roboloop.core.checkpoint import checkpoint_exists

    args = [str(ROBOLOOP_CLI), "train-bc", "policy=mlp", f"dataset={real}", f"out_dir={directory}", "train.steps=2",
            "train.batch_size=4", "train.eval_every=0", "train.progress=false", "evaluate=false",
            "policy.hidden_dims=[8]"]
    subprocess.run(args, capture_output=True, check=True, timeout=300)
    checkpoint = directory / "checkpoints" / "last"
    assert checkpoint_exists(checkpoint), checkpoint
    return checkpoint


class NaNObservation(gym.Wrapper):
    """Lift whose observation turns NaN after the first step: a broken simulator or sensor."""

    def step(self, action: Any) -> Any:
        obs, reward, terminated, truncated, info = self.env.step(action)
        obs = {k: np.full_like(v, np.nan) if k == "observation.state" else v for k, v in obs.items()}
        return obs, reward, terminated, truncated, info


def residual_step(base: Path, action: np.ndarray | None = None) -> None:
    """One step of a residual env around ``base``: NaN head actions (``action``), or a NaN observation."""
    from gymnasium.vector import AutoresetMode, SyncVectorEnv

    from roboloop.core.policy import Policy
    from roboloop.residual_rl import ResidualPolicy, ResidualVecEnv

    policy = ResidualPolicy.from_base(Policy.load(base))
    factory = (lambda: make("Lift")) if action is not None else (lambda: NaNObservation(make("Lift")))
    env = ResidualVecEnv(SyncVectorEnv([factory], autoreset_mode=AutoresetMode.DISABLED), policy)
    env.reset(seed=[0])
    env.step(action if action is not None else np.zeros((1, env.single_action_space.shape[0]), np.float32))


def residual_without_base(base: Path, directory: Path) -> None:
    from roboloop.core.policy import Policy
    from roboloop.residual_rl import ResidualPolicy

    ResidualPolicy.from_base(Policy.load(base)).save(directory)
    shutil.rmtree(directory / "base")
    Policy.load(directory)


def without_rewards(source: Path, copy: Path) -> Path:
    shutil.copyfile(source, copy)
    with h5py.File(copy, "a") as f:
        for demo in f["data"]:
            del f[f"data/{demo}/rewards"]
    return copy


def minari_discrete(root: Path) -> None:
    """A Minari dataset of CartPole (Discrete actions) made by Minari's own tools, read into a replay buffer."""
    import minari
    from minari.data_collector import EpisodeBuffer

    from roboloop.datasets.minari_io import datasets_root, replay_from_minari

    env = gym.make("CartPole-v1", max_episode_steps=5)
    obs, _ = env.reset(seed=0)
    observations, actions, rewards, terminations, truncations = [obs], [], [], [], []
    for _ in range(5):
        obs, reward, terminated, truncated, _ = env.step(0)
        observations.append(obs)
        actions.append(0)
        rewards.append(float(reward))
        terminations.append(terminated)
        truncations.append(truncated)
        if terminated or truncated:
            break
    buffer = EpisodeBuffer(id=0, observations=np.array(observations), actions=np.array(actions), rewards=rewards,
                           terminations=terminations, truncations=truncations)
    with datasets_root(root):
        minari.create_dataset_from_buffers("test/cartpole-v0", [buffer], env=env.spec, eval_env=env.spec,
                                           description="bad input: Discrete actions")
    replay_from_minari("test/cartpole-v0", root=root)


def over_budget() -> None:
    robot = RealRobotEnv(RealProxy("Lift", secret_seed=0), episode_budget=1)
    robot.reset(seed=0)
    robot.reset(seed=1)


def deploy_image_policy_blind() -> None:
    """An (untrained) image policy on a real robot without cameras."""
    keys = ["observation.images.front", "observation.state"]
    spec = PolicySpec({keys[0]: (32, 32, 3), keys[1]: (16,)}, action_dim=5, action_low=[-1.0] * 5,
                      action_high=[1.0] * 5, n_obs_steps=2, horizon=16, n_action_steps=8)
    robot = RealRobotEnv(RealProxy("Lift", secret_seed=0), episode_budget=1)
    deploy(MLPPolicy(MLPConfig(obs_keys=keys), spec), robot, 1)


def build_cases(tmp: Path, quick: bool) -> list[Case]:
    """Every bad input, with the files it needs created in ``tmp``."""
    missing = tmp / "missing.hdf5"
    garbage = tmp / "garbage.hdf5"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 64 * 1024, dtype=np.uint8).tobytes())
    real = collect(CollectConfig(task="Lift", n_episodes=2 if quick else 5, output=str(tmp / "real.hdf5"),
                                 cameras=["front"], progress=False)).path
    truncated = tmp / "truncated.hdf5"
    shutil.copyfile(real, truncated)
    with truncated.open("r+b") as f:
        f.truncate(real.stat().st_size // 2)
    bad_chunk = tmp / "bad_chunk.hdf5"
    corrupt_first_chunk(real, bad_chunk, "data/demo_1/obs/observation.images.front")
    out = str(tmp / "out.hdf5")  # where a CLI collect would write if it (wrongly) accepted its input
    base = tiny_base(real, tmp / "base")
    no_rewards = without_rewards(real, tmp / "no_rewards.hdf5")

    return [
        Case("missing file: EpisodeStore", str(missing), call=lambda: EpisodeStore(missing)),
        Case("missing file: SequenceDataset", str(missing), call=lambda: SequenceDataset(missing)),
        Case("missing file: CLI info", str(missing), cli=["info", str(missing)]),
        Case("corrupt file (random bytes): EpisodeStore", str(garbage), call=lambda: EpisodeStore(garbage)),
        Case("corrupt file (random bytes): CLI replay", str(garbage), cli=["replay", f"file={garbage}"]),
        Case("truncated episode file: read every episode", str(truncated), call=lambda: read_everything(truncated)),
        Case("truncated episode file: SequenceDataset", str(truncated), call=lambda: SequenceDataset(truncated)),
        Case("truncated episode file: CLI replay", str(truncated), cli=["replay", f"file={truncated}", "episodes=[]"]),
        Case("corrupt image chunk: EpisodeStore.read", str(bad_chunk),
             call=lambda: EpisodeStore(bad_chunk).read(1, "obs/observation.images.front")),
        Case("corrupt image chunk: SequenceDataset sampling", str(bad_chunk),
             call=lambda: sample_everything(bad_chunk)),
        Case("corrupt image chunk: CLI replay", str(bad_chunk), cli=["replay", f"file={bad_chunk}", "episodes=[]"]),
        Case("missing key: EpisodeStore.read", "obs/observation.nope",
             call=lambda: EpisodeStore(real).read(0, "obs/observation.nope")),
        Case("missing key: SequenceDataset(obs_keys=...)", "observation.nope",
             call=lambda: SequenceDataset(real, obs_keys=["observation.nope"])),
        Case("unknown episode: replay episodes=[99]", "demo_99",
             call=lambda: replay(ReplayConfig(file=str(real), episodes=[99]))),
        Case("action with NaN: Lift", "NaN", call=lambda: step_with("Lift", np.array([0, np.nan, 0, 0, 0]))),
        Case("action with NaN: FetchPush-v4", "NaN",
             call=lambda: step_with("FetchPush-v4", np.array([np.nan, 0, 0, 0]))),
        Case("action of wrong shape (3,): Lift", "(3,)", call=lambda: step_with("Lift", np.zeros(3))),
        Case("action of wrong shape (5,): FetchPush-v4", "(5,)", call=lambda: step_with("FetchPush-v4", np.zeros(5))),
        Case("unknown task: envs.make('Nope')", "'Nope'", call=lambda: make("Nope")),
        Case("unknown task: CLI collect task=Nope", "Nope", cli=["collect", "task=Nope", f"output={out}"]),
        Case("invalid config: CLI collect n_episodes=0", "n_episodes",
             cli=["collect", "n_episodes=0", f"output={out}"]),
        Case("invalid config: CLI collect noise=2", "noise", cli=["collect", "noise=2", f"output={out}"]),
        Case("invalid config: CLI collect n_episodes=abc", "n_episodes",
             cli=["collect", "n_episodes=abc", f"output={out}"]),
        Case("invalid config: CLI collect foo=1 (unknown key)", "foo", cli=["collect", "foo=1", f"output={out}"]),
        Case("invalid config: unknown camera", "frnt", call=lambda: make("Lift", cameras=["frnt"])),
        Case("invalid config: unknown randomization field", "frcition_scale",
             call=lambda: make("Lift", randomization={"frcition_scale": (0.9, 1.1)})),
        Case("state of wrong size (10,): Lift reset", "(10,)", call=lambda: reset_with_state("Lift", np.zeros(10))),
        Case("state of wrong size (10,): FetchPush-v4 reset", "(10,)",
             call=lambda: reset_with_state("FetchPush-v4", np.zeros(10))),
        Case("residual: base whose spec does not fit the env (CLI train-residual)", "does not fit PegInsert",
             cli=["train-residual", f"base={base}", "task=PegInsert", f"out_dir={tmp / 'out_residual'}"]),
        Case("residual: head actions with NaN", "NaN",
             call=lambda: residual_step(base, np.full((1, 5), np.nan, np.float32))),
        Case("residual: NaN observation from the env", "observation 'observation.state'",
             call=lambda: residual_step(base)),
        Case("residual: checkpoint loaded without its base", "has no base policy",
             call=lambda: residual_without_base(base, tmp / "residual")),
        Case("offline RL: dataset without rewards (CLI train-offline)", "has no rewards",
             cli=["train-offline", f"dataset={no_rewards}", f"out_dir={tmp / 'out_offline'}"]),
        Case("offline RL: dataset spaces do not fit the env (CLI train-offline task=PegInsert)", "dims",
             cli=["train-offline", f"dataset={real}", "task=PegInsert", f"out_dir={tmp / 'out_offline'}"]),
        Case("offline RL: Minari dataset with Discrete actions", "action space Discrete",
             call=lambda: minari_discrete(tmp / "minari")),
        Case("sim2real: a reset past the real robot's episode budget", "budget of 1 episodes is spent",
             call=over_budget),
        Case("sim2real: a policy reading observations the real robot does not provide",
             "observation.images.front", call=deploy_image_policy_blind),
        Case("sim2real: identification on too little data (CLI sysid episodes=1)", "at least 3 episodes",
             cli=["sysid", "task=Lift", "episodes=1", f"output_dir={tmp / 'out_sysid'}"]),
    ]


def _clip(text: str) -> str:
    return text if len(text) <= MESSAGE_WIDTH else text[: MESSAGE_WIDTH - 3] + "..."


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(__doc__.splitlines()[0], argv)
    rows: list[tuple[str, ...]] = []
    targets: list[Target] = []
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="roboloop-bench-bad-input-") as tmp_dir:
        tmp = Path(tmp_dir)
        for case in build_cases(tmp, args.quick):
            if case.cli is not None:
                outcome = run_cli(case.cli, case.expect, cwd=tmp)
                shown = "roboloop " + " ".join(a.replace(str(tmp), "$TMP") for a in case.cli)
            else:
                assert case.call is not None
                outcome = run_api(case.call, case.expect)
                shown = "API"
            message = outcome.message.replace(str(tmp), "$TMP")
            why = outcome.why.replace(str(tmp), "$TMP")
            results.append({"case": case.name, "invocation": shown, "expect": case.expect.replace(str(tmp), "$TMP"),
                            "error_type": outcome.error_type, "message": message, "ok": outcome.ok,
                            "why": why})
            rows.append((case.name, outcome.error_type, f"`{_clip(message)}`" if message else "",
                         "yes" if outcome.ok else f"**NO**: {why}"))
            targets.append(target(f"clear_error[{case.name}]", outcome.ok, "==", True, why))
            print(f"{case.name}: {'ok' if outcome.ok else 'NOT OK'}", file=sys.stderr, flush=True)
        leftovers = [p.name for p in tmp.iterdir() if p.name.startswith("out")]
    if leftovers:
        targets.append(target("cli_wrote_nothing", False, "==", True, f"a rejected command wrote {leftovers}"))
    table = markdown_table(["case", "error type", "message (temp dir shown as $TMP)", "ok"], rows)
    cli = ROBOLOOP_CLI.relative_to(REPO_ROOT) if ROBOLOOP_CLI.is_relative_to(REPO_ROOT) else ROBOLOOP_CLI
    table += (f"\n\nCLI cases run `{cli}`. ok = API: a roboloop error or "
              "ValueError naming the expected substring; CLI: exit status 2 and one stderr line "
              "`roboloop <cmd>: error: ...` naming it.")
    return finish(NAME, {"cases": results}, targets, table, quick=args.quick)


if __name__ == "__main__":
    sys.exit(main())
