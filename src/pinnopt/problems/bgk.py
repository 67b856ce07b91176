"""The BGK equation in the Euler scaling with the asymptotic-preserving loss of [APNN]
(docs/methods.md §8), for one ε or a range of ε with the ε encoding.

    ε (∂_t f + v ∂_x f) = M[ρ,u,T] − f,   M = ρ/√(2πT) exp(−(v−u)²/(2T)),
    x ∈ [−0.5, 0.5], v ∈ [−10, 10], t ∈ [0, 0.1],   ρ = ⟨f⟩, ρu = ⟨v f⟩, E = ½⟨v² f⟩, ⟨·⟩ = ∫dv,

initial data the Maxwellian of the tanh(20x) blend of (ρ, u, T) = (1.5, 0, 1.5) and
(0.625, 0, 0.75) (:func:`pinnopt.reference.bgk.initial_state`), boundary values of (ρ, u, T)
at x = ±0.5 those of the initial data. As ε → 0, (ρ, ρu, E) solve the Euler equations (γ = 3).

Model: a network for f(t, x, v) and one for (ρ, u, T)(t, x):
f = exp(f̂ − v²/2) (positive, Gaussian tails: the network learns log f relative to a
unit-temperature Gaussian), ρ = softplus(·), u, T = softplus(·). Velocity averages use ``nv``
Gauss–Legendre nodes on [−vmax, vmax] (64 in [APNN]).

Loss (groups, weights):

- ``kinetic``  ε (∂_t f + v ∂_x f) − (M[ρ,u,T] − f) at every node (1);
- ``conservation``  ∂_t(ρ, ρu, E) + ∂_x(⟨v f⟩, ⟨v² f⟩, ½⟨v³ f⟩) (1);
- ``moments``  (ρ, ρu, E) − (⟨f⟩, ⟨v f⟩, ½⟨v² f⟩) (1);
- ``boundary``  (ρ, u, T) − data at x = ±0.5 (1);
- ``initial``  (ρ, u, T) − data and f − M[data] at every node (10).

As ε → 0 the kinetic residual forces f = M[ρ,u,T] and the conservation laws become the Euler
equations: the loss is asymptotic preserving. Velocity-dependent residuals have one entry per
node scaled by √(w_k/Σw) (the row's squared norm is the velocity mean of r²).

Point layout, as for ``transport``: rows ``(t, x, v, eps)``; ``v`` unused in training.
Boundary rows alternate x = −0.5 (even) and x = 0.5 (odd).

ε encoding (``eps_features``, ``eps_conditioning``, ``eps_embedding``): as for ``transport``.

Fields: ``rho``, ``u``, ``T`` and ``f`` at the point's velocity. Evaluation: (ρ, u, T) at
t = t_final on ``n_eval_x`` equispaced x per evaluated ε against
:func:`pinnopt.reference.bgk.solve_bgk` (cached); metrics ``rel_l2_<rho|u|T>_eps<ε>``.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np

from pinnopt.geometry import Box
from pinnopt.nets import ACTIVATIONS, MLP
from pinnopt.problems.base import Problem
from pinnopt.problems.kinetic import (
    EXP,
    EpsEncoding,
    PhaseSpaceModel,
    cached_reference,
    column,
    eps_tag,
    eval_grid,
    gauss_legendre,
    kinetic_sampler,
    model_group,
    parse_encoding,
    parse_eps,
    parse_widths,
    partials,
    per_eps_metrics,
)
from pinnopt.reference.bgk import STATE_LEFT, STATE_RIGHT, X_LEFT, X_RIGHT, solve_bgk
from pinnopt.taylor import Derivatives, Jet, concatenate, coordinates, elementwise, linear, product

FIELDS = ("rho", "u", "T", "f")
MACRO = ("rho", "u", "T")
EVAL_EPS = (1.0, 1e-1, 1e-2, 1e-3)
# Hidden widths (f net, (ρ, u, T) net).
NETS = {
    "small": ((48, 48, 48), (32, 32, 32)),
    "medium": ((64, 64, 64, 64), (64, 64, 64, 64)),
    "paper": ((128,) * 6, (64,) * 6),  # [APNN]'s code: f 6×128, each of ρ, u, T 6×64
}
WEIGHTS = {"kinetic": 1.0, "conservation": 1.0, "moments": 1.0, "boundary": 1.0, "initial": 10.0}


def initial_macro(x: jax.Array) -> jax.Array:
    """(ρ, u, T) at t = 0, ``(N, 3)``: the tanh(20x) blend (as ``reference.bgk.initial_state``)."""
    blend = 0.5 * (1.0 + jnp.tanh(20.0 * x))[:, None]
    left, right = jnp.asarray(STATE_LEFT, x.dtype), jnp.asarray(STATE_RIGHT, x.dtype)
    return left + (right - left) * blend


def maxwellian(q: jax.Array, v: jax.Array) -> jax.Array:
    """M[ρ,u,T](v) for macro rows ``q (N, 3)`` and nodes ``v (nv,)``: ``(N, nv)``."""
    rho, u, T = q[:, :1], q[:, 1:2], q[:, 2:3]
    return rho / jnp.sqrt(2.0 * jnp.pi * T) * jnp.exp(-((v - u) ** 2) / (2.0 * T))


@dataclass(frozen=True)
class BGKModel(PhaseSpaceModel):
    """Networks for f and (ρ, u, T). Parameters ``{"f", "macro"[, "embed" | "film"]}``."""

    f_net: MLP | None = None
    macro_net: MLP | None = None

    # -- the model interface -----------------------------------------------------------------
    @property
    def members(self) -> dict[str, MLP]:
        return {"f": self.f_net, "macro": self.macro_net}

    def describe(self) -> str:
        return (f"f {self.f_net.describe()} + (rho,u,T) {self.macro_net.describe()}, "
                f"{self.encoding.describe()}")

    def init(self, key: jax.Array, dtype=jnp.float64) -> dict:
        k_f, k_m, k_e = jax.random.split(key, 3)
        params = {"f": self.f_net.init(k_f, dtype), "macro": self.macro_net.init(k_m, dtype)}
        return self.init_encoding(params, k_e, dtype)

    def jet(self, params: dict, X: jax.Array, derivs: Derivatives) -> Jet:
        """ρ, u, T and f = exp(f̂ − v²/2) at the points' velocities, ``(N, 4)``, with their
        derivatives along ``derivs`` (directions in ``(t, x, v, eps)``)."""
        log_f = self.point_jet(self.f_net, params, "f", X, derivs, velocity=True)
        v = column(coordinates(X, derivs), 2)
        half_v2 = linear(lambda a: 0.5 * a, product(v, v, derivs))
        f = elementwise(linear(jnp.subtract, log_f, half_v2), EXP, derivs)
        return concatenate([self.macro_jet(params, X, derivs), f])

    def apply(self, params: dict, X: jax.Array) -> jax.Array:
        """``(N, 4)``: ρ, u, T and f at the points' velocities."""
        return self.jet(params, X, partials("")).value

    # -- fields and derivatives (a test replaces these by exact functions) ------------------
    def macro_jet(self, params: dict, X: jax.Array, derivs: Derivatives) -> Jet:
        """(ρ, u, T) = (softplus(a₀), a₁, softplus(a₂)) of the macro network's outputs a,
        ``value (N, 3)``."""
        a = self.point_jet(self.macro_net, params, "macro", X, derivs, velocity=False)
        positive = elementwise(a, ACTIVATIONS["softplus"], derivs)
        softplus_columns = jnp.array([True, False, True])
        return linear(lambda p, b: jnp.where(softplus_columns, p, b), positive, a)

    def f_jet(self, params: dict, X: jax.Array, derivs: Derivatives) -> Jet:
        """f = exp(f̂ − v_k²/2) at every velocity node, ``value (N, nv)``."""
        log_f = self.node_jet(self.f_net, params, "f", X, derivs)
        v, _ = self.quadrature(X.dtype)
        return elementwise(log_f._replace(value=log_f.value - 0.5 * v**2), EXP, derivs)

    # -- residuals ---------------------------------------------------------------------------
    def _unit_weights(self, dtype) -> jax.Array:
        _, w = self.quadrature(dtype)
        return w / jnp.sum(w)

    def kinetic(self, params: dict, X: jax.Array) -> jax.Array:
        """√ŵ_k (ε (∂_t f + v ∂_x f) − (M[ρ,u,T] − f)) at the nodes, ``(N, nv)``."""
        q = self.macro_jet(params, X, partials("")).value
        f = self.f_jet(params, X, partials("tx"))
        f_t, f_x = f.grad[:, 0], f.grad[:, 1]
        v, _ = self.quadrature(X.dtype)
        eps = X[:, 3:4]
        r = eps * (f_t + v * f_x) - (maxwellian(q, v) - f.value)
        return jnp.sqrt(self._unit_weights(X.dtype)) * r

    def conservation(self, params: dict, X: jax.Array) -> jax.Array:
        """∂_t(ρ, ρu, E) + ∂_x(⟨v f⟩, ⟨v² f⟩, ½⟨v³ f⟩), ``(N, 3)``."""
        macro = self.macro_jet(params, X, partials("t"))
        q, q_t = macro.value, macro.grad[:, 0]
        f_x = self.f_jet(params, X, partials("x")).grad[:, 0]
        v, w = self.quadrature(X.dtype)
        rho, u, T = q[:, 0], q[:, 1], q[:, 2]
        rho_t, u_t, T_t = q_t[:, 0], q_t[:, 1], q_t[:, 2]
        momentum_t = rho_t * u + rho * u_t
        energy_t = 0.5 * rho_t * (u**2 + T) + 0.5 * rho * (2.0 * u * u_t + T_t)
        flux_x = f_x @ (w[:, None] * jnp.stack([v, v**2, 0.5 * v**3], axis=1))
        return jnp.stack([rho_t, momentum_t, energy_t], axis=1) + flux_x

    def moments(self, params: dict, X: jax.Array) -> jax.Array:
        """(ρ, ρu, E) − (⟨f⟩, ⟨v f⟩, ½⟨v² f⟩), ``(N, 3)``."""
        q = self.macro_jet(params, X, partials("")).value
        f = self.f_jet(params, X, partials("")).value
        v, w = self.quadrature(X.dtype)
        rho, u, T = q[:, 0], q[:, 1], q[:, 2]
        conserved = jnp.stack([rho, rho * u, 0.5 * rho * (u**2 + T)], axis=1)
        return conserved - f @ (w[:, None] * jnp.stack([jnp.ones_like(v), v, 0.5 * v**2], axis=1))

    def boundary(self, params: dict, X: jax.Array) -> jax.Array:
        """(ρ, u, T) − their initial values at the walls, ``(N, 3)``."""
        q = self.macro_jet(params, X, partials("")).value
        return q - initial_macro(X[:, 1])

    def initial(self, params: dict, X: jax.Array) -> jax.Array:
        """(ρ, u, T) − data, then √ŵ_k (f − M[data]) at the nodes: ``(N, 3 + nv)``."""
        q = self.macro_jet(params, X, partials("")).value
        f = self.f_jet(params, X, partials("")).value
        q0 = initial_macro(X[:, 1])
        v, _ = self.quadrature(X.dtype)
        f_res = jnp.sqrt(self._unit_weights(X.dtype)) * (f - maxwellian(q0, v))
        return jnp.concatenate([q - q0, f_res], axis=1)


