"""The rules a configuration field is held to, and the one error that names a broken rule.

Every frozen configuration dataclass (``frcnn.config``'s nodes and the anchor target layer's
``AnchorTargetConfig``) checks its fields in ``__post_init__`` with these functions. A broken
rule raises ``ConfigError``: "NODE.FIELD must be RULE, got VALUE", where NODE is the dataclass's
name, or its dotted key ("model.head") when the node was read from a YAML tree.

A module of its own, importing nothing from frcnn, so that the anchor target layer and the
configuration package (which imports the layer's config) share it without an import cycle.
"""
from __future__ import annotations

import dataclasses
import math
import typing
from collections.abc import Sequence


class ConfigError(ValueError):
    """A configuration value that breaks its rule: ``node`` (a class name or a dotted key, "" at
    the top of a tree), ``field`` (a field, or a dotted path below the node), ``value``, ``rule``."""

    def __init__(self, node: str, field: str, value: object, rule: str) -> None:
        self.node, self.field, self.value, self.rule = node, field, value, rule
        super().__init__(f"{self.key} must be {rule}, got {value!r}")

    @property
    def key(self) -> str:
        """The dotted name of the broken field."""
        return f"{self.node}.{self.field}" if self.node else self.field

    def under(self, path: str) -> ConfigError:
        """The same error, with the node named by its dotted key ``path`` in a tree."""
        return ConfigError(path, self.field, self.value, self.rule)

    def __reduce__(self) -> tuple:
        return ConfigError, (self.node, self.field, self.value, self.rule)


def value_of(owner: object, name: str) -> object:
    """The field ``name`` of ``owner``; a dotted name reaches into nested nodes."""
    for part in name.split("."):
        owner = getattr(owner, part)
    return owner


def require(owner: object, name: str, holds: bool, rule: str) -> None:
    """ConfigError naming ``owner``'s field ``name`` and ``rule`` unless ``holds``."""
    if not holds:
        raise ConfigError(type(owner).__name__, name, value_of(owner, name), rule)


def is_number(value: object) -> bool:
    """A finite int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def is_integer(value: object) -> bool:
    """An int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool)


def _bound(number: float) -> str:
    return f"{number:g}"


def _range_rule(low: float, high: float, open_low: bool, open_high: bool) -> str:
    """The words for a range: "in [0, 1]", "> 0", "" (any finite number)."""
    if math.isinf(low) and math.isinf(high):
        return ""
    if math.isinf(high):
        return f"{'>' if open_low else '>='} {_bound(low)}"
    if math.isinf(low):
        return f"{'<' if open_high else '<='} {_bound(high)}"
    return f"in {'(' if open_low else '['}{_bound(low)}, {_bound(high)}{')' if open_high else ']'}"


def _in_range(value: float, low: float, high: float, open_low: bool, open_high: bool) -> bool:
    return (value > low if open_low else value >= low) and (value < high if open_high else value <= high)


def check_int(owner: object, name: str, minimum: int, maximum: float = math.inf, *, optional: bool = False) -> None:
    """The field is an integer in [minimum, maximum] (or None when ``optional``)."""
    value = getattr(owner, name)
    if optional and value is None:
        return
    rule = f"an integer {_range_rule(minimum, maximum, False, False)}" + (" or null" if optional else "")
    require(owner, name, is_integer(value) and _in_range(value, minimum, maximum, False, False), rule)


def check_number(owner: object, name: str, low: float = -math.inf, high: float = math.inf, *,
                 open_low: bool = False, open_high: bool = False, optional: bool = False) -> None:
    """The field is a finite number in the range from ``low`` to ``high`` (each bound excluded
    when ``open_*``; or None when ``optional``)."""
    value = getattr(owner, name)
    if optional and value is None:
        return
    words = _range_rule(low, high, open_low, open_high)
    rule = ("a finite number" if not words else f"a number {words}") + (" or null" if optional else "")
    require(owner, name, is_number(value) and _in_range(value, low, high, open_low, open_high), rule)


def check_numbers(owner: object, name: str, length: int | None = None, *, low: float = -math.inf,
                  high: float = math.inf, open_low: bool = False, open_high: bool = False,
                  integer: bool = False, empty: bool = False) -> None:
    """The field is a sequence of ``length`` numbers (None: one or more, or none too when
    ``empty``), each finite and in the range; it is stored as a tuple of floats (of ints when
    ``integer``)."""
    value = getattr(owner, name)
    fits = is_integer if integer else is_number
    holds = (isinstance(value, Sequence) and not isinstance(value, str)
             and (len(value) == length if length is not None else empty or len(value) > 0)
             and all(fits(v) and _in_range(v, low, high, open_low, open_high) for v in value))
    count = f"{length} " if length is not None else ("" if empty else "one or more ")
    words = _range_rule(low, high, open_low, open_high)
    require(owner, name, holds, f"{count}{'integers' if integer else 'numbers'}" + (f" {words}" if words else ""))
    object.__setattr__(owner, name, tuple(int(v) if integer else float(v) for v in value))


def check_choice(owner: object, name: str, choices: Sequence[str]) -> None:
    """The field is one of ``choices``."""
    require(owner, name, getattr(owner, name) in choices, f"one of {', '.join(map(repr, choices))}")


def check_bool(owner: object, name: str) -> None:
    """The field is True or False."""
    require(owner, name, isinstance(getattr(owner, name), bool), "true or false")


def check_text(owner: object, name: str, *, optional: bool = False) -> None:
    """The field is a non-empty string (or None when ``optional``)."""
    value = getattr(owner, name)
    holds = (optional and value is None) or (isinstance(value, str) and bool(value))
    require(owner, name, holds, "a non-empty string" + (" or null" if optional else ""))


def check_nodes(owner: object) -> None:
    """Every field annotated with a dataclass type holds an instance of that type."""
    hints = typing.get_type_hints(type(owner))
    for item in dataclasses.fields(owner):
        kind = hints[item.name]
        if isinstance(kind, type) and dataclasses.is_dataclass(kind):
            require(owner, item.name, isinstance(getattr(owner, item.name), kind), f"a {kind.__name__}")
