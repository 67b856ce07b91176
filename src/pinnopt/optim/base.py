"""The method interface and the registry every optimiser is selected from by name.

A method is a pure ``init`` / ``step`` pair over explicit state, like an optax
``GradientTransformation`` but owning the whole update (Gauss–Newton methods need residuals,
line searches need the loss):

    state = method.init(params)
    params, state, info = method.step(params, state, batch, key)

``info`` is a dict of scalars, at least ``loss`` (the loss at the incoming parameters on
``batch``). ``step`` is jit-compiled by the trainer, so it must be traceable.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, NamedTuple

import jax

from pinnopt.nets import Params
from pinnopt.residuals import Batch, Objective


class Method(NamedTuple):
    init: Callable[[Params], Any]
    step: Callable[[Params, Any, Batch, jax.Array], tuple[Params, Any, dict[str, jax.Array]]]


@dataclass(frozen=True)
class MethodSpec:
    """A registered method: its factory, hyper-parameters with defaults, and a summary."""

    name: str
    factory: Callable[..., Method]
    hparams: dict[str, Any] = field(default_factory=dict)
    summary: str = ""
    choices: dict[str, tuple[str, ...]] = field(default_factory=dict)
    safer: Callable[[dict[str, Any]], dict[str, Any] | None] | None = None
    """After a divergence: the full hyper-parameters with a safer setting (more damping, a
    smaller step), or ``None`` when nothing safer exists. Used by the trainer's retry."""


def halve(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    """A ``safer`` rule: halve one hyper-parameter (a learning rate)."""
    return lambda hp: {**hp, key: hp[key] / 2}


def more_damping(key: str = "damping", factor: float = 10.0, floor: float = 1e-10):
    """A ``safer`` rule: multiply the damping (at least up to ``floor``)."""
    return lambda hp: {**hp, key: max(hp[key] * factor, floor)}


METHODS: dict[str, MethodSpec] = {}


def register(spec: MethodSpec) -> MethodSpec:
    METHODS[spec.name] = spec
    return spec


def coerce_hparam(method: str, key: str, value: Any) -> Any:
    """Validate and convert one hyper-parameter value to the type of its default."""
    spec = METHODS[method]
    if key not in spec.hparams:
        raise ValueError(
            f"method {method!r} has no hyper-parameter {key!r}; accepted: "
            f"{', '.join(spec.hparams) or 'none'}"
        )
    default = spec.hparams[key]
    try:
        if isinstance(default, bool):
            if isinstance(value, str):
                if value.lower() not in ("true", "false", "1", "0", "yes", "no"):
                    raise ValueError
                value = value.lower() in ("true", "1", "yes")
            elif not isinstance(value, bool):
                raise ValueError
        elif isinstance(default, int):
            if isinstance(value, bool):
                raise ValueError
            as_float = float(value)
            if as_float != int(as_float):
                raise ValueError
            value = int(as_float)
        elif isinstance(default, float):
            if isinstance(value, bool):
                raise ValueError
            value = float(value)
            if value != value:
                raise ValueError
        elif isinstance(default, str):
            if not isinstance(value, str):
                raise ValueError
    except (ValueError, TypeError, OverflowError):
        kind = type(default).__name__
        raise ValueError(f"method {method!r}: {key}={value!r} is not a valid {kind}") from None
    if key in spec.choices and value not in spec.choices[key]:
        raise ValueError(
            f"method {method!r}: {key}={value!r} not one of {', '.join(spec.choices[key])}"
        )
    return value


def make_method(name: str, objective: Objective, **hparams) -> Method:
    """Build a registered method for ``objective``; unknown names or settings raise ``ValueError``."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose from {', '.join(sorted(METHODS))}")
    spec = METHODS[name]
    settings = dict(spec.hparams)
    for key, value in hparams.items():
        settings[key] = coerce_hparam(name, key, value)
    return spec.factory(objective, **settings)
