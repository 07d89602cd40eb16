"""Walk parsed TOML tables against dataclass fields (the config converter).

Knows no section of releaser.toml: it follows each dataclass's type hints, so
an unknown key, a wrong type, a missing required key or a value a
__post_init__ rejects raises Invalid naming the dotted key. Relative paths
resolve against the config file's folder. Nothing is read or written here.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from pathlib import Path
from typing import Any


class Invalid(Exception):
    def __init__(self, key: str, message: str) -> None:
        super().__init__(message)
        self.key = key
        self.message = message


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp) if a is not type(None))
    if origin is tuple:
        return "a list"
    if origin is dict:
        return "a table"
    if dataclasses.is_dataclass(tp):
        return "a table"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false",
            Path: "a path string"}.get(tp, getattr(tp, "__name__", str(tp)))


def _convert(tp: Any, value: Any, key: str, base: Path) -> Any:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        for arg in args:
            try:
                return _convert(arg, value, key, base)
            except Invalid:
                continue
        raise Invalid(key, f"expected {_type_name(tp)}, got {value!r}")
    if origin is tuple:
        if not isinstance(value, list):
            raise Invalid(key, f"expected a list, got {value!r}")
        (item_tp, _ellipsis) = typing.get_args(tp)
        return tuple(_convert(item_tp, v, f"{key}[{i}]", base) for i, v in enumerate(value))
    if origin is dict:
        if not isinstance(value, dict):
            raise Invalid(key, f"expected a table, got {value!r}")
        _k, v_tp = typing.get_args(tp)
        return {k: _convert(v_tp, v, f"{key}.{k}", base) for k, v in value.items()}
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise Invalid(key, f"expected a table, got {value!r}")
        return build(tp, value, key, base)
    if tp is bool:
        if not isinstance(value, bool):
            raise Invalid(key, f"expected true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise Invalid(key, f"expected an integer, got {value!r}")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise Invalid(key, f"expected a number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise Invalid(key, f"expected a string, got {value!r}")
        return value
    if tp is Path:
        if not isinstance(value, str) or not value:
            raise Invalid(key, f"expected a path string, got {value!r}")
        p = Path(value).expanduser()
        # relative paths resolve against the config file's folder
        return p if p.is_absolute() else (base / p)
    raise Invalid(key, f"unsupported type {tp!r}")  # pragma: no cover - programming error


def build(cls: Any, data: dict[str, Any], prefix: str, base: Path) -> Any:
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        full = f"{prefix}.{key}" if prefix else key
        if key not in fields:
            known = ", ".join(sorted(fields))
            raise Invalid(full, f"unknown key (known keys here: {known})")
        kwargs[key] = _convert(hints[key], value, full, base)
    for name, f in fields.items():
        if (
            name not in kwargs
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        ):
            raise Invalid(f"{prefix}.{name}" if prefix else name, "is required")
    try:
        return cls(**kwargs)
    except ValueError as exc:
        raise Invalid(prefix or "(top level)", str(exc)) from None


# (module, annotation) -> the type it names; every section spells `int`, `float | None`...
_EVALUATED: dict[tuple[str, str], Any] = {}


def _hints(cls: type) -> dict[str, Any]:
    """What typing.get_type_hints(cls) gives for these dataclasses (string annotations,
    from __future__), each string evaluated once in its defining module: get_type_hints
    compiles a ForwardRef per field per call, half of a config load's CPU."""
    hints: dict[str, Any] = {}
    for base in reversed(cls.__mro__):
        module = vars(sys.modules[base.__module__])
        for name, ann in vars(base).get("__annotations__", {}).items():
            if isinstance(ann, str):
                key = (base.__module__, ann)
                if key not in _EVALUATED:
                    _EVALUATED[key] = eval(ann, module)  # noqa: S307 - our own source's annotations
                ann = _EVALUATED[key]
            hints[name] = ann
    return hints
