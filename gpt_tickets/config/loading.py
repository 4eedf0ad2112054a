"""YAML -> a validated ``RunConfig``, with dotted command-line overrides (``--prune.rounds 3``)."""

from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from pathlib import Path
from typing import Any

import yaml

from ..errors import ConfigError, first_line
from .schema import RunConfig, check


def _dataclass_type(annotation: Any) -> type | None:
    return annotation if isinstance(annotation, type) and dataclasses.is_dataclass(annotation) else None


def _coerce(key: str, value: Any, annotation: Any) -> Any:
    """Check a YAML value against a field's type; ints are accepted for floats, nothing else is converted."""
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(annotation)
        if value is None and type(None) in options:
            return None
        inner = [a for a in options if a is not type(None)]
        return _coerce(key, value, inner[0])
    if origin is list:
        check(isinstance(value, list), f"{key}={value!r} must be a list")
        (item_type,) = typing.get_args(annotation)
        return [_coerce(f"{key}[]", v, item_type) for v in value]
    if origin is dict:
        check(isinstance(value, dict), f"{key}={value!r} must be a mapping")
        return dict(value)
    if annotation is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if annotation is float and isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
        try:
            return float(value)
        except ValueError:
            pass
    if annotation is str and isinstance(value, bool):  # YAML 1.1 reads no / yes / off / on as booleans
        raise ConfigError(f"{key}={value!r} must be of type str; quote it, e.g. {key}: '{'yes' if value else 'no'}'")
    if annotation in (int, float, str, bool):
        ok = isinstance(value, annotation) and not (annotation is int and isinstance(value, bool))
        check(ok, f"{key}={value!r} must be of type {annotation.__name__}")
        return value
    return value


def _build(cls: type, data: dict[str, Any], prefix: str = "") -> Any:
    check(isinstance(data, dict), f"{prefix.rstrip('.') or 'config'} must be a mapping, got {data!r}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls)]
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key not in names:
            close = difflib.get_close_matches(str(key), names, n=1)
            hint = f"; did you mean {prefix}{close[0]}?" if close else f"; allowed: {', '.join(names)}"
            raise ConfigError(f"unknown config key {prefix}{key}{hint}")
        sub = _dataclass_type(hints[key])
        kwargs[key] = _build(sub, value, f"{prefix}{key}.") if sub else _coerce(prefix + key, value, hints[key])
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any]) -> RunConfig:
    return _build(RunConfig, data)


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        check(isinstance(node, dict), f"cannot set {dotted}: {part} is not a section")
    node[leaf] = value


def apply_overrides(data: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``--prune.rounds 3`` / ``--prune.rounds=3`` style overrides; values are parsed as YAML scalars."""
    data = json.loads(json.dumps(data))
    i = 0
    while i < len(overrides):
        token = overrides[i]
        check(token.startswith("--") and len(token) > 2, f"unexpected argument {token!r}; use --section.key VALUE")
        key = token[2:]
        if "=" in key:
            key, raw = key.split("=", 1)
            i += 1
        else:
            check(i + 1 < len(overrides), f"override --{key} has no value")
            raw = overrides[i + 1]
            i += 2
        _set_dotted(data, key, load_yaml(raw, f"override --{key}"))
    return data


def load_config(path: str | Path | None = None, overrides: list[str] | None = None) -> RunConfig:
    """Read a YAML run config and apply dotted overrides.

    Without a path the dataclass defaults are used: they *are* the embedded tiny default (configs/tiny.yaml
    spells them out, and a test keeps the two equal), so an installed wheel needs no data files.
    """
    data: Any = {}
    if path is not None:
        path = Path(path)
        check(path.is_file(), f"config file {str(path)!r} does not exist")
        data = load_yaml(path.read_text(), f"config file {str(path)!r}") or {}
    return config_from_dict(apply_overrides(data, overrides or []))


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without anchors and aliases: a run config never needs them, and nested aliases (a "billion laughs")
    expand exponentially once the data is copied."""

    def compose_node(self, parent, index):  # type: ignore[no-untyped-def]
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()
            raise ConfigError(f"uses the YAML alias *{event.anchor}; run configs do not allow anchors and aliases")
        return super().compose_node(parent, index)

    def construct_yaml_int(self, node):  # type: ignore[no-untyped-def]
        """YAML 1.1 reads 2:4 as the base-60 number 124; a run config reads it as text, as YAML 1.2 does (an N:M
        pattern: prune.nm: 2:4)."""
        text = self.construct_scalar(node)
        return text if ":" in text else super().construct_yaml_int(node)


_NoAliasLoader.add_constructor("tag:yaml.org,2002:int", _NoAliasLoader.construct_yaml_int)


def load_yaml(text: str, what: str) -> Any:
    """Parse YAML as plain data; anything else (invalid YAML, aliases) is one line naming ``what``."""
    try:
        return yaml.load(text, Loader=_NoAliasLoader)  # noqa: S506  (a SafeLoader subclass)
    except yaml.YAMLError as err:
        raise ConfigError(f"{what} is not valid YAML: {first_line(err)}") from None
    except ConfigError as err:
        raise ConfigError(f"{what} {err}") from None
