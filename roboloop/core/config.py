"""Typed configs to and from JSON: nested dataclasses, unknown or mistyped fields rejected by name."""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping
from typing import Any, TypeVar

from roboloop.core.errors import ConfigError

T = TypeVar("T")


def config_to_dict(config: Any) -> dict[str, Any]:
    return dataclasses.asdict(config)


def config_changes(saved: Mapping[str, Any], current: Mapping[str, Any], *, ignore: tuple[str, ...] = (),
                   prefix: str = "") -> str:
    """The fields whose values differ between two JSON-style configs (``ignore`` excepted), as
    ``"<prefix>field: saved -> current, ..."``; empty when none does. What refuses a resumed run that would
    silently mix two experiments (BC trainer, PPO, train-residual)."""
    changed = sorted(k for k in saved.keys() | current.keys() if k not in ignore and saved.get(k) != current.get(k))
    return ", ".join(f"{prefix}{k}: {saved.get(k)!r} -> {current.get(k)!r}" for k in changed)


def config_from_dict(cls: type[T], data: Mapping[str, Any]) -> T:
    """Build dataclass ``cls`` from ``data``, recursing into dataclass-typed fields.

    Unknown keys raise (a checkpoint from another version or another policy type must not load silently);
    missing keys take the field's default.
    """
    if not isinstance(data, Mapping):
        raise ConfigError(f"{cls.__name__}: expected a mapping, got {type(data).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}  # type: ignore[arg-type]
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{cls.__name__} has no field(s) {unknown}")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, value in data.items():
        hint = hints.get(name)
        if dataclasses.is_dataclass(hint) and isinstance(value, Mapping):
            value = config_from_dict(hint, value)
        kwargs[name] = value
    return cls(**kwargs)
