"""Multi-task training: task losses on the residual structure, per-task gradients, aggregation.

The loss ``L(θ) = Σ_g w_g/(2N_g) ‖r_g(θ)‖²`` (docs/methods.md §1) is split into ``m`` task losses by
a partition of the residual points (docs/methods.md §7):

    L_i(θ) = Σ_g  w_g/(2N_g) · Σ_{n ∈ task i} ‖r_{g,n}(θ)‖²,        Σ_i L_i = L.

The residuals come from ONE batched forward pass (``Objective.group_residuals``); each point's
squared residual is then summed into its task (a segment sum over point task indices, which
depend on the points only, never on ``θ``). The task gradients ``G = ∂(L_1..L_m)/∂θ`` (m, D):
when the tasks sit in a fixed pattern in each group's points (one task per group, or
stratified ε sampling, which interleaves the strata; :class:`TaskLayout`), each task's
gradient is taken on its own points only, all in one vmapped backward pass, at the cost of a
single loss gradient; otherwise they are the rows of the Jacobian of the task losses
(``jax.jacrev``: a vmapped backward pass over the ``m`` unit cotangents, m times the cost).
A gradient-conflict aggregator (:mod:`pinnopt.optim.aggregators`) turns ``G`` into one
update direction, which an optax optimiser (Adam by default) applies as if it were the gradient.

Task splits (hyper-parameter ``tasks``; ``m`` is fixed when the method is built):

    groups              one task per residual group
    roles               one task per role present (pde, boundary, initial, ...)
    eps-decades         one task per decade of the point coordinate "eps" between the problem's
                        ε_min and ε_max: task = floor(log10 ε) − floor(log10 ε_min), clipped
    eps-values          one task per distinct sampled ε value (stratified sampling): points go
                        to the nearest value in log10 ε
    groups+eps-decades  the product of the two partitions (group-major), likewise
    groups+eps-values

A task with no point in a batch has loss 0 and gradient 0; the aggregators ignore zero rows.
``task_weights="inverse-loss"`` rescales every task gradient by ``mean_j L_j / L_i`` first
(per-task adaptive weights, :func:`inverse_loss_weights`).

Each aggregator is a registered method: ``sum``, ``pcgrad``, ``mgda``, ``config``, ``mconfig``,
``hrgrad`` (``pinnopt train --method hrgrad --opt tasks=eps-decades --opt kappa=0.5``).
``mconfig`` back-propagates only its round-robin task (one backward pass per step); its
conflict diagnostics are those of the per-task momenta it aggregates.

Diagnostics in ``info`` (logged as ``method_<key>``): ``cos_min``, ``cos_mean`` and
``conflict_fraction`` over pairs of task gradients, ``update_cos_min`` (the smallest cosine
between the update and a task gradient), per task ``task_loss_<label>`` and
``task_rate_<label>`` (relative decrease ``(L_i^prev − L_i)/L_i^prev`` since the previous
step, 0 on the first step), and the aggregator's own scalars.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable, Literal, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.flatten_util import ravel_pytree

from pinnopt.optim import aggregators
from pinnopt.optim.base import (
    AGGREGATORS,
    METHODS,
    Aggregator,
    Definition,
    Method,
    MethodValue,
    Optimizer,
    Setting,
    method,
    read_settings,
    safer_inner,
)
from pinnopt.optim.first_order import Schedule, adam, sgd
from pinnopt.residuals import Batch, Objective

TASK_SPLITS = ("groups", "roles", "eps-decades", "eps-values",
               "groups+eps-decades", "groups+eps-values")
TaskSplitName = Literal["groups", "roles", "eps-decades", "eps-values",
                        "groups+eps-decades", "groups+eps-values"]
EPS_COORD = "eps"
# A point at a decade boundary 10^k belongs to the decade that starts there, despite round-off
# in log10.
_LOG_TOL = 1e-9
# eps-values read the distinct values off a sample of the training points; more than this
# many means ε is not drawn from a small set.
_MAX_EPS_VALUES = 64


# ---------------------------------------------------------------------------------------------
# Task partitions


@dataclass(frozen=True)
class TaskSplit:
    """A partition of the residual points into ``m`` tasks.

    ``assign(batch)`` gives each group's points their task index, ``{group: (N_g,) int}``;
    ``labels`` names the tasks (used in the logged keys).
    """

    kind: str
    labels: tuple[str, ...]
    group_offsets: dict[str, int]
    group_stride: int
    eps_index: int | None = None
    decade_lo: int = 0
    eps_logs: tuple[float, ...] = ()

    @property
    def m(self) -> int:
        return len(self.labels)

    def _eps_task(self, points: jax.Array) -> jax.Array:
        if self.eps_index is None:
            return jnp.zeros(points.shape[0], jnp.int32)
        log_eps = jnp.log10(points[:, self.eps_index])
        if self.eps_logs:
            centres = jnp.asarray(self.eps_logs, points.dtype)
            return jnp.argmin(jnp.abs(log_eps[:, None] - centres[None, :]), axis=1).astype(jnp.int32)
        decade = jnp.floor(log_eps + _LOG_TOL).astype(jnp.int32) - self.decade_lo
        return jnp.clip(decade, 0, self.group_stride - 1)

    def assign(self, batch: Batch) -> dict[str, jax.Array]:
        return {name: self.group_offsets[name] + self._eps_task(points)
                for name, points in batch.items() if name in self.group_offsets}


def _eps_index(problem) -> int:
    coords = tuple(problem.coords)
    if EPS_COORD not in coords:
        raise ValueError(
            f"problem {problem.name!r} has no {EPS_COORD!r} coordinate (coordinates: "
            f"{', '.join(coords)}); ε task splits need one, use tasks=groups or tasks=roles")
    return coords.index(EPS_COORD)


def _decades(problem, index: int) -> tuple[int, tuple[str, ...]]:
    """First decade exponent and the labels of the decades covering [ε_min, ε_max]."""
    eps_min, eps_max = float(problem.domain.lo[index]), float(problem.domain.hi[index])
    if not eps_min > 0:
        raise ValueError(f"problem {problem.name!r}: ε must be positive for ε tasks, "
                         f"its range starts at {eps_min}")
    lo = math.floor(math.log10(eps_min) + _LOG_TOL)
    hi = math.ceil(math.log10(eps_max) - _LOG_TOL)
    return lo, tuple(f"eps1e{k}" for k in range(lo, max(hi, lo + 1)))


def _sampled_eps_values(objective: Objective, index: int) -> tuple[float, ...]:
    """The distinct ε values of a sample of the training points (stratified sampling)."""
    batch = objective.sample(jax.random.PRNGKey(0))
    sampled = np.concatenate([np.asarray(p)[:, index] for p in batch.values()])
    values = np.unique(sampled)
    # Stratified: few values, each drawn repeatedly.
    if values.size > min(_MAX_EPS_VALUES, sampled.size // 2) or not np.all(values > 0):
        raise ValueError(
            f"tasks=eps-values needs ε drawn from a few fixed positive values (stratified "
            f"sampling); problem {objective.problem.name!r} drew {values.size} distinct values, "
            f"use tasks=eps-decades")
    return tuple(float(v) for v in values)


def make_task_split(objective: Objective, kind: str) -> TaskSplit:
    """The partition ``kind`` (one of :data:`TASK_SPLITS`) for ``objective``'s problem."""
    if kind not in TASK_SPLITS:
        raise ValueError(f"tasks={kind!r} is unknown; choose from {', '.join(TASK_SPLITS)}")
    groups = objective.groups
    if kind == "groups":
        return TaskSplit(kind, tuple(g.name for g in groups),
                         {g.name: i for i, g in enumerate(groups)}, 1)
    if kind == "roles":
        roles = tuple(dict.fromkeys(g.role for g in groups))
        return TaskSplit(kind, roles, {g.name: roles.index(g.role) for g in groups}, 1)

    problem = objective.problem
    index = _eps_index(problem)
    if kind.endswith("eps-decades"):
        decade_lo, eps_labels = _decades(problem, index)
        values: tuple[float, ...] = ()
    else:
        values = _sampled_eps_values(objective, index)
        decade_lo, eps_labels = 0, tuple(f"eps{v:.3g}" for v in values)
    logs = tuple(math.log10(v) for v in values)
    stride = len(eps_labels)
    if kind.startswith("groups+"):
        labels = tuple(f"{g.name}_{e}" for g in groups for e in eps_labels)
        offsets = {g.name: i * stride for i, g in enumerate(groups)}
    else:
        labels, offsets = eps_labels, {g.name: 0 for g in groups}
    return TaskSplit(kind, labels, offsets, stride, index, decade_lo, logs)


