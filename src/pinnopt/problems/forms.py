"""Shared pieces of the problems that come in a standard and a first-order (flux) form
(docs/methods.md §6): option checks and the samplers they need beyond :class:`~pinnopt.geometry.Box`.

A first-order form adds auxiliary network outputs (a flux σ, a vorticity ω, ...) so that every
residual needs first derivatives only. Its groups have the roles that constrained training
uses: the first-order PDE residual is ``"pde"`` (the objective), the definitions of the
auxiliary fields are ``"constraint"``, boundary and initial conditions ``"boundary"`` and
``"initial"``.
"""

from __future__ import annotations

from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pinnopt.geometry import Box, Sampler, _check_method, unit_cube

FORMULATIONS = ("standard", "first-order")


def check_formulation(problem: str, formulation: str) -> None:
    if formulation not in FORMULATIONS:
        raise ValueError(
            f"{problem}: unknown formulation {formulation!r}; choose from {', '.join(FORMULATIONS)}"
        )


def check_counts(problem: str, **counts: int) -> None:
    """Point counts must be positive integers."""
    for name, n in counts.items():
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"{problem}: {name} must be a positive integer, got {n!r}")


def faces(box: Box, which: Sequence[tuple[int, str]], method: str = "uniform") -> Sampler:
    """Points on the faces ``x_c = lo_c`` (``(c, "lo")``) or ``x_c = hi_c`` (``(c, "hi")``),
    each face drawn in proportion to its area (``sobol``: a fixed share per face)."""
    _check_method(method)
    which = tuple(which)
    for coord, side in which:
        if side not in ("lo", "hi") or not 0 <= coord < box.dim:
            raise ValueError(f"bad face {(coord, side)!r} of a {box.dim}-dimensional box")
    widths = np.asarray(box.hi) - np.asarray(box.lo)
    areas = np.array([np.prod(np.delete(widths, c)) for c, _ in which])
    probs = areas / areas.sum()
    axis_of = jnp.asarray([c for c, _ in which])
    value_of = jnp.asarray([box.lo[c] if s == "lo" else box.hi[c] for c, s in which])

    def sample(key: jax.Array, n: int) -> jax.Array:
        k_face, k_pts = jax.random.split(key)
        if method == "uniform":
            face = jax.random.choice(k_face, len(which), (n,), p=jnp.asarray(probs))
        else:
            counts = np.floor(probs * n).astype(int)
            counts[: n - counts.sum()] += 1
            face = jnp.asarray(np.repeat(np.arange(len(which)), counts))
        lo, hi = jnp.asarray(box.lo), jnp.asarray(box.hi)
        u = lo + unit_cube(k_pts, n, box.dim, method) * (hi - lo)
        return u.at[jnp.arange(n), axis_of[face]].set(value_of[face])

    return sample


def fixed_points(points: np.ndarray | jax.Array) -> Sampler:
    """A sampler that always returns the same points, cycled to the requested count."""
    points = jnp.asarray(points)

    def sample(key: jax.Array, n: int) -> jax.Array:
        return points[jnp.arange(n) % points.shape[0]]

    return sample


def grid(box: Box, n_per_axis: int) -> Sampler:
    """The tensor grid of ``box`` (``n_per_axis`` nodes per axis, ends included) as a fixed
    evaluation set; use with ``n_eval = n_per_axis ** dim``."""
    return fixed_points(box.grid(n_per_axis))
