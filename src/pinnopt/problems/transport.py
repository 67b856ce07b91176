"""Linear transport in the diffusive scaling, with a vanilla and an asymptotic-preserving
(micro–macro) PINN loss, for one ε or a whole range of ε (docs/methods.md §8, [APNN]).

    ε ∂_t f + v ∂_x f = (ρ − f)/ε,   ρ = ⟨f⟩ = ½ ∫_{−1}^{1} f dv,   x ∈ [0,1], v ∈ [−1,1], t ∈ [0,T],
    f(t,0,v>0) = 1,  f(t,1,v<0) = 0,  f(0,x,v) = 0.

Velocity averages use ``nv`` Gauss–Legendre nodes v_k with weights w_k (Σ w_k = 1).

Losses (``loss=``):

- ``vanilla``: one network f(t,x,v); residual ``ε ∂_t f + v ∂_x f − (⟨f⟩ − f)/ε`` (group
  ``kinetic``, weight 1). As ε → 0 the 1/ε term dominates and the loss no longer sees the
  diffusion limit.
- ``apnn``: f = ρ + ε g with ρ(t,x) = softplus(β ρ̂)/β > 0 and g = ĝ − ⟨ĝ⟩ (so ⟨g⟩ = 0
  exactly);
  groups ``micro``  ε² ∂_t g + ε (v ∂_x g − ∂_x⟨v g⟩) + v ∂_x ρ + g  (weight 1) and
  ``macro``  ∂_t ρ + ∂_x⟨v g⟩  (weight 1).

Both: ``boundary`` f − inflow data (weight 10) and ``initial`` f (weight 10).

First-collision split (``split="first-collision"``, docs/methods.md §8.1,
:mod:`pinnopt.problems.first_collision`): f = s(ε) f_u + f_n, the uncollided part f_u in
closed form, blended by s(ε), and the networks' remainder f_n. The fields (ρ, g, f) are those
of the total f; the residuals are those of the remainder, which solves the same equation with
the isotropic source s ρ_u/ε: it enters only ``macro`` (− s ρ_u/ε², with ρ_u exact) and
``kinetic`` (− s ρ_u/ε); ``micro`` is unchanged; ``boundary`` and ``initial`` act on the
total f. With s = 0 (ε ≤ 1e-2 by default) the model is the unsplit one.

Point layout: every group's points are rows ``(t, x, v, eps)`` (see
:mod:`pinnopt.problems.kinetic`): ``eps`` is the raw ε of the point; the velocity dependence of
every residual is taken at the nv quadrature nodes, so a point's residual row has one entry per
node (``micro``, ``kinetic``, ``initial``: nv entries, scaled by √w_k so that the row's squared
norm is the velocity average ⟨r²⟩; ``boundary``: the nv/2 inflow nodes, scaled by √(2 w_k);
``macro``: one entry) and the ``v`` column is unused in training. Boundary points lie on
x = 0 (even rows) and x = 1 (odd rows).

Fields: ``rho`` (ρ), ``g`` ((f − ρ)/ε) and ``f`` at the point's velocity. Inputs of the
networks: t and x mapped to [−1, 1], v, and the ε encoding (features of ε, by default log10 ε
normalised to [−1, 1] over the ε range, optionally through an embedding network; or, with
``eps_conditioning="film"``, no ε input and every hidden layer scaled and shifted per point
by a conditioning network of the features; nothing for a fixed ε, whose model then ignores
the eps column except in f = ρ + εg).

Evaluation: ρ at t = T on ``n_eval_x`` equispaced x per evaluated ε, against
:func:`pinnopt.reference.transport.solve_transport` (cached on disk); metrics
``rel_l2_rho_eps<ε>`` (e.g. ``rel_l2_rho_eps1e-08``), plus ``rms_rho``/``rel_l2_rho`` over all
evaluated ε together.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import jax
import jax.numpy as jnp
import numpy as np

from pinnopt.geometry import Box
from pinnopt.nets import MLP
from pinnopt.problems.base import Problem
from pinnopt.problems.first_collision import BLEND, FirstCollision
from pinnopt.problems.kinetic import (
    RECIPROCAL,
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
from pinnopt.reference.transport import solve_transport
from pinnopt.taylor import (
    Activation,
    Derivatives,
    Jet,
    concatenate,
    coordinates,
    elementwise,
    linear,
    product,
)

LOSSES = ("apnn", "vanilla")
SPLITS = ("none", "first-collision")
FIELDS = ("rho", "g", "f")
EVAL_EPS = (1.0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8)
# Hidden widths (ρ net, g net). The vanilla loss uses the second list for its f net.
NETS = {
    "small": ((32, 32, 32), (48, 48, 48)),
    "medium": ((64, 64, 64, 64), (64, 64, 64, 64)),
    "paper": ((128,) * 5, (256,) * 5),  # [APNN]: 5×128 and 5×256
}
WEIGHTS = {"micro": 1.0, "macro": 1.0, "kinetic": 1.0, "boundary": 10.0, "initial": 10.0}


@dataclass(frozen=True)
class _KineticBase(PhaseSpaceModel):
    """What both transport models share: boundary and initial residuals on f at the nodes,
    and the optional first-collision split (``split``: f = s f_u + the networks' remainder;
    ``None``: no split). The quadrature weights are those of ⟨·⟩ = ½∫dv (Σ w_k = 1)."""

    split: FirstCollision | None = None

    @property
    def split_text(self) -> str:
        """``", first-collision split (blend ε_off..ε_on)"`` for :meth:`describe`, or nothing."""
        if self.split is None:
            return ""
        return f", first-collision split (blend {self.split.eps_off:g}..{self.split.eps_on:g})"

    def split_nodes(self, X: jax.Array) -> jax.Array:
        """s f_u at every velocity node, ``(N, nv)`` (the split's share of f there)."""
        return self.split.at_nodes(X, self.quadrature(X.dtype)[0])

    def with_split(self, fields: Jet, X: jax.Array, derivs: Derivatives) -> Jet:
        """The jet of the total (ρ, g, f) ``(N, 3)`` from that of the remainder's: adds the
        split's (s ρ_u, s (f_u − ρ_u)/ε, s f_u) when there is a split."""
        if self.split is None:
            return fields
        return linear(jnp.add, fields, self.split.jet(X, derivs))

    # -- the residuals both losses share ---------------------------------------------------
    def f_nodes(self, params: dict, X: jax.Array) -> jax.Array:
        """f at every velocity node, ``(N, nv)``."""
        raise NotImplementedError

    def boundary(self, params: dict, X: jax.Array) -> jax.Array:
        """Inflow residual at the nv/2 incoming nodes, ``(N, nv/2)``; rows with x = 0 take
        v_k > 0 and data 1, rows with x = 1 take v_k < 0 (mirrored order) and data 0."""
        f = self.f_nodes(params, X)
        half = len(self.nodes) // 2
        left = X[:, 1:2] < 0.5
        incoming = jnp.where(left, f[:, half:], f[:, :half][:, ::-1])
        data = jnp.where(left, 1.0, 0.0).astype(f.dtype)
        _, w = self.quadrature(f.dtype)
        return jnp.sqrt(2.0 * w[half:]) * (incoming - data)

    def initial(self, params: dict, X: jax.Array) -> jax.Array:
        """f(0, x, v_k) − 0, ``(N, nv)``."""
        return jnp.sqrt(self.quadrature(X.dtype)[1]) * self.f_nodes(params, X)


@dataclass(frozen=True)
class MicroMacroModel(_KineticBase):
    """The APNN micro–macro model: f = ρ + ε g, ρ = softplus(β ρ̂(t,x))/β, g = ĝ − ⟨ĝ⟩.

    Parameters ``{"rho": ρ̂ net, "g": ĝ net[, "embed": ε embedding][, "film": {"rho", "g"}
    conditioning nets]}``. ``rho_sharpness`` β:
    dρ/dρ̂ = sigmoid(β ρ̂) ≈ βρ where ρ is small, so β > 1 keeps the gradient alive where the
    density must approach 0 (initial data, the outflow wall).
    """

    rho_net: MLP | None = None
    g_net: MLP | None = None
    rho_sharpness: float = 1.0

    # -- the model interface -----------------------------------------------------------------
    @property
    def members(self) -> dict[str, MLP]:
        return {"rho": self.rho_net, "g": self.g_net}

    def describe(self) -> str:
        return (f"rho {self.rho_net.describe()} + g {self.g_net.describe()}, "
                f"{self.encoding.describe()}{self.split_text}")

    def init(self, key: jax.Array, dtype=jnp.float64) -> dict:
        k_rho, k_g, k_e = jax.random.split(key, 3)
        params = {"rho": self.rho_net.init(k_rho, dtype), "g": self.g_net.init(k_g, dtype)}
        return self.init_encoding(params, k_e, dtype)

    def jet(self, params: dict, X: jax.Array, derivs: Derivatives) -> Jet:
        """ρ, g and f = ρ + εg at the points' velocities, ``(N, 3)``, with their derivatives
        along ``derivs`` (directions in ``(t, x, v, eps)``); g = ĝ(v) − ⟨ĝ⟩. With the split,
        the total fields: (ρ_n + s ρ_u, g_n + s (f_u − ρ_u)/ε, f_n + s f_u)."""
        rho = self.rho_jet(params, X, derivs)
        g_at_v = self.point_jet(self.g_net, params, "g", X, derivs, velocity=True)
        g = linear(jnp.subtract, g_at_v, self.average(self.g_hat_jet(params, X, derivs)))
        eps = column(coordinates(X, derivs), 3)
        remainder = concatenate([rho, g, linear(jnp.add, rho, product(eps, g, derivs))])
        return self.with_split(remainder, X, derivs)

    def apply(self, params: dict, X: jax.Array) -> jax.Array:
        """``(N, 3)``: ρ, g and f = ρ + εg at the points' velocities."""
        return self.jet(params, X, partials("")).value

    # -- the fields and their derivatives (a test replaces the first two by exact functions) -
    def rho_jet(self, params: dict, X: jax.Array, derivs: Derivatives) -> Jet:
        """ρ = softplus(βρ̂)/β at the points, ``value (N, 1)``."""
        rho_hat = self.point_jet(self.rho_net, params, "rho", X, derivs, velocity=False)
        return elementwise(rho_hat, self._positive, derivs)

    @property
    def _positive(self) -> Activation:
        """r ↦ softplus(βr)/β and its first two derivatives."""
        beta = self.rho_sharpness

        def curvature(r):
            s = jax.nn.sigmoid(beta * r)
            return beta * s * (1.0 - s)

        return Activation(lambda r: jax.nn.softplus(beta * r) / beta,
                          lambda r: jax.nn.sigmoid(beta * r), curvature)

    def g_hat_jet(self, params: dict, X: jax.Array, derivs: Derivatives) -> Jet:
        """ĝ at every velocity node, ``value (N, nv)``."""
        return self.node_jet(self.g_net, params, "g", X, derivs)

    def g_jet(self, params: dict, X: jax.Array, derivs: Derivatives) -> Jet:
        """g = ĝ − ⟨ĝ⟩ at every velocity node, ``value (N, nv)``: ⟨·⟩ is linear, so every
        slot (value, ∂_i, second-order term) has zero velocity average."""
        w = self.quadrature(X.dtype)[1]
        return linear(lambda a: a - (a @ w)[..., None], self.g_hat_jet(params, X, derivs))

    def f_nodes(self, params: dict, X: jax.Array) -> jax.Array:
        values = partials("")
        rho, g = self.rho_jet(params, X, values), self.g_jet(params, X, values)
        f = rho.value + X[:, 3:4] * g.value
        return f if self.split is None else f + self.split_nodes(X)

    # -- the APNN residuals --------------------------------------------------------------------
    # ⟨·⟩ commutes with ∂_t and ∂_x, so ∂_x⟨v g⟩ = ⟨v ∂_x g⟩, from g's jet at the nodes.
    def micro(self, params: dict, X: jax.Array) -> jax.Array:
        """√w_k (ε² ∂_t g + ε (v ∂_x g − ∂_x⟨v g⟩) + v ∂_x ρ + g) at the nodes, ``(N, nv)``."""
        rho_x = self.rho_jet(params, X, partials("x")).grad[:, 0]
        g = self.g_jet(params, X, partials("tx"))
        g_t, g_x = g.grad[:, 0], g.grad[:, 1]
        eps, (v, w) = X[:, 3:4], self.quadrature(X.dtype)
        mean_v_gx = ((g_x * v) @ w)[:, None]
        r = eps**2 * g_t + eps * (v * g_x - mean_v_gx) + v * rho_x + g.value
        return jnp.sqrt(w) * r

    def macro(self, params: dict, X: jax.Array) -> jax.Array:
        """∂_t ρ + ∂_x ⟨v g⟩, ``(N, 1)``; with the split, of the remainder and minus its
        source s ρ_u / ε² (the micro residual has no source: it is isotropic)."""
        rho_t = self.rho_jet(params, X, partials("t")).grad[:, 0]
        g_x = self.g_jet(params, X, partials("x")).grad[:, 0]
        v, w = self.quadrature(X.dtype)
        r = rho_t + ((g_x * v) @ w)[:, None]
        if self.split is None:
            return r
        return r - self.split.density(X) / X[:, 3:4] ** 2


@dataclass(frozen=True)
class VanillaModel(_KineticBase):
    """One network for f(t, x, v). Parameters ``{"f": net[, "embed" | "film": ε encoding]}``."""

    f_net: MLP | None = None

    @property
    def members(self) -> dict[str, MLP]:
        return {"f": self.f_net}

    def describe(self) -> str:
        return f"f {self.f_net.describe()}, {self.encoding.describe()}{self.split_text}"

    def init(self, key: jax.Array, dtype=jnp.float64) -> dict:
        k_f, k_e = jax.random.split(key)
        return self.init_encoding({"f": self.f_net.init(k_f, dtype)}, k_e, dtype)

    def f_jet(self, params: dict, X: jax.Array, derivs: Derivatives) -> Jet:
        """f at every velocity node, ``value (N, nv)``."""
        return self.node_jet(self.f_net, params, "f", X, derivs)

    def f_nodes(self, params: dict, X: jax.Array) -> jax.Array:
        f = self.f_jet(params, X, partials("")).value
        return f if self.split is None else f + self.split_nodes(X)

    def jet(self, params: dict, X: jax.Array, derivs: Derivatives) -> Jet:
        """ρ = ⟨f⟩, g = (f − ρ)/ε and f at the points' velocities, ``(N, 3)``, with their
        derivatives along ``derivs`` (directions in ``(t, x, v, eps)``); with the split, of
        the total f = f_n + s f_u (ρ_u the exact average of f_u)."""
        f = self.point_jet(self.f_net, params, "f", X, derivs, velocity=True)
        rho = self.average(self.f_jet(params, X, derivs))
        inverse_eps = elementwise(column(coordinates(X, derivs), 3), RECIPROCAL, derivs)
        g = product(linear(jnp.subtract, f, rho), inverse_eps, derivs)
        return self.with_split(concatenate([rho, g, f]), X, derivs)

    def apply(self, params: dict, X: jax.Array) -> jax.Array:
        """``(N, 3)``: ρ = ⟨f⟩, g = (f − ρ)/ε and f at the points' velocities."""
        return self.jet(params, X, partials("")).value

    def kinetic(self, params: dict, X: jax.Array) -> jax.Array:
        """√w_k (ε ∂_t f + v ∂_x f − (⟨f⟩ − f)/ε) at the nodes, ``(N, nv)``; with the split,
        of the remainder f_n, whose collision term gains the source: ⟨f_n⟩ + s ρ_u − f_n."""
        f = self.f_jet(params, X, partials("tx"))
        f_t, f_x = f.grad[:, 0], f.grad[:, 1]
        eps, (v, w) = X[:, 3:4], self.quadrature(X.dtype)
        rho = (f.value @ w)[:, None]
        if self.split is not None:
            rho = rho + self.split.density(X)
        return jnp.sqrt(w) * (eps * f_t + v * f_x - (rho - f.value) / eps)


def make_model(loss: str, encoding: EpsEncoding, t_final: float, nv: int, rho_sharpness: float = 1.0,
               split: FirstCollision | None = None):
    """``model(net_spec, activation)`` for :attr:`Problem.model`."""
    v, w = gauss_legendre(nv, -1.0, 1.0)
    base = dict(encoding=encoding, t_final=t_final, x_range=(0.0, 1.0), v_scale=1.0,
                nodes=tuple(v), weights=tuple(w / 2.0), split=split)
    code = encoding.width

    def model(spec: str, activation: str):
        shared = dict(base, encoding=replace(encoding, activation=activation))
        if loss == "vanilla":
            presets = {k: (g,) for k, (_, g) in NETS.items()}
            (f_widths,) = parse_widths(spec, presets, 1, "f net")
            return VanillaModel(**shared, f_net=MLP((3 + code, *f_widths, 1), activation))
        rho_w, g_w = parse_widths(spec, NETS, 2, "rho net / g net")
        return MicroMacroModel(**shared, rho_net=MLP((2 + code, *rho_w, 1), activation),
                               g_net=MLP((3 + code, *g_w, 1), activation),
                               rho_sharpness=rho_sharpness)

    return model


def reference_rho(eps: float, t_final: float, nx: int, nv: int) -> dict[str, np.ndarray]:
    """ρ(T, ·) of :func:`solve_transport` on its nodes (walls and cell centres), cached."""
    settings = {"eps": eps, "t_final": t_final, "nx": nx, "nv": nv}

    def compute():
        sol = solve_transport(eps, t_final, nx=nx, nv=nv)
        return {"x": np.concatenate(([0.0], sol.x, [1.0])),
                "rho": np.concatenate(([sol.rho_boundary[0]], sol.rho[-1], [sol.rho_boundary[1]]))}

    return cached_reference(solve_transport, settings, compute)


def transport(
    eps: float | None = None,
    eps_range: list[float] | None = None,
    eps_sampling: str = "decades",
    eps_embedding: int = 0,
    eps_features: str | list[str] = "log",
    eps_conditioning: str = "input",
    T: float | None = None,
    loss: str = "apnn",
    nv: int = 30,
    rho_sharpness: float = 1.0,
    boundary_weight: float = WEIGHTS["boundary"],
    initial_weight: float = WEIGHTS["initial"],
    n_interior: int = 1024,
    n_boundary: int = 512,
    n_initial: int = 1024,
    eval_eps: list[float] | None = None,
    n_eval_x: int = 100,
    resample: bool = True,
    reference_nx: int = 200,
    reference_nv: int = 60,
    split: str = "none",
    split_blend: list[float] | None = None,
) -> Problem:
    """Linear transport (module docstring).

    ``eps``: one fixed ε; or ``eps_range = [eps_min, eps_max]`` (default [1e-8, 1] when neither
    is given), ε drawn per point (``eps_sampling``: ``log-uniform`` or ``decades``, equal counts
    per decade) and seen by the networks through features of it (``eps_features``: a comma list
    out of ``log`` (log10 ε normalised to [−1, 1] over the range, the default), ``eps``
    (ε/ε_max), ``eps2`` ((ε/ε_max)²)), conditioning them by ``eps_conditioning``: ``input``
    (default: the features are extra network inputs; ``eps_embedding``: 0 for the features
    themselves, else the latent width of an embedding network applied to them) or ``film``
    (every hidden layer of each network scaled and shifted per point by a small conditioning
    network of the features). ``T``: final time (default 1 for a
    fixed ε = 1, else 0.1, as in [APNN]). ``n_interior`` points each for ``micro`` and
    ``macro`` (or ``kinetic``), redrawn every step (``resample=False``: one fixed draw). ``eval_eps``: evaluated ε values (default:
    those of 1, 1e-1, 1e-2, 1e-3, 1e-4, 1e-6, 1e-8 in the range, or the fixed ε).
    ``reference_nx``/``reference_nv``: grid of the reference solver. ``rho_sharpness`` β of
    ρ = softplus(βρ̂)/β (APNN). ``boundary_weight``/``initial_weight``: weights of the
    ``boundary`` and ``initial`` groups (default 10 each, as in [APNN]). ``split``:
    ``none`` or ``first-collision`` (f = s(ε) f_u + the networks' remainder, module docstring;
    the networks learn the remainder's residuals and the metrics score the total ρ);
    ``split_blend = [eps_off, eps_on]``: s = 0 below eps_off, 1 above eps_on (default
    [1e-2, 1e-1]).
    """
    rng = parse_eps("transport", eps, [1e-8, 1.0] if eps is None and eps_range is None else eps_range)
    if loss not in LOSSES:
        raise ValueError(f"transport: loss {loss!r} unknown; choose from {', '.join(LOSSES)}")
    if T is None:
        T = 1.0 if rng.fixed and rng.lo == 1.0 else 0.1
    if isinstance(T, bool) or not isinstance(T, (int, float)) or not T > 0:
        raise ValueError(f"transport: T must be a positive number, got {T!r}")
    T = float(T)
    if isinstance(rho_sharpness, bool) or not isinstance(rho_sharpness, (int, float)) or not rho_sharpness > 0:
        raise ValueError(f"transport: rho_sharpness must be a positive number, got {rho_sharpness!r}")
    for name, w in (("boundary_weight", boundary_weight), ("initial_weight", initial_weight)):
        if isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0:
            raise ValueError(f"transport: {name} must be a positive number, got {w!r}")
    if split not in SPLITS:
        raise ValueError(f"transport: split {split!r} unknown; choose from {', '.join(SPLITS)}")
    if split_blend is None:
        split_blend = list(BLEND)
    if (not isinstance(split_blend, (list, tuple)) or len(split_blend) != 2
            or any(isinstance(e, bool) or not isinstance(e, (int, float)) for e in split_blend)
            or not 0 < split_blend[0] < split_blend[1]):
        raise ValueError(f"transport: split_blend must be [eps_off, eps_on] with "
                         f"0 < eps_off < eps_on, got {split_blend!r}")
    first_collision = (FirstCollision(float(split_blend[0]), float(split_blend[1]))
                       if split == "first-collision" else None)
    encoding = parse_encoding("transport", rng, eps_embedding, eps_features, eps_conditioning)
    if eval_eps is None:
        eval_eps = [rng.lo] if rng.fixed else [e for e in EVAL_EPS if rng.contains(e)] or [rng.lo, rng.hi]
    eval_eps = [float(e) for e in eval_eps]
    if not all(e > 0 for e in eval_eps) or len({eps_tag(e) for e in eval_eps}) != len(eval_eps):
        raise ValueError(f"transport: eval_eps must be distinct positive numbers, got {eval_eps!r}")

    t_range, x_range, v_range = (0.0, T), (0.0, 1.0), (-1.0, 1.0)
    interior = kinetic_sampler(t_range, x_range, v_range, rng, eps_sampling)
    walls = kinetic_sampler(t_range, x_range, v_range, rng, eps_sampling, x_sides=True)
    start = kinetic_sampler(t_range, x_range, v_range, rng, eps_sampling, t=0.0)
    if loss == "apnn":
        pde = (model_group("micro", interior, n_interior, lambda m, p, x: m.micro(p, x),
                           WEIGHTS["micro"], "pde"),
               model_group("macro", interior, n_interior, lambda m, p, x: m.macro(p, x),
                           WEIGHTS["macro"], "pde"))
    else:
        pde = (model_group("kinetic", interior, n_interior, lambda m, p, x: m.kinetic(p, x),
                           WEIGHTS["kinetic"], "pde"),)
    groups = pde + (
        model_group("boundary", walls, n_boundary, lambda m, p, x: m.boundary(p, x),
                    float(boundary_weight), "boundary"),
        model_group("initial", start, n_initial, lambda m, p, x: m.initial(p, x),
                    float(initial_weight), "initial"),
    )

    references = {eps_tag(e): reference_rho(e, T, reference_nx, reference_nv) for e in eval_eps}
    grid = eval_grid(eval_eps, T, x_range, n_eval_x)

    def solution(points) -> np.ndarray:
        """ρ at t = T for the evaluated ε values; NaN elsewhere and for g, f."""
        points = np.asarray(points)
        out = np.full((points.shape[0], len(FIELDS)), np.nan)
        at_final = np.abs(points[:, 0] - T) <= 1e-12 * T
        for e in eval_eps:
            rows = at_final & (np.abs(points[:, 3] / e - 1.0) < 1e-9)
            ref = references[eps_tag(e)]
            out[rows, 0] = np.interp(points[rows, 1], ref["x"], ref["rho"])
        return out

    # A fixed ε still needs a box of positive width in the eps coordinate.
    eps_hi = rng.hi * (1 + 1e-12) if rng.fixed else rng.hi
    eps_text = f"eps={rng.lo:g}" if rng.fixed else f"eps in [{rng.lo:g}, {rng.hi:g}]"
    return Problem(
        name="transport",
        domain=Box((0.0, 0.0, -1.0, rng.lo), (T, 1.0, 1.0, eps_hi)),
        coords=("t", "x", "v", "eps"),
        fields=FIELDS,
        groups=groups,
        solution=solution,
        eval_sampler=lambda key, n: jnp.asarray(grid),
        n_eval=grid.shape[0],
        resample=bool(resample),
        nets={k: () for k in NETS},
        default_net="small",
        description=(f"linear transport, {loss} loss, {eps_text}, T={T:g}, nv={nv}"
                     + (f", first-collision split (blend {split_blend[0]:g}..{split_blend[1]:g})"
                        if first_collision else "")),
        model=make_model(loss, encoding, T, nv, rho_sharpness, first_collision),
        reference_fields=("rho",),
        metrics=per_eps_metrics(eval_eps, FIELDS, ("rho",)),
    )