def task_losses(objective: Objective, split: TaskSplit, params, batch: Batch) -> jax.Array:
    """The ``(m,)`` task losses ``L_i`` from one evaluation of the residuals; ``Σ_i L_i = L``."""
    residuals = objective.group_residuals(params, batch)
    scales = objective.scales(batch)
    tasks = split.assign(batch)
    total = jnp.zeros(split.m, objective.dtype)
    for name, r in residuals.items():
        point_losses = 0.5 * scales[name] ** 2 * jnp.sum(r**2, axis=1)
        total = total + jax.ops.segment_sum(point_losses, tasks[name], num_segments=split.m)
    return total


@dataclass(frozen=True)
class TaskLayout:
    """Where the tasks sit in each group's points when the sampler lays them out in a fixed
    pattern: point ``i`` of group ``g`` belongs to task ``offset_g + (i mod strides[g])``
    (``strides[g] = 1``: the whole group is one task). Stratified ε sampling (``decades``,
    ``values``) interleaves the strata this way.

    With a layout, the per-task gradients cost one backward pass in all: each group's points
    are reshaped into ``strides[g]`` blocks, one per task (the ``N_g mod strides[g]`` points
    left over form a second, one-point-per-task set of blocks), and one vmapped gradient over
    the blocks gives every block's gradient from that block's points alone. Without it, the
    Jacobian of the task losses costs ``m`` backward passes over every point (a point outside
    task ``i`` gets a zero cotangent but is still back-propagated).
    """

    strides: dict[str, int]

    @property
    def static(self) -> bool:
        """Every group is one task: the layout holds for any batch."""
        return all(s == 1 for s in self.strides.values())

    def expected(self, split: TaskSplit, batch: Batch) -> dict[str, jax.Array]:
        return {name: split.group_offsets[name] + jnp.arange(batch[name].shape[0]) % stride
                for name, stride in self.strides.items()}

    def holds(self, split: TaskSplit, batch: Batch) -> jax.Array:
        """Whether ``batch``'s task assignment follows the layout (a traced boolean)."""
        assigned, expected = split.assign(batch), self.expected(split, batch)
        return jnp.all(jnp.stack([jnp.all(assigned[n] == expected[n]) for n in self.strides]))