def make_model(encoding: EpsEncoding, t_final: float, nv: int, vmax: float):
    """``model(net_spec, activation)`` for :attr:`Problem.model`."""
    v, w = gauss_legendre(nv, -vmax, vmax)

    def model(spec: str, activation: str):
        f_w, m_w = parse_widths(spec, NETS, 2, "f net / (rho,u,T) net")
        enc = replace(encoding, activation=activation)
        code = enc.width
        return BGKModel(encoding=enc, t_final=t_final, x_range=(X_LEFT, X_RIGHT), v_scale=vmax,
                        nodes=tuple(v), weights=tuple(w),
                        f_net=MLP((3 + code, *f_w, 1), activation),
                        macro_net=MLP((2 + code, *m_w, 3), activation))

    return model


def reference_moments(eps: float, t_final: float, nx: int, nv: int) -> dict[str, np.ndarray]:
    """(ρ, u, T)(t_final, ·) of :func:`solve_bgk` on its nodes (walls and cell centres), cached."""
    settings = {"eps": eps, "t_final": t_final, "nx": nx, "nv": nv}

    def compute():
        sol = solve_bgk(eps, t_final, nx=nx, nv=nv)
        nodes = np.concatenate(([X_LEFT], sol.x, [X_RIGHT]))
        values = sol.moments_at(nodes)
        return {"x": nodes, **dict(zip(MACRO, values))}

    return cached_reference(solve_bgk, settings, compute)


