"""A test double shared by the reliability and chunk tests: gradient descent whose
"curvature" state turns NaN while its damping is below ``fail_below``, from step
``fail_at_step`` on (a stand-in for a Gramian or Kronecker factor going bad). Each caller
registers it under its own name with its own step size and failing step."""

import jax
import jax.numpy as jnp

from pinnopt.optim.base import Method, method, more_damping


def register_faulty(name: str, lr: float, fail_at_step: int, poison_params: bool):
    """Register the double as method ``name``. ``poison_params``: the bad state also makes the
    parameters NaN (the step divides by it); otherwise only the state goes bad."""

    @method(name, "test double", safer=more_damping(factor=10.0))
    def faulty(objective, *, damping: float = 1e-6, fail_below: float = 1e-3,
               fail_at_step: int = fail_at_step):
        def init(params):
            return {"factor": jnp.ones(()), "count": jnp.zeros((), jnp.int32)}

        def step(params, state, batch, key):
            loss, grads = jax.value_and_grad(objective.loss)(params, batch)
            bad = (state["count"] >= fail_at_step) & (damping < fail_below)
            factor = jnp.where(bad, jnp.nan, 1.0 + damping)
            scale = factor if poison_params else 1.0 + damping
            new = jax.tree_util.tree_map(lambda p, g: p - lr * g / scale, params, grads)
            return new, {"factor": factor, "count": state["count"] + 1}, {"loss": loss}

        return Method(init, step)

    return faulty