def task_layout(objective: Objective, split: TaskSplit) -> TaskLayout | None:
    """The layout of the tasks in the sampled points, or ``None`` if they follow no fixed
    pattern (checked on one sampled batch; :func:`task_gradients` checks every batch)."""
    if any(g.name not in split.group_offsets for g in objective.groups):
        return None
    if split.group_stride == 1 or split.eps_index is None:
        return TaskLayout({g.name: 1 for g in objective.groups})
    batch = objective.sample(jax.random.PRNGKey(0))
    assigned = {k: np.asarray(v) for k, v in split.assign(batch).items()}
    strides = {}
    for g in objective.groups:
        n, offset = batch[g.name].shape[0], split.group_offsets[g.name]
        for stride in (1, split.group_stride):
            if np.array_equal(assigned[g.name], offset + np.arange(n) % stride):
                strides[g.name] = stride
                break
        else:
            return None
    return TaskLayout(strides)


def _jacobian_task_gradients(objective, split, flat, unravel, batch):
    def losses(theta):
        values = task_losses(objective, split, unravel(theta), batch)
        return values, values

    grads, values = jax.jacrev(losses, has_aux=True)(flat)
    return values, grads


def _blocked_task_gradients(objective, split, layout, flat, unravel, batch):
    scales = objective.scales(batch)
    values = jnp.zeros(split.m, flat.dtype)
    grads = jnp.zeros((split.m, flat.size), flat.dtype)
    for group in objective.groups:
        stride, points = layout.strides[group.name], batch[group.name]
        offset, weight = split.group_offsets[group.name], 0.5 * scales[group.name] ** 2

        def block_loss(theta, x, group=group, weight=weight):
            return weight * jnp.sum(group.residual(objective.net, unravel(theta), x) ** 2)

        gradient = jax.vmap(jax.value_and_grad(block_loss), (None, 0))
        # The first q·stride points: block k holds the points i ≡ k (mod stride), task offset + k;
        # the r = N mod stride points after them are one more point of tasks offset .. offset + r − 1.
        q, r = divmod(points.shape[0], stride)
        parts = []
        if q:
            parts.append((points[:q * stride].reshape(q, stride, -1).swapaxes(0, 1), stride))
        if r:
            parts.append((points[q * stride:, None, :], r))
        for blocks, count in parts:
            block_values, block_grads = gradient(flat, blocks)
            tasks = offset + jnp.arange(count)
            values = values.at[tasks].add(block_values)
            grads = grads.at[tasks].add(block_grads)
    return values, grads


