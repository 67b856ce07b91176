"""Causal time weighting around any method (docs/methods.md §6; the time-marching lever of
issue 17).

A PINN for a time-dependent problem can fit its PDE residual at late times before the early
times are right, and then settles on a wrong solution (periodic convection at β = 40 is the
classic case). Causal weighting (Wang, Sankaran and Perdikaris, "Respecting causality",
2022) splits the time interval into ``slices`` equal slices and weights the residual of the
weighted groups (role ``pde`` by default) in slice ``k`` by

    W_k = exp(−ε Σ_{j<k} L_j),     L_j = Σ_g w_g · mean over the points of g in slice j of |r|²,

with the slice losses taken at the current parameters and held constant within a step. A
slice only counts once every earlier slice is fitted; ``W_0 = 1``. The weights change with the
parameters, so they are recomputed at the start of every step (the wrapped method then takes
one step on the weighted loss).

The weighted loss is a least-squares problem, so any method fits inside, Gauss–Newton ones
too: the wrapped method sees a view of the objective whose weighted groups carry each point's
weight as an extra column after its coordinates and return ``√W r`` (the
:class:`~pinnopt.optim.constrained.ShiftedGroup` of the constrained methods, which handles
groups that are not pointwise on one network's jet).

``info`` adds ``causal_min_weight`` (the last slice's W: 1 when every slice counts) and
``causal_loss`` (the weighted loss at the incoming parameters); ``loss`` stays the plain
penalty loss, comparable across methods.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from pinnopt.optim.base import InnerMethod, Method, method, safer_inner
from pinnopt.optim.constrained import ShiftedGroup, parse_roles
from pinnopt.optim.gauss_newton import engd
from pinnopt.residuals import Batch, Objective


class CausalView(Objective):
    """The objective with the residuals of ``weighted`` groups multiplied by ``√W`` of their
    points; the batch of a weighted group carries ``W`` as its last column (:meth:`batch`)."""

    def __init__(self, objective: Objective, weighted: frozenset[str]):
        super().__init__(objective.problem, objective.net, objective.dtype)
        groups = []
        for g in objective.groups:
            if g.name in weighted:
                def fn(x, u, g=g):  # the pointwise form, for methods built on group.fn (KFAC)
                    return jnp.sqrt(x[-1]) * jnp.reshape(g.fn(x[:-1], u), (-1,))
                groups.append(ShiftedGroup(g.name, g.sampler, g.n, fn, g.derivs, g.weight,
                                           g.role, 1, base=g,
                                           shift=lambda r, data: jnp.sqrt(data[0]) * r))
            else:
                groups.append(ShiftedGroup(g.name, g.sampler, g.n, g.fn, g.derivs, g.weight,
                                           g.role, 0, base=g))
        self.groups = tuple(groups)

    def batch(self, batch: Batch, weights: dict[str, jax.Array]) -> Batch:
        out = dict(batch)
        for name, w in weights.items():
            out[name] = jnp.concatenate([batch[name], w[:, None].astype(batch[name].dtype)], 1)
        return out


def slice_weights(objective: Objective, residuals: dict[str, jax.Array], batch: Batch,
                  weighted: tuple[str, ...], time_index: int, t_range: tuple[float, float],
                  slices: int, epsilon: float) -> tuple[dict[str, jax.Array], jax.Array]:
    """Per point of each weighted group its slice's ``W``, and the ``W_k`` of every slice, from
    the groups' residuals ``{name: (N_g, c_g)}`` (held constant: no gradient flows through W)."""
    lo, hi = t_range
    totals = jnp.zeros(slices, objective.dtype)
    index = {}
    by_name = {g.name: g for g in objective.groups}
    for name in weighted:
        x = batch[name]
        r = jax.lax.stop_gradient(residuals[name])
        sq = jnp.sum(r.reshape(x.shape[0], -1) ** 2, axis=1)
        k = jnp.clip(jnp.floor((x[:, time_index] - lo) / (hi - lo) * slices), 0, slices - 1)
        k = k.astype(jnp.int32)
        counts = jax.ops.segment_sum(jnp.ones_like(sq), k, slices)
        sums = jax.ops.segment_sum(sq, k, slices)
        totals = totals + by_name[name].weight * sums / jnp.maximum(counts, 1.0)
        index[name] = k
    previous = jnp.concatenate([jnp.zeros(1, totals.dtype), jnp.cumsum(totals)[:-1]])
    w_slices = jnp.exp(-epsilon * previous)
    return {name: w_slices[k] for name, k in index.items()}, w_slices


class CausalState(NamedTuple):
    inner: Any


@method("causal",
        "causal time weighting of the PDE residuals (later time slices count once earlier "
        "ones are fitted) around any method, Gauss-Newton ones included",
        needs=("groups",), safer=safer_inner("inner"))
def causal(objective: Objective, *, inner: InnerMethod = engd(), slices: int = 32,
           epsilon: float = 1.0, roles: str = "pde", time: str = "t") -> Method:
    """Causal weighting (module docstring) of the groups with a role in ``roles`` (a comma
    list) along the coordinate named ``time``, around the method ``inner``."""
    if isinstance(slices, bool) or not isinstance(slices, int) or slices < 1:
        raise ValueError(f"causal: slices must be a positive integer, got {slices!r}")
    if not epsilon >= 0:
        raise ValueError(f"causal: epsilon must be non-negative, got {epsilon}")
    problem = objective.problem
    if time not in problem.coords:
        raise ValueError(f"causal: problem {problem.name!r} has no coordinate {time!r} "
                         f"(its coordinates: {', '.join(problem.coords)})")
    try:
        wanted = parse_roles(roles, "roles")
    except ValueError as err:
        raise ValueError(f"causal: {err}") from None
    weighted = tuple(g.name for g in objective.groups if g.role in wanted)
    if not weighted:
        present = sorted({g.role for g in objective.groups})
        raise ValueError(f"causal: no residual group has a role in {roles!r}; the problem's "
                         f"roles are {', '.join(present)}")
    time_index = problem.coords.index(time)
    t_range = (float(problem.domain.lo[time_index]), float(problem.domain.hi[time_index]))
    view = CausalView(objective, frozenset(weighted))
    wrapped = inner.build(view)

    def init(params):
        return CausalState(wrapped.init(params))

    def step(params, state, batch, key):
        # One pass over every group gives the plain loss and the weights.
        residuals = objective.group_residuals(params, batch)
        scales = objective.scales(batch)
        plain = 0.5 * sum(scales[n] ** 2 * jnp.sum(r**2) for n, r in residuals.items())
        weights, w_slices = slice_weights(objective, residuals, batch, weighted, time_index,
                                          t_range, slices, epsilon)
        params, inner_state, info = wrapped.step(params, state.inner,
                                                 view.batch(batch, weights), key)
        info = {**info, "loss": plain, "causal_loss": info["loss"],
                "causal_min_weight": w_slices[-1]}
        return params, CausalState(inner_state), info

    return Method(init, step)
