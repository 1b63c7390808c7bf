"""Configuration trees as plain data: nested dicts, lists and scalars, YAML, dotted-key assignments.

``to_plain`` and ``from_plain`` convert a frozen dataclass tree; ``from_plain`` names every
refused value by its dotted key in the tree ("model.head.pooler"). A run's configuration is
built from the defaults, then a YAML mapping laid over them (``merge``), then ``KEY=VALUE``
assignments (``parse_assignments``, ``assign``).
"""
from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import yaml

from ..field_checks import ConfigError


def dotted(path: str, name: str) -> str:
    """The key ``name`` below ``path`` ("" is the top of the tree)."""
    return f"{path}.{name}" if path else name


def to_plain(value: Any) -> Any:
    """A dataclass tree -> nested dicts; tuples -> lists; other values unchanged."""
    if dataclasses.is_dataclass(value):
        return {f.name: to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, tuple):
        return [to_plain(v) for v in value]
    return value


def from_plain(cls: type, data: Any, path: str = "") -> Any:
    """The inverse of ``to_plain`` for the dataclass ``cls`` read at the dotted key ``path``:
    missing keys take the node's defaults; unknown keys and broken rules raise ValueError naming
    the dotted key."""
    where = path or "the top level"
    if not isinstance(data, Mapping):
        raise ValueError(f"{where} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    unknown = sorted(set(data) - set(hints))
    if unknown:
        raise ValueError(f"{where}: unknown field(s) {unknown}; known: {', '.join(hints)}")
    values = {name: _coerce(hints[name], value, dotted(path, name)) for name, value in data.items()}
    try:
        return cls(**values)
    except ConfigError as error:
        raise error.under(path) from None


def overlay(base: Any, data: Any, path: str = "") -> Any:
    """The dataclass tree ``base`` with the plain mapping ``data`` laid over it (``merge``), read
    back by ``from_plain``: keys left out keep ``base``'s values."""
    if not isinstance(data, Mapping):
        raise ValueError(f"{path or 'the top level'} must be a mapping, got {data!r}")
    return from_plain(type(base), merge(to_plain(base), data), path)


def _coerce(hint: Any, value: Any, path: str) -> Any:
    """A YAML value made into the annotated type: nested dataclasses and tuples."""
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return from_plain(hint, value, path)
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if isinstance(value, list) and any(typing.get_origin(option) is tuple for option in options):
        return tuple(value)
    return value


def read_yaml_mapping(text: str, source: str) -> dict[str, Any]:
    """The mapping a YAML text holds ({} when empty); ValueError naming ``source`` otherwise."""
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"{source}: not valid YAML: {str(error).splitlines()[0]}") from error
    if data is not None and not isinstance(data, dict):
        raise ValueError(f"{source}: expected a mapping of configuration keys, got {type(data).__name__}")
    return data or {}


def merge(base: Mapping[str, Any], overlay: Mapping[str, Any]) -> dict[str, Any]:
    """``base`` with ``overlay``'s keys laid over it, recursively for nested mappings."""
    merged = dict(base)
    for key, value in overlay.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def parse_value(text: str) -> Any:
    """A command-line value as YAML reads it, except that ``1e-3`` is a number, not a string."""
    try:
        value = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise ValueError(f"cannot read value {text!r}: {str(error).splitlines()[0]}") from error
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return value
    return value


def parse_assignments(assignments: Sequence[str]) -> dict[str, Any]:
    """``KEY=VALUE`` strings (``--set``) -> {dotted key: value read by ``parse_value``}, in order."""
    values = {}
    for assignment in assignments:
        key, equals, text = assignment.partition("=")
        if not equals or not key.strip():
            raise ValueError(f"--set expects KEY=VALUE, got {assignment!r}")
        values[key.strip()] = parse_value(text)
    return values


def assign(plain: dict[str, Any], key: str, value: Any) -> None:
    """Set the dotted ``key`` of a nested dict; ValueError naming the known keys if it is not one."""
    node = plain
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if not isinstance(node, dict) or part not in node:
            where = ".".join(parts[:depth]) or "the top level"
            known = ", ".join(node) if isinstance(node, dict) else "none (not a section)"
            raise ValueError(f"unknown config key {key!r}: {where} has {known}")
        if depth == len(parts) - 1:
            node[part] = value
        else:
            node = node[part]