def task_gradients(objective: Objective, split: TaskSplit, params, batch: Batch,
                   layout: TaskLayout | None = None):
    """``(losses (m,), grads (m, D), unravel)`` from one batched forward pass.

    With a ``layout`` (:func:`task_layout`) the gradients take one backward pass over the
    points; a batch that does not follow the layout falls back, inside the compiled step, to
    the Jacobian of the task losses (``m`` backward passes), so the result is the same.
    """
    flat, unravel = ravel_pytree(params)
    if layout is None:
        return (*_jacobian_task_gradients(objective, split, flat, unravel, batch), unravel)
    blocked = lambda b: _blocked_task_gradients(objective, split, layout, flat, unravel, b)
    if layout.static:
        return (*blocked(batch), unravel)
    jacobian = lambda b: _jacobian_task_gradients(objective, split, flat, unravel, b)
    values, grads = jax.lax.cond(layout.holds(split, batch), blocked, jacobian, batch)
    return values, grads, unravel


TaskWeights = Literal["none", "inverse-loss"]


def inverse_loss_weights(losses: jax.Array) -> jax.Array:
    """Per-task adaptive weights ``w_i = mean_j L_j / L_i`` over the tasks with ``L_i > 0`` (0
    for the others): every weighted task loss ``w_i L_i`` equals the mean task loss, so a task
    that is already fitted (an ε decade with a small loss) still pulls as hard as one that is
    not."""
    active = losses > 0
    count = jnp.maximum(jnp.sum(active), 1)
    mean = jnp.sum(jnp.where(active, losses, 0.0)) / count
    return jnp.where(active, mean / jnp.where(active, losses, 1.0), 0.0)


def task_loss_info(labels: tuple[str, ...], losses: jax.Array, previous: jax.Array
                   ) -> dict[str, jax.Array]:
    """``task_loss_<label>`` and ``task_rate_<label>`` (relative decrease since ``previous``,
    0 where there is no previous loss) for the logged ``info``."""
    rates = jnp.where(previous > 0, (previous - losses) / jnp.where(previous > 0, previous, 1.0),
                      0.0)
    info = {}
    for label, loss_i, rate_i in zip(labels, losses, rates):
        info[f"task_loss_{label}"] = loss_i
        info[f"task_rate_{label}"] = rate_i
    return info


# ---------------------------------------------------------------------------------------------
# The method


class MultitaskState(NamedTuple):
    """``optimizer``: the optax state; ``aggregator``: the aggregator's state (``()`` unless
    stateful); ``previous_losses`` (m,): the task losses of the previous step (0 before the first)."""

    optimizer: Any
    aggregator: Any
    previous_losses: jax.Array


def _cosines(grads: jax.Array, update: jax.Array) -> jax.Array:
    """Smallest cosine between ``update`` and a nonzero task gradient (1 if there is none)."""
    units, active = aggregators.unit_rows(grads)
    norm = jnp.linalg.norm(update)
    cos = units @ update / jnp.where(norm > 0, norm, 1.0)
    return jnp.min(jnp.where(active, cos, 1.0))


