"""Constrained training with pointwise multipliers (docs/methods.md §6), wrapping an inner optimiser.

The residual groups split into an objective (roles ``pde`` and ``data``) and pointwise
constraints (by default the roles ``boundary``, ``initial`` and ``constraint``; hyper-parameter
``constraints``). With objective groups ``O`` and constraint values ``C_j``, one per constraint
group, point and residual component,

    J(θ)        = Σ_{g∈O}  w_g        ‖r_g(θ)‖²          (``objective_scale="sum"``, default)
                  Σ_{g∈O} (w_g / N_g) ‖r_g(θ)‖²          (``objective_scale="mean"``)
    C_j(θ)      = r_j(θ)²   (``form="squared"``)   or   r_j(θ)   (``form="linear"``)
    L(θ; λ, μ)  = J(θ) + Σ_j λ_j C_j(θ) + ½ Σ_j μ_j C_j(θ)²

The constraint terms are plain sums over points, without ``1/N_g`` or group weights: each
``λ_j`` weighs one point against the mean-squared objective. ``form="squared"`` is what the
authors' notebooks do (PECANN, the CiCP 2023 failure-mode notebooks and PECANN-CAPU all use the
per-point squared error ``(u − g)²`` as the constraint, so ``C_j ≥ 0`` and the multipliers only
grow); ``form="linear"`` is the textbook equality-constrained Lagrangian, whose multipliers
converge to the KKT multipliers when the constraints can be met exactly. The notebooks also sum
the objective over points rather than averaging it, and their constants (λ₀ = 1 and η = 1 for
``lagrange``, μ₀ = 1 for ``alm``) are tuned for that balance of one objective point against one
constraint point, so the sum is the default; ``objective_scale="mean"`` (PECANN-CAPU's choice,
with aggregated constraints there) weighs the whole objective like a single constraint point.

One trainer step is one outer iteration: ``inner_steps`` steps of the inner optimiser on
``L(·; λ, μ)`` (inside the jitted step, ``lax.fori_loop``), then the multiplier and penalty
update of the method:

    alm        PECANN augmented Lagrangian, one penalty μ for all constraints:
               n = ‖C‖;  if n ≥ ¼ n_prev and n > 1e-8:  μ ← min(2μ, μ_max);
               λ ← λ + μ C  (every outer step; ``dual_update="on-stall"`` only when μ grows,
               as in the PECANN notebooks);  n_prev ← n.   λ₀ = 0, μ₀ = ``mu0``, n_prev₀ = 0.
    lagrange   no penalty (μ = 0), adaptive (RMSprop-like) dual ascent per point:
               v ← 0.9 v + 0.1 C²;  λ ← λ + η C / sqrt(v + 1e-8).   λ₀ = 1, v₀ = 0, η = ``dual_lr``.
    capu       PECANN-CAPU, one penalty per point:  v ← ζ v + (1−ζ) C²;
               if L ≥ ω L_prev:  μ ← max(η / sqrt(v + ε), μ);   λ ← λ + μ ⊙ C;   L_prev ← L,
               with L the Lagrangian after the inner steps. λ₀ = μ₀ = 1, v₀ = 0, L_prev₀ = ∞.

The inner optimiser's state (L-BFGS memory, Adam moments) is kept across outer steps, as in
the authors' PyTorch codes, which create ``torch.optim.LBFGS`` once and call ``step`` every
epoch: each call re-evaluates the loss with the new multipliers and keeps its curvature pairs.
Here likewise the first inner step of an outer iteration recomputes value and gradient (the
value cached by the line search belongs to the previous multipliers); ``reset_inner=True``
re-initialises the inner state every outer step instead. The defaults (20 inner L-BFGS steps,
memory 100, at most 25 line-search evaluations) are PyTorch's ``LBFGS`` defaults, which the
notebooks use.

The inner method is a value (``alm(inner=adam(lr=1e-2))``). A loss-based one (``sgd``,
``adam``, ``lbfgs``, a ``sequence`` of them) is built on the Lagrangian, which offers it a loss.
A Gauss–Newton one (``engd``, ``hessian-free``, ``spring``, ``subspace-lm``, and on a plain MLP
``kfac``, ``kfac-star``) is built on :class:`ShiftedResiduals`: for fixed duals L is a sum of
squares plus a constant,

    squared form, μ > 0:   L = ½‖[√(2w_g) r_g ; √(2λ_j) r_j ; √μ_j r_j²]‖²     (λ ≥ 0)
    linear form,  μ > 0:   L = ½‖[√(2w_g) r_g ; √μ_j (r_j + λ_j/μ_j)]‖² − Σ_j λ_j²/(2μ_j)
    squared form, μ = 0:   L = ½‖[√(2w_g) r_g ; √(2λ_j) r_j]‖²              (``lagrange``, λ ≥ 0)

(``√(2w_g/N_g)`` for ``objective_scale="mean"``), whose stacked residual has per-point
residual functions, so every Gauss–Newton step applies unchanged. The linear form without a
penalty (``lagrange``, ``form="linear"``) is not least squares; a Gauss–Newton inner method is
refused there with a one-line message.

Multipliers are tied to points, so the points must stay fixed: problems that redraw their
points every step are refused.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Literal, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax import lax

from pinnopt.nets import Params
from pinnopt.optim.base import InnerMethod, Method, MethodValue, lookup, method, safer_inner
from pinnopt.optim.first_order import lbfgs
from pinnopt.residuals import ROLES, Batch, Objective, ResidualGroup

Tree = Any
"""A dict of arrays keyed by constraint group name (``(N_g, c_g)`` each), or a single array."""

FORMS = ("squared", "linear")
Form = Literal["squared", "linear"]
ObjectiveScale = Literal["mean", "sum"]
OBJECTIVE_SCALES = ("mean", "sum")
DUAL_UPDATES = ("always", "on-stall")

ALM_STALL_RATIO = 0.25
ALM_TOLERANCE = 1e-8
LAGRANGE_BETA = 0.9
LAGRANGE_EPS = 1e-8


# ---------------------------------------------------------------------------------------------
# Pure multiplier and penalty updates


def constraint_norm(constraints: Tree) -> jax.Array:
    """``‖C‖₂`` over every constraint value of the tree."""
    return jnp.sqrt(sum(jnp.sum(c**2) for c in jax.tree_util.tree_leaves(constraints)))


def alm_dual_update(multipliers: Tree, mu: jax.Array, constraints: Tree, n_prev: jax.Array,
                    mu_max: float = 1e4, dual_update: str = "always"
                    ) -> tuple[Tree, jax.Array, jax.Array]:
    """PECANN's outer update; returns ``(λ, μ, n)`` with ``n = ‖C‖`` the next ``n_prev``.

    μ doubles (up to ``mu_max``) when ``n ≥ ¼ n_prev`` and ``n > 1e-8``; then ``λ ← λ + μ C``
    with the new μ, every time (``"always"``) or only when μ was raised (``"on-stall"``).
    """
    n = constraint_norm(constraints)
    stalled = (n >= ALM_STALL_RATIO * n_prev) & (n > ALM_TOLERANCE)
    mu = jnp.where(stalled, jnp.minimum(2.0 * mu, mu_max), mu)
    apply = True if dual_update == "always" else stalled
    multipliers = jax.tree_util.tree_map(
        lambda lam, c: jnp.where(apply, lam + mu * c, lam), multipliers, constraints)
    return multipliers, mu, n


def lagrange_dual_update(multipliers: Tree, v: Tree, constraints: Tree, dual_lr: float
                         ) -> tuple[Tree, Tree]:
    """``v ← 0.9 v + 0.1 C²``, then ``λ ← λ + η C / sqrt(v + 1e-8)`` (new v); returns ``(λ, v)``."""
    v = jax.tree_util.tree_map(
        lambda s, c: LAGRANGE_BETA * s + (1.0 - LAGRANGE_BETA) * c**2, v, constraints)
    multipliers = jax.tree_util.tree_map(
        lambda lam, c, s: lam + dual_lr * c / jnp.sqrt(s + LAGRANGE_EPS),
        multipliers, constraints, v)
    return multipliers, v


def capu_dual_update(multipliers: Tree, mu: Tree, v: Tree, constraints: Tree,
                     lagrangian: jax.Array, previous_lagrangian: jax.Array, eta: float,
                     omega: float = 0.999, zeta: float = 0.99, eps: float = 1e-8
                     ) -> tuple[Tree, Tree, Tree]:
    """PECANN-CAPU; returns ``(λ, μ, v)``.

    ``v ← ζ v + (1−ζ) C²``; if ``L ≥ ω L_prev`` then ``μ ← max(η / sqrt(v + ε), μ)``
    (elementwise, new v); then ``λ ← λ + μ ⊙ C`` with the new μ.
    """
    v = jax.tree_util.tree_map(lambda s, c: zeta * s + (1.0 - zeta) * c**2, v, constraints)
    grow = lagrangian >= omega * previous_lagrangian
    mu = jax.tree_util.tree_map(
        lambda m, s: jnp.where(grow, jnp.maximum(eta / jnp.sqrt(s + eps), m), m), mu, v)
    multipliers = jax.tree_util.tree_map(
        lambda lam, m, c: lam + m * c, multipliers, mu, constraints)
    return multipliers, mu, v


# ---------------------------------------------------------------------------------------------
# The Lagrangian


class Duals(NamedTuple):
    """Multipliers ``{group: (N_g, c_g)}`` and penalty μ: a scalar, a tree like the
    multipliers, or ``None`` (no penalty term)."""

    multipliers: dict[str, jax.Array]
    penalty: jax.Array | dict[str, jax.Array] | None


def parse_roles(constraints: str, setting: str = "constraints") -> tuple[str, ...]:
    """The roles of a comma list; ``setting`` names it in the one-line error."""
    roles = tuple(r.strip() for r in constraints.split(",") if r.strip())
    unknown = [r for r in roles if r not in ROLES]
    if unknown or not roles:
        raise ValueError(
            f"{setting}={constraints!r}: give comma-separated roles from {', '.join(ROLES)}")
    return roles


class Lagrangian:
    """``L(θ; λ, μ)`` of an objective whose groups are split by role into objective and constraints.

    :meth:`loss` has the signature of :meth:`Objective.loss` with the duals riding along in the
    batch, ``loss(params, (batch, duals))``, so that any loss-based method (optax, L-BFGS) can
    minimise it unchanged; ``problem`` is the objective's problem.
    """

    def __init__(self, objective: Objective, roles: tuple[str, ...], form: str,
                 objective_scale: str):
        self.objective = objective
        self.problem = objective.problem
        self.form = form
        self.objective_scale = objective_scale
        self.objective_groups = tuple(g for g in objective.groups if g.role not in roles)
        self.constraint_groups = tuple(g for g in objective.groups if g.role in roles)
        if not self.constraint_groups:
            present = sorted({g.role for g in objective.groups})
            raise ValueError(
                f"no residual group has a constraint role ({', '.join(roles)}); the problem's "
                f"roles are {', '.join(present)}")

    def constraint_shapes(self) -> dict[str, tuple[int, int]]:
        """``{group: (N_g, c_g)}``, the shape of each group's multipliers."""
        net = self.objective.net
        params = jax.eval_shape(net.init, jax.random.PRNGKey(0))
        x = jax.ShapeDtypeStruct((1, self.problem.dim), self.objective.dtype)

        def components(group):
            return jax.eval_shape(lambda p, x: group.residual(net, p, x), params, x).shape[1]

        return {g.name: (g.n, components(g)) for g in self.constraint_groups}

    def parts(self, params: Params, batch: Batch) -> tuple[jax.Array, dict[str, jax.Array]]:
        """The objective ``J`` and the constraint values ``{group: C (N_g, c_g)}``."""
        objective = jnp.zeros((), self.objective.dtype)
        for g in self.objective_groups:
            r = g.residual(self.objective.net, params, batch[g.name])
            scale = g.weight / r.shape[0] if self.objective_scale == "mean" else g.weight
            objective = objective + scale * jnp.sum(r**2)
        constraints = {}
        for g in self.constraint_groups:
            r = g.residual(self.objective.net, params, batch[g.name])
            constraints[g.name] = r**2 if self.form == "squared" else r
        return objective, constraints

    @staticmethod
    def combine(objective: jax.Array, constraints: dict[str, jax.Array], duals: Duals) -> jax.Array:
        """``J + Σ λ C + ½ Σ μ C²`` (no penalty term when ``duals.penalty`` is ``None``)."""
        penalty = duals.penalty
        value = objective
        for name, c in constraints.items():
            value = value + jnp.sum(duals.multipliers[name] * c)
            if penalty is not None:
                mu = penalty[name] if isinstance(penalty, dict) else penalty
                value = value + 0.5 * jnp.sum(mu * c**2)
        return value

    def loss(self, params: Params, inputs: tuple[Batch, Duals]) -> jax.Array:
        batch, duals = inputs
        return self.combine(*self.parts(params, batch), duals)


