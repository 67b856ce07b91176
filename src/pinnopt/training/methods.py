"""The method of a run configuration: building it, its safer settings after a divergence, and
the settings float32 cannot resolve.

This is the only module of the trainer that touches methods: a configuration describes its
method as a value (:attr:`RunConfig.method_value`), and everything here works on that value.
"""

from __future__ import annotations

import dataclasses

from pinnopt.config import ConfigError, RunConfig
from pinnopt.optim import Method
from pinnopt.residuals import Objective

FLOAT32_MIN_DAMPING = 1e-6
"""Below this, damping added to a Gramian or Kronecker factor of order one is lost to float32
rounding (machine epsilon 1.2e-7) and the solve is effectively undamped."""


def build_method(config: RunConfig, objective: Objective) -> Method:
    """The configured method on ``objective``; invalid settings raise :class:`ConfigError`."""
    try:
        return config.method_value.build(objective)
    except ValueError as err:
        raise ConfigError(str(err)) from None


def safer_config(config: RunConfig) -> tuple[RunConfig, str] | None:
    """The configuration with the method's safer settings after a divergence (more damping, a
    smaller step) and a description of what changed (``"damping=0.001"``), or ``None`` when
    the method has nothing safer."""
    current = config.method_value
    safer = current.safer()
    if safer is None:
        return None
    before = dict(current.walk())
    changed = ", ".join(f"{k}={v!r}" for k, v in safer.walk() if v != before.get(k))
    return dataclasses.replace(config, method=safer, hparams={}), changed


def precision_warnings(config: RunConfig) -> list[str]:
    """Settings that float32 cannot resolve."""
    out = []
    if config.dtype == "float32":
        for key, value in config.method_value.walk():
            if "damping" in key and isinstance(value, float) and 0 < value < FLOAT32_MIN_DAMPING:
                out.append(f"{key}={value:g} is below what float32 resolves (~{FLOAT32_MIN_DAMPING:g} "
                           f"relative to the curvature's scale); use float64 or more damping")
    return out
