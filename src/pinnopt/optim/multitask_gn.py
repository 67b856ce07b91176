"""Multi-task Gauss–Newton: aggregators applied to per-task preconditioned directions (issue 18,
item 3; docs/methods.md §3 and §7).

The loss ``L = ½‖r‖²`` splits into task losses ``L_i = ½‖r_i‖²`` by a partition of the residual
rows (:class:`~pinnopt.optim.multitask.TaskSplit`: ε decades, groups, ...), with task gradients
``g_i = Jᵀ r_i`` (``r_i``: ``r`` with the rows of the other tasks zeroed). With one damped
Gauss–Newton matrix ``G + λI = JᵀJ + λI`` of all the rows, every task gets its natural direction

    d_i = (JᵀJ + λI)⁻¹ Jᵀ r_i          (m right-hand sides, one factorisation)

or, in sample space when N < D, ``d_i = Jᵀ (JJᵀ + λI)⁻¹ r_i``. Since ``Σ_i r_i = r``, the plain
sum ``Σ_i d_i`` is the ENGD direction of the whole loss; a conflict aggregator (``pcgrad``,
``config``, ``hrgrad``, ...) combines the ``d_i`` instead of the raw ``g_i`` and decides how the
tasks share the step. ``θ ← θ − α·update`` with the grid line search on ``L``; with
``adapt_damping`` (default) ``λ`` follows Martens' rule on the reduction ratio of the full step,
as ``engd(adapt_damping=true)``.

``task_weights="inverse-loss"`` (per-task adaptive weights) scales each ``d_i`` by
``mean_j L_j / L_i`` before aggregation (every weighted task loss then equals the mean one), so
that a task whose loss is already small (a decade of ε that is fitted) still counts as much
as one that is not; ``"none"`` keeps the natural scale, where the sum is plain Gauss–Newton.

Selectable by name: ``pinnopt train --method multitask-engd --opt aggregator=hrgrad
--opt tasks=eps-decades``. Info: ``loss``, ``step_size``, ``damping``, ``rho``, the conflict
statistics of the preconditioned directions (``cos_min``, ``cos_mean``, ``conflict_fraction``)
and of the raw gradients (``grad_cos_min``, ``grad_cos_mean``), ``update_cos_min`` against the
directions, and the per-task ``task_loss_<label>`` / ``task_rate_<label>``.
"""

from __future__ import annotations

from typing import Any, Literal, NamedTuple

import jax
import jax.numpy as jnp

from pinnopt.optim import aggregators
from pinnopt.optim.base import Aggregator, Method, method, more_damping
from pinnopt.optim.gauss_newton import (
    checked_variant,
    damped_solve,
    martens_damping,
    residual_and_jacobian,
)
from pinnopt.optim.gramian import flatten
from pinnopt.optim.linesearch import apply_step, grid_line_search
from pinnopt.optim.multitask import (
    TaskSplitName,
    TaskWeights,
    _cosines,
    inverse_loss_weights,
    make_task_split,
    sum_,
    task_loss_info,
)
from pinnopt.residuals import Batch, Objective


class MultitaskGNState(NamedTuple):
    damping: jax.Array          # the current λ
    aggregator: Any             # the aggregator's state (() unless stateful)
    previous_losses: jax.Array  # (m,) task losses of the previous step (0 before the first)


def row_tasks(objective: Objective, split, params, batch: Batch) -> jax.Array:
    """The task of every row of the stacked residual (:meth:`Objective.residual_vector`'s
    order: groups, points, components), ``(N,) int``."""
    shapes = jax.eval_shape(objective.group_residuals, params, batch)
    assigned = split.assign(batch)
    return jnp.concatenate([jnp.repeat(assigned[g.name], shapes[g.name].shape[1])
                            for g in objective.groups])


def task_directions(jac: jax.Array, masked: jax.Array, damping, variant: str, solver: str
                    ) -> tuple[jax.Array, jax.Array]:
    """``(JᵀJ + λI)⁻¹ Jᵀ R`` as rows ``(m, D)`` for the task residuals ``R (N, m)``, from one
    factorisation (``variant`` ``full``: D×D; ``woodbury``: N×N), and the pseudo-inverse flag."""
    if variant == "woodbury":
        coefficients, fallback = damped_solve(jac @ jac.T, masked, damping, solver)
        return (jac.T @ coefficients).T, fallback
    solution, fallback = damped_solve(jac.T @ jac, jac.T @ masked, damping, solver)
    return solution.T, fallback


