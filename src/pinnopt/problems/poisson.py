"""Poisson equations on the unit cube, the [KFAC] benchmark family (docs/methods.md §9).

    −Δu = f in [0,1]^d,   u = u* on the boundary.

Solutions (``solution=``):

- ``sin-product``: u* = Π sin(π x_i), f = d π² u*  (the 2d problem of [KFAC]);
- ``cos-sum``:     u* = Σ cos(π x_i), f = π² u*    (5d);
- ``pairs``:       u* = Σ_{k=1}^{d/2} x_{2k−1} x_{2k} / c, f = 0  (10d, harmonic);
- ``norm-squared``: u* = ‖x‖² / c, f = −2d / c     (100d).

For the last two ``c = sqrt(E[u*²])`` over the uniform cube (1.3437 for d = 10, 33.466 for
d = 100): these are the constants 1/1.34 and 1/33.47 of docs/methods.md §9, which normalise the
solution to unit RMS so that the RMS error is comparable across dimensions.
"""

from __future__ import annotations

import math

import jax.numpy as jnp

from pinnopt.geometry import Box
from pinnopt.problems.base import Problem
from pinnopt.residuals import ResidualGroup
from pinnopt.taylor import Derivatives

SOLUTIONS = ("sin-product", "cos-sum", "pairs", "norm-squared")
NETS = {
    "small": (64,),
    "medium": (64, 64, 48, 48),
    "large": (256, 256, 128, 128),
    "huge": (768, 768, 512, 512),
}
# Per dimension: (solution, net, interior points, boundary points, redraw each step).
_DEFAULTS = {
    2: ("sin-product", "small", 900, 120, False),
    5: ("cos-sum", "large", 3000, 500, True),
    10: ("pairs", "large", 3000, 500, True),
    100: ("norm-squared", "huge", 3000, 500, True),
}


def _pairs_rms(d: int) -> float:
    # E[(Σ_k x_{2k-1} x_{2k})²] with x ~ U[0,1]: m E[x²]² + m(m−1) E[x]⁴, m = d/2 pairs.
    m = d // 2
    return math.sqrt(m / 9 + m * (m - 1) / 16)


def _norm_squared_rms(d: int) -> float:
    # E[(Σ x_i²)²] = d E[x⁴] + d(d−1) E[x²]².
    return math.sqrt(d / 5 + d * (d - 1) / 9)


def poisson(
    dim: int = 2,
    solution: str = "auto",
    n_interior: int | None = None,
    n_boundary: int | None = None,
    sampling: str = "uniform",
    resample: bool | None = None,
) -> Problem:
    """The Poisson problem in ``dim`` dimensions (defaults follow [KFAC] for d = 2, 5, 10, 100)."""
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"poisson: dim must be a positive integer, got {dim!r}")
    default = _DEFAULTS.get(dim, ("cos-sum", "small", 3000, 500, True))
    solution = default[0] if solution == "auto" else solution
    if solution not in SOLUTIONS:
        raise ValueError(f"poisson: unknown solution {solution!r}; choose from auto, {', '.join(SOLUTIONS)}")
    if solution == "pairs" and dim % 2:
        raise ValueError(f"poisson: solution 'pairs' needs an even dimension, got {dim}")
    pi = math.pi

    if solution == "sin-product":
        def exact(x):
            return jnp.prod(jnp.sin(pi * x), axis=-1)

        def source(x):
            return dim * pi**2 * exact(x)
    elif solution == "cos-sum":
        def exact(x):
            return jnp.sum(jnp.cos(pi * x), axis=-1)

        def source(x):
            return pi**2 * exact(x)
    elif solution == "pairs":
        c = _pairs_rms(dim)

        def exact(x):
            return jnp.sum(x[..., 0::2] * x[..., 1::2], axis=-1) / c

        def source(x):
            return jnp.zeros(x.shape[:-1], x.dtype)
    else:
        c = _norm_squared_rms(dim)

        def exact(x):
            return jnp.sum(x**2, axis=-1) / c

        def source(x):
            return jnp.full(x.shape[:-1], -2.0 * dim / c, x.dtype)

    box = Box.cube(dim)
    n_int = default[2] if n_interior is None else n_interior
    n_bdy = default[3] if n_boundary is None else n_boundary
    groups = (
        ResidualGroup(
            "interior",
            box.interior(sampling),
            n_int,
            lambda x, u: -u.second[0] - source(x),
            Derivatives.laplacian(dim),
            role="pde",
        ),
        ResidualGroup(
            "boundary",
            box.boundary(method=sampling),
            n_bdy,
            lambda x, u: u.value[0] - exact(x),
            role="boundary",
        ),
    )
    return Problem(
        name="poisson",
        domain=box,
        coords=tuple(f"x{i + 1}" for i in range(dim)),
        fields=("u",),
        groups=groups,
        solution=lambda x: exact(x)[:, None],
        resample=default[4] if resample is None else resample,
        nets=NETS,
        default_net=default[1],
        description=f"-Δu = f on [0,1]^{dim}, u* {solution}",
    )