# ---------------------------------------------------------------------------------------------
# The Lagrangian as a least-squares problem, for Gauss–Newton inner methods


@dataclasses.dataclass(frozen=True)
class ShiftedGroup(ResidualGroup):
    """A residual group whose points carry ``extra`` columns of per-point data after the
    coordinates (the multipliers and penalties of a constraint point).

    :meth:`residual` evaluates the wrapped ``base`` group's own ``residual`` on the
    coordinates (:meth:`points`), so groups that are not pointwise on one network's jet (the
    periodic pairs of ``convection``, the kinetic models' groups) work too, and then maps each
    point's residual with its data through ``shift(r (c,), data) -> s``. ``fn(x, jet)``, the
    same map on one row and the network's jet there, is what KFAC's Taylor-mode pass uses; it
    exists only where the base group has a pointwise ``fn``.
    """

    extra: int = 0
    base: ResidualGroup | None = None
    shift: Callable[[jax.Array, jax.Array], jax.Array] | None = None

    def points(self, x: jax.Array) -> jax.Array:
        """The coordinates: ``x`` without its last ``extra`` columns."""
        return x[..., :x.shape[-1] - self.extra]

    def residual(self, net, params: Params, x: jax.Array) -> jax.Array:
        r = self.base.residual(net, params, self.points(x)).reshape(x.shape[0], -1)
        if self.shift is None:
            return r
        return jax.vmap(self.shift)(r, x[:, x.shape[-1] - self.extra:]).reshape(x.shape[0], -1)


