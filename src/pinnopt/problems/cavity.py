"""Lid-driven cavity, steady incompressible Navier–Stokes at Re = 100 (docs/methods.md §6).

    (u·∇)u + ∇p − Δu / Re = 0,   ∇·u = 0   in [0,1]²,
    u = (1, 0) on the lid y = 1,   u = 0 on the other walls.

There is no exact solution. The reference is the centre-line data of Ghia, Ghia & Shin (1982)
shipped in ``pinnopt/data/ghia_re100.csv``: u along x = 0.5 at their 17 y-points and v along
y = 0.5 at their 17 x-points. The evaluation set is exactly those 33 distinct points (the
centre is on both lines); the reference is NaN where the table has no value, and only u and v
are scored (``reference_fields``), so the errors are those of the two centre-line profiles.
The tables exist for Re = 100 only, so ``re`` is not an option.

Standard form: outputs ``(u, v, p)``; ``momentum`` (u u_x + v u_y + p_x − Δu/Re, ...) and
``continuity``, both role "pde".
Velocity–vorticity–pressure (first-order) form: outputs ``(u, v, omega, p)``, ω = v_x − u_y;
with −Δu = (ω_y, −ω_x) for a divergence-free field,

    objective    (u u_x + v u_y + p_x + ω_y/Re,  u v_x + v v_y + p_y − ω_x/Re)   (role "pde")
    constraints  u_x + v_y = 0,  ω − (v_x − u_y) = 0                          (role "constraint").

Walls: ``lid`` (u − 1, v) and ``walls`` (u, v), role "boundary". The pressure is determined up
to a constant and is not pinned (it does not enter the metric).
"""

from __future__ import annotations

import csv
from importlib import resources

import jax.numpy as jnp
import numpy as np

from pinnopt.geometry import Box
from pinnopt.problems.base import Problem
from pinnopt.problems.forms import check_counts, check_formulation, faces, fixed_points
from pinnopt.residuals import ResidualGroup
from pinnopt.taylor import Derivatives

NETS = {"4x50": (50, 50, 50, 50), "5x50": (50, 50, 50, 50, 50)}
REYNOLDS = 100.0
GHIA_FILE = "ghia_re100.csv"


def ghia_re100() -> dict[str, np.ndarray]:
    """The Ghia et al. (1982) Re = 100 centre-line tables.

    ``{"u": (17, 3), "v": (17, 3)}`` with rows ``(x, y, value)``: u on x = 0.5, v on y = 0.5.
    """
    text = resources.files("pinnopt").joinpath("data", GHIA_FILE).read_text()
    rows = csv.DictReader(line for line in text.splitlines() if not line.startswith("#"))
    table: dict[str, list] = {"u": [], "v": []}
    for row in rows:
        table[row["component"]].append((float(row["x"]), float(row["y"]), float(row["value"])))
    return {k: np.asarray(v) for k, v in table.items()}


def reference_points() -> tuple[np.ndarray, np.ndarray]:
    """The distinct centre-line points ``(M, 2)`` and the reference there ``(M, 2)`` for
    (u, v), NaN where the tables give no value."""
    table = ghia_re100()
    points: dict[tuple[float, float], list[float]] = {}
    for column, name in enumerate(("u", "v")):
        for x, y, value in table[name]:
            points.setdefault((x, y), [np.nan, np.nan])[column] = value
    xy = np.array(list(points.keys()))
    return xy, np.array(list(points.values()))


def _reference(points: np.ndarray, values: np.ndarray, n_fields: int):
    """``solution(x)``: the tabulated (u, v) at the tabulated points, NaN elsewhere and for
    the other fields."""
    table_xy = jnp.asarray(points)
    table_uv = jnp.asarray(values)

    def solution(x):
        match = jnp.all(jnp.abs(x[:, None, :] - table_xy[None]) < 1e-6, axis=-1)  # (N, M)
        found = jnp.any(match, axis=1)
        uv = table_uv[jnp.argmax(match, axis=1)]
        uv = jnp.where(found[:, None], uv, jnp.nan)
        rest = jnp.full((x.shape[0], n_fields - 2), jnp.nan)
        return jnp.concatenate([uv, rest], axis=1)

    return solution


def cavity(
    formulation: str = "standard",
    n_interior: int = 4000,
    n_lid: int = 500,
    n_walls: int = 1500,
    sampling: str = "sobol",
    resample: bool = False,
) -> Problem:
    """Lid-driven cavity at Re = 100, scored against Ghia et al. (1982) centre-line data."""
    check_formulation("cavity", formulation)
    check_counts("cavity", n_interior=n_interior, n_lid=n_lid, n_walls=n_walls)
    box = Box.cube(2)
    nu = 1.0 / REYNOLDS
    boundary = (
        ResidualGroup(
            "lid", box.slice(1, 1.0, method=sampling), n_lid,
            lambda z, u: u.value[:2] - jnp.array([1.0, 0.0]), role="boundary",
        ),
        ResidualGroup(
            "walls", faces(box, [(0, "lo"), (0, "hi"), (1, "lo")], sampling), n_walls,
            lambda z, u: u.value[:2], role="boundary",
        ),
    )
    if formulation == "standard":
        fields = ("u", "v", "p")

        def momentum(z, u):
            vel, grad = u.value[:2], u.grad  # grad[i, j] = ∂_i of output j
            advection = vel[0] * grad[0, :2] + vel[1] * grad[1, :2]
            return advection + grad[:, 2] - nu * u.second[:2]

        interior = (
            ResidualGroup("momentum", box.interior(sampling), n_interior, momentum,
                          Derivatives.laplacian(2), role="pde"),
            ResidualGroup(
                "continuity", box.interior(sampling), n_interior,
                lambda z, u: u.grad[0, 0] + u.grad[1, 1],
                Derivatives.gradient(2), role="pde",
            ),
        )
    else:
        fields = ("u", "v", "omega", "p")
        gradient = Derivatives.gradient(2)

        def momentum(z, u):
            vel, grad = u.value[:2], u.grad
            advection = vel[0] * grad[0, :2] + vel[1] * grad[1, :2]
            viscous = jnp.stack([grad[1, 2], -grad[0, 2]])  # −Δu = (ω_y, −ω_x)
            return advection + grad[:, 3] + nu * viscous

        interior = (
            ResidualGroup("momentum", box.interior(sampling), n_interior, momentum,
                          gradient, role="pde"),
            ResidualGroup(
                "continuity", box.interior(sampling), n_interior,
                lambda z, u: u.grad[0, 0] + u.grad[1, 1],
                gradient, role="constraint",
            ),
            ResidualGroup(
                "vorticity", box.interior(sampling), n_interior,
                lambda z, u: u.value[2] - (u.grad[0, 1] - u.grad[1, 0]),
                gradient, role="constraint",
            ),
        )
    points, values = reference_points()
    return Problem(
        name="cavity",
        domain=box,
        coords=("x", "y"),
        fields=fields,
        groups=interior + boundary,
        solution=_reference(points, values, len(fields)),
        eval_sampler=fixed_points(points),
        n_eval=len(points),
        resample=resample,
        nets=NETS,
        default_net="4x50",
        description=f"lid-driven cavity, Re = 100, vs Ghia et al. (1982) ({formulation})",
        reference_fields=("u", "v"),
        error_groups={"velocity": ("u", "v")},
    )
