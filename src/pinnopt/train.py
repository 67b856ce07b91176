"""The trainer: budgets, evaluation schedule, history, checkpoints, resume, NaN guard.

A run directory holds

    config.json      the RunConfig
    metadata.json    versions, device, git revision, parameter count
    history.jsonl    one row per evaluation: step, time (training seconds), loss and its
                     groups, errors against the reference, the method's scalars
    checkpoint.npz   the latest state (and checkpoint.npz.prev, the one before)
    summary.json     status and final numbers
    plots/           figures (``pinnopt report``)

Training time excludes compilation and evaluation, as in [KFAC]'s time budgets. Every
step's randomness derives from ``(seed, step)``, so a resumed run repeats exactly the steps
of an uninterrupted one.
"""

from __future__ import annotations

import json
import math
import platform
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from pinnopt import checkpoint, distributed
from pinnopt.config import ConfigError, RunConfig
from pinnopt.nets import MLP, Params
from pinnopt.optim import METHODS, Method, make_method
from pinnopt.problems import Problem
from pinnopt.residuals import Batch, Objective

CHECKPOINT = "checkpoint.npz"
HISTORY = "history.jsonl"


class RunError(RuntimeError):
    """A run cannot be started or resumed; the message is one line for the user."""


@dataclass
class Setup:
    """Everything a run derives from its configuration."""

    config: RunConfig
    problem: Problem
    net: MLP
    objective: Objective
    method: Method
    eval_points: jax.Array
    eval_reference: jax.Array

    @property
    def dtype(self):
        return jnp.dtype(self.config.dtype)


def build(config: RunConfig) -> Setup:
    """Problem, network, objective, method and evaluation set of a configuration."""
    problem = config.build_problem()
    net = config.build_net(problem)
    dtype = jnp.dtype(config.dtype)
    objective = Objective(problem, net, dtype)
    try:
        method = make_method(config.method, objective, **config.hparams)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    check_problem(problem, objective)
    if config.resample_every != 1 and not problem.resample:
        raise ConfigError(f"resample_every={config.resample_every} needs a problem that redraws "
                          f"its points; {problem.name!r} keeps one batch here (problem option "
                          f"resample=true, where it has one)")
    x = problem.eval_points().astype(dtype)
    return Setup(config, problem, net, objective, method, x, problem.reference(x).astype(dtype))


def check_problem(problem: Problem, objective: Objective) -> None:
    """Catch a broken problem definition at load, with a clear message: samplers must give
    ``(n, dim)`` points inside the domain, residuals ``(n, c)`` finite values, and the
    reference ``(n, fields)`` finite values."""
    key = jax.random.PRNGKey(0)
    params = objective.net.init(key, objective.dtype)
    n = 4
    for group in problem.groups:
        try:
            x = jnp.asarray(group.sampler(key, n))
        except Exception as err:  # a user's sampler: report whatever it raised
            raise ConfigError(f"problem {problem.name!r}: sampler of group {group.name!r} "
                              f"failed: {err}") from None
        if x.shape != (n, problem.dim):
            raise ConfigError(f"problem {problem.name!r}: sampler of group {group.name!r} gave "
                              f"points of shape {x.shape}, expected ({n}, {problem.dim})")
        if not bool(jnp.all(problem.domain.contains(x, tol=1e-9))):
            raise ConfigError(f"problem {problem.name!r}: group {group.name!r} has points "
                              f"outside the domain {problem.domain.lo}..{problem.domain.hi}")
        try:
            r = group.residual(objective.net, params, x.astype(objective.dtype))
        except Exception as err:
            raise ConfigError(f"problem {problem.name!r}: residual of group {group.name!r} "
                              f"failed on {n} points: {type(err).__name__}: {err}") from None
        if r.ndim != 2 or r.shape[0] != n:
            raise ConfigError(f"problem {problem.name!r}: residual of group {group.name!r} has "
                              f"shape {r.shape}, expected ({n}, components)")
        if not bool(jnp.all(jnp.isfinite(r))):
            raise ConfigError(f"problem {problem.name!r}: residual of group {group.name!r} is "
                              f"not finite at initialisation")
    if problem.solution is None:
        raise ConfigError(f"problem {problem.name!r} has no reference solution to report "
                          f"errors against")
    x = problem.eval_points()[:n]
    try:
        ref = jnp.asarray(problem.solution(x))
    except Exception as err:
        raise ConfigError(f"problem {problem.name!r}: reference solution failed: {err}") from None
    if ref.size != n * len(problem.fields) and ref.shape[0] != n:
        raise ConfigError(f"problem {problem.name!r}: reference solution has shape {ref.shape}, "
                          f"expected ({n}, {len(problem.fields)})")