def shifted_rows(components: int, form: str, penalised: bool, split: bool = True
                 ) -> Callable[[jax.Array, jax.Array], jax.Array]:
    """The per-point least-squares residual ``s(r, data)`` of a constraint residual ``r (c,)``.

    ``data`` is ``[λ (c), μ (c)]`` (``[λ (c)]`` without a penalty) and ``C = r²`` (squared
    form) or ``r`` (linear):

        linear, μ > 0:               s = √μ (r + λ/μ),          ½‖s‖² = λr + ½μr² + λ²/(2μ)
        squared, μ > 0, ``split``:   s = [√(2λ) r, √μ r²],      ½‖s‖² = λr² + ½μr⁴
        squared, μ > 0, shifted:     s = √μ (r² + λ/μ),         ½ s² = λr² + ½μr⁴ + λ²/(2μ)
        squared, no penalty:         s = √(2λ) r,               ½ s² = λr²

    The split form (2c components per point, the default) keeps the multiplier's curvature
    ``2λ ∇r∇rᵀ`` in the Gauss–Newton matrix; the shifted one's Gauss–Newton matrix is
    ``4μr² ∇r∇rᵀ`` alone, which vanishes where the constraint is met, and its residual
    ``r² + λ/μ`` cannot reach 0 for λ > 0, so Gauss–Newton overshoots (measured in
    docs/constrained.md). Where ``√(2λ)`` appears, λ < 0 is taken as 0: squared-form
    multipliers start at 0 or 1 and only grow, so that never happens in the methods.
    """
    c = components

    def rows(r: jax.Array, data: jax.Array) -> jax.Array:
        r = jnp.reshape(r, (-1,))
        lam = data[:c]
        weighted = jnp.sqrt(2.0 * jnp.maximum(lam, 0.0)) * r
        if not penalised:
            return weighted
        mu = data[c:2 * c]
        if form == "squared" and split:
            return jnp.concatenate([weighted, jnp.sqrt(mu) * r**2])
        value = r**2 if form == "squared" else r
        return jnp.sqrt(mu) * (value + lam / mu)

    return rows


