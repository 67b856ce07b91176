"""Residual groups, the loss, and their evaluation on a network (docs/methods.md §1).

A problem is a set of named residual groups ``r_g(θ) ∈ R^{N_g × c_g}``, each evaluated on its
own points. The loss is

    L(θ) = Σ_g  w_g / (2 N_g) · ‖r_g(θ)‖².

Gauss–Newton methods use the stacked, scaled residual vector ``r = [sqrt(w_g/N_g) r_g]_g``
(so that ``L = ½‖r‖²``) and its Jacobian; KFAC uses the per-point residual functions and the
Taylor-mode pass directly; constrained and multi-task methods split the groups.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import jax
import jax.numpy as jnp

from pinnopt.geometry import Sampler
from pinnopt.models import Model
from pinnopt.nets import Params
from pinnopt.taylor import Derivatives, Jet

Batch = dict[str, jax.Array]
"""Points per residual group, ``{group name: (N_g, dim)}``."""

PointResidual = Callable[[jax.Array, Jet], jax.Array]
"""``fn(x (dim,), jet of one point) -> residual`` (a scalar or a ``(c,)`` vector)."""

ROLES = ("pde", "boundary", "initial", "constraint", "data")


@dataclass(frozen=True)
class ResidualGroup:
    """One named residual group.

    ``fn`` is evaluated per point on the Taylor-mode jet requested by ``derivs``; ``sampler``
    draws its ``n`` points; ``weight`` is ``w_g``; ``role`` says what the group is for
    (PDE interior, boundary, initial, ...), which constrained and multi-task methods use.
    """

    name: str
    sampler: Sampler
    n: int
    fn: PointResidual
    derivs: Derivatives = Derivatives()
    weight: float = 1.0
    role: str = "pde"

    def __post_init__(self):
        if self.n < 1:
            raise ValueError(f"group {self.name!r}: needs at least one point, got n={self.n}")
        if not self.weight >= 0:
            raise ValueError(f"group {self.name!r}: weight must be non-negative, got {self.weight}")
        if self.role not in ROLES:
            raise ValueError(f"group {self.name!r}: role {self.role!r} not in {', '.join(ROLES)}")

    def residual(self, net: Model, params: Params, x: jax.Array) -> jax.Array:
        """Residuals at points ``x (N, dim)``, shape ``(N, c)``, from the model's jet."""
        out = net.jet(params, x, self.derivs)
        r = jax.vmap(self.fn)(x, out)
        return r.reshape(x.shape[0], -1)


class Objective:
    """A problem's residual groups bound to a model (:class:`pinnopt.models.Model`):
    residuals, loss, errors.

    Every method consumes this one object. ``batch`` maps group names to points.
    """

    def __init__(self, problem, net: Model, dtype=jnp.float64):
        self.problem = problem
        self.net = net
        self.dtype = jnp.dtype(dtype)
        self.groups: tuple[ResidualGroup, ...] = tuple(problem.groups)

    # -- points -----------------------------------------------------------------------
    def sample(self, key: jax.Array) -> Batch:
        """Fresh points for every group (one key per group, derived from ``key``)."""
        keys = jax.random.split(key, len(self.groups))
        return {
            g.name: g.sampler(k, g.n).astype(self.dtype) for g, k in zip(self.groups, keys)
        }

    # -- residuals and loss -------------------------------------------------------------
    def group_residuals(self, params: Params, batch: Batch) -> dict[str, jax.Array]:
        """``{name: (N_g, c_g)}`` unscaled residuals."""
        return {g.name: g.residual(self.net, params, batch[g.name]) for g in self.groups}

    def scales(self, batch: Batch) -> dict[str, float]:
        """``sqrt(w_g / N_g)`` per group: the factor that makes ``L = ½ ‖r‖²``."""
        return {g.name: (g.weight / batch[g.name].shape[0]) ** 0.5 for g in self.groups}

    def residual_vector(self, params: Params, batch: Batch) -> jax.Array:
        """The stacked scaled residual ``r`` with ``L = ½‖r‖²``, shape ``(Σ_g N_g c_g,)``."""
        res = self.group_residuals(params, batch)
        scales = self.scales(batch)
        return jnp.concatenate([scales[name] * r.ravel() for name, r in res.items()])

    def group_losses(self, params: Params, batch: Batch) -> dict[str, jax.Array]:
        res = self.group_residuals(params, batch)
        scales = self.scales(batch)
        return {name: 0.5 * scales[name] ** 2 * jnp.sum(r**2) for name, r in res.items()}

    def loss(self, params: Params, batch: Batch) -> jax.Array:
        r = self.residual_vector(params, batch)
        return 0.5 * jnp.sum(r**2)

    # -- solution and errors --------------------------------------------------------------
    def predict(self, params: Params, x: jax.Array) -> jax.Array:
        """Network fields at ``x (N, dim)``: ``(N, num_fields)``."""
        return self.net.apply(params, x.astype(self.dtype))

    def errors(self, params: Params, x: jax.Array, reference: jax.Array) -> dict[str, jax.Array]:
        """RMS absolute error ``sqrt(mean((u−u*)²))`` and relative L2 ``‖u−u*‖/‖u*‖`` per field
        the reference covers (``problem.scored_fields``) and per ``problem.error_groups``.

        Non-finite reference entries mark points where the reference has no value for that
        field; they are left out of its error. A problem's own ``metrics`` are added.
        """
        u = self.predict(params, x)
        index = {f: i for i, f in enumerate(self.problem.fields)}

        def sums(fields):
            cols = [index[f] for f in fields]
            known = jnp.isfinite(reference[:, cols])
            ref = jnp.where(known, reference[:, cols], 0.0)
            diff = jnp.where(known, u[:, cols] - ref, 0.0)
            return jnp.sum(diff**2), jnp.sum(ref**2), jnp.sum(known)

        out = {}
        groups = {f: (f,) for f in self.problem.scored_fields}
        groups.update(self.problem.error_groups)
        for name, fields in groups.items():
            sq_err, sq_ref, count = sums(fields)
            out[f"rms_{name}"] = jnp.sqrt(sq_err / count)
            out[f"rel_l2_{name}"] = jnp.sqrt(sq_err / sq_ref)
        if self.problem.metrics is not None:
            out.update(self.problem.metrics(x, u, reference))
        return out
