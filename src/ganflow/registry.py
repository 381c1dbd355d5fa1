"""Name -> object registries for the swappable parts (architectures, losses, data sources, ...)."""

from __future__ import annotations

import importlib
import pkgutil
from typing import Callable, Generic, TypeVar

T = TypeVar("T")


class Registry(Generic[T]):
    """`discover`: a package whose every module registers its parts on import. The registry imports
    them all on its first lookup, so adding a part is adding a file, nothing else."""

    def __init__(self, kind: str, discover: str | None = None):
        self.kind = kind
        self._items: dict[str, T] = {}
        self._discover = discover

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: register `obj` under `name`; a name registered twice is a programming error."""

        def deco(obj: T) -> T:
            if name in self._items:
                raise ValueError(f"{self.kind} {name!r} is already registered")
            self._items[name] = obj
            return obj

        return deco

    def _items_all(self) -> dict[str, T]:
        if self._discover:
            package, self._discover = importlib.import_module(self._discover), None
            for module in pkgutil.iter_modules(package.__path__):
                importlib.import_module(f"{package.__name__}.{module.name}")
        return self._items

    def get(self, name: str) -> T:
        try:
            return self._items_all()[name]
        except KeyError:
            raise KeyError(f"unknown {self.kind} {name!r} (choose from {', '.join(self.names())})") from None

    def names(self) -> list[str]:
        return sorted(self._items_all())

    def __contains__(self, name: object) -> bool:
        return name in self._items_all()
