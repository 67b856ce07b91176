"""The first-collision split of the transport problem (docs/methods.md §8.1, docs/kinetic.md).

For the inflow problem of :mod:`pinnopt.problems.transport` (f = 1 entering at x = 0 for
v > 0, zero initial data), the particles that have not collided yet solve

    ε ∂_t f_u + v ∂_x f_u = −f_u / ε,     f_u(t, 0, v > 0) = 1,   f_u(0, x, v) = 0.

Along a characteristic x = (v/ε)(t − t₀), a particle that entered at time t₀ ≥ 0 has been
absorbed at rate 1/ε² for the time ε x / v it took to reach x, so

    f_u(t, x, v) = exp(−x / (ε v))   for v > 0 and x < v t / ε,       0 otherwise.

Its density integrates the velocities fast enough to have reached x (v ≥ a = min(1, ε x / t)):

    ρ_u(t, x) = ½ ∫_a^1 e^{−c/v} dv = ½ [G(1) − G(a)],   c = x / ε,
    G(v) = v e^{−c/v} − c E₁(c/v),

since dG/dv = e^{−c/v} (E₁ the exponential integral, d/dz E₁(z) = −e^{−z}/z). G(0) = 0,
and at x = 0 (c = 0, a = 0) ρ_u = ½: the incoming half of the velocities.

f_u carries the front x = t/ε that a network cannot fit; the remainder f_n = f − s f_u, for a
blend s ∈ [0, 1], has inflow 1 − s and solves the transport equation with the isotropic
source s ρ_u / ε:  ε ∂_t f_n + v ∂_x f_n = (⟨f_n⟩ + s ρ_u − f_n)/ε. The source is large in a
boundary layer of width ε when ε is small, so the blend s(ε) switches the split off there
(:func:`blend`).

Everything here is JAX, float64-accurate and safe under forward-mode differentiation in every
argument (no NaN from the branches that ``jnp.where`` discards): :func:`exp1` is our own,
since ``jax.scipy.special.exp1`` does not finish on arrays in float64 in the jax this was
written against (0.10.2; scalars work).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import jax
import jax.numpy as jnp

from pinnopt.taylor import Derivatives, Jet

EULER_GAMMA = 0.57721566490153286061
_SERIES_TERMS = 40  # z ≤ 2: the last term is 2⁴⁰/(40·40!) ≈ 3e-38
_FRACTION_TERMS = 50  # z > 2: relative error ≤ 4e-15 (checked against scipy in the tests)
BLEND = (1e-2, 1e-1)
"""Default ``(ε_off, ε_on)`` of :func:`blend`: no split below ε_off, the full split above ε_on."""


@jax.custom_jvp
def exp1(z: jax.Array) -> jax.Array:
    """The exponential integral E₁(z) = ∫_z^∞ e^{−s}/s ds for z > 0, elementwise.

    z ≤ 2: the power series E₁(z) = −γ − ln z − Σ_{k≥1} (−z)^k / (k · k!) (40 terms);
    z > 2: the continued fraction E₁(z) = e^{−z} / (z + 1 − 1²/(z + 3 − 2²/(z + 5 − …)))
    evaluated forwards by Lentz's method (50 levels). E₁(0) = ∞.
    """
    z = jnp.asarray(z)
    small = z <= 2.0
    zs = jnp.where(small, z, 1.0)
    zs_pos = jnp.where(zs > 0, zs, 1.0)

    def series_term(k, carry):
        term, total = carry
        term = -term * zs / k
        return term, total + term / k

    _, total = jax.lax.fori_loop(1, _SERIES_TERMS + 1, series_term,
                                 (jnp.ones_like(zs), jnp.zeros_like(zs)))
    series = jnp.where(zs > 0, -EULER_GAMMA - jnp.log(zs_pos) - total, jnp.inf)

    zl = jnp.where(small, 3.0, z)
    tiny = jnp.finfo(zl.dtype).tiny

    def lentz_step(i, carry):
        b, c, d, h = carry
        a = -(i * i).astype(zl.dtype)
        b = b + 2.0
        d = 1.0 / (a * d + b)
        c = b + a / c
        return b, c, d, h * c * d

    b0 = zl + 1.0
    _, _, _, h = jax.lax.fori_loop(1, _FRACTION_TERMS + 1, lentz_step,
                                   (b0, jnp.full_like(zl, 1.0 / tiny), 1.0 / b0, 1.0 / b0))
    fraction = h * jnp.exp(-zl)
    return jnp.where(small, series, fraction)


@exp1.defjvp
def _exp1_jvp(primals, tangents):
    (z,), (dz,) = primals, tangents
    z_pos = jnp.where(z > 0, z, 1.0)
    slope = jnp.where(z > 0, -jnp.exp(-z_pos) / z_pos, -jnp.inf)
    return exp1(z), slope * dz


def uncollided(t: jax.Array, x: jax.Array, v: jax.Array, eps: jax.Array) -> jax.Array:
    """f_u(t, x, v) = exp(−x/(εv)) where v > 0 and x < v t / ε, else 0 (broadcasting)."""
    incoming = v > 0
    v_pos = jnp.where(incoming, v, 1.0)
    reached = incoming & (x < v_pos * t / eps)
    return jnp.where(reached, jnp.exp(-x / (eps * v_pos)), 0.0)


def uncollided_density(t: jax.Array, x: jax.Array, eps: jax.Array) -> jax.Array:
    """ρ_u(t, x) = ⟨f_u⟩ = ½ [G(1) − G(a)] exactly (module docstring), for t ≥ 0, x ≥ 0."""
    t, x, eps = jnp.broadcast_arrays(*(jnp.asarray(a) for a in (t, x, eps)))
    c = x / eps
    started = t > 0
    a = jnp.where(started, jnp.minimum(1.0, x * eps / jnp.where(started, t, 1.0)), 1.0)

    def G(v):  # v ∈ (0, 1]; c E₁(c/v) → 0 as c → 0
        z = c / v
        tail = jnp.where(c > 0, c * exp1(jnp.where(c > 0, z, 1.0)), 0.0)
        return v * jnp.exp(-z) - tail

    at_a = jnp.where(a > 0, G(jnp.where(a > 0, a, 1.0)), 0.0)  # G(0) = 0
    return 0.5 * (G(jnp.ones_like(a)) - at_a)


def blend(eps: jax.Array, eps_off: float = BLEND[0], eps_on: float = BLEND[1]) -> jax.Array:
    """s(ε) ∈ [0, 1]: 0 for ε ≤ ε_off, 1 for ε ≥ ε_on, and between them the quintic
    smoothstep 6u⁵ − 15u⁴ + 10u³ of u = log(ε/ε_off) / log(ε_on/ε_off) (twice continuously
    differentiable in ε, so the second-order jets of the split stay finite)."""
    u = jnp.clip(jnp.log(eps / eps_off) / math.log(eps_on / eps_off), 0.0, 1.0)
    return u**3 * (10.0 + u * (-15.0 + 6.0 * u))


@dataclass(frozen=True)
class FirstCollision:
    """The blended uncollided part s(ε) f_u of the transport model, at rows ``X = (t, x, v,
    eps)`` ``(N, 4)``. ``eps_off``, ``eps_on``: the blend's ends (:func:`blend`)."""

    eps_off: float = BLEND[0]
    eps_on: float = BLEND[1]

    def __post_init__(self):
        if not 0 < self.eps_off < self.eps_on:
            raise ValueError(f"the split's blend needs 0 < eps_off < eps_on, got "
                             f"[{self.eps_off}, {self.eps_on}]")

    def weight(self, eps: jax.Array) -> jax.Array:
        """s(ε)."""
        return blend(eps, self.eps_off, self.eps_on)

    def density(self, X: jax.Array) -> jax.Array:
        """s ρ_u at the rows, ``(N, 1)``: the isotropic source (times ε) of the remainder."""
        t, x, eps = X[:, 0:1], X[:, 1:2], X[:, 3:4]
        return self.weight(eps) * uncollided_density(t, x, eps)

    def at_nodes(self, X: jax.Array, nodes: jax.Array) -> jax.Array:
        """s f_u at the rows and every velocity node, ``(N, nv)``."""
        t, x, eps = X[:, 0:1], X[:, 1:2], X[:, 3:4]
        return self.weight(eps) * uncollided(t, x, nodes[None, :], eps)

    def fields(self, row: jax.Array) -> jax.Array:
        """The split's share of the transport fields at one row ``(4,)``: ``(3,)`` =
        (s ρ_u, s (f_u − ρ_u)/ε, s f_u) at the row's own v: its macro part, its micro part
        (zero velocity average, exactly: ρ_u is the exact average of f_u) and f."""
        t, x, v, eps = row[0], row[1], row[2], row[3]
        s = self.weight(eps)
        f_u, rho_u = uncollided(t, x, v, eps), uncollided_density(t, x, eps)
        return jnp.stack([s * rho_u, s * (f_u - rho_u) / eps, s * f_u])

    def jet(self, X: jax.Array, derivs: Derivatives) -> Jet:
        """The jet of :meth:`fields` at the rows, ``value (N, 3)``, along ``derivs``
        (directions in (t, x, v, eps)) by forward-mode autodiff; the indicator of the front
        has derivative zero (f_u's jump is not a distribution here)."""
        directions = [jnp.asarray(d, X.dtype) for d in derivs.directions]

        def along(d):
            return lambda row: jax.jvp(self.fields, (row,), (d,))[1]

        value = jax.vmap(self.fields)(X)
        n = X.shape[0]
        grad = (jnp.stack([jax.vmap(along(d))(X) for d in directions], axis=1) if directions
                else jnp.zeros((n, 0, 3), X.dtype))
        second = None
        if derivs.second is not None:
            second = jnp.zeros_like(value)
            for c, d in zip(derivs.second, directions):
                if c:
                    second = second + c * jax.vmap(lambda row, d=d: jax.jvp(along(d), (row,), (d,))[1])(X)
        return Jet(value, grad, second)
