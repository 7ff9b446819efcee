"""A small name -> builder registry, in the spirit of timm's ``register_model``.

Encoders, losses, UNets, MIL aggregators and selectors each keep one :class:`Registry`; ``create``
builds an entry by name. An unknown name raises ``ValueError`` listing the valid ones, and options
the builder does not take (or required ones left out) raise ``ValueError`` naming what it accepts,
checked against the builder's signature *before* it runs: a ``TypeError`` raised inside a builder
is a bug there and propagates unchanged.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

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

    def check_options(self, name: str, *args: object, **kwargs: object) -> None:
        """Refuse arguments the builder of ``name`` cannot be called with.

        Raises:
            ValueError: unknown ``name``, an option the builder does not take, a required one
                missing, or too many positional arguments; the message names the options the
                builder accepts.
        """
        builder = self.get(name)
        try:
            signature = inspect.signature(builder)
        except (TypeError, ValueError):  # a builtin without a signature: nothing to check
            return
        try:
            signature.bind(*args, **kwargs)
        except TypeError as exc:
            accepted = ", ".join(
                p.name
                for p in signature.parameters.values()
                if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)
            )
            raise ValueError(
                f"bad options for {self.kind} '{name}': {exc}; it accepts: {accepted or '(none)'}"
            ) from None

    def create(self, name: str, *args: Any, **kwargs: Any) -> T:
        """Build the entry registered as ``name``.

        The arguments are checked against the builder's signature first
        (:meth:`check_options`); errors raised while building propagate unchanged.
        """
        self.check_options(name, *args, **kwargs)
        return self.get(name)(*args, **kwargs)

    def __contains__(self, name: object) -> bool:
        return name in self._builders

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())

    def __len__(self) -> int:
        return len(self._builders)
