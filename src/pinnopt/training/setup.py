"""What a run derives from its configuration, and the state it starts from."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp

from pinnopt.config import ConfigError, RunConfig
from pinnopt.nets import MLP, Params
from pinnopt.optim import Method
from pinnopt.problems import Problem
from pinnopt.residuals import Objective
from pinnopt.training.methods import build_method

TrainState = dict[str, Any]
"""The state a run resumes from, as a checkpoint holds it: ``step``, ``train_time`` (seconds
of training so far), ``params``, ``method_state`` and ``next_eval`` (the next step to
evaluate)."""


@dataclass
class Setup:
    """Everything a run derives from its configuration. ``eval_points`` (N, dim) and
    ``eval_reference`` (N, fields) are the evaluation set the errors are measured on, ``None``
    in a setup built without one (``build(config, reference=False)``)."""

    config: RunConfig
    problem: Problem
    net: MLP
    objective: Objective
    method: Method
    eval_points: jax.Array | None
    eval_reference: jax.Array | None

    @property
    def dtype(self) -> jnp.dtype:
        return jnp.dtype(self.config.dtype)


def build(config: RunConfig, reference: bool = True) -> Setup:
    """Problem, network, objective, method and evaluation set of a configuration.

    ``reference=False`` skips the reference solution (no evaluation set, no check of the
    reference): for diagnostics that train without measuring errors, since some references
    are numerical solves that take longer than the diagnosis.
    """
    problem = config.build_problem()
    net = config.build_net(problem)
    dtype = jnp.dtype(config.dtype)
    objective = Objective(problem, net, dtype)
    method = build_method(config, objective)
    check_problem(problem, objective, reference)
    if config.resample_every != 1 and not problem.resample:
        raise ConfigError(f"resample_every={config.resample_every} needs a problem that redraws "
                          f"its points; {problem.name!r} keeps one batch here (problem option "
                          f"resample=true, where it has one)")
    if not reference:
        return Setup(config, problem, net, objective, method, None, None)
    x = problem.eval_points().astype(dtype)
    return Setup(config, problem, net, objective, method, x, problem.reference(x).astype(dtype))


def check_problem(problem: Problem, objective: Objective, reference: bool = True) -> None:
    """Catch a broken problem definition at load, with a clear message: samplers must give
    ``(n, dim)`` points inside the domain, residuals ``(n, c)`` finite values, and (with
    ``reference``) the reference ``(n, fields)`` finite values."""
    key = jax.random.PRNGKey(0)
    params = objective.net.init(key, objective.dtype)
    n = 4
    for group in problem.groups:
        try:
            x = jnp.asarray(group.sampler(key, n))
        except Exception as err:  # a user's sampler: report whatever it raised
            raise ConfigError(f"problem {problem.name!r}: sampler of group {group.name!r} "
                              f"failed: {err}") from None
        if x.shape != (n, problem.dim):
            raise ConfigError(f"problem {problem.name!r}: sampler of group {group.name!r} gave "
                              f"points of shape {x.shape}, expected ({n}, {problem.dim})")
        if not bool(jnp.all(problem.domain.contains(x, tol=1e-9))):
            raise ConfigError(f"problem {problem.name!r}: group {group.name!r} has points "
                              f"outside the domain {problem.domain.lo}..{problem.domain.hi}")
        try:
            r = group.residual(objective.net, params, x.astype(objective.dtype))
        except Exception as err:
            raise ConfigError(f"problem {problem.name!r}: residual of group {group.name!r} "
                              f"failed on {n} points: {type(err).__name__}: {err}") from None
        if r.ndim != 2 or r.shape[0] != n:
            raise ConfigError(f"problem {problem.name!r}: residual of group {group.name!r} has "
                              f"shape {r.shape}, expected ({n}, components)")
        if not bool(jnp.all(jnp.isfinite(r))):
            raise ConfigError(f"problem {problem.name!r}: residual of group {group.name!r} is "
                              f"not finite at initialisation")
    if not reference:
        return
    if problem.solution is None:
        raise ConfigError(f"problem {problem.name!r} has no reference solution to report "
                          f"errors against")
    x = problem.eval_points()[:n]
    try:
        ref = jnp.asarray(problem.solution(x))
    except Exception as err:
        raise ConfigError(f"problem {problem.name!r}: reference solution failed: {err}") from None
    if ref.size != n * len(problem.fields) and ref.shape[0] != n:
        raise ConfigError(f"problem {problem.name!r}: reference solution has shape {ref.shape}, "
                          f"expected ({n}, {len(problem.fields)})")


def init_params(setup: Setup) -> Params:
    """The network's initial parameters of the run's seed, in the run's dtype."""
    key = jax.random.fold_in(jax.random.PRNGKey(setup.config.seed), 0)
    return jax.tree_util.tree_map(lambda a: a.astype(setup.dtype), setup.net.init(key))


def fresh_state(setup: Setup) -> TrainState:
    """The state of step 0: initial parameters, the method's initial state, nothing trained."""
    params = init_params(setup)
    return {
        "step": 0,
        "train_time": 0.0,
        "params": params,
        "method_state": setup.method.init(params),
        "next_eval": 0,
    }