def next_eval_step(step: int, ratio: float) -> int:
    """Evaluation schedule of [KFAC]: 0, 1, then geometric with factor ``ratio``."""
    return max(step + 1, math.ceil(step * ratio))


def init_params(setup: Setup) -> Params:
    key = jax.random.fold_in(jax.random.PRNGKey(setup.config.seed), 0)
    return jax.tree_util.tree_map(lambda a: a.astype(setup.dtype), setup.net.init(key))


def step_keys(seed: int, step: int) -> tuple[jax.Array, jax.Array]:
    """(points key, method key) of one step."""
    return _step_keys(seed, step)


@jax.jit
def _step_keys(seed, step):
    # One compiled call: the five eager PRNG operations cost about 0.7 ms per step on a CPU,
    # more than a whole L-BFGS step of the default problem (same bits as the eager version).
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(seed), 1), step)
    keys = jax.random.split(key)
    return keys[0], keys[1]


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


def metadata(setup: Setup) -> dict[str, Any]:
    from pinnopt import __version__

    try:
        rev = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
            cwd=Path(__file__).parent,
        ).stdout.strip() or None
    except (OSError, subprocess.SubprocessError):
        rev = None
    return {
        "pinnopt": __version__,
        "jax": jax.__version__,
        "jaxlib": jax.lib.__version__ if hasattr(jax.lib, "__version__") else None,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "device": str(jax.devices()[0]),
        "devices": distributed.resolve_devices(setup.config.devices),
        "processes": jax.process_count(),
        "platform": platform.platform(),
        "git_revision": rev,
        "num_params": setup.net.num_params,
        "net": setup.net.describe(),
        "problem": setup.problem.description,
    }