def shifted_constraint(fn: Callable, components: int, form: str, penalised: bool,
                       split: bool = True) -> Callable:
    """:func:`shifted_rows` on one row ``x = [coordinates, λ, (μ)]`` and the network's jet
    there, for a pointwise constraint residual ``fn(coordinates, jet)``."""
    extra = 2 * components if penalised else components
    rows = shifted_rows(components, form, penalised, split)

    def residual(x: jax.Array, u: Any) -> jax.Array:
        return rows(fn(x[:-extra], u), x[-extra:])

    return residual


def no_residual_form(form: str, penalised: bool) -> str | None:
    """Why ``L(·; λ, μ)`` is not a sum of squares plus a constant, or ``None`` when it is."""
    if form == "linear" and not penalised:
        return ("with form='linear' and no penalty the Lagrangian J + Σ λ r is linear in the "
                "constraint residuals, not a sum of squares")
    return None


class ShiftedResiduals(Objective):
    """The Lagrangian for fixed duals as a least-squares problem: ``L(θ; λ, μ) = ½‖s(θ)‖² + K``.

    The stacked residual ``s`` has, group by group in the objective's order,

        objective group g:    √(2 w_g) r_g   (``objective_scale="sum"``)
                              √(2 w_g / N_g) r_g   (``"mean"``)
        constraint group j:   [√(2λ_j) r_j, √μ_j r_j²]   squared form with a penalty
                              √μ_j (r_j + λ_j/μ_j)       linear form with a penalty
                              √(2λ_j) r_j                squared form without (``lagrange``)

    and ``K = −Σ_j λ_j² / (2μ_j)`` in the linear form, ``0`` otherwise (:meth:`constant`).
    ``split=False`` takes the squared form with a penalty as the single shifted residual
    ``√μ_j (r_j² + λ_j/μ_j)``, ``K = −Σ λ²/(2μ)`` instead, whose Gauss–Newton model is poor
    (see :func:`shifted_constraint`); it is kept for comparison. It is an
    :class:`Objective`, so every Gauss–Newton method (``engd``, ``hessian-free``, ``spring``,
    ``subspace-lm``, and on a plain MLP ``kfac``, ``kfac-star``) minimises it unchanged: its
    batch (:meth:`batch`) carries each constraint point's ``λ`` and ``μ`` after its coordinates,
    its groups are :class:`ShiftedGroup` with per-point residual functions, and the scale
    ``sqrt(w/N)`` of :meth:`Objective.scales` is folded into the groups' weights (objective
    groups ``2 w_g N_g`` or ``2 w_g``, constraint groups ``N_j``, i.e. scale 1). Where
    ``√(2λ)`` appears, negative multipliers count as 0; the methods never make them negative
    there (squared form: λ starts at 0 or 1 and only grows).
    """

    def __init__(self, lagrangian: "Lagrangian", penalised: bool, split: bool = True):
        reason = no_residual_form(lagrangian.form, penalised)
        if reason is not None:
            raise ValueError(reason)
        objective = lagrangian.objective
        super().__init__(objective.problem, objective.net, objective.dtype)
        self.lagrangian = lagrangian
        self.penalised = penalised
        self.shifted = penalised and not (lagrangian.form == "squared" and split)
        self.components = {name: shape[1]
                           for name, shape in lagrangian.constraint_shapes().items()}
        constrained = {g.name for g in lagrangian.constraint_groups}
        groups = []
        for g in objective.groups:
            if g.name in constrained:
                c = self.components[g.name]
                fn = shifted_constraint(g.fn, c, lagrangian.form, penalised, split)
                groups.append(ShiftedGroup(g.name, g.sampler, g.n, fn, g.derivs,
                                           float(g.n), g.role, 2 * c if penalised else c,
                                           base=g,
                                           shift=shifted_rows(c, lagrangian.form, penalised,
                                                              split)))
            else:
                per_point = 2.0 * g.weight
                weight = per_point if lagrangian.objective_scale == "mean" else per_point * g.n
                groups.append(ShiftedGroup(g.name, g.sampler, g.n, g.fn, g.derivs, weight,
                                           g.role, 0, base=g))
        self.groups = tuple(groups)

    def batch(self, batch: Batch, duals: Duals) -> Batch:
        """The points with each constraint point's ``λ`` (and ``μ``, broadcast to ``(N_j, c_j)``)
        appended as columns: ``(N_j, dim + 2 c_j)`` (``dim + c_j`` without a penalty)."""
        out = dict(batch)
        for name, lam in duals.multipliers.items():
            x = batch[name]
            columns = [x, lam.astype(x.dtype)]
            if self.penalised:
                mu = duals.penalty[name] if isinstance(duals.penalty, Mapping) else duals.penalty
                columns.append(jnp.broadcast_to(mu, lam.shape).astype(x.dtype))
            out[name] = jnp.concatenate(columns, axis=1)
        return out

    def constant(self, duals: Duals) -> jax.Array:
        """``K = L − ½‖s‖²``: ``−Σ λ² / (2μ)`` for the shifted forms, else 0."""
        if not self.shifted:
            return jnp.zeros((), self.dtype)
        total = jnp.zeros((), self.dtype)
        for name, lam in duals.multipliers.items():
            mu = duals.penalty[name] if isinstance(duals.penalty, Mapping) else duals.penalty
            total = total - jnp.sum(lam**2 / (2.0 * mu))
        return total


