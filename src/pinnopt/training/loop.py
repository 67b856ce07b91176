"""The training loop: budgets, evaluation schedule, NaN guard and divergence retry, signals,
progress, and the announcement of long steps.

:func:`run` trains a built :class:`~pinnopt.training.setup.Setup` from a given state, on the
batches a function gives for each step, until a budget is spent, and hands every evaluation
row and checkpoint to a :class:`Sink`: the run directory
(:class:`pinnopt.training.rundir.RunDir`) or a :class:`MemorySink`. Training time excludes
compilation and evaluation, as in [KFAC]'s time budgets, and counts the drawing of new
points (except the first batch, drawn before compilation). Every step's randomness derives
from ``(seed, step)``, so a run resumed from a checkpoint repeats exactly the steps of an
uninterrupted one.

The steps between two host-side events (evaluation rows, checkpoints, the budgets, signals,
progress) run as one compiled call, a chunk (:func:`chunk_end`): a ``lax.while_loop`` over the
method's step with the trip count as an argument, so every chunk length runs the same program
and the numbers do not depend on where chunks end. Each step in it is guarded; a chunk with a
failing step is rolled back and replayed one step per call, so that divergence is handled at
the failing step as before.

Stopping: the first SIGINT or SIGTERM stops the run at the end of the chunk in progress (a
final checkpoint and evaluation, status ``interrupted``); a second one abandons the chunk in
progress at once (:class:`StepAborted`), leaving the last checkpoint as it was. A step whose estimated
or measured duration exceeds :data:`ANNOUNCE_SECONDS` is announced, with how to stop it.
"""

from __future__ import annotations

import contextlib
import functools
import math
import signal
import statistics
import sys
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterator, Protocol, Sequence

import jax
import jax.numpy as jnp

from pinnopt.config import RunConfig
from pinnopt.distributed import DataParallel
from pinnopt.nets import Params
from pinnopt.optim import Method
from pinnopt.residuals import Batch
from pinnopt.training.batches import StepBatches, step_keys
from pinnopt.training.methods import build_method, safer_config
from pinnopt.training.setup import Setup, TrainState

Row = dict[str, Any]

ANNOUNCE_SECONDS = 5.0
"""A step estimated (before the first) or measured (the first) to take longer than this many
seconds is announced in the log, with how to stop the run: a stop signal waits for the step."""

PROGRESS_EVERY = 30.0
"""Seconds between the plain progress lines that replace the bar when stderr is not a
terminal (a log file, a batch job)."""

STOP_HINT = "Ctrl-C stops after the current step, twice stops at once"

CHUNK_SECONDS = 0.1
"""With ``chunk_steps = "auto"``, the duration aimed at for one compiled chunk of steps: the
time budget, stop signals and progress are looked at between chunks, so at most about this
late, and the host's work between chunks stays well under 1% of the time."""

PROBE_STEPS = 5
"""With ``chunk_steps = "auto"``, the steps timed one at a time before the chunk length is
chosen."""

