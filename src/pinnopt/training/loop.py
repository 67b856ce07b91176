"""The training loop: budgets, evaluation schedule, NaN guard and divergence retry, signals,
progress bar.

:func:`run` trains a built :class:`~pinnopt.training.setup.Setup` from a given state, on the
batches a function gives for each step, until a budget is spent, and hands every evaluation
row and checkpoint to a :class:`Sink`: the run directory
(:class:`pinnopt.training.rundir.RunDir`) or a :class:`MemorySink`. Training time excludes
compilation and evaluation, as in [KFAC]'s time budgets, and counts the drawing of new
points (except the first batch, drawn before compilation). Every step's randomness derives
from ``(seed, step)``, so a run resumed from a checkpoint repeats exactly the steps of an
uninterrupted one.
"""

from __future__ import annotations

import math
import signal
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Protocol, Sequence

import jax
import jax.numpy as jnp

from pinnopt.config import RunConfig
from pinnopt.distributed import DataParallel
from pinnopt.nets import Params
from pinnopt.optim import Method
from pinnopt.residuals import Batch
from pinnopt.training.batches import step_keys
from pinnopt.training.methods import build_method, safer_config
from pinnopt.training.setup import Setup, TrainState

Row = dict[str, Any]
Evaluate = Callable[[Params, Any, Batch], dict[str, jax.Array]]
"""``(params, method_state, batch) -> {name: scalar}``: the numbers of an evaluation row."""


class Sink(Protocol):
    """Where the loop puts what a run produces."""

    location: str
    """Where checkpoints are kept, for messages (a path, or ``"memory"``)."""

    def record(self, row: Row) -> None:
        """One evaluation row, in step order."""

    def checkpoint(self, state: TrainState) -> None:
        """A state to resume from (gathered from the devices in a data-parallel run)."""

    def reconfigured(self, config: RunConfig) -> None:
        """The run's configuration changed (safer settings after a divergence)."""


@dataclass
class MemorySink:
    """A sink that keeps the rows, the latest checkpoint and the latest configuration."""

    location: str = "memory"
    rows: list[Row] = field(default_factory=list)
    state: TrainState | None = None
    config: RunConfig | None = None

    def record(self, row: Row) -> None:
        self.rows.append(row)

    def checkpoint(self, state: TrainState) -> None:
        self.state = state

    def reconfigured(self, config: RunConfig) -> None:
        self.config = config


@dataclass
class Outcome:
    """How a run ended: ``status`` (``completed``, ``interrupted``, ``diverged``,
    ``stalled``) and why, the last good state (arrays on the devices), every evaluation row
    (those given to :func:`run` included) and the configuration it ended with (safer than the
    one it started with after a divergence retry)."""

    status: str
    message: str
    state: TrainState
    history: list[Row]
    config: RunConfig

    def summary(self, num_params: int) -> dict[str, Any]:
        """Status and final numbers (a run directory's ``summary.json``)."""
        step, train_time = self.state["step"], self.state["train_time"]
        return {
            "status": self.status,
            "message": self.message,
            "steps": step,
            "train_time": train_time,
            "seconds_per_step": train_time / step if step else None,
            "num_params": num_params,
            "final": self.history[-1] if self.history else {},
            "config": self.config.to_dict(),
        }


def next_eval_step(step: int, ratio: float) -> int:
    """Evaluation schedule of [KFAC]: 0, 1, then geometric with factor ``ratio``."""
    return max(step + 1, math.ceil(step * ratio))


def standard_evaluation(setup: Setup, parallel: DataParallel | None = None) -> Evaluate:
    """The loss and its groups on the step's batch and, when the setup has an evaluation set,
    the errors against the reference."""
    objective = setup.objective
    reference = None
    if setup.eval_points is not None:
        reference = (setup.eval_points, setup.eval_reference)
        if parallel is not None:
            reference = parallel.place_replicated(reference)

    def evaluate(params: Params, method_state: Any, batch: Batch) -> dict[str, jax.Array]:
        out = {"loss": objective.loss(params, batch)}
        out.update({f"loss_{k}": v for k, v in objective.group_losses(params, batch).items()})
        if reference is not None:
            out.update(objective.errors(params, *reference))
        return out

    return evaluate


