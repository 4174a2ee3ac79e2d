"""``roboloop <command> key=value ...``: one console script, Hydra structured configs underneath.

Each command has a dataclass schema (next to the code it configures, validated in ``__post_init__``)
registered in Hydra's ConfigStore; ``roboloop/configs/<command>.yaml`` holds its preset. Overrides
use Hydra syntax (``cameras=[front,wrist]``, ``env_kwargs.clearance=0.002``); keys under a free-form
dict field (such as ``env_kwargs``) may be added without Hydra's ``+`` prefix.
The composed config becomes the typed dataclass (``OmegaConf.to_object``), so a wrong key, a wrong
type or an invalid value stops with one clear line and exit status 2.
"""

from __future__ import annotations

import dataclasses
import inspect
import logging
import sys
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from roboloop.core.errors import RoboloopError

CONFIG_DIR = Path(__file__).resolve().parent.parent / "configs"
USAGE_ERROR = 2


@dataclass(frozen=True)
class Command:
    schema: Callable[[], type]  # imported lazily: `roboloop --help` should not import torch
    run: Callable[[Any], int]
    summary: str
    positional: str | None = None  # `roboloop info FILE` == `roboloop info file=FILE`
    register: Callable[[], None] | None = None  # stores config-group options (e.g. `policy=`) before composing


def _commands() -> dict[str, Command]:
    from roboloop.cli import commands

    def bc() -> Any:  # imports torch: only when a BC command actually runs
        from roboloop.cli import train_bc

        return train_bc

    def residual() -> Any:
        from roboloop.cli import train_residual

        return train_residual

    def offline() -> Any:
        from roboloop.cli import train_offline

        return train_offline

    def sim2real() -> Any:
        from roboloop.cli import sim2real

        return sim2real

    return {
        "collect": Command(lambda: commands.CollectConfig, commands.run_collect,
                           "record scripted-expert demonstrations into an episode file"),
        "make-tiers": Command(lambda: commands.TiersConfig, commands.run_make_tiers,
                              "expert / medium / mixed dataset tiers of a task, for offline RL"),
        "replay": Command(lambda: commands.ReplayConfig, commands.run_replay,
                          "re-simulate stored episodes, report the largest mismatch, write an mp4", "file"),
        "info": Command(lambda: commands.InfoConfig, commands.run_info,
                        "episodes, steps, success rate, keys and shapes of an episode file", "file"),
        "export-minari": Command(lambda: commands.ExportMinariConfig, commands.run_export_minari,
                                 "write an episode file as a Minari dataset (train-offline reads dataset=minari:ID)",
                                 "file"),
        "quickstart": Command(lambda: commands.QuickstartConfig, commands.run_quickstart,
                              "the main pipeline on the default task, with a markdown report"),
        "train-bc": Command(lambda: bc().TrainBCConfig, lambda cfg: bc().run_train_bc(cfg),
                            "behavior cloning (policy=diffusion|act|mlp) from expert demonstrations",
                            register=lambda: bc().register_policy_configs()),
        "train-residual": Command(lambda: residual().TrainResidualConfig,
                                  lambda cfg: residual().run_train_residual(cfg),
                                  "refine a frozen BC checkpoint (base=...) with residual PPO"),
        "train-offline": Command(lambda: offline().TrainOfflineConfig, lambda cfg: offline().run_train_offline(cfg),
                                 "offline RL (algo=iql|calql|rlpd) on an episode file with rewards"),
        "finetune-online": Command(lambda: offline().TrainOfflineConfig,
                                   lambda cfg: offline().run_finetune_online(cfg),
                                   "continue a train-offline run (init=...) online, mixing its data in"),
        "sysid": Command(lambda: sim2real().SysIdConfig, lambda cfg: sim2real().run_sysid(cfg),
                         "identify a task's simulation from real(-proxy) episodes: physics, latency, sensor noise"),
        "sim2real": Command(lambda: sim2real().Sim2RealConfig, lambda cfg: sim2real().run_sim2real(cfg),
                            "iterative sim-to-real on the real proxy: deploy, identify, retrain the residual, repeat",
                            "checkpoint"),
        "distill": Command(lambda: sim2real().DistillConfig, lambda cfg: sim2real().run_distill(cfg),
                           "distill a state-based teacher into an image student with DAgger, under visual "
                           "randomization; deploy both on the real proxy", "teacher"),
        "self-improve": Command(lambda: sim2real().SelfImproveConfig, lambda cfg: sim2real().run_self_improve(cfg),
                                "SAIL-style self-improvement of a BC policy on a task variant: roll out, keep "
                                "successes, finetune, repeat", "checkpoint"),
        "eval": Command(lambda: bc().EvalCommandConfig, lambda cfg: bc().run_eval(cfg),
                        "evaluate a checkpoint: success with a Wilson 95% interval, plot, videos", "checkpoint"),
    }