@method("multitask-engd", "multi-task Gauss–Newton: per-task natural directions from one "
        "damped Gramian, combined by an aggregator, grid line search",
        needs=("groups", "residuals"), safer=more_damping())
def multitask_engd(objective: Objective, *, aggregator: Aggregator = sum_(),
                   tasks: TaskSplitName = "eps-decades", task_weights: TaskWeights = "none",
                   variant: Literal["auto", "full", "woodbury"] = "auto", damping: float = 1.0,
                   adapt_damping: bool = True, solver: Literal["cholesky", "eigh"] = "cholesky",
                   max_memory_gb: float = 4.0, line_search_candidates: int = 31) -> Method:
    """Per-task Gauss–Newton directions ``d_i = (JᵀJ + λI)⁻¹ Jᵀ r_i`` combined by ``aggregator``
    (module docstring). With ``aggregator=sum`` and ``task_weights="none"`` the step is
    ``engd``'s."""
    if not damping >= 0:
        raise ValueError(f"multitask-engd: damping must be non-negative, got {damping}")
    if not max_memory_gb > 0:
        raise ValueError(f"multitask-engd: max_memory_gb must be positive, got {max_memory_gb}")
    if line_search_candidates < 1:
        raise ValueError(f"multitask-engd: line_search_candidates must be at least 1, "
                         f"got {line_search_candidates}")
    split = make_task_split(objective, tasks)
    agg = aggregator.build(None)
    if agg.one_task is not None:
        raise ValueError(f"multitask-engd: aggregator {aggregator.name!r} takes one task's "
                         f"gradient per step; choose one that combines all tasks (sum, pcgrad, "
                         f"mgda, config, hrgrad)")
    m = split.m

    def init(params):
        flat, _ = flatten(params)
        return MultitaskGNState(jnp.asarray(damping, flat.dtype),
                                agg.init(m, flat.size, flat.dtype), jnp.zeros(m, flat.dtype))

    def step(params, state, batch, key):
        flat, unravel = flatten(params)
        resolved = checked_variant(objective, params, batch, variant, max_memory_gb,
                                   "multitask-engd", ("woodbury", "full"))
        residual, jac = residual_and_jacobian(objective, params, batch)
        masks = jax.nn.one_hot(row_tasks(objective, split, params, batch), m, dtype=flat.dtype)
        masked = residual[:, None] * masks                      # (N, m): r_i as columns
        losses = 0.5 * jnp.sum(masked**2, axis=0)
        loss = jnp.sum(losses)
        lam = state.damping
        directions, fallback = task_directions(jac, masked, lam, resolved, solver)
        if task_weights == "inverse-loss":
            directions = inverse_loss_weights(losses)[:, None] * directions
        update, agg_state, agg_info = agg.aggregate(directions, state.aggregator, key)
        direction = unravel(-update)
        loss_fn = lambda p: objective.loss(p, batch)  # noqa: E731
        alpha, _ = grid_line_search(loss_fn, params, direction, loss, line_search_candidates)
        info = {"loss": loss, "step_size": alpha, "damping": lam, "pseudo_inverse": fallback,
                **aggregators.conflict_stats(directions),
                "update_cos_min": _cosines(directions, update)}
        raw = aggregators.conflict_stats((jac.T @ masked).T).items()  # rows g_i = Jᵀ r_i
        info.update({f"grad_{k}": v for k, v in raw if k != "conflict_fraction"})
        info.update({k: jnp.asarray(v, flat.dtype) for k, v in agg_info.items()})
        new_lam = lam
        if adapt_damping:
            model_step = -(jac @ update)
            predicted = residual @ model_step + 0.5 * jnp.sum(model_step**2)
            info["rho"] = (loss_fn(apply_step(params, direction, 1.0)) - loss) / predicted
            new_lam = martens_damping(lam, info["rho"])
        info.update(task_loss_info(split.labels, losses, state.previous_losses))
        return (apply_step(params, direction, alpha),
                MultitaskGNState(new_lam, agg_state, losses), info)

    return Method(init, step)
