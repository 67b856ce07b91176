"""Typed settings read from signatures: one conversion for method settings and problem options.

A value from the command line arrives as a TOML literal or a string (``1e-3``, ``true``,
``"abc"``), from a TOML file or from Python as itself. :func:`coerce` converts it to the type a
signature annotates, or raises ``ValueError`` with one line naming the setting, the value and
the type, so that ``n_interior=1.5`` or ``resample=no-thanks`` never reaches a problem or a
method as something it silently misreads.
"""

from __future__ import annotations

import inspect
import math
import types
import typing
from typing import Any, Callable, Literal, Union

TRUE = ("true", "1", "yes")
FALSE = ("false", "0", "no")


def type_name(hint: Any) -> str:
    """``int``, ``float | None``, ``a|b|c`` (a Literal), ``list[float]``..."""
    origin = typing.get_origin(hint)
    if origin is Literal:
        return "|".join(map(str, typing.get_args(hint)))
    if origin in (Union, types.UnionType):
        return " | ".join(type_name(a) for a in typing.get_args(hint))
    if hint is type(None):
        return "None"
    if origin is not None:
        return str(hint).replace("typing.", "")
    return getattr(hint, "__name__", str(hint))


def coerce(hint: Any, value: Any, label: str) -> Any:
    """``value`` as the type ``hint`` (bool, int, float, str, Literal, ``X | None``,
    ``list[X]``/``tuple[X, ...]``); ``ValueError("<label>=<value> is not a valid <type>")``."""
    try:
        return _convert(hint, value)
    except (ValueError, TypeError, OverflowError):
        raise ValueError(f"{label}={value!r} is not a valid {type_name(hint)}") from None


def _convert(hint: Any, value: Any) -> Any:
    origin = typing.get_origin(hint)
    if hint is Any or hint is inspect.Parameter.empty:
        return value
    if origin is Literal:
        if value not in typing.get_args(hint):
            raise ValueError
        return value
    if origin in (Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None or (isinstance(value, str) and value.lower() == "none"):
            if type(None) in options:
                return None
        for option in options:
            if option is type(None):
                continue
            try:
                return _convert(option, value)
            except (ValueError, TypeError, OverflowError):
                pass
        raise ValueError
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError
        (item, *rest) = typing.get_args(hint) or (Any,)
        return [_convert(item, v) for v in value]
    if hint is bool:
        if isinstance(value, str) and value.lower() in TRUE + FALSE:
            return value.lower() in TRUE
        if not isinstance(value, bool):
            raise ValueError
        return value
    if hint is int:
        if isinstance(value, bool):
            raise ValueError
        as_float = float(value)
        if not math.isfinite(as_float) or as_float != int(as_float):
            raise ValueError
        return int(as_float)
    if hint is float:
        if isinstance(value, bool):
            raise ValueError
        value = float(value)
        if math.isnan(value):
            raise ValueError
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError
        return value
    return value


def signature_types(fn: Callable, skip_first: bool = False) -> dict[str, tuple[Any, Any]]:
    """``{parameter: (annotation, default)}`` of ``fn`` (annotations resolved; a parameter
    without one is ``Any``)."""
    try:
        hints = typing.get_type_hints(fn)
    except (NameError, TypeError):
        hints = {}
    params = list(inspect.signature(fn).parameters.values())[1 if skip_first else 0:]
    return {p.name: (hints.get(p.name, Any), p.default) for p in params
            if p.kind not in (p.VAR_POSITIONAL, p.VAR_KEYWORD)}
