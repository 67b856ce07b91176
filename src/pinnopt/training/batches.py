"""The batch of each training step, a pure function of the seed and the step.

A problem either keeps one batch for the whole run, drawn from ``fold_in(PRNGKey(seed), 2)``,
or redraws its points (``problem.resample``): step ``s`` then trains on the draw of step
``s − s mod k`` (``k = resample_every``), made from that step's points key
(:func:`step_keys`). Nothing depends on the steps before, so a resumed run trains on exactly
the points of an uninterrupted one.
"""

from __future__ import annotations

from typing import Callable

import jax

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
    devices once per draw by ``place``."""

    def __init__(self, objective: Objective, seed: int, resample_every: int,
                 place: Callable[[Batch], Batch] | None = None):
        self.objective = objective
        self.seed = seed
        self.resample_every = resample_every
        self.place = place
        self._memo: tuple[int | None, Batch] | None = None

    def __call__(self, step: int) -> Batch:
        index = draw_of(self.objective, step, self.resample_every)
        if self._memo is None or self._memo[0] != index:
            batch = draw(self.objective, self.seed, index)
            self._memo = (index, batch if self.place is None else self.place(batch))
        return self._memo[1]
