"""Float64 for the duration of a run, without switching the caller's JAX globally.

Accuracy studies need float64 (the errors pinnopt reaches, 1e-7 and below, are under float32's
resolution), but importing a library should not change how the rest of a program computes.
So the entry points that run or read training (:func:`pinnopt.train`, :func:`pinnopt.resume`,
:func:`pinnopt.predict`, benchmark suites, diagnostics, the command line) enable 64-bit types
for their own duration only; a run still chooses its dtype (``RunConfig.dtype``: float64 by
default, float32 as an option). Code that builds objectives and methods by hand runs under
whatever the caller chose, so wrap it in :func:`float64` (or set ``jax_enable_x64``) to get
the same numbers as a run.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Callable, Iterator, TypeVar

import jax

F = TypeVar("F", bound=Callable)


@contextlib.contextmanager
def float64() -> Iterator[None]:
    """Enable 64-bit types inside the ``with`` block (restored on exit)."""
    if hasattr(jax, "enable_x64"):
        with jax.enable_x64(True):
            yield
    else:  # older JAX: the same context manager lived in jax.experimental
        from jax.experimental import enable_x64

        with enable_x64():
            yield


def uses_float64(fn: F) -> F:
    """Run ``fn`` with 64-bit types enabled (see the module docstring)."""

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        with float64():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
