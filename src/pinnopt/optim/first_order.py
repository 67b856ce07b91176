"""First-order methods through optax: SGD, Adam (with schedules) and L-BFGS.

Gradient methods differentiate the loss ``L(θ) = ½‖r(θ)‖²`` on the step's batch and apply an
optax transformation. L-BFGS uses optax's limited-memory update with its zoom line search
(strong Wolfe conditions); the line search evaluates the loss on the same batch.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import optax

from pinnopt.optim.base import Method, MethodSpec, halve, register
from pinnopt.residuals import Objective

SCHEDULES = ("constant", "exponential", "cosine")


def learning_rate_schedule(
    lr: float, schedule: str, decay_rate: float, decay_steps: int
) -> optax.Schedule:
    """``constant``: lr; ``exponential``: lr · decay_rate^(step/decay_steps) (staircase-free);
    ``cosine``: cosine decay from lr to 0 over decay_steps."""
    if not lr > 0:
        raise ValueError(f"learning rate must be positive, got lr={lr}")
    if decay_steps < 1:
        raise ValueError(f"decay_steps must be at least 1, got {decay_steps}")
    if schedule == "constant":
        return optax.constant_schedule(lr)
    if schedule == "exponential":
        if not 0 < decay_rate <= 1:
            raise ValueError(f"decay_rate must be in (0, 1], got {decay_rate}")
        return optax.exponential_decay(lr, decay_steps, decay_rate)
    return optax.cosine_decay_schedule(lr, decay_steps)


def gradient_method(objective: Objective, transform: optax.GradientTransformation) -> Method:
    """Any optax transformation applied to the loss gradient."""

    def init(params):
        return transform.init(params)

    def step(params, state, batch, key):
        loss, grads = jax.value_and_grad(objective.loss)(params, batch)
        updates, state = transform.update(grads, state, params)
        return optax.apply_updates(params, updates), state, {"loss": loss}

    return Method(init, step)


def sgd(objective, lr, momentum, nesterov, schedule, decay_rate, decay_steps):
    sched = learning_rate_schedule(lr, schedule, decay_rate, decay_steps)
    mom = momentum if momentum > 0 else None
    return gradient_method(objective, optax.sgd(sched, momentum=mom, nesterov=nesterov))


def adam(objective, lr, b1, b2, eps, schedule, decay_rate, decay_steps):
    sched = learning_rate_schedule(lr, schedule, decay_rate, decay_steps)
    return gradient_method(objective, optax.adam(sched, b1=b1, b2=b2, eps=eps))


def lbfgs(objective, memory, max_linesearch_steps, reuse_linesearch_value, initial_step):
    """optax L-BFGS with the zoom line search on the step's batch.

    When points are fixed, the loss and gradient at the new parameters are already known
    from the line search and are reused (``reuse_linesearch_value``); with points redrawn
    each step they must be recomputed on the new batch.

    ``initial_step``: the line search's first trial step, ``"one"`` (the full quasi-Newton
    step, the classical choice since the L-BFGS direction is already scaled) or ``"keep"``
    (the step accepted last time, optax's default). On 2d Poisson "one" converged markedly
    faster: RMS error 2.2e-4 against 6.8e-4 after 20 s on one CPU core (D = 257).
    """
    if memory < 1:
        raise ValueError(f"L-BFGS memory must be at least 1, got {memory}")
    transform = optax.lbfgs(
        memory_size=memory,
        linesearch=optax.scale_by_zoom_linesearch(
            max_linesearch_steps=max_linesearch_steps, verbose=False,
            initial_guess_strategy=initial_step,
        ),
    )
    reuse = reuse_linesearch_value and not objective.problem.resample
    loss_fn = objective.loss

    def init(params):
        return transform.init(params)

    def step(params, state, batch, key):
        def value_fn(p):
            return loss_fn(p, batch)

        if reuse:
            loss, grads = optax.value_and_grad_from_state(value_fn)(params, state=state)
        else:
            loss, grads = jax.value_and_grad(value_fn)(params)
        updates, state = transform.update(
            grads, state, params, value=loss, grad=grads, value_fn=value_fn
        )
        step_size = optax.tree_utils.tree_get(state, "learning_rate")
        info = {"loss": loss, "step_size": jnp.asarray(step_size, loss.dtype)}
        return optax.apply_updates(params, updates), state, info

    return Method(init, step)


_SCHEDULE_HPARAMS = {"schedule": "constant", "decay_rate": 0.96, "decay_steps": 1000}

register(MethodSpec(
    "sgd", sgd,
    {"lr": 1e-3, "momentum": 0.9, "nesterov": False, **_SCHEDULE_HPARAMS},
    "stochastic gradient descent with (heavy-ball) momentum",
    {"schedule": SCHEDULES},
    safer=halve("lr"),
))
register(MethodSpec(
    "adam", adam,
    {"lr": 1e-3, "b1": 0.9, "b2": 0.999, "eps": 1e-8, **_SCHEDULE_HPARAMS},
    "Adam",
    {"schedule": SCHEDULES},
    safer=halve("lr"),
))
register(MethodSpec(
    "lbfgs", lbfgs,
    {"memory": 10, "max_linesearch_steps": 20, "reuse_linesearch_value": True,
     "initial_step": "one"},
    "L-BFGS with a zoom (strong Wolfe) line search",
    {"initial_step": ("one", "keep")},
))
