from __future__ import annotations

import pytest

from medcl.registry import Registry


def test_register_create_and_list() -> None:
    reg: Registry[int] = Registry("widget")

    @reg.register("b")
    def build_b(x: int = 1) -> int:
        return x * 2

    @reg.register("a")
    def build_a() -> int:
        return 7

    assert reg.names() == ["a", "b"]
    assert reg.create("b", x=5) == 10
    assert "a" in reg and "zz" not in reg
    assert len(reg) == 2 and list(reg) == ["a", "b"]


def test_unknown_name_lists_valid_ones() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("alpha")(lambda: 1)
    reg.register("beta")(lambda: 2)
    with pytest.raises(ValueError, match="unknown widget 'gamma'; valid names: alpha, beta"):
        reg.create("gamma")


def test_duplicate_registration_refused() -> None:
    reg: Registry[int] = Registry("widget")
    reg.register("a")(lambda: 1)
    with pytest.raises(ValueError, match="already registered"):
        reg.register("a")(lambda: 2)