class Trainer:
    """Runs one configuration in one directory; :meth:`run` trains until a budget is spent."""

    def __init__(self, config: RunConfig, out: str | Path, progress: bool = True,
                 log: Callable[[str], None] = print):
        self.config = config
        self.out = Path(out)
        self.progress = progress
        self.log = log
        self.setup = build(config)
        self.parallel = distributed.data_parallel(
            config.devices, {g.name: g.n for g in self.setup.objective.groups})
        self.main = distributed.is_main_process()
        self._stop_signal: str | None = None

    # -- state ---------------------------------------------------------------------------
    def fresh_state(self) -> dict[str, Any]:
        params = init_params(self.setup)
        return {
            "step": 0,
            "train_time": 0.0,
            "params": params,
            "method_state": self.setup.method.init(params),
            "next_eval": 0,
        }

    def batch(self, step: int) -> Batch:
        cfg = self.config
        if self.setup.problem.resample:
            draw = step - step % cfg.resample_every
            cached = getattr(self, "_drawn_batch", None)
            if cached is None or cached[0] != draw:
                self._drawn_batch = (draw, self.setup.objective.sample(step_keys(cfg.seed, draw)[0]))
            return self._drawn_batch[1]
        if not hasattr(self, "_fixed_batch"):
            key = jax.random.fold_in(jax.random.PRNGKey(cfg.seed), 2)
            self._fixed_batch = self.setup.objective.sample(key)
        return self._fixed_batch

    def placed_batch(self, step: int) -> Batch:
        """The step's batch, split over the devices in a data-parallel run."""
        if self.parallel is None:
            return self.batch(step)
        if self.setup.problem.resample:
            return self.parallel.place_batch(self.batch(step))
        if not hasattr(self, "_placed_fixed_batch"):
            self._placed_fixed_batch = self.parallel.place_batch(self.batch(step))
        return self._placed_fixed_batch

    def _place(self, params, mstate):
        if self.parallel is None:
            return params, mstate
        return self.parallel.place_replicated(params), self.parallel.place_state(mstate)

    def _step_key(self, step: int) -> jax.Array:
        key = step_keys(self.config.seed, step)[1]
        return key if self.parallel is None else self.parallel.place_replicated(key)

    # -- the loop ------------------------------------------------------------------------
    def run(self, state: dict[str, Any], history: list[dict[str, Any]]) -> dict[str, Any]:
        cfg, setup = self.config, self.setup
        objective, method = setup.objective, setup.method

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

        parallel = self.parallel
        eval_points, eval_reference = setup.eval_points, setup.eval_reference
        if parallel is not None:
            eval_points, eval_reference = parallel.place_replicated((eval_points, eval_reference))

        def evaluate(params, batch):
            out = {"loss": objective.loss(params, batch)}
            out.update({f"loss_{k}": v for k, v in objective.group_losses(params, batch).items()})
            out.update(objective.errors(params, eval_points, eval_reference))
            return out

        params, mstate = self._place(state["params"], state["method_state"])
        step, train_time, next_eval = state["step"], state["train_time"], state["next_eval"]
        batch0 = self.placed_batch(step)
        key0 = self._step_key(step)
        compiled = compile_step(method)
        eval_fn = jax.jit(evaluate)

        last_info: dict[str, float] = {}
        last_ckpt = time.monotonic()
        status, message = "completed", ""
        retries = 0
        zero_loss_step = None
        bar = self._bar(step)
        self._install_signal_handlers()
        try:
            while True:
                stop, checkpoint_due = self._decide(step, train_time, last_ckpt)
                reason = None
                if stop == 1:
                    reason = "step budget reached"
                elif stop == 2:
                    reason = "time budget reached"
                elif stop == 3:
                    status, reason = "interrupted", f"stopped by {self._stop_signal or 'a signal'}"
                elif zero_loss_step is not None:
                    status, reason = "stalled", _zero_loss_message(zero_loss_step, cfg.dtype)
                batch = self.placed_batch(step)
                evaluated = history and history[-1]["step"] == step
                if (step >= next_eval or reason) and not evaluated:
                    row = {"step": step, "time": train_time, **_scalars(eval_fn(params, batch)),
                           **last_info}
                    history.append(row)
                    self._append_history(row)
                    next_eval = next_eval_step(step, cfg.eval_ratio)
                    if bar is not None:
                        bar.set_postfix(self._postfix(row), refresh=False)
                    if not reason and checkpoint_due:
                        self._checkpoint(step, train_time, params, mstate, next_eval)
                        last_ckpt = time.monotonic()
                if reason:
                    message = reason
                    break
                key = self._step_key(step)
                t0 = time.perf_counter()
                new_params, new_state, info, ok = compiled(params, mstate, batch, key)
                ok = bool(ok)
                train_time += time.perf_counter() - t0
                if not ok:
                    safer = self._safer_hparams() if retries < cfg.max_retries else None
                    if cfg.on_divergence == "retry" and safer is not None:
                        # Roll back (the failed step's results are dropped) and redo the step
                        # with safer settings; they become part of the run's configuration.
                        retries += 1
                        current = {**METHODS[cfg.method].hparams, **cfg.hparams}
                        changed = ", ".join(f"{k}={v!r}" for k, v in safer.items()
                                            if v != current.get(k))
                        self.log(f"warning: non-finite values in step {step}; rolled back and "
                                 f"retrying with {changed} (retry {retries} of {cfg.max_retries})")
                        cfg.hparams = safer
                        method = self.setup.method = make_method(cfg.method, objective, **safer)
                        compiled = compile_step(method)
                        if self.main:
                            (self.out / "config.json").write_text(
                                json.dumps(cfg.to_dict(), indent=2))
                        continue
                    status = "diverged"
                    message = (
                        f"non-finite loss or parameters in step {step} ({cfg.method}"
                        f"{f', after {retries} retries with safer settings' if retries else ''}); "
                        f"the last good state (step {step}) is kept in {self.out / CHECKPOINT}"
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
            self._restore_signal_handlers()
        self._checkpoint(step, train_time, params, mstate, next_eval)
        return self._summary(status, message, step, train_time, history)

    # -- helpers -------------------------------------------------------------------------
    def _decide(self, step: int, train_time: float, last_ckpt: float) -> tuple[int, bool]:
        """Whether to stop (0: no, 1: steps, 2: time, 3: signal) and whether a timed
        checkpoint is due. Across processes, process 0 decides for all: clocks and signals
        differ, and a process that stopped alone would leave the others in a collective."""
        cfg = self.config
        stop = 0
        if step >= cfg.steps:
            stop = 1
        elif cfg.time_budget is not None and train_time >= cfg.time_budget:
            stop = 2
        elif self._stop_signal:
            stop = 3
        due = time.monotonic() - last_ckpt >= cfg.checkpoint_every
        if self.parallel is not None:
            stop, due = self.parallel.agree((stop, int(due)))
        return stop, bool(due)

    def _safer_hparams(self) -> dict[str, Any] | None:
        """The method's safer settings after a divergence (more damping, a smaller step)."""
        spec = METHODS[self.config.method]
        if spec.safer is None:
            return None
        return spec.safer({**spec.hparams, **self.config.hparams})

    def _bar(self, step: int):
        if not self.progress:
            return None
        from tqdm.auto import tqdm

        total = self.config.steps if self.config.time_budget is None else None
        return tqdm(total=total, initial=step, unit="step", mininterval=0.5, dynamic_ncols=True,
                    desc=f"{self.config.problem}/{self.config.method}")

    def _postfix(self, row: dict[str, Any]) -> dict[str, str]:
        out = {"loss": f"{row['loss']:.2e}"}
        for f in self.setup.problem.scored_fields[:2]:
            out[f"rms_{f}"] = f"{row[f'rms_{f}']:.2e}"
        return out

    def _append_history(self, row: dict[str, Any]) -> None:
        if not self.main:
            return
        with open(self.out / HISTORY, "a") as fh:
            fh.write(json.dumps(row) + "\n")

    def _checkpoint(self, step, train_time, params, mstate, next_eval) -> None:
        if self.parallel is not None:
            # Every process gathers (a collective when state is split across hosts).
            params, mstate = self.parallel.to_host((params, mstate))
        if not self.main:
            return
        checkpoint.save(self.out / CHECKPOINT, {
            "step": step, "train_time": train_time, "params": params,
            "method_state": mstate, "next_eval": next_eval,
        })

    def _summary(self, status, message, step, train_time, history) -> dict[str, Any]:
        final = history[-1] if history else {}
        summary = {
            "status": status,
            "message": message,
            "steps": step,
            "train_time": train_time,
            "seconds_per_step": train_time / step if step else None,
            "num_params": self.setup.net.num_params,
            "final": final,
            "config": self.config.to_dict(),
        }
        if self.main:
            checkpoint.write_atomic(self.out / "summary.json",
                                    json.dumps(summary, indent=2).encode())
        return summary

    def _install_signal_handlers(self) -> None:
        self._old_handlers = {}
        if threading.current_thread() is not threading.main_thread():
            return

        def handler(signum, frame):
            self._stop_signal = signal.Signals(signum).name

        for sig in (signal.SIGINT, signal.SIGTERM):
            self._old_handlers[sig] = signal.signal(sig, handler)

    def _restore_signal_handlers(self) -> None:
        for sig, old in self._old_handlers.items():
            signal.signal(sig, old)


def _zero_loss_message(step: int, dtype: str) -> str:
    """Why a run stopped on a training loss of exactly 0."""
    return (f"the training loss is exactly 0 in {dtype} at step {step}: every residual vanishes "
            "at the training points, so the gradient is zero and no method can move. Check "
            "the errors against the reference: saturated units can fit fixed points exactly "
            "and be wrong between them (more or resampled points help)")


FLOAT32_MIN_DAMPING = 1e-6
"""Below this, damping added to a Gramian or Kronecker factor of order one is lost to float32
rounding (machine epsilon 1.2e-7) and the solve is effectively undamped."""


def precision_warnings(config: RunConfig) -> list[str]:
    """Settings that float32 cannot resolve."""
    out = []
    if config.dtype == "float32":
        hp = {**METHODS[config.method].hparams, **config.hparams}
        for key, value in hp.items():
            if "damping" in key and isinstance(value, float) and 0 < value < FLOAT32_MIN_DAMPING:
                out.append(f"{key}={value:g} is below what float32 resolves (~{FLOAT32_MIN_DAMPING:g} "
                           f"relative to the curvature's scale); use float64 or more damping")
    return out


def _is_run_dir(path: Path) -> bool:
    return (path / "config.json").exists()


def default_out(config: RunConfig, root: str | Path = "runs") -> Path:
    """``runs/<problem>[<dim>]-<method>-seed<seed>``, with a suffix if that run exists."""
    dim = config.problem_options.get("dim")
    base = f"{config.problem}{dim if dim is not None else ''}-{config.method}-seed{config.seed}"
    path = Path(root) / base
    i = 1
    while path.exists():
        path = Path(root) / f"{base}-{i}"
        i += 1
    return path


def train(config: RunConfig, out: str | Path | None = None, progress: bool = True,
          overwrite: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``config`` into a new run directory ``out`` and return the summary.

    An existing run directory is never overwritten unless ``overwrite`` is set. In a
    multi-process run (:func:`pinnopt.distributed.initialize`) every process calls this;
    process 0 writes the files and the log.
    """
    distributed.initialize()
    main = distributed.is_main_process()
    if not main:
        log, progress = (lambda message: None), False
    out = Path(out) if out is not None else default_out(config)
    clear = False
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise RunError(
                f"{out} already exists and is not empty; resume it with --resume {out}, "
                f"or choose another --out"
            )
        if not _is_run_dir(out):
            raise RunError(f"{out} is not a pinnopt run; refusing to overwrite it")
        clear = True
    trainer = Trainer(config, out, progress=progress, log=log)
    if trainer.parallel is not None:
        trainer.parallel.barrier("pinnopt-train-start")  # all have checked `out` before writes
    for warning in precision_warnings(config):
        log(f"warning: {warning}")
    if main:
        if clear:
            checkpoint.remove(out / CHECKPOINT)
            for name in (HISTORY, "summary.json"):
                (out / name).unlink(missing_ok=True)
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
        (out / "metadata.json").write_text(json.dumps(metadata(trainer.setup), indent=2))
    log(f"training {config.problem} with {config.method}: net {trainer.setup.net.describe()} "
        f"(D = {trainer.setup.net.num_params}), {config.dtype}, run in {out}")
    summary = trainer.run(trainer.fresh_state(), [])
    _finish(out, config, summary, log)
    return summary


def load_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not _is_run_dir(run_dir):
        raise RunError(f"{run_dir} is not a pinnopt run directory (no config.json)")
    try:
        return RunConfig.from_dict(json.loads((run_dir / "config.json").read_text()))
    except json.JSONDecodeError as err:
        raise RunError(f"{run_dir}/config.json is not valid JSON: {err}") from None


def read_history(run_dir: str | Path) -> list[dict[str, Any]]:
    path = Path(run_dir) / HISTORY
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break  # a torn last line from a kill during the write
    return rows


def load_state(run_dir: str | Path,
               template: dict[str, Any] | None = None) -> tuple[dict[str, Any], str | None]:
    """The run's last checkpointed state, in the structure of ``template`` (the run's
    ``Trainer.fresh_state()``, made from its config.json when not given), and a warning."""
    if template is None:
        template = Trainer(load_config(run_dir), run_dir, progress=False).fresh_state()
    try:
        return checkpoint.load(Path(run_dir) / CHECKPOINT, template)
    except checkpoint.CheckpointError as err:
        raise RunError(str(err)) from None


def resume(run_dir: str | Path, steps: int | None = None, time_budget: float | None = None,
           progress: bool = True, log: Callable[[str], None] = print,
           devices: int | None = None) -> dict[str, Any]:
    """Continue a run from its last checkpoint; history rows after it are dropped and redone.

    ``steps`` / ``time_budget`` extend the budgets (the time budget counts total training time);
    ``devices`` changes the number of devices.
    """
    distributed.initialize()
    main = distributed.is_main_process()
    if not main:
        log, progress = (lambda message: None), False
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    if steps is not None:
        config.steps = steps
    if time_budget is not None:
        config.time_budget = time_budget
    if devices is not None:
        config.devices = devices
    config.validate()
    trainer = Trainer(config, run_dir, progress=progress, log=log)
    state, warning = load_state(run_dir, trainer.fresh_state())
    if warning:
        log(f"warning: {warning}")
    history = [row for row in read_history(run_dir) if row["step"] <= state["step"]]
    if trainer.parallel is not None:
        trainer.parallel.barrier("pinnopt-resume-start")  # all have read before any writes
    if main:
        checkpoint.write_atomic(run_dir / HISTORY,
                                "".join(json.dumps(r) + "\n" for r in history).encode())
        (run_dir / "config.json").write_text(json.dumps(config.to_dict(), indent=2))
    log(f"resuming {run_dir} at step {state['step']} ({state['train_time']:.1f} s trained)")
    summary = trainer.run(state, history)
    _finish(run_dir, config, summary, log)
    return summary


def _finish(out: Path, config: RunConfig, summary: dict[str, Any], log) -> None:
    final = summary["final"]
    errs = ", ".join(f"{k} {v:.3e}" for k, v in final.items() if k.startswith(("rms_", "rel_l2_")))
    log(f"{summary['status']}: {summary['message']}; {summary['steps']} steps in "
        f"{summary['train_time']:.1f} s; loss {final.get('loss', float('nan')):.3e}; {errs}")
    if config.plots and summary["steps"] > 0 and distributed.is_main_process():
        from pinnopt import report

        report.plot_run(out)
        log(f"plots in {out / 'plots'}")