def compose_config(command: str, schema: type, overrides: Sequence[str]) -> Any:
    """Compose ``command``'s config (schema + YAML preset + overrides) into a ``schema`` instance."""
    from hydra import compose, initialize_config_dir
    from hydra.core.config_store import ConfigStore
    from hydra.core.global_hydra import GlobalHydra
    from omegaconf import OmegaConf

    ConfigStore.instance().store(name=f"{command.replace('-', '_')}_schema", node=schema)
    # Free-form dict fields (env_kwargs...) take new keys: make `field.key=v` an add-or-override (`++`).
    dict_fields = {f.name for f in dataclasses.fields(schema) if str(f.type).startswith("dict")}
    overrides = [f"++{o}" if o.split(".", 1)[0] in dict_fields and "." in o.split("=", 1)[0] else o
                 for o in overrides]
    name = command.replace("-", "_")
    # A command with config groups (train-bc: task/, preset/) has its own folder, so that its group names
    # do not turn other commands' plain fields of the same name (`task=`) into group selections.
    config_dir = CONFIG_DIR / name if (CONFIG_DIR / name).is_dir() else CONFIG_DIR
    preset = name if (config_dir / f"{name}.yaml").exists() else f"{name}_schema"
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        cfg = compose(config_name=preset, overrides=list(overrides))
    return OmegaConf.to_object(cfg)


def _help(command: str, cmd: Command) -> str:
    from omegaconf import OmegaConf

    schema = cmd.schema()
    doc = inspect.cleandoc(schema.__doc__ or "")
    defaults = OmegaConf.to_yaml(OmegaConf.structured(schema)).strip()
    positional = f" [{cmd.positional.upper()}]" if cmd.positional else ""
    return (f"usage: roboloop {command}{positional} [key=value ...]\n\n{doc}\n\n"
            f"defaults:\n{textwrap.indent(defaults, '  ')}")


def _usage(commands: dict[str, Command]) -> str:
    width = max(map(len, commands))
    lines = [f"  {name:<{width}}  {cmd.summary}" for name, cmd in commands.items()]
    return ("usage: roboloop <command> [key=value ...]\n\ncommands:\n" + "\n".join(lines)
            + "\n\n`roboloop <command> --help` shows a command's options and defaults.")


def _error_message(err: BaseException) -> str:
    """One line: our own error if one caused it (OmegaConf wraps errors from a schema's __post_init__),
    else the error and its innermost cause (Hydra's "Error merging override" hides the why)."""
    chain = [err]
    while chain[-1].__cause__ is not None:
        chain.append(chain[-1].__cause__)
    ours = [e for e in chain if isinstance(e, RoboloopError)]
    if ours:
        return str(ours[-1])
    message = " ".join(line.strip() for line in str(err).strip().splitlines())
    if len(chain) > 1:
        message += ": " + str(chain[-1]).strip().splitlines()[0]
    return message


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    logging.getLogger("OpenGL").setLevel(logging.WARNING)
    commands = _commands()
    if not args or args[0] in ("-h", "--help", "help"):
        print(_usage(commands))
        return 0 if args else USAGE_ERROR
    name, overrides = args[0], args[1:]
    if name not in commands:
        print(f"roboloop: unknown command {name!r}\n\n{_usage(commands)}", file=sys.stderr)
        return USAGE_ERROR
    cmd = commands[name]
    if any(a in ("-h", "--help") for a in overrides):
        print(_help(name, cmd))
        return 0
    if cmd.positional and overrides and "=" not in overrides[0]:
        overrides[0] = f"{cmd.positional}={overrides[0]}"
    bad = [o for o in overrides if "=" not in o]
    if bad:
        print(f"roboloop {name}: error: expected key=value overrides, got {bad}", file=sys.stderr)
        return USAGE_ERROR

    from hydra.errors import HydraException
    from omegaconf.errors import OmegaConfBaseException

    try:
        if cmd.register is not None:
            cmd.register()
        cfg = compose_config(name, cmd.schema(), overrides)
        return cmd.run(cfg)
    except (HydraException, OmegaConfBaseException, RoboloopError) as err:
        print(f"roboloop {name}: error: {_error_message(err)}", file=sys.stderr)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print(f"roboloop {name}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
