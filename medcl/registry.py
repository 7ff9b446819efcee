"""A small name -> builder registry, in the spirit of timm's ``register_model``.

Encoders, losses, MIL aggregators and selectors each keep one :class:`Registry`; ``create`` builds
an entry by name and an unknown name raises ``ValueError`` listing the valid ones.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., object])


class Registry(Generic[T]):
    """Maps names to builders that return a ``T``.

    Example:
        >>> LOSSES: Registry[object] = Registry("loss")
        >>> @LOSSES.register("answer")
        ... def build_answer() -> int:
        ...     return 42
        >>> LOSSES.create("answer")
        42
    """

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._builders: dict[str, Callable[..., T]] = {}

    def register(self, name: str) -> Callable[[F], F]:
        """Decorator registering ``fn`` under ``name``; a name may be registered once."""

        def decorator(fn: F) -> F:
            if name in self._builders:
                raise ValueError(f"{self.kind} '{name}' is already registered")
            self._builders[name] = fn  # type: ignore[assignment]
            return fn

        return decorator

    def names(self) -> list[str]:
        """The registered names, sorted."""
        return sorted(self._builders)

    def get(self, name: str) -> Callable[..., T]:
        """The builder registered as ``name``; ``ValueError`` listing valid names otherwise."""
        try:
            return self._builders[name]
        except KeyError:
            valid = ", ".join(self.names()) or "(none registered)"
            raise ValueError(f"unknown {self.kind} '{name}'; valid names: {valid}") from None

    def create(self, name: str, *args: object, **kwargs: object) -> T:
        """Build the entry registered as ``name``."""
        return self.get(name)(*args, **kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._builders)