def needs_residuals(inner: MethodValue) -> bool:
    """Whether the inner method is built on :class:`ShiftedResiduals` (it needs residuals)."""
    return "residuals" in inner.needs


def check_inner(settings: Mapping[str, Any], penalised: bool) -> str | None:
    """The one-line refusal of a Gauss–Newton inner method where L has no residual form."""
    inner = settings["inner"]
    if isinstance(inner, MethodValue) and needs_residuals(inner):
        reason = no_residual_form(settings["form"], penalised)
        if reason is not None:
            return (f"inner={inner.name} does not fit: it needs residuals, but {reason}; use "
                    f"form='squared', alm or capu, or a loss-based inner method (lbfgs, adam)")
    return None


# ---------------------------------------------------------------------------------------------
# The outer loop shared by the three methods


def forget_cached_value(inner_state: Any) -> Any:
    """Mark a loss value cached by a line search (optax's ``value`` field) as missing.

    L-BFGS reuses the value and gradient its line search computed at the accepted point; after
    a multiplier update they belong to another Lagrangian. optax recomputes both when the cached
    value is infinite, which is what the state holds before the first step.
    """
    cached = optax.tree_utils.tree_get_all_with_path(inner_state, "value")
    if not cached:
        return inner_state
    return optax.tree_utils.tree_set(inner_state, value=jnp.full_like(cached[0][1], jnp.inf))