MAX_CHUNK_STEPS = 1 << 14

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
    stop_signal: str | None = None
    """The signal that stopped an ``interrupted`` run (``SIGINT``, ``SIGTERM``), in the
    process that caught it."""
    chunk_steps: int | None = None
    """The chunk length ``K`` the run used (:func:`chunk_end`; ``None``: it stopped before
    ``chunk_steps = "auto"`` had chosen one)."""

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
            "signal": self.stop_signal,
            "chunk_steps": self.chunk_steps,
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

    ``batches(step)``: the step's batch (placed on the devices in a data-parallel run). A
    :class:`~pinnopt.training.batches.StepBatches` also tells the loop whether the batch is
    fixed or how to draw it inside the compiled loop, so that the steps between two host-side
    events run as one compiled call (a *chunk*, :func:`chunk_end`); with any other function
    each step is its own call. ``history``: the rows of the run so far (a resumed run's), so
    that a step evaluated before is not evaluated again. ``evaluate``: the numbers of each row
    (default :func:`standard_evaluation`); the loop adds ``step``, ``time`` and the method's
    scalars of the last step (``method_*``). ``parallel``: the data-parallel layout, whose
    process 0 decides for all when to stop. Rows go to ``sink`` at every evaluation,
    checkpoints at evaluations at least ``checkpoint_every`` seconds apart and at the end.
    ``progress``: show progress on stderr (a bar on a terminal, else a line every
    :data:`PROGRESS_EVERY` seconds). ``log``: messages (a long step's cost, a stop signal, a
    divergence retry).

    A second stop signal raises :class:`StepAborted` (a ``KeyboardInterrupt``) out of the
    chunk or compilation in progress; the sink keeps its last checkpoint.
    """
    config = setup.config
    objective, method = setup.objective, setup.method
    history = list(history)
    # Where each step's batch comes from: the batch passed in (one fixed batch, or a batch
    # the host draws for a single step) or a draw inside the compiled loop.
    in_loop = batches.in_loop() if isinstance(batches, StepBatches) else None
    host_batches = in_loop is None
    chunked = in_loop is not None or (isinstance(batches, StepBatches) and batches.fixed)

    def place(value: Any) -> Any:
        return value if parallel is None else parallel.place_replicated(value)

    def compile_chunk(method: Method):
        def chunk(params, mstate, batch, start, count):
            """Steps ``start, start + 1, ...``: ``count`` of them, or up to and including the
            first that is not finite or whose loss is exactly 0. Returns the state after the
            last step run, that step's scalars, the number of steps run and the two flags."""

            def body(carry):
                i, params, mstate, _, _, _ = carry
                step = start + i
                step_batch = batch
                if in_loop is not None:
                    step_batch = in_loop(step)
                    if parallel is not None:
                        step_batch = jax.lax.with_sharding_constraint(
                            step_batch, parallel.batch_sharding(step_batch))
                key = step_keys(config.seed, step)[1]
                # The barrier makes the step's inputs opaque, as the arguments of a program
                # of its own are: without it XLA hoists the work that depends only on a
                # fixed batch out of the loop and fuses the rest differently, which moves
                # results by a few ulp (ENGD at damping 1e-10 amplifies that to 4e-4 in the
                # loss within three steps). With it, a step in a chunk gives the bits of a
                # step compiled alone.
                params, mstate, step_batch = jax.lax.optimization_barrier(
                    (params, mstate, step_batch))
                new_params, new_state, info = method.step(params, mstate, step_batch, key)
                # NaN anywhere in the new state (Gramians, Kronecker factors, moments) or a
                # non-finite loss or parameter means this step failed. (Inf is allowed in the
                # state: optax's line search uses it as an initial sentinel.)
                ok = jnp.isfinite(info["loss"]) & _all_finite(new_params) & ~_any_nan(new_state)
                return i + 1, new_params, new_state, info, ok, info["loss"] == 0

            def go_on(carry):
                i, _, _, _, ok, zero = carry
                return (i < count) & ok & ~zero

            shapes = jax.eval_shape(method.step, params, mstate, batch,
                                    step_keys(config.seed, start)[1])[2]
            info = jax.tree_util.tree_map(lambda a: jnp.zeros(a.shape, a.dtype), shapes)
            carry = (jnp.zeros_like(start), params, mstate, info, jnp.asarray(True),
                     jnp.asarray(False))
            done, params, mstate, info, ok, zero = jax.lax.while_loop(go_on, body, carry)
            return params, mstate, info, done, ok, zero

        if parallel is None:
            jitted = jax.jit(chunk)
        else:
            # Parameters, scalars and the flags replicated; the batch and pointwise state
            # split along the points; jit inserts the reductions over devices.
            rep, state_sharding = parallel.replicated, parallel.state_sharding(mstate)
            jitted = jax.jit(
                chunk,
                in_shardings=(rep, state_sharding, parallel.batch_sharding(batch0), rep, rep),
                out_shardings=(rep, state_sharding, rep, rep, rep, rep))
        return jitted.lower(params, mstate, batch0, place(_step_index(step)),
                            place(_step_index(1))).compile()

    def save(step: int, train_time: float, params: Params, mstate: Any, next_eval: int) -> None:
        if parallel is not None:
            # Every process gathers (a collective when state is split across hosts).
            params, mstate = parallel.to_host((params, mstate))
        with signals.writing():
            sink.checkpoint({"step": step, "train_time": train_time, "params": params,
                             "method_state": mstate, "next_eval": next_eval})
            signals.saved = step

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
    # Listening from before compilation on: a stop signal while compiling stops before the
    # first step, with a checkpoint, instead of leaving a run without one.
    with _StopSignals(log, sink.location, saved=step if step else None) as signals:
        with signals.compiling():
            compiled = compile_chunk(method)
        estimate = _announce_cost(compiled, setup.dtype, log)
        eval_fn = jax.jit(evaluate or standard_evaluation(setup, parallel))

        chunk_length = _ChunkLength(config.chunk_steps if chunked else 1)
        replay_until = step  # steps before this one run one at a time (after a failed chunk)
        last_info: dict[str, float] = {}
        last_ckpt = time.monotonic()
        status, message = "completed", ""
        retries = 0
        zero_loss_step = None
        first_step = True
        shown = _progress(setup, step) if progress else None
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
                # Drawing new points is part of training, timed with the steps it is for (not
                # when the run ends here: then only the final evaluation uses the batch).
                # Points drawn inside the compiled loop are timed with it.
                draw_seconds = 0.0
                batch = None
                if host_batches:
                    t0 = time.perf_counter()
                    batch = batches(step)
                    draw_seconds = time.perf_counter() - t0
                evaluated = history and history[-1]["step"] == step
                if (step >= next_eval or reason) and not evaluated:
                    row = {"step": step, "time": train_time,
                           **_scalars(eval_fn(params, mstate,
                                              batches(step) if batch is None else batch)),
                           **last_info}
                    history.append(row)
                    sink.record(row)
                    next_eval = next_eval_step(step, config.eval_ratio)
                    if shown is not None:
                        shown.row(row)
                    if not reason and checkpoint_due:
                        save(step, train_time, params, mstate, next_eval)
                        last_ckpt = time.monotonic()
                if reason:
                    message = reason
                    break
                count = 1
                if chunked and step >= replay_until:
                    count = chunk_end(step, next_eval, config.steps, chunk_length()) - step
                signals.step = step
                t0 = time.perf_counter()
                out = compiled(params, mstate, batch0 if batch is None else batch,
                               place(_step_index(step)), place(_step_index(count)))
                new_params, new_state = out[0], out[1]
                info, done, ok, zero = jax.device_get(out[2:])
                seconds = time.perf_counter() - t0
                done, ok = int(done), bool(ok)
                train_time += draw_seconds + seconds
                if first_step and seconds / done >= ANNOUNCE_SECONDS:
                    guess = f" (estimated {_duration(estimate)})" if estimate else ""
                    hint = "" if signals.caught else f"; {STOP_HINT}"
                    log(f"step {step} took {_duration(seconds / done)}{guess}{hint}")
                first_step = False
                if not ok and done > 1:
                    # Step step + done - 1 failed inside the chunk: roll back to the chunk's
                    # start and replay its steps one at a time, so that the failing step is
                    # met alone and handled as below (the replayed steps are the same
                    # computation, so they reach the same state bit for bit).
                    replay_until = step + done
                    continue
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
                        with signals.compiling():
                            compiled = compile_chunk(method)
                        sink.reconfigured(config)
                        continue
                    status = "diverged"
                    message = (
                        f"non-finite loss or parameters in step {step} ({config.method}"
                        f"{f', after {retries} retries with safer settings' if retries else ''}); "
                        f"the last good state (step {step}) is kept in {sink.location}"
                    )
                    break
                if chunk_length.timed(done, seconds) and parallel is not None:
                    # Process 0's choice for all: every process must run the same chunks.
                    chunk_length.steps = parallel.agree((chunk_length.steps,))[0]
                params, mstate = new_params, new_state
                last_info = {f"method_{k}": float(v) for k, v in info.items() if k != "loss"}
                step += done
                if bool(zero):
                    # Every residual vanished at the training points: the gradient is zero
                    # and nothing can move any more. Stop and say so (see _zero_loss_message).
                    zero_loss_step = step - 1
                if shown is not None:
                    shown.advance(step, train_time)
        finally:
            if shown is not None:
                shown.close()
        save(step, train_time, params, mstate, next_eval)
    final = {"step": step, "train_time": train_time, "params": params, "method_state": mstate,
             "next_eval": next_eval}
    return Outcome(status, message, final, history, config,
                   signals.caught if status == "interrupted" else None,
                   chunk_length.steps)


def chunk_end(step: int, next_eval: int, steps: int, chunk_steps: int) -> int:
    """The step at which the chunk of steps starting at ``step`` ends: the next evaluation,
    the step budget or the next multiple of ``chunk_steps``, whichever comes first. The
    host-side events (evaluation rows, checkpoints, the budgets, stop signals, progress)
    happen between chunks."""
    end = min(steps, (step // chunk_steps + 1) * chunk_steps)
    return min(end, next_eval) if next_eval > step else end


class _ChunkLength:
    """The chunk length ``K`` of a run (:func:`chunk_end`): the ``chunk_steps`` setting, or
    for ``"auto"`` the power of two that makes a chunk last about :data:`CHUNK_SECONDS`,
    from the median time of the first :data:`PROBE_STEPS` steps (run one at a time until
    then)."""

    def __init__(self, setting: int | str) -> None:
        self.steps: int | None = None if setting == "auto" else int(setting)
        self._seconds: list[float] = []

    def __call__(self) -> int:
        return 1 if self.steps is None else self.steps

    def timed(self, steps: int, seconds: float) -> bool:
        """A chunk of ``steps`` good steps took ``seconds``; whether ``K`` was chosen now."""
        if self.steps is not None or steps != 1:
            return False
        self._seconds.append(seconds)
        if len(self._seconds) < PROBE_STEPS:
            return False
        self.steps = auto_chunk_steps(statistics.median(self._seconds))
        return True


def auto_chunk_steps(seconds_per_step: float) -> int:
    """The largest power of two ``K <= MAX_CHUNK_STEPS`` with ``K`` steps taking at most
    :data:`CHUNK_SECONDS` (at least 1)."""
    if seconds_per_step <= 0:
        return MAX_CHUNK_STEPS
    k = 2 ** max(0, math.floor(math.log2(CHUNK_SECONDS / seconds_per_step)))
    return min(k, MAX_CHUNK_STEPS)


def _step_index(step: int) -> jax.Array:
    """A step number as the compiled chunk takes it (the default integer type)."""
    return jnp.asarray(step, jnp.asarray(0).dtype)


class StepAborted(KeyboardInterrupt):
    """A second stop signal abandoned the step in progress (or the compilation); the run's
    last checkpoint is as it was, so the run resumes from there. ``signal_name``: the
    signal (``SIGINT``, ``SIGTERM``)."""

    def __init__(self, message: str, signal_name: str) -> None:
        super().__init__(message)
        self.signal_name = signal_name


class _StopSignals:
    """SIGINT and SIGTERM, while active. The first only notes its name (``caught``) and says
    so: the loop then stops at the end of the chunk of steps in progress and checkpoints
    instead of dying mid-step. A second one raises :class:`StepAborted` at once (JAX waits for a computation
    or a compilation in a way that lets the handler run), except while a checkpoint is being
    written (:meth:`writing`), which it lets finish first. Signal handlers can only be set
    from the main thread; elsewhere signals act as usual.

    ``step`` is the step in progress and ``saved`` the step of the last checkpoint (``None``:
    none yet), for the messages; the loop keeps them up to date.
    """

    def __init__(self, log: Callable[[str], None], location: str, saved: int | None) -> None:
        self.caught: str | None = None
        self.step: int | None = None
        self.saved = saved
        self._log = log
        self._location = location
        self._compiling = False
        self._writing = False
        self._pending: str | None = None
        self._old: dict[signal.Signals, Any] = {}

    def __enter__(self) -> "_StopSignals":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._old[sig] = signal.signal(sig, self._note)
        return self

    def __exit__(self, *exc: Any) -> None:
        for sig, old in self._old.items():
            signal.signal(sig, old)

    @contextlib.contextmanager
    def compiling(self) -> Iterator[None]:
        """A compilation of the step is under way (for the messages)."""
        self._compiling = True
        try:
            yield
        finally:
            self._compiling = False

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """A checkpoint is being written: a second signal waits until it is complete."""
        self._writing = True
        try:
            yield
        finally:
            self._writing = False
        if self._pending:
            raise StepAborted(self._aborted(self._pending), self._pending)

    def _note(self, signum: int, frame: Any) -> None:
        name = signal.Signals(signum).name
        again = "Ctrl-C again" if signum == signal.SIGINT else f"{name} again (or Ctrl-C)"
        if self.caught is None:
            self.caught = name
            when = ("once the step is compiled, before it runs" if self._compiling
                    else "after the steps in progress")
            self._log(f"{name}: stopping {when}; {again} to stop now")
        elif self._writing:
            self._pending = name
        else:
            raise StepAborted(self._aborted(name), name)

    def _aborted(self, name: str) -> str:
        if self._compiling:
            doing = "while compiling the step"
        else:
            doing = "before the first step" if self.step is None else f"in step {self.step}"
        if self.saved is None:
            kept = (f"no checkpoint yet ({self._location}), so resuming (--resume) starts "
                    f"the run from step 0")
        else:
            kept = (f"the run keeps its checkpoint of step {self.saved} ({self._location}) "
                    f"and resumes from it (--resume)")
        return f"stopped at once by a second {name}, {doing}; {kept}"


def _announce_cost(compiled: Any, dtype: jnp.dtype, log: Callable[[str], None]) -> float | None:
    """Log XLA's estimate of one step (operations, memory, seconds at this machine's rate)
    when it exceeds :data:`ANNOUNCE_SECONDS`; returns the estimated seconds (``None`` where
    the backend gives no operation count)."""
    flops, peak = _step_cost(compiled)
    if flops is None:
        return None
    seconds = flops / flop_rate(jnp.dtype(dtype).name)
    if seconds >= ANNOUNCE_SECONDS:
        memory = f", ~{_size(peak)}" if peak else ""
        log(f"each step: ~{flops:.1e} FLOP{memory}; about {_duration(seconds)} per step on "
            f"this machine ({STOP_HINT})")
    return seconds


def _step_cost(compiled: Any) -> tuple[float | None, float | None]:
    """Floating-point operations and peak memory in bytes of a compiled step, as XLA
    estimates them (``None`` where the backend does not say). A loop's body counts once, so
    steps with iterative solves or line searches are under-estimated."""
    flops = peak = None
    try:
        cost = compiled.cost_analysis()
        if isinstance(cost, (list, tuple)):  # older JAX: one dict per program
            cost = cost[0] if cost else None
        if cost and cost.get("flops", -1) > 0:
            flops = float(cost["flops"])
    except (NotImplementedError, RuntimeError):  # a backend without the analysis
        pass
    try:
        memory = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        memory = None
    if memory is not None:
        peak = getattr(memory, "peak_memory_in_bytes", 0) or (
            memory.argument_size_in_bytes + memory.output_size_in_bytes
            + memory.temp_size_in_bytes - memory.alias_size_in_bytes)
    return flops, float(peak) if peak else None


@functools.cache
def flop_rate(dtype: str) -> float:
    """Floating-point operations per second of this machine's default device: the best of
    three 512 × 512 matrix products in ``dtype``, measured once per process (a few tens of
    milliseconds). Dense steps approach this rate; memory-bound ones run slower."""
    n = 512
    product = jax.jit(lambda a: a @ a)
    a = jnp.ones((n, n), dtype)
    product(a).block_until_ready()  # compile
    best = math.inf
    for _ in range(3):
        t0 = time.perf_counter()
        product(a).block_until_ready()
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


def _duration(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.2g} s"
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


def _size(nbytes: float) -> str:
    return f"{nbytes / 1e9:.1f} GB" if nbytes >= 1e8 else f"{nbytes / 1e6:.1f} MB"


class _Progress(Protocol):
    def row(self, row: Row) -> None:
        """An evaluation row (its numbers are shown)."""

    def advance(self, step: int, train_time: float) -> None:
        """Steps are done: ``step`` steps and ``train_time`` seconds trained so far."""

    def close(self) -> None:
        """The run has ended."""


def _progress(setup: Setup, step: int) -> _Progress:
    """A tqdm bar on a terminal or in a notebook; elsewhere (output to a log file) a plain
    line every :data:`PROGRESS_EVERY` seconds, since a bar's redraws would flood the file."""
    stream = sys.stderr
    if (stream is not None and stream.isatty()) or "ipykernel" in sys.modules:
        return _Bar(setup, step)
    return _Lines(setup, step, PROGRESS_EVERY)


class _Bar:
    """The tqdm progress bar, with the loss and the first errors of the latest row."""

    def __init__(self, setup: Setup, step: int) -> None:
        from tqdm.auto import tqdm

        config = setup.config
        total = config.steps if config.time_budget is None else None
        self._setup = setup
        self._bar = tqdm(total=total, initial=step, unit="step", mininterval=0.5,
                         dynamic_ncols=True, desc=f"{config.problem}/{config.method}")

    def row(self, row: Row) -> None:
        self._bar.set_postfix(_postfix(self._setup, row), refresh=False)

    def advance(self, step: int, train_time: float) -> None:
        self._bar.update(step - self._bar.n)

    def close(self) -> None:
        self._bar.close()


class _Lines:
    """Progress as a line on stderr at most every ``every`` seconds, at a step boundary:
    the step, the training time against the budgets, the rate since the previous line, and
    the numbers of the latest evaluation row."""

    def __init__(self, setup: Setup, step: int, every: float) -> None:
        self._setup, self._every = setup, every
        config = setup.config
        self._prefix = f"{config.problem}/{config.method}"
        self._last_time, self._last_step = time.monotonic(), step
        self._numbers = ""

    def row(self, row: Row) -> None:
        numbers = ", ".join(f"{k} {v}" for k, v in _postfix(self._setup, row).items())
        self._numbers = f"; {numbers} at step {row['step']}"

    def advance(self, step: int, train_time: float) -> None:
        now = time.monotonic()
        if now - self._last_time < self._every:
            return
        config = self._setup.config
        rate = (step - self._last_step) / (now - self._last_time)
        budget = "" if config.time_budget is None else f" of {config.time_budget:g}"
        print(f"{self._prefix}: step {step} of {config.steps}, {train_time:.0f}{budget} s "
              f"trained, {rate:.3g} steps/s{self._numbers}", file=sys.stderr, flush=True)
        self._last_time, self._last_step = now, step

    def close(self) -> None:
        pass


def _postfix(setup: Setup, row: Row) -> dict[str, str]:
    """The loss and the errors of the first two scored fields: relative L2 where the row has
    it (the quantity targets are stated in), RMS otherwise."""
    out = {"loss": f"{row['loss']:.2e}"}
    for f in setup.problem.scored_fields[:2]:
        for key in (f"rel_l2_{f}", f"rms_{f}"):
            if key in row:
                out[key] = f"{row[key]:.2e}"
                break
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
