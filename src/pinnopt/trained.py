"""A trained model: the network of a run with its latest parameters, ready to evaluate.

    model = pinnopt.load("runs/poisson-engd-seed0")
    values = model.predict(points)          # (N, dim) -> (N, len(model.fields))

:func:`load` reads the run's configuration (importing the plugin modules it recorded) and its
checkpoint, and builds the problem and network, but not the reference solution, the
evaluation set or the check of the problem's residuals that training does: those can take
far longer than the evaluation itself (a numerical reference solve, Taylor-mode residuals).
"""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from numpy.typing import ArrayLike

from pinnopt.config import RunConfig
from pinnopt.models import Model
from pinnopt.precision import uses_float64
from pinnopt.problems import Problem
from pinnopt.residuals import Objective
from pinnopt.training.methods import build_method
from pinnopt.training.rundir import load_config, load_state
from pinnopt.training.setup import Setup, fresh_state

CHUNK = 2048
"""Points per evaluation of the compiled network: :meth:`TrainedModel.predict` evaluates any
number of points in chunks of this size (the last one padded), so one compilation serves
every call."""


class TrainedModel:
    """A network with its trained parameters: ``predict(points)``, or calling the model,
    gives the fields at ``points (N, dim)`` as an ``(N, len(fields))`` array.

    ``config`` is the run's configuration, ``problem`` and ``net`` what it builds, ``params``
    the parameters of checkpoint step ``step``; ``method_state`` is the optimiser's state
    there and ``run_dir`` the run's directory (``None`` for a model made in memory).
    """

    def __init__(self, config: RunConfig, problem: Problem, net: Model, params: Any,
                 step: int = 0, method_state: Any = None, run_dir: Path | None = None):
        self.config = config
        self.problem = problem
        self.net = net
        self.params = params
        self.step = step
        self.method_state = method_state
        self.run_dir = run_dir
        self.objective = Objective(problem, net, jnp.dtype(config.dtype))
        self._apply = jax.jit(self.objective.predict)

    @property
    def fields(self) -> tuple[str, ...]:
        """The names of the output columns."""
        return self.problem.fields

    @property
    def coords(self) -> tuple[str, ...]:
        """The names of the input columns."""
        return self.problem.coords

    @property
    def dim(self) -> int:
        return self.problem.dim

    def __repr__(self) -> str:
        where = f", run {self.run_dir}" if self.run_dir is not None else ""
        return (f"TrainedModel({self.problem.name}: ({', '.join(self.coords)}) -> "
                f"({', '.join(self.fields)}), step {self.step}{where})")

    def _checked(self, points: ArrayLike) -> np.ndarray:
        points = np.asarray(points)
        if points.ndim != 2 or points.shape[1] != self.dim:
            raise ValueError(
                f"points must have shape (N, {self.dim}) for problem {self.problem.name!r} "
                f"(coordinates {', '.join(self.coords)}), got {points.shape}")
        if not (np.issubdtype(points.dtype, np.floating)
                or np.issubdtype(points.dtype, np.integer)):
            raise ValueError(f"points must be real numbers, got an array of dtype {points.dtype}")
        if not np.all(np.isfinite(points)):
            raise ValueError("points must be finite (the array holds NaN or Inf)")
        return points.astype(self.config.dtype)

    @uses_float64
    def predict(self, points: ArrayLike) -> np.ndarray:
        """The fields at ``points (N, dim)``: ``(N, len(fields))``, in the run's dtype."""
        points = self._checked(points)
        values = [np.zeros((0, len(self.fields)), self.config.dtype)]
        for start in range(0, len(points), CHUNK):
            chunk = points[start:start + CHUNK]
            # Padded with copies of its last point: a point of the domain, so the padding
            # evaluates to finite values that are then dropped.
            padded = np.pad(chunk, ((0, CHUNK - len(chunk)), (0, 0)), mode="edge")
            values.append(np.asarray(self._apply(self.params, padded))[:len(chunk)])
        return np.concatenate(values)

    __call__ = predict


@uses_float64
def load(run_dir: str | Path) -> TrainedModel:
    """The trained model of the run in ``run_dir``, with the parameters of its latest
    checkpoint (the one before if the latest is damaged: a warning says so)."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    problem = config.build_problem()
    net = config.build_net(problem)
    objective = Objective(problem, net, jnp.dtype(config.dtype))
    # The method only gives the structure of the checkpointed state it is read into.
    setup = Setup(config, problem, net, objective, build_method(config, objective), None, None)
    state, warning = load_state(run_dir, fresh_state(setup))
    if warning:
        warnings.warn(warning, stacklevel=3)  # the caller of the float64 wrapper
    return TrainedModel(config, problem, net, state["params"], step=state["step"],
                        method_state=state["method_state"], run_dir=run_dir)


def predict(run_dir: str | Path, points: ArrayLike) -> np.ndarray:
    """The trained fields of the run in ``run_dir`` at ``points (N, dim)``: ``(N, fields)``.
    Loads the run on every call: to evaluate a run more than once, :func:`load` it once and
    call the model."""
    return load(run_dir).predict(points)
