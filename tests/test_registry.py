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


def test_options_checked_against_the_builder_signature() -> None:
    reg: Registry[int] = Registry("widget")

    @reg.register("sized")
    def build_sized(size: int, scale: int = 1) -> int:
        return size * scale

    with pytest.raises(ValueError, match=r"bad options for widget 'sized'.*accepts: size, scale"):
        reg.create("sized", size=2, colour="red")
    with pytest.raises(ValueError, match=r"bad options for widget 'sized'.*size"):
        reg.create("sized")  # a required option left out
    with pytest.raises(ValueError, match="bad options for widget 'sized'"):
        reg.create("sized", 1, 2, 3)  # too many positional arguments
    reg.check_options("sized", 3, scale=2)  # a valid call passes the check
    assert reg.create("sized", 3, scale=2) == 6


def test_type_error_inside_a_builder_propagates() -> None:
    reg: Registry[int] = Registry("widget")

    @reg.register("buggy")
    def build_buggy(size: int = 1) -> int:
        return size + "1"  # type: ignore[return-value,operator]  # a bug in the builder

    with pytest.raises(TypeError, match="unsupported operand"):
        reg.create("buggy", size=2)
