"""Explicit name -> class registries (no import side effects: each registry lists its members in one place)."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Generic, TypeVar

from roboloop.core.errors import ConfigError

T = TypeVar("T")


class Registry(Mapping[str, T], Generic[T]):
    """A read-only mapping whose lookup error lists what is available."""

    def __init__(self, kind: str, members: Mapping[str, T]) -> None:
        self.kind = kind
        self._members = dict(members)

    def __getitem__(self, name: str) -> T:
        try:
            return self._members[name]
        except KeyError:
            raise ConfigError(f"unknown {self.kind} {name!r}; available: {sorted(self._members)}") from None

    def __contains__(self, name: object) -> bool:
        # Mapping's own test looks the name up and catches KeyError, which this lookup does not raise.
        return name in self._members

    def __iter__(self) -> Iterator[str]:
        return iter(self._members)

    def __len__(self) -> int:
        return len(self._members)

    def __repr__(self) -> str:
        return f"Registry({self.kind!r}, {sorted(self._members)})"
