"""First-order methods through optax: SGD, Adam (with schedules) and L-BFGS.

Gradient methods differentiate the loss ``L(θ) = ½‖r(θ)‖²`` on the step's batch and apply an
optax transformation. L-BFGS uses optax's limited-memory update with its zoom line search
(strong Wolfe conditions); the line search evaluates the loss on the same batch.
"""

from __future__ import annotations

from typing import Literal

import jax
import jax.numpy as jnp
import optax

from pinnopt.optim.base import Method, halve, method
from pinnopt.residuals import Objective

SCHEDULES = ("constant", "exponential", "cosine")
Schedule = Literal["constant", "exponential", "cosine"]


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


@method("sgd", "stochastic gradient descent with (heavy-ball) momentum", safer=halve("lr"),
        transform=True)
def sgd(*, lr: float = 1e-3, momentum: float = 0.9, nesterov: bool = False,
        schedule: Schedule = "constant", decay_rate: float = 0.96,
        decay_steps: int = 1000) -> optax.GradientTransformation:
    """``θ ← θ − η_k m_k`` with ``m_k = β m_{k−1} + ∇L`` (no momentum when β = 0)."""
    if momentum < 0:
        raise ValueError(f"sgd: momentum must be non-negative, got {momentum}")
    sched = learning_rate_schedule(lr, schedule, decay_rate, decay_steps)
    return optax.sgd(sched, momentum=momentum if momentum > 0 else None, nesterov=nesterov)


@method("adam", "Adam", safer=halve("lr"), transform=True)
def adam(*, lr: float = 1e-3, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
         schedule: Schedule = "constant", decay_rate: float = 0.96,
         decay_steps: int = 1000) -> optax.GradientTransformation:
    """Adam with the learning-rate schedule ``schedule``."""
    sched = learning_rate_schedule(lr, schedule, decay_rate, decay_steps)
    return optax.adam(sched, b1=b1, b2=b2, eps=eps)


@method("lbfgs", "L-BFGS with a zoom (strong Wolfe) line search")
def lbfgs(objective: Objective, *, memory: int = 10, max_linesearch_steps: int = 20,
          reuse_linesearch_value: bool = True,
          initial_step: Literal["one", "keep"] = "one") -> Method:
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
