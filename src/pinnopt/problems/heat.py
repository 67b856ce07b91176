"""Heat equations on the unit cube, the [KFAC] benchmark family (docs/methods.md §9).

    ∂_t u − ¼ Δ_x u = 0,  x ∈ [0,1]^d, t ∈ [0,1],  u* = e^{−t} Σ_i sin(2 x_i),

with initial and boundary data from u*. Inputs are ``(t, x_1, ..., x_d)`` (time first).
"""

from __future__ import annotations

import jax.numpy as jnp

from pinnopt.geometry import Box
from pinnopt.problems.base import Problem
from pinnopt.problems.poisson import NETS
from pinnopt.residuals import ResidualGroup
from pinnopt.taylor import Derivatives

KAPPA = 0.25
# Per spatial dimension: (net, interior, boundary, initial, redraw each step).
_DEFAULTS = {
    1: ("small", 900, 120, 120, False),
    4: ("small", 3000, 500, 500, True),
}


def exact(z):
    t, x = z[..., 0], z[..., 1:]
    return jnp.exp(-t) * jnp.sum(jnp.sin(2.0 * x), axis=-1)


def heat(
    dim: int = 4,
    n_interior: int | None = None,
    n_boundary: int | None = None,
    n_initial: int | None = None,
    sampling: str = "uniform",
    resample: bool | None = None,
) -> Problem:
    """The ``dim``+1 dimensional heat problem (``dim`` spatial coordinates)."""
    if not isinstance(dim, int) or dim < 1:
        raise ValueError(f"heat: dim (spatial) must be a positive integer, got {dim!r}")
    default = _DEFAULTS.get(dim, ("small", 3000, 500, 500, True))
    box = Box.cube(dim + 1)
    spatial = tuple(range(1, dim + 1))
    # ∂_t u from the first direction, the spatial Laplacian from the second-order slot.
    derivs = Derivatives.laplacian(dim + 1, coords=spatial)
    groups = (
        ResidualGroup(
            "interior",
            box.interior(sampling),
            default[1] if n_interior is None else n_interior,
            lambda x, u: u.grad[0, 0] - KAPPA * u.second[0],
            derivs,
            role="pde",
        ),
        ResidualGroup(
            "boundary",
            box.boundary(coords=spatial, method=sampling),
            default[2] if n_boundary is None else n_boundary,
            lambda x, u: u.value[0] - exact(x),
            role="boundary",
        ),
        ResidualGroup(
            "initial",
            box.slice(0, 0.0, method=sampling),
            default[3] if n_initial is None else n_initial,
            lambda x, u: u.value[0] - exact(x),
            role="initial",
        ),
    )
    return Problem(
        name="heat",
        domain=box,
        coords=("t", *(f"x{i + 1}" for i in range(dim))),
        fields=("u",),
        groups=groups,
        solution=lambda x: exact(x)[:, None],
        resample=default[4] if resample is None else resample,
        nets=NETS,
        default_net=default[0],
        description=f"u_t - Δu/4 = 0 on [0,1]x[0,1]^{dim}, u* = exp(-t) Σ sin(2x_i)",
    )