def run(setup: Setup, state: TrainState, batches: Callable[[int], Batch], sink: Sink, *,
        history: Sequence[Row] = (), evaluate: Evaluate | None = None,
        parallel: DataParallel | None = None, progress: bool = False,
        log: Callable[[str], None] = print) -> Outcome:
    """Train from ``state`` until a budget of ``setup.config`` is spent, a signal arrives, the
    run diverges or its loss is exactly 0.

    ``batches(step)``: the step's batch (placed on the devices in a data-parallel run).
    ``history``: the rows of the run so far (a resumed run's), so that a step evaluated before
    is not evaluated again. ``evaluate``: the numbers of each row (default
    :func:`standard_evaluation`); the loop adds ``step``, ``time`` and the method's scalars
    of the last step (``method_*``). ``parallel``: the data-parallel layout, whose process 0
    decides for all when to stop. Rows go to ``sink`` at every evaluation, checkpoints at
    evaluations at least ``checkpoint_every`` seconds apart and at the end.
    """
    config = setup.config
    objective, method = setup.objective, setup.method
    history = list(history)

    def method_key(step: int) -> jax.Array:
        key = step_keys(config.seed, step)[1]
        return key if parallel is None else parallel.place_replicated(key)

    def compile_step(method: Method):
        def guarded_step(params, mstate, batch, key):
            new_params, new_state, info = method.step(params, mstate, batch, key)
            # NaN anywhere in the new state (Gramians, Kronecker factors, moments) or a
            # non-finite loss or parameter means this step failed. (Inf is allowed in the
            # state: optax's line search uses it as an initial sentinel.)
            ok = jnp.isfinite(info["loss"]) & _all_finite(new_params) & ~_any_nan(new_state)
            return new_params, new_state, info, ok

        if parallel is None:
            jitted = jax.jit(guarded_step)
        else:
            # Parameters, scalars and the ok flag replicated; the batch and pointwise
            # state split along the points; jit inserts the reductions over devices.
            rep, state_sharding = parallel.replicated, parallel.state_sharding(mstate)
            jitted = jax.jit(
                guarded_step,
                in_shardings=(rep, state_sharding, parallel.batch_sharding(batch0), rep),
                out_shardings=(rep, state_sharding, rep, rep))
        return jitted.lower(params, mstate, batch0, key0).compile()

    def save(step: int, train_time: float, params: Params, mstate: Any, next_eval: int) -> None:
        if parallel is not None:
            # Every process gathers (a collective when state is split across hosts).
            params, mstate = parallel.to_host((params, mstate))
        sink.checkpoint({"step": step, "train_time": train_time, "params": params,
                         "method_state": mstate, "next_eval": next_eval})

    def decide(step: int, train_time: float, last_ckpt: float) -> tuple[int, bool]:
        """Whether to stop (0: no, 1: steps, 2: time, 3: signal) and whether a timed
        checkpoint is due. Across processes, process 0 decides for all: clocks and signals
        differ, and a process that stopped alone would leave the others in a collective."""
        stop = 0
        if step >= config.steps:
            stop = 1
        elif config.time_budget is not None and train_time >= config.time_budget:
            stop = 2
        elif signals.caught:
            stop = 3
        due = time.monotonic() - last_ckpt >= config.checkpoint_every
        if parallel is not None:
            stop, due = parallel.agree((stop, int(due)))
        return stop, bool(due)

    params, mstate = state["params"], state["method_state"]
    if parallel is not None:
        params, mstate = parallel.place_replicated(params), parallel.place_state(mstate)
    step, train_time, next_eval = state["step"], state["train_time"], state["next_eval"]
    batch0 = batches(step)
    key0 = method_key(step)
    compiled = compile_step(method)
    eval_fn = jax.jit(evaluate or standard_evaluation(setup, parallel))

    last_info: dict[str, float] = {}
    last_ckpt = time.monotonic()
    status, message = "completed", ""
    retries = 0
    zero_loss_step = None
    bar = _progress_bar(config, step) if progress else None
    with _StopSignals() as signals:
        try:
            while True:
                stop, checkpoint_due = decide(step, train_time, last_ckpt)
                reason = None
                if stop == 1:
                    reason = "step budget reached"
                elif stop == 2:
                    reason = "time budget reached"
                elif stop == 3:
                    status, reason = "interrupted", f"stopped by {signals.caught or 'a signal'}"
                elif zero_loss_step is not None:
                    status, reason = "stalled", _zero_loss_message(zero_loss_step, config.dtype)
                # Drawing new points is part of training, timed with the step it is for (not
                # when the run ends here: then only the final evaluation uses the batch).
                t0 = time.perf_counter()
                batch = batches(step)
                draw_seconds = time.perf_counter() - t0
                evaluated = history and history[-1]["step"] == step
                if (step >= next_eval or reason) and not evaluated:
                    row = {"step": step, "time": train_time,
                           **_scalars(eval_fn(params, mstate, batch)), **last_info}
                    history.append(row)
                    sink.record(row)
                    next_eval = next_eval_step(step, config.eval_ratio)
                    if bar is not None:
                        bar.set_postfix(_postfix(setup, row), refresh=False)
                    if not reason and checkpoint_due:
                        save(step, train_time, params, mstate, next_eval)
                        last_ckpt = time.monotonic()
                if reason:
                    message = reason
                    break
                key = method_key(step)
                t0 = time.perf_counter()
                new_params, new_state, info, ok = compiled(params, mstate, batch, key)
                ok = bool(ok)
                train_time += draw_seconds + time.perf_counter() - t0
                if not ok:
                    safer = safer_config(config) if retries < config.max_retries else None
                    if config.on_divergence == "retry" and safer is not None:
                        # Roll back (the failed step's results are dropped) and redo the step
                        # with safer settings; they become part of the run's configuration.
                        retries += 1
                        config, changed = safer
                        log(f"warning: non-finite values in step {step}; rolled back and "
                            f"retrying with {changed} (retry {retries} of {config.max_retries})")
                        method = build_method(config, objective)
                        compiled = compile_step(method)
                        sink.reconfigured(config)
                        continue
                    status = "diverged"
                    message = (
                        f"non-finite loss or parameters in step {step} ({config.method}"
                        f"{f', after {retries} retries with safer settings' if retries else ''}); "
                        f"the last good state (step {step}) is kept in {sink.location}"
                    )
                    break
                params, mstate = new_params, new_state
                last_info = {f"method_{k}": float(v) for k, v in info.items() if k != "loss"}
                if float(info["loss"]) == 0.0:
                    # Every residual vanished at the training points: the gradient is zero
                    # and nothing can move any more. Stop and say so (see _zero_loss_message).
                    zero_loss_step = step
                step += 1
                if bar is not None:
                    bar.update(1)
        finally:
            if bar is not None:
                bar.close()
    save(step, train_time, params, mstate, next_eval)
    final = {"step": step, "train_time": train_time, "params": params, "method_state": mstate,
             "next_eval": next_eval}
    return Outcome(status, message, final, history, config)