def _multiplier_stats(multipliers: dict[str, jax.Array], prefix: str) -> dict[str, jax.Array]:
    out = {}
    for name, lam in multipliers.items():
        out[f"{prefix}_mean_{name}"] = jnp.mean(lam)
        out[f"{prefix}_max_{name}"] = jnp.max(lam)
    return out


class Outer(NamedTuple):
    """The settings every constrained method shares (see the module docstring)."""

    inner: MethodValue
    inner_steps: int
    constraints: str
    form: str
    objective_scale: str
    reset_inner: bool


def _constrained_method(
    method_name: str,
    objective: Objective,
    outer: Outer,
    init_duals: Callable[[dict[str, tuple[int, int]], Any], NamedTuple],
    penalty: Callable[[NamedTuple], Any],
    dual_update: Callable[[NamedTuple, jax.Array, dict[str, jax.Array], jax.Array],
                          tuple[NamedTuple, dict[str, jax.Array]]],
    penalised: bool = True,
) -> Method:
    """An outer loop: ``inner_steps`` inner steps on ``L(·; λ, μ)``, then ``dual_update``.

    ``init_duals(shapes, dtype)`` returns the method's state with ``inner=None``;
    ``penalty(state)`` the μ entering L (``None`` exactly when not ``penalised``);
    ``dual_update(state, J, C, L)`` the new state and the method's extra info scalars.

    A loss-based inner method is built on the :class:`Lagrangian` and gets ``(batch, duals)``;
    one that needs residuals (Gauss–Newton) is built on :class:`ShiftedResiduals` and gets its
    batch, the points with their duals; the ``loss`` reported is ``L`` either way.
    """
    if objective.problem.resample:
        raise ValueError(
            f"method {method_name!r} keeps one multiplier per constraint point, so the points must "
            f"stay fixed, but problem {objective.problem.name!r} redraws them every step "
            f"(resample=True); set the problem option resample=false")
    lagrangian = Lagrangian(objective, parse_roles(outer.constraints), outer.form,
                            outer.objective_scale)
    inner_steps = outer.inner_steps
    if inner_steps < 1:
        raise ValueError(f"inner_steps must be at least 1, got {inner_steps}")
    view = None
    if needs_residuals(outer.inner):
        refused = check_inner({"inner": outer.inner, "form": outer.form}, penalised)
        if refused:
            raise ValueError(f"{method_name}: {refused}")
        view = ShiftedResiduals(lagrangian, penalised)
    inner = outer.inner.build(lagrangian if view is None else view)
    reset_inner = outer.reset_inner
    shapes = lagrangian.constraint_shapes()

    def init(params):
        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        return strong_types(init_duals(shapes, dtype)._replace(inner=inner.init(params)))

    def step(params, state, batch, key):
        inner_state = inner.init(params) if reset_inner else forget_cached_value(state.inner)
        duals = Duals(state.multipliers, penalty(state))
        inner_batch = (batch, duals) if view is None else view.batch(batch, duals)

        def inner_step(i, carry):
            p, s, first_loss = carry
            p, s, info = inner.step(p, s, inner_batch, jax.random.fold_in(key, i))
            return p, s, jnp.where(i == 0, info["loss"], first_loss)

        dtype = jax.tree_util.tree_leaves(params)[0].dtype
        params, inner_state, loss = lax.fori_loop(
            0, inner_steps, inner_step, (params, inner_state, jnp.zeros((), dtype)))
        if view is not None:
            loss = loss + view.constant(duals)  # ½‖s‖² at the incoming θ, plus K: L
        objective_value, constraints = lagrangian.parts(params, batch)
        value = lagrangian.combine(objective_value, constraints, duals)
        state, extra = dual_update(state._replace(inner=inner_state), objective_value,
                                   constraints, value)
        out = {
            "loss": loss,
            "objective": objective_value,
            "lagrangian": value,
            "constraint_norm": constraint_norm(constraints),
            **_multiplier_stats(state.multipliers, "lambda"),
            **extra,
        }
        return params, state, out

    return Method(init, step)


