"""Methods that run other methods: one after another (:func:`sequence`), with the iterates
averaged (:func:`average`), and the old name ``adam-lbfgs`` for the plain PINN baseline "Adam,
then L-BFGS" of the failure-mode comparisons.

    sequence((adam(lr=1e-3), 5000), (lbfgs(), None))

runs Adam for 5000 steps, then L-BFGS to the end of the run. Every phase's state is created at
the start (from the initial parameters) and only the running phase's state changes, so a phase
starts from its fresh state at the parameters the previous phase left (L-BFGS's first step
computes value and gradient). A phase is chosen inside the compiled step (``lax.switch`` on the
step count), so a run resumed in any phase continues exactly.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from pinnopt.optim.base import AnyMethod, Method, MethodValue, alias, method, safer_inner
from pinnopt.optim.constrained import strong_types
from pinnopt.optim.first_order import adam, lbfgs
from pinnopt.optim.gauss_newton import engd

Phases = tuple[tuple[MethodValue, int | None], ...]


class SequenceState(NamedTuple):
    count: jax.Array      # steps taken so far
    phases: tuple[Any, ...]  # each phase's method state


def _phase_safer(value: MethodValue) -> MethodValue | None:
    """Safer settings of every phase that has them (a smaller Adam step, more damping)."""
    phases = value["phases"]
    safer = [(p.safer() or p, n) for p, n in phases]
    if all(s is p for (s, _), (p, _) in zip(safer, phases)):
        return None
    return value.replace(phases=tuple(safer))


@method("sequence", "methods one after another: (method, steps) phases, the last to the end",
        safer=_phase_safer)
def sequence(objective, *, phases: Phases) -> Method:
    """Phase ``i`` runs while ``Σ_{j<i} n_j ≤ count < Σ_{j≤i} n_j``; info: ``loss``, ``phase``."""
    methods = [p.build(objective) for p, _ in phases]
    bounds = []
    total = 0
    for _, steps in phases[:-1]:
        total += steps
        bounds.append(total)
    bounds = jnp.asarray(bounds, jnp.int32)

    def init(params):
        return strong_types(
            SequenceState(jnp.zeros((), jnp.int32), tuple(m.init(params) for m in methods)))

    def step(params, state, batch, key):
        def branch(i):
            def run(params):
                params, inner, info = methods[i].step(params, state.phases[i], batch, key)
                states = tuple(inner if j == i else s for j, s in enumerate(state.phases))
                return params, states, info["loss"]

            return run

        index = jnp.sum(state.count >= bounds) if len(methods) > 1 else 0
        params, states, loss = lax.switch(index, [branch(i) for i in range(len(methods))], params)
        info = {"loss": loss, "phase": jnp.asarray(index, loss.dtype)}
        return params, SequenceState(state.count + 1, states), info

    return Method(init, step)


class AverageState(NamedTuple):
    count: jax.Array  # steps taken so far
    iterate: Any      # the inner method's own parameters (not averaged)
    inner: Any        # the inner method's state


def average_weight(count: jax.Array, decay: float, start: int) -> jax.Array:
    """The weight of the new iterate in step ``count`` (0-based): 1 before ``start`` (the
    average follows the iterate), then ``1 - min(decay, (1 + n) / (10 + n))`` with ``n`` the
    steps since ``start``, so that the first averaged steps are not swamped by old iterates."""
    n = jnp.asarray(count - start, dtype=float)  # float64 when x64 is on
    d = jnp.minimum(decay, (1.0 + n) / (10.0 + n))
    return jnp.where(count < start, 1.0, 1.0 - d)


def _check_average(settings) -> str | None:
    if not 0.0 <= settings["decay"] < 1.0:
        return f"decay must be in [0, 1), got {settings['decay']}"
    if isinstance(settings["start"], bool) or settings["start"] < 0:
        return f"start must be a non-negative integer, got {settings['start']!r}"
    return None


@method("average",
        "an exponential moving average of another method's iterates: the run evaluates, plots "
        "and saves the average (steps on redrawn points are noisy; their average is not)",
        safer=safer_inner("inner"), check=_check_average)
def average(objective, *, inner: AnyMethod = engd(), decay: float = 0.99, start: int = 0) -> Method:
    """``inner`` steps from its own iterate ``θ_k``; the parameters the run sees are

        θ̄_k = d_k θ̄_{k−1} + (1 − d_k) θ_k,    d_k = min(decay, (1 + n) / (10 + n)),

    with ``n`` the steps since ``start`` (before ``start``, θ̄ = θ). ``info`` is the inner
    method's, so ``loss`` is the batch loss at the inner iterate, not at the average."""
    wrapped = inner.build(objective)

    def init(params):
        return AverageState(jnp.zeros((), jnp.int32), params, wrapped.init(params))

    def step(params, state, batch, key):
        iterate, inner_state, info = wrapped.step(state.iterate, state.inner, batch, key)
        w = average_weight(state.count, decay, start)
        # old + w (new - old): an average of equal parameters is exactly those parameters
        averaged = jax.tree_util.tree_map(
            lambda new, old: old + w.astype(old.dtype) * (new - old), iterate, params)
        return averaged, AverageState(state.count + 1, iterate, inner_state), info

    return Method(init, step)


@alias("adam-lbfgs", "Adam for switch_step steps, then L-BFGS (the vanilla PINN baseline of §6)")
def adam_lbfgs(*, lr: float = 1e-3, switch_step: int = 1000, memory: int = 100,
               max_linesearch_steps: int = 25, reuse_linesearch_value: bool = True) -> MethodValue:
    """``sequence((adam(lr=lr), switch_step), (lbfgs(memory=..., ...), None))``."""
    if switch_step < 0:
        raise ValueError(f"adam-lbfgs: switch_step must be >= 0, got {switch_step}")
    return sequence((adam(lr=lr), switch_step),
                    (lbfgs(memory=memory, max_linesearch_steps=max_linesearch_steps,
                           reuse_linesearch_value=reuse_linesearch_value), None))