class _StopSignals:
    """SIGINT and SIGTERM, while active, only note their name (``caught``): the loop then
    stops at the next step boundary and checkpoints instead of dying mid-step. Signal
    handlers can only be set from the main thread; elsewhere signals act as usual."""

    def __init__(self) -> None:
        self.caught: str | None = None
        self._old: dict[signal.Signals, Any] = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._note)
        return self

    def _note(self, signum: int, frame: Any) -> None:
        self.caught = signal.Signals(signum).name

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)


def _progress_bar(config: RunConfig, step: int):
    from tqdm.auto import tqdm

    total = config.steps if config.time_budget is None else None
    return tqdm(total=total, initial=step, unit="step", mininterval=0.5, dynamic_ncols=True,
                desc=f"{config.problem}/{config.method}")


def _postfix(setup: Setup, row: Row) -> dict[str, str]:
    out = {"loss": f"{row['loss']:.2e}"}
    for f in setup.problem.scored_fields[:2]:
        if f"rms_{f}" in row:
            out[f"rms_{f}"] = f"{row[f'rms_{f}']:.2e}"
    return out


def _zero_loss_message(step: int, dtype: str) -> str:
    """Why a run stopped on a training loss of exactly 0."""
    return (f"the training loss is exactly 0 in {dtype} at step {step}: every residual vanishes "
            "at the training points, so the gradient is zero and no method can move. Check "
            "the errors against the reference: saturated units can fit fixed points exactly "
            "and be wrong between them (more or resampled points help)")


def _all_finite(tree) -> jax.Array:
    leaves = jax.tree_util.tree_leaves(tree)
    return jnp.all(jnp.stack([jnp.all(jnp.isfinite(leaf)) for leaf in leaves]))


def _any_nan(tree) -> jax.Array:
    leaves = [leaf for leaf in jax.tree_util.tree_leaves(tree)
              if jnp.issubdtype(jnp.asarray(leaf).dtype, jnp.inexact)]
    if not leaves:
        return jnp.asarray(False)
    return jnp.any(jnp.stack([jnp.any(jnp.isnan(leaf)) for leaf in leaves]))


def _scalars(d: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in d.items()}