def strong_types(state: Any) -> Any:
    """The state with weakly typed leaves made strong.

    optax's line-search state starts with weakly typed scalars that are strong after one step;
    without this a jitted step would compile twice.
    """
    return jax.tree_util.tree_map(lambda x: jnp.asarray(x, dtype=jnp.asarray(x).dtype), state)


def _full(shapes, value, dtype):
    return {name: jnp.full(shape, value, dtype) for name, shape in shapes.items()}


# ---------------------------------------------------------------------------------------------
# alm, lagrange, capu


class ALMState(NamedTuple):
    inner: Any
    multipliers: dict[str, jax.Array]
    mu: jax.Array
    n_prev: jax.Array


class LagrangeState(NamedTuple):
    inner: Any
    multipliers: dict[str, jax.Array]
    v: dict[str, jax.Array]


class CAPUState(NamedTuple):
    inner: Any
    multipliers: dict[str, jax.Array]
    mu: dict[str, jax.Array]
    v: dict[str, jax.Array]
    previous_lagrangian: jax.Array


_INNER_DEFAULT = lbfgs(memory=100, max_linesearch_steps=25)


@method("alm", "PECANN augmented Lagrangian: pointwise multipliers, penalty doubled on stalls (§6)",
        needs=("groups",), safer=safer_inner("inner"), legacy=lambda s: legacy_inner(s))
def alm(objective: Objective, *, mu0: float = 1.0, mu_max: float = 1e4,
        dual_update: Literal["always", "on-stall"] = "always",
        inner: InnerMethod = _INNER_DEFAULT, inner_steps: int = 20,
        constraints: str = "boundary,initial,constraint", form: Form = "squared",
        objective_scale: ObjectiveScale = "sum", reset_inner: bool = False) -> Method:
    """PECANN augmented Lagrangian with pointwise multipliers and one penalty (module docstring).

    A Gauss–Newton inner method minimises ``½‖s‖²`` of :class:`ShiftedResiduals`: per
    constraint point ``[√(2λ) r, √μ r²]`` in the squared form (``L = ½‖s‖²``), ``√μ (r + λ/μ)``
    in the linear form (``L = ½‖s‖² − Σ λ²/(2μ)``).
    """
    if not 0 < mu0 <= mu_max:
        raise ValueError(f"alm: need 0 < mu0 <= mu_max, got mu0={mu0}, mu_max={mu_max}")

    def init_duals(shapes, dtype):
        return ALMState(None, _full(shapes, 0.0, dtype), jnp.asarray(mu0, dtype),
                        jnp.zeros((), dtype))

    def update(state, objective_value, constraints, value):
        multipliers, mu, n = alm_dual_update(state.multipliers, state.mu, constraints,
                                             state.n_prev, mu_max, dual_update)
        return state._replace(multipliers=multipliers, mu=mu, n_prev=n), {"mu": mu}

    outer = Outer(inner, inner_steps, constraints, form, objective_scale, reset_inner)
    return _constrained_method("alm", objective, outer, init_duals, lambda s: s.mu, update)


@method("lagrange",
        "pointwise Lagrange multipliers with adaptive (RMSprop-like) dual steps, no penalty (§6)",
        needs=("groups",), safer=safer_inner("inner"), legacy=lambda s: legacy_inner(s),
        check=lambda s: check_inner(s, penalised=False))
