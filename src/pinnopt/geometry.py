"""Domains and point samplers.

A :class:`Box` is a product of intervals; space–time problems are boxes whose first
coordinate is time (the convention of [KFAC]). Samplers return ``(n, dim)`` arrays and draw
either i.i.d. uniform points (``jax.random``) or scrambled Sobol points (``scipy.stats.qmc``,
low discrepancy, useful for fixed collocation sets).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import qmc

SAMPLING_METHODS = ("uniform", "sobol")

Sampler = Callable[[jax.Array, int], jax.Array]
"""``sampler(key, n) -> (n, dim)`` points."""


def _check_method(method: str) -> None:
    if method not in SAMPLING_METHODS:
        raise ValueError(f"unknown sampling {method!r}; choose from {', '.join(SAMPLING_METHODS)}")


def unit_cube(key: jax.Array, n: int, dim: int, method: str = "uniform") -> jax.Array:
    """``n`` points in ``[0, 1]^dim``."""
    _check_method(method)
    if dim == 0:
        return jnp.zeros((n, 0))
    if method == "uniform":
        return jax.random.uniform(key, (n, dim), dtype=jnp.float64)
    seed = int(jax.random.randint(key, (), 0, 2**31 - 1))
    sobol = qmc.Sobol(dim, scramble=True, seed=seed)
    # Sobol balance properties hold for powers of two; draw the next one and keep n.
    m = max(int(np.ceil(np.log2(max(n, 1)))), 0)
    return jnp.asarray(sobol.random_base2(m)[:n])


@dataclass(frozen=True)
class Box:
    """The box ``[lo_0, hi_0] × ... × [lo_{d-1}, hi_{d-1}]``."""

    lo: tuple[float, ...]
    hi: tuple[float, ...]

    def __post_init__(self):
        if len(self.lo) != len(self.hi) or not self.lo:
            raise ValueError("a box needs as many lower as upper bounds, at least one")
        if any(h <= l for l, h in zip(self.lo, self.hi)):
            raise ValueError(f"box bounds must satisfy lo < hi, got {self.lo}, {self.hi}")

    @staticmethod
    def cube(dim: int, lo: float = 0.0, hi: float = 1.0) -> "Box":
        return Box((lo,) * dim, (hi,) * dim)

    @property
    def dim(self) -> int:
        return len(self.lo)

    def _scale(self, u: jax.Array) -> jax.Array:
        lo = jnp.asarray(self.lo)
        return lo + u * (jnp.asarray(self.hi) - lo)

    def contains(self, x: jax.Array, tol: float = 1e-12) -> jax.Array:
        """Per point: inside the closed box (up to ``tol``)."""
        return jnp.all((x >= jnp.asarray(self.lo) - tol) & (x <= jnp.asarray(self.hi) + tol), axis=-1)

    def interior(self, method: str = "uniform") -> Sampler:
        _check_method(method)
        return lambda key, n: self._scale(unit_cube(key, n, self.dim, method))

    def boundary(self, coords: Sequence[int] | None = None, method: str = "uniform") -> Sampler:
        """Points on the faces ``x_i = lo_i`` and ``x_i = hi_i`` for ``i`` in ``coords``
        (default: all), each face drawn in proportion to its area."""
        _check_method(method)
        coords = tuple(range(self.dim)) if coords is None else tuple(coords)
        widths = np.asarray(self.hi) - np.asarray(self.lo)
        areas = np.array([np.prod(np.delete(widths, i)) for i in coords] * 2)
        probs = areas / areas.sum()

        def sample(key: jax.Array, n: int) -> jax.Array:
            k_face, k_pts = jax.random.split(key)
            if method == "uniform":
                face = jax.random.choice(k_face, len(probs), (n,), p=jnp.asarray(probs))
            else:
                # Deterministic allocation for low-discrepancy sets: faces in proportion.
                counts = np.floor(probs * n).astype(int)
                counts[: n - counts.sum()] += 1
                face = jnp.asarray(np.repeat(np.arange(len(probs)), counts))
            u = self._scale(unit_cube(k_pts, n, self.dim, method))
            axis = jnp.asarray(coords * 2)[face]
            side_hi = face >= len(coords)
            value = jnp.where(side_hi, jnp.asarray(self.hi)[axis], jnp.asarray(self.lo)[axis])
            return u.at[jnp.arange(n), axis].set(value)

        return sample

    def slice(self, coord: int, value: float, method: str = "uniform") -> Sampler:
        """Points on the hyperplane ``x_coord = value`` inside the box (e.g. ``t = 0``)."""
        _check_method(method)

        def sample(key: jax.Array, n: int) -> jax.Array:
            u = self._scale(unit_cube(key, n, self.dim, method))
            return u.at[:, coord].set(value)

        return sample

    def grid(self, n_per_axis: int) -> jax.Array:
        """A tensor grid with ``n_per_axis`` nodes per axis, ``(n_per_axis**dim, dim)``."""
        axes = [np.linspace(l, h, n_per_axis) for l, h in zip(self.lo, self.hi)]
        mesh = np.meshgrid(*axes, indexing="ij")
        return jnp.asarray(np.stack([m.ravel() for m in mesh], axis=-1))
