"""The batch of each training step, a pure function of the seed and the step.

A problem either keeps one batch for the whole run, drawn from ``fold_in(PRNGKey(seed), 2)``,
or redraws its points (``problem.resample``): step ``s`` then trains on the draw of step
``s − s mod k`` (``k = resample_every``), made from that step's points key
(:func:`step_keys`). Nothing depends on the steps before, so a resumed run trains on exactly
the points of an uninterrupted one. Being pure, the draw can also run inside a compiled loop of
steps (:meth:`StepBatches.in_loop`), where the step is a traced integer.
"""

from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp

from pinnopt.residuals import Batch, Objective


def step_keys(seed: int, step: int) -> tuple[jax.Array, jax.Array]:
    """(points key, method key) of one step."""
    return _step_keys(seed, step)


@jax.jit
def _step_keys(seed, step):
    # One compiled call: the five eager PRNG operations cost about 0.7 ms per step on a CPU,
    # more than a whole L-BFGS step of the default problem (same bits as the eager version).
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 1), step)
    keys = jax.random.split(key)
    return keys[0], keys[1]


def draw_of(objective: Objective, step: int, resample_every: int) -> int | None:
    """The step whose draw ``step`` trains on, or ``None`` for a problem's one fixed batch."""
    if not objective.problem.resample:
        return None
    return step - step % resample_every


def draw(objective: Objective, seed: int, index: int | None) -> Batch:
    """The points of draw ``index`` (:func:`draw_of`) of a run with ``seed``."""
    if index is None:
        return objective.sample(jax.random.fold_in(jax.random.PRNGKey(seed), 2))
    return objective.sample(step_keys(seed, index)[0])


def batch_for_step(objective: Objective, seed: int, step: int, resample_every: int) -> Batch:
    """The batch step ``step`` of a run with ``seed`` trains on."""
    return draw(objective, seed, draw_of(objective, step, resample_every))


class StepBatches:
    """:func:`batch_for_step` of one run, as the loop asks for it: step by step, with the
    latest draw kept (most steps reuse it) and, in a data-parallel run, placed on the
    devices once per draw by ``place``; and, for a compiled loop of steps, as a function of
    the traced step (:meth:`in_loop`)."""

    def __init__(self, objective: Objective, seed: int, resample_every: int,
                 place: Callable[[Batch], Batch] | None = None):
        self.objective = objective
        self.seed = seed
        self.resample_every = resample_every
        self.place = place
        self._memo: tuple[int | None, Batch] | None = None
        self._traceable: bool | None = None
        self._compiled = jax.jit(self._draw_traced)

    def __call__(self, step: int) -> Batch:
        index = draw_of(self.objective, step, self.resample_every)
        if self._memo is None or self._memo[0] != index:
            if self.in_loop() is None:
                batch = draw(self.objective, self.seed, index)
            else:
                # Compiled, as inside the loop: op by op, XLA rounds some draws (the kinetic
                # problems' ε) differently in the last bit.
                batch = self._compiled(jnp.asarray(index))
            self._memo = (index, batch if self.place is None else self.place(batch))
        return self._memo[1]

    @property
    def fixed(self) -> bool:
        """Whether every step trains on the same batch (the problem does not redraw)."""
        return not self.objective.problem.resample

    def in_loop(self) -> Callable[[jax.Array], Batch] | None:
        """``step -> batch`` for a traced integer step inside a compiled loop: the same draws,
        bit for bit, as :meth:`__call__` (not placed on the devices). ``None`` for a problem with one
        fixed batch, and for samplers that cannot be traced (scrambled Sobol points are drawn
        by scipy on the host): then each step's batch comes from :meth:`__call__`."""
        if self.fixed:
            return None
        if self._traceable is None:
            self._traceable = _traceable(self._draw_traced)
        return self._draw_traced if self._traceable else None

    def _draw_traced(self, step: jax.Array) -> Batch:
        return batch_for_step(self.objective, self.seed, step, self.resample_every)


def _traceable(draw: Callable[[jax.Array], Batch]) -> bool:
    """Whether ``draw`` runs on a traced step (no conversion of traced values to Python or
    NumPy values)."""
    try:
        jax.eval_shape(draw, jax.ShapeDtypeStruct((), jnp.asarray(0).dtype))
    except (jax.errors.ConcretizationTypeError, jax.errors.TracerIntegerConversionError,
            jax.errors.TracerArrayConversionError, jax.errors.TracerBoolConversionError):
        return False
    return True