def bgk(
    eps: float | None = None,
    eps_range: list[float] | None = None,
    eps_sampling: str = "decades",
    eps_embedding: int = 0,
    eps_features: str | list[str] = "log",
    eps_conditioning: str = "input",
    t_final: float = 0.1,
    nv: int = 64,
    vmax: float = 10.0,
    n_interior: int = 512,
    n_boundary: int = 128,
    n_initial: int = 256,
    eval_eps: list[float] | None = None,
    n_eval_x: int = 100,
    resample: bool = True,
    reference_nx: int = 200,
    reference_nv: int = 64,
) -> Problem:
    """BGK with the APNN loss (module docstring).

    ``eps`` (fixed) or ``eps_range`` (default [1e-3, 1]) with ``eps_sampling``,
    ``eps_embedding``, ``eps_features`` (``log``, ``eps``, ``eps2``) and ``eps_conditioning``
    (``input``, ``film``) as for ``transport``. ``n_interior`` points each for ``kinetic``,
    ``conservation`` and ``moments``, redrawn every step (``resample=False``: one fixed draw). ``eval_eps`` defaults to those of
    1, 1e-1, 1e-2, 1e-3 in the range. ``reference_nx``/``reference_nv``: reference grid.
    """
    rng = parse_eps("bgk", eps, [1e-3, 1.0] if eps is None and eps_range is None else eps_range)
    for name, value in (("t_final", t_final), ("vmax", vmax)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ValueError(f"bgk: {name} must be a positive number, got {value!r}")
    t_final, vmax = float(t_final), float(vmax)
    encoding = parse_encoding("bgk", rng, eps_embedding, eps_features, eps_conditioning)
    if eval_eps is None:
        eval_eps = [rng.lo] if rng.fixed else [e for e in EVAL_EPS if rng.contains(e)] or [rng.lo, rng.hi]
    eval_eps = [float(e) for e in eval_eps]
    if not all(e > 0 for e in eval_eps) or len({eps_tag(e) for e in eval_eps}) != len(eval_eps):
        raise ValueError(f"bgk: eval_eps must be distinct positive numbers, got {eval_eps!r}")

    t_range, x_range, v_range = (0.0, t_final), (X_LEFT, X_RIGHT), (-vmax, vmax)
    interior = kinetic_sampler(t_range, x_range, v_range, rng, eps_sampling)
    walls = kinetic_sampler(t_range, x_range, v_range, rng, eps_sampling, x_sides=True)
    start = kinetic_sampler(t_range, x_range, v_range, rng, eps_sampling, t=0.0)

    def group(name, sampler, n, role):
        return model_group(name, sampler, n, lambda m, p, x: getattr(m, name)(p, x),
                           WEIGHTS[name], role)

    groups = (
        group("kinetic", interior, n_interior, "pde"),
        group("conservation", interior, n_interior, "pde"),
        group("moments", interior, n_interior, "constraint"),
        group("boundary", walls, n_boundary, "boundary"),
        group("initial", start, n_initial, "initial"),
    )

    references = {eps_tag(e): reference_moments(e, t_final, reference_nx, reference_nv)
                  for e in eval_eps}
    grid = eval_grid(eval_eps, t_final, x_range, n_eval_x)

    def solution(points) -> np.ndarray:
        """(ρ, u, T) at t = t_final for the evaluated ε values; NaN elsewhere and for f."""
        points = np.asarray(points)
        out = np.full((points.shape[0], len(FIELDS)), np.nan)
        at_final = np.abs(points[:, 0] - t_final) <= 1e-12 * t_final
        for e in eval_eps:
            rows = at_final & (np.abs(points[:, 3] / e - 1.0) < 1e-9)
            ref = references[eps_tag(e)]
            for i, name in enumerate(MACRO):
                out[rows, i] = np.interp(points[rows, 1], ref["x"], ref[name])
        return out

    eps_hi = rng.hi * (1 + 1e-12) if rng.fixed else rng.hi
    eps_text = f"eps={rng.lo:g}" if rng.fixed else f"eps in [{rng.lo:g}, {rng.hi:g}]"
    return Problem(
        name="bgk",
        domain=Box((0.0, X_LEFT, -vmax, rng.lo), (t_final, X_RIGHT, vmax, eps_hi)),
        coords=("t", "x", "v", "eps"),
        fields=FIELDS,
        groups=groups,
        solution=solution,
        eval_sampler=lambda key, n: jnp.asarray(grid),
        n_eval=grid.shape[0],
        resample=bool(resample),
        nets={k: () for k in NETS},
        default_net="small",
        description=f"BGK (Euler scaling), APNN loss, {eps_text}, t_final={t_final:g}, nv={nv}",
        model=make_model(encoding, t_final, nv, vmax),
        reference_fields=MACRO,
        metrics=per_eps_metrics(eval_eps, FIELDS, MACRO),
    )