def lagrange(objective: Objective, *, dual_lr: float = 1.0,
             inner: InnerMethod = _INNER_DEFAULT, inner_steps: int = 20,
             constraints: str = "boundary,initial,constraint", form: Form = "squared",
             objective_scale: ObjectiveScale = "sum", reset_inner: bool = False) -> Method:
    """Pointwise Lagrange multipliers with the adaptive dual step, no penalty (module docstring).

    With a Gauss–Newton inner method (``inner=engd()``, ``spring()``, ...) and the squared form,
    the inner problem ``J + Σ λ_j r_j²`` is the plain weighted least-squares problem
    ``½‖[√(2w_g) r_g ; √(2λ_j) r_j]‖²`` (no constant): the multipliers act as per-point
    weights of the constraint residuals, and the method is an adaptively reweighted
    Gauss–Newton fit. Since λ starts at 1 and only grows in the squared form, √(2λ) is always
    real (a negative λ would count as 0). The linear form ``J + Σ λ_j r_j`` is not a sum of
    squares, so a Gauss–Newton inner method is refused there.
    """
    if not dual_lr > 0:
        raise ValueError(f"lagrange: dual_lr must be positive, got {dual_lr}")

    def init_duals(shapes, dtype):
        return LagrangeState(None, _full(shapes, 1.0, dtype), _full(shapes, 0.0, dtype))

    def update(state, objective_value, constraints, value):
        multipliers, v = lagrange_dual_update(state.multipliers, state.v, constraints, dual_lr)
        return state._replace(multipliers=multipliers, v=v), {}

    outer = Outer(inner, inner_steps, constraints, form, objective_scale, reset_inner)
    return _constrained_method("lagrange", objective, outer, init_duals, lambda s: None, update,
                               penalised=False)


@method("capu",
        "PECANN-CAPU: pointwise multipliers and conditionally adaptive pointwise penalties (§6)",
        needs=("groups",), safer=safer_inner("inner"), legacy=lambda s: legacy_inner(s))
def capu(objective: Objective, *, eta: float = 0.01, omega: float = 0.999, zeta: float = 0.99,
         eps: float = 1e-8, inner: InnerMethod = _INNER_DEFAULT, inner_steps: int = 20,
         constraints: str = "boundary,initial,constraint", form: Form = "squared",
         objective_scale: ObjectiveScale = "sum", reset_inner: bool = False) -> Method:
    """PECANN-CAPU: pointwise multipliers and conditionally adapted pointwise penalties.

    A Gauss–Newton inner method minimises ``½‖s‖²`` of :class:`ShiftedResiduals`, as in
    :func:`alm` with each point's own penalty ``μ_j``.
    """
    if not eta > 0 or not 0 < omega <= 1 or not 0 <= zeta < 1 or not eps > 0:
        raise ValueError(
            f"capu: need eta > 0, 0 < omega <= 1, 0 <= zeta < 1, eps > 0; got eta={eta}, "
            f"omega={omega}, zeta={zeta}, eps={eps}")

    def init_duals(shapes, dtype):
        return CAPUState(None, _full(shapes, 1.0, dtype), _full(shapes, 1.0, dtype),
                         _full(shapes, 0.0, dtype), jnp.asarray(jnp.inf, dtype))

    def update(state, objective_value, constraints, value):
        multipliers, mu, v = capu_dual_update(state.multipliers, state.mu, state.v, constraints,
                                              value, state.previous_lagrangian, eta, omega, zeta,
                                              eps)
        state = state._replace(multipliers=multipliers, mu=mu, v=v, previous_lagrangian=value)
        return state, _multiplier_stats(mu, "mu")

    outer = Outer(inner, inner_steps, constraints, form, objective_scale, reset_inner)
    return _constrained_method("capu", objective, outer, init_duals, lambda s: s.mu, update)


# ---------------------------------------------------------------------------------------------
# Older spellings of the inner method


_LEGACY_INNER_KEYS = {"inner_lr": "lr", "inner_memory": "memory",
                      "inner_max_linesearch_steps": "max_linesearch_steps"}


def legacy_inner(settings: dict[str, Any]) -> dict[str, Any]:
    """Settings of the flat spelling (``inner="adam", inner_lr=1e-2``) as the nested one
    (``inner={"name": "adam", "lr": 1e-2}``).

    The flat keys applied to the inner method only where it had that setting (``inner_lr`` with
    L-BFGS did nothing), so keys the inner method does not take are dropped, as before.
    """
    flat = {k: settings.pop(k) for k in list(settings) if k in _LEGACY_INNER_KEYS}
    if not flat:
        return settings
    inner = settings.get("inner", _INNER_DEFAULT.name)
    if isinstance(inner, MethodValue):
        inner = inner.tree()
    table = dict(inner) if isinstance(inner, dict) else {"name": inner}
    accepted = lookup(table.get("name", _INNER_DEFAULT.name)).settings
    for key, value in flat.items():
        if _LEGACY_INNER_KEYS[key] in accepted:
            table.setdefault(_LEGACY_INNER_KEYS[key], value)
    settings["inner"] = table
    return settings