# ---------------------------------------------------------------------------------------------
# Aggregators as values


class AggregatorFns(NamedTuple):
    """A built aggregator.

    ``init(m, D, dtype)``: its state (``()`` if stateless). ``aggregate(grads, state, key)``:
    ``(update (D,), state, info)`` from the task gradients ``(m, D)``, or, when ``one_task`` is
    set, from the gradient ``(D,)`` of the task ``one_task(state)`` alone (one backward pass
    per step). ``aggregated(state)``: the ``(m, D)`` vectors it actually combined, when they are
    not the raw task gradients (their conflict is reported).
    """

    init: Callable[[int, int, Any], Any]
    aggregate: Callable[[jax.Array, Any, jax.Array], tuple[jax.Array, Any, dict]]
    one_task: Callable[[Any], jax.Array] | None = None
    aggregated: Callable[[Any], jax.Array] | None = None


def _stateless(fn) -> AggregatorFns:
    def aggregate(grads, state, key):
        update, info = fn(grads, key)
        return update, state, info

    return AggregatorFns(lambda m, d, dtype: (), aggregate)


@method("sum", "plain sum of the task gradients", namespace="aggregator")
def sum_() -> AggregatorFns:
    return _stateless(lambda g, key: aggregators.sum_aggregate(g))


@method("pcgrad", "PCGrad: project away conflicting components", namespace="aggregator")
def pcgrad() -> AggregatorFns:
    return _stateless(aggregators.pcgrad)


@method("mgda", "MGDA: min-norm point of the task gradients' hull", namespace="aggregator")
def mgda() -> AggregatorFns:
    return _stateless(lambda g, key: aggregators.mgda(g))


@method("config", "ConFIG: equal cosine to every task gradient", namespace="aggregator")
def config() -> AggregatorFns:
    return _stateless(lambda g, key: aggregators.config(g))


@method("hrgrad", "HRGrad as reconstructed in docs/methods.md §7 (rotated ConFIG)",
        namespace="aggregator")
def hrgrad(*, kappa: float = 0.5, max_halvings: int = 4) -> AggregatorFns:
    if not 0 <= kappa <= 1:
        raise ValueError(f"hrgrad: kappa must be in [0, 1], got {kappa}")
    if max_halvings < 0:
        raise ValueError(f"hrgrad: max_halvings must be >= 0, got {max_halvings}")
    return _stateless(lambda g, key: aggregators.hrgrad(g, kappa, max_halvings))


@method("mconfig", "momentum ConFIG: one task's gradient per step, per-task momenta",
        namespace="aggregator")
def mconfig(*, beta1: float = 0.9, beta2: float = 0.999, normalise: bool = True,
            eps: float = 1e-8) -> AggregatorFns:
    for key, beta in (("beta1", beta1), ("beta2", beta2)):
        if not 0 <= beta < 1:
            raise ValueError(f"mconfig: {key} must be in [0, 1), got {beta}")

    def aggregate(grad, state, key):
        return aggregators.mconfig_update(grad, state, beta1=beta1, beta2=beta2,
                                          normalise=normalise, eps=eps)

    def aggregated(state):
        # The bias-corrected per-task momenta.
        counts = state.task_counts.astype(state.momenta.dtype)
        return state.momenta / jnp.where(counts > 0, 1.0 - beta1 ** counts, 1.0)[:, None]

    return AggregatorFns(aggregators.mconfig_init, aggregate, aggregators.mconfig_next_task,
                         aggregated)


# ---------------------------------------------------------------------------------------------
# The method


@method("multitask", "multi-task: per-task gradients combined by an aggregator, applied by an "
        "optimiser", needs=("groups",), safer=safer_inner("optimizer"))
