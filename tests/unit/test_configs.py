"""Every YAML preset composes into its typed config (schema drift fails here, not in a user's run)."""

from __future__ import annotations

import pytest

from roboloop.cli.main import CONFIG_DIR, _commands, compose_config
from roboloop.core.errors import ConfigError
from roboloop.core.policy import PolicyConfig
from roboloop.core.registry import Registry

PRESETS = sorted(p.stem for p in (CONFIG_DIR / "train_bc" / "preset").glob("*.yaml"))


@pytest.mark.parametrize("preset", PRESETS)
def test_train_bc_presets_compose(preset: str) -> None:
    cmd = _commands()["train-bc"]
    cmd.register()
    task, policy = preset.rsplit("_", 1)
    cfg = compose_config("train-bc", cmd.schema(), [f"task={task}", f"policy={policy}"])
    assert cfg.task == task and cfg.policy_name == policy and isinstance(cfg.policy, PolicyConfig)


@pytest.mark.parametrize("command", ["collect", "replay", "info", "quickstart", "train-bc", "eval", "sysid",
                                     "sim2real"])
def test_command_defaults_compose(command: str) -> None:
    cmd = _commands()[command]
    if cmd.register is not None:
        cmd.register()
    required = {"replay": ["file=x.hdf5"], "info": ["file=x.hdf5"], "eval": ["checkpoint=x"],
                "sim2real": ["checkpoint=x"]}.get(command, [])
    assert compose_config(command, cmd.schema(), required) is not None


def test_every_task_has_a_task_option() -> None:
    from roboloop.envs.registration import TASKS

    options = {p.stem for p in (CONFIG_DIR / "train_bc" / "task").glob("*.yaml")}
    assert options == set(TASKS)


def test_the_sim2real_preset_sets_the_retraining_and_keeps_it_typed() -> None:
    cmd = _commands()["sim2real"]
    cfg = compose_config("sim2real", cmd.schema(), ["checkpoint=x", "train.ppo.total_env_steps=1000"])
    assert type(cfg.train).__name__ == "TrainResidualConfig" and cfg.train.reward_shaping_mode == "dense"
    assert cfg.train.ppo.total_env_steps == 1000 and cfg.train.ppo.n_steps == 150
    # The re-clone's recipe is PegInsert's from-scratch one, typed too.
    assert type(cfg.reclone.bc).__name__ == "TrainConfig" and cfg.reclone.bc.steps == 10000
    assert cfg.reclone.residual.scale == 0.25 and cfg.reclone.ppo.total_env_steps == 3_000_000


def test_registry_membership_and_lookup_errors() -> None:
    registry = Registry("widget", {"a": 1})
    assert "a" in registry and "b" not in registry  # membership never raises
    with pytest.raises(ConfigError, match=r"unknown widget 'b'; available: \['a'\]"):
        registry["b"]
