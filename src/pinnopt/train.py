"""Training runs: :func:`train` a configuration into a new run directory, :func:`resume` one.

The trainer is in parts (:mod:`pinnopt.training`): the setup a configuration builds, the batch
of each step, the loop, and the run directory that holds a run's files (config.json,
metadata.json, history.jsonl, checkpoint.npz, summary.json). :class:`Trainer` joins them for
one configuration in one directory; :func:`train` and :func:`resume` start and finish runs
with it, and draw the run's plots (:mod:`pinnopt.report`) at the end.

A run directory without a checkpoint (the run stopped after writing its config.json, before
its first checkpoint) is resumed from step 0 with its saved configuration.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable

from pinnopt import distributed, report
from pinnopt.config import RunConfig
from pinnopt.precision import uses_float64
from pinnopt.residuals import Batch
from pinnopt.training import loop
from pinnopt.training.batches import StepBatches
from pinnopt.training.loop import next_eval_step
from pinnopt.training.methods import precision_warnings
from pinnopt.training.rundir import (
    CHECKPOINT, HISTORY, RunDir, RunError, check_new, default_out, has_checkpoint, load_config,
    load_state, metadata, read_history,
)
from pinnopt.training.setup import Setup, TrainState, build, fresh_state

__all__ = [
    "CHECKPOINT", "HISTORY", "RunError", "Setup", "Trainer", "build", "load_config", "load_state",
    "next_eval_step", "precision_warnings", "read_history", "resume", "train",
]


class Trainer:
    """One configuration trained in one run directory: the loop with the run directory as
    its sink, on the run's batches (split over the devices in a data-parallel run)."""

    def __init__(self, config: RunConfig, out: str | Path, progress: bool = True,
                 log: Callable[[str], None] = print):
        self.config = config
        self.progress = progress
        self.log = log
        self.setup = build(config)
        self.parallel = distributed.data_parallel(
            config.devices, {g.name: g.n for g in self.setup.objective.groups})
        self.rundir = RunDir(out, writer=distributed.is_main_process(),
                             tensorboard=config.tensorboard)
        place = None if self.parallel is None else self.parallel.place_batch
        self.batches = StepBatches(self.setup.objective, config.seed, config.resample_every,
                                   place)

    def fresh_state(self) -> TrainState:
        return fresh_state(self.setup)

    def placed_batch(self, step: int) -> Batch:
        """The step's batch, split over the devices in a data-parallel run."""
        return self.batches(step)

    def run(self, state: TrainState, history: list[dict[str, Any]]) -> dict[str, Any]:
        """Train from ``state`` (``history``: the run's rows so far) until a budget is spent;
        writes and returns the summary."""
        outcome = loop.run(self.setup, state, self.batches, self.rundir, history=history,
                           parallel=self.parallel, progress=self.progress, log=self.log)
        self.config = outcome.config
        summary = outcome.summary(self.setup.net.num_params)
        self.rundir.finish(summary)
        return summary


@uses_float64
def train(config: RunConfig, out: str | Path | None = None, progress: bool = True,
          overwrite: bool = False, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Train ``config`` into a new run directory ``out`` and return the summary.

    An existing run directory is never overwritten unless ``overwrite`` is set. In a
    multi-process run (:func:`pinnopt.distributed.initialize`) every process calls this;
    process 0 writes the files and the log.
    """
    distributed.initialize()
    if not distributed.is_main_process():
        log, progress = (lambda message: None), False
    out = Path(out) if out is not None else default_out(config)
    clear = check_new(out, overwrite)
    trainer = Trainer(config, out, progress=progress, log=log)
    if trainer.parallel is not None:
        trainer.parallel.barrier("pinnopt-train-start")  # all have checked `out` before writes
    for warning in precision_warnings(config):
        log(f"warning: {warning}")
    trainer.rundir.start(config, metadata(trainer.setup), clear)
    log(f"training {config.problem} with {config.method}: net {trainer.setup.net.describe()} "
        f"(D = {trainer.setup.net.num_params}), {config.dtype}, run in {out}")
    summary = trainer.run(trainer.fresh_state(), [])
    _finish(out, trainer.config, summary, log)
    return summary


@uses_float64
def resume(run_dir: str | Path, steps: int | None = None, time_budget: float | None = None,
           progress: bool = True, log: Callable[[str], None] = print,
           devices: int | None = None, tensorboard: bool | None = None) -> dict[str, Any]:
    """Continue a run from its last checkpoint; history rows after it are dropped and redone.
    A run without a checkpoint starts again from step 0 with its saved configuration.

    ``steps`` / ``time_budget`` extend the budgets (the time budget counts total training time);
    ``devices`` changes the number of devices; ``tensorboard`` switches the TensorBoard log
    on or off.
    """
    distributed.initialize()
    if not distributed.is_main_process():
        log, progress = (lambda message: None), False
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    if steps is not None:
        config.steps = steps
    if time_budget is not None:
        config.time_budget = time_budget
    if devices is not None:
        config.devices = devices
    if tensorboard is not None:
        config.tensorboard = tensorboard
    config.validate()
    trainer = Trainer(config, run_dir, progress=progress, log=log)
    checkpointed = has_checkpoint(run_dir)
    if checkpointed:
        state, warning = load_state(run_dir, trainer.fresh_state())
        if warning:
            log(f"warning: {warning}")
        history = [row for row in read_history(run_dir) if row["step"] <= state["step"]]
    else:
        state, history = trainer.fresh_state(), []
    if trainer.parallel is not None:
        trainer.parallel.barrier("pinnopt-resume-start")  # all have read before any writes
    if checkpointed:
        trainer.rundir.restart(config, history)
        log(f"resuming {run_dir} at step {state['step']} ({state['train_time']:.1f} s trained)")
    else:
        # Whatever the stopped run left (rows before its first checkpoint, metadata) goes.
        trainer.rundir.start(config, metadata(trainer.setup), clear=True)
        log(f"{run_dir} has no checkpoint (the run stopped before its first one): starting it "
            f"from step 0 with its saved settings")
    summary = trainer.run(state, history)
    _finish(run_dir, trainer.config, summary, log)
    return summary


def _finish(out: Path, config: RunConfig, summary: dict[str, Any], log) -> None:
    """Say how the run ended and draw its plots."""
    final = summary["final"]
    errs = ", ".join(f"{k} {v:.3e}" for k, v in final.items() if k.startswith(("rms_", "rel_l2_")))
    log(f"{summary['status']}: {summary['message']}; {summary['steps']} steps in "
        f"{summary['train_time']:.1f} s; loss {final.get('loss', float('nan')):.3e}; {errs}")
    for line in report.per_eps_lines(final):
        log(line)
    if config.plots and summary["steps"] > 0 and distributed.is_main_process():
        report.plot_run(out)
        log(f"plots in {out / 'plots'}")