def multitask(objective: Objective, *, aggregator: Aggregator = sum_(),
              optimizer: Optimizer = adam(), tasks: TaskSplitName = "groups",
              task_weights: TaskWeights = "none") -> Method:
    """The task gradients of the split ``tasks``, combined by ``aggregator``, applied by
    ``optimizer`` (a gradient transformation) as if the combination were the gradient.
    ``task_weights="inverse-loss"`` scales each task gradient by :func:`inverse_loss_weights`
    of the current task losses before the aggregator sees it (per-task adaptive weights)."""
    agg = aggregator.build(None)
    if task_weights != "none" and agg.one_task is not None:
        raise ValueError(f"multitask: task_weights={task_weights!r} needs every task's gradient "
                         f"each step; aggregator {aggregator.name!r} takes one task's per step")
    split = make_task_split(objective, tasks)
    transform = optimizer.transform() if isinstance(optimizer, MethodValue) else optimizer
    m = split.m
    dtype = objective.dtype

    def init(params):
        flat, _ = ravel_pytree(params)
        return MultitaskState(transform.init(params), agg.init(m, flat.size, flat.dtype),
                              jnp.zeros(m, dtype))

    layout = task_layout(objective, split) if agg.one_task is None else None

    def gradients(params, state, batch):
        if agg.one_task is None:
            return task_gradients(objective, split, params, batch, layout)
        # One task per step: back-propagate only that task.
        flat, unravel = ravel_pytree(params)
        values, pullback = jax.vjp(
            lambda theta: task_losses(objective, split, unravel(theta), batch), flat)
        (grad,) = pullback(jax.nn.one_hot(agg.one_task(state.aggregator), m, dtype=values.dtype))
        return values, grad, unravel

    def step(params, state, batch, key):
        losses, grads, unravel = gradients(params, state, batch)
        if task_weights == "inverse-loss":
            grads = inverse_loss_weights(losses)[:, None] * grads
        update, agg_state, agg_info = agg.aggregate(grads, state.aggregator, key)
        if agg.aggregated is not None:
            grads = agg.aggregated(agg_state)
        updates, opt_state = transform.update(unravel(update), state.optimizer, params)
        info = {"loss": jnp.sum(losses), **aggregators.conflict_stats(grads),
                "update_cos_min": _cosines(grads, update)}
        info.update({k: jnp.asarray(v, dtype) for k, v in agg_info.items()})
        info.update(task_loss_info(split.labels, losses, state.previous_losses))
        new_state = MultitaskState(opt_state, agg_state, losses)
        return optax.apply_updates(params, updates), new_state, info

    return Method(init, step)


# ---------------------------------------------------------------------------------------------
# The older names: one method per aggregator, with flat settings


def _flat_settings(*, tasks: TaskSplitName = "groups", task_weights: TaskWeights = "none",
                   optimizer: Literal["adam", "sgd"] = "adam",
                   lr: float = 1e-3, schedule: Schedule = "constant", decay_rate: float = 0.96,
                   decay_steps: int = 1000, b1: float = 0.9, b2: float = 0.999, eps: float = 1e-8,
                   momentum: float = 0.0) -> None:
    """The flat settings every aggregator name took: the split and the optimiser's."""


def _expand(aggregator: Definition, flat: dict[str, Any]) -> MethodValue:
    schedule = {k: flat[k] for k in ("lr", "schedule", "decay_rate", "decay_steps")}
    if flat["optimizer"] == "adam":
        optimizer = adam(**schedule, b1=flat["b1"], b2=flat["b2"], eps=flat["eps"])
    else:
        optimizer = sgd(**schedule, momentum=flat["momentum"])
    own = aggregator(**{k: flat[k] for k in aggregator.settings})
    return multitask(aggregator=own, optimizer=optimizer, tasks=flat["tasks"],
                     task_weights=flat["task_weights"])


def _register_aliases() -> None:
    common = read_settings(_flat_settings, skip_first=False)
    for name, definition in AGGREGATORS.items():
        settings = {**common, **definition.settings}
        if name == "mconfig":
            # Its update is already Adam-scaled (normalise): applied with plain SGD.
            settings["optimizer"] = Setting("optimizer", str, "sgd", ("adam", "sgd"))
        METHODS[name] = Definition(
            name, "method", lambda target, _agg=definition, **flat: _expand(_agg, flat),
            f"multi-task: {definition.summary} (multitask with aggregator={name})",
            settings, alias=True)


_register_aliases()
