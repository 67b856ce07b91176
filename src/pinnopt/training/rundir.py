"""The run directory: every file of a run, written and read here.

    config.json      the RunConfig
    metadata.json    versions, device, git revision, parameter count, plugin modules
    history.jsonl    one row per evaluation: step, time (training seconds), loss and its
                     groups, errors against the reference, the method's scalars
    checkpoint.npz   the latest state (and checkpoint.npz.prev, the one before)
    summary.json     status and final numbers
    plots/           figures (drawn by :mod:`pinnopt.report`)
    tensorboard/     the rows of history.jsonl as a TensorBoard log (``tensorboard = true``)

:class:`RunDir` is the training loop's sink for a run on disk. In a multi-process run only
process 0 writes (``writer``); every process reads.

A run that stopped after writing config.json but before its first checkpoint (killed while
compiling or in a long first step, or failed there) has no state to resume from: resuming
it starts it from step 0 with its config.json (:func:`has_checkpoint`), and every message
about such a directory says so.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jax
import numpy as np

from pinnopt import checkpoint, distributed, plugins
from pinnopt._version import __version__
from pinnopt.config import RunConfig
from pinnopt.training.setup import Setup, TrainState, build, fresh_state

CONFIG = "config.json"
METADATA = "metadata.json"
HISTORY = "history.jsonl"
CHECKPOINT = "checkpoint.npz"
SUMMARY = "summary.json"
PLOTS = "plots"
TENSORBOARD = "tensorboard"


class RunError(RuntimeError):
    """A run cannot be started or resumed; the message is one line for the user."""


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG).exists()


def has_checkpoint(path: str | Path) -> bool:
    """Whether the run in ``path`` has a checkpoint to resume from: the latest, the one
    before it (``.prev``) or an old-format ``checkpoint.pkl`` (a ``.tmp`` left by a kill
    during the first write is not one)."""
    return any(p.suffix in (".npz", ".pkl", ".prev") for p in Path(path).glob("checkpoint.*"))


def fresh_start_hint(path: Path) -> str:
    """What to do with a run directory that has no checkpoint yet."""
    return (f"pinnopt train --resume {path} starts it from step 0 with its saved settings; "
            f"--out {path} --overwrite starts it again with new ones")


def _summary_writer() -> type:
    """tensorboardX's writer, or a one-line error naming the extra that installs it."""
    try:
        from tensorboardX import SummaryWriter
    except ImportError:
        raise RunError("tensorboard = true needs the tensorboardX package: "
                       "pip install 'pinnopt[tensorboard]'") from None
    return SummaryWriter


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


def check_new(out: Path, overwrite: bool) -> bool:
    """Refuse to start a run in a non-empty directory unless ``overwrite`` is set and it holds
    a run; returns whether that old run's files must be cleared."""
    if not (out.exists() and any(out.iterdir())):
        return False
    if not is_run_dir(out):
        raise RunError(f"{out} already exists, is not empty and is not a pinnopt run; "
                       f"choose another --out")
    if overwrite:
        return True
    if not has_checkpoint(out):
        raise RunError(f"{out} already exists and holds a run that stopped before its first "
                       f"checkpoint: {fresh_start_hint(out)}, or choose another --out")
    raise RunError(f"{out} already exists and holds a run: --resume {out} continues it, "
                   f"--overwrite starts it again, or choose another --out")


def metadata(setup: Setup) -> dict[str, Any]:
    """Versions, devices, git revision and model size of a run."""
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
        "plugins": plugins.required(setup.config),
    }


class RunDir:
    """The files of the run in ``path``, as the loop's sink (``record``, ``checkpoint``,
    ``reconfigured``) and for starting, resuming and finishing it. Only a ``writer``
    writes; the others' calls do nothing, so that every process can run the same code."""

    def __init__(self, path: str | Path, writer: bool = True, tensorboard: bool = False):
        """``tensorboard``: also write each row to a TensorBoard log in ``tensorboard/``
        (needs tensorboardX, checked here, before anything is written)."""
        self.path = Path(path)
        self.writer = writer
        self.location = str(self.path / CHECKPOINT)
        self._board_type = _summary_writer() if tensorboard and writer else None
        self._board: Any = None
        self._purge_step: int | None = None

    def start(self, config: RunConfig, meta: dict[str, Any], clear: bool = False) -> None:
        """Begin a new run: its configuration and metadata, after removing an old run's
        history, checkpoints, summary and figures if ``clear``."""
        if not self.writer:
            return
        if clear:
            checkpoint.remove(self.path / CHECKPOINT)
            for name in (HISTORY, SUMMARY):
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / TENSORBOARD, ignore_errors=True)
            shutil.rmtree(self.path / PLOTS, ignore_errors=True)  # the old run's figures
        self.path.mkdir(parents=True, exist_ok=True)
        self.reconfigured(config)
        checkpoint.write_atomic(self.path / METADATA, json.dumps(meta, indent=2).encode())

    def restart(self, config: RunConfig, history: list[dict[str, Any]]) -> None:
        """Resume: the history cut back to the checkpoint's rows, the (extended) config."""
        if not self.writer:
            return
        checkpoint.write_atomic(self.path / HISTORY,
                                "".join(json.dumps(r) + "\n" for r in history).encode())
        self.reconfigured(config)
        # TensorBoard drops the earlier log's rows from this step on: they are redone.
        self._purge_step = history[-1]["step"] + 1 if history else 0

    def record(self, row: dict[str, Any]) -> None:
        if self.writer:
            with open(self.path / HISTORY, "a") as fh:
                fh.write(json.dumps(row) + "\n")
            if self._board_type is not None:
                self._board_row(row)

    def _board_row(self, row: dict[str, Any]) -> None:
        """Every number of the row as a scalar at its step (``time``: training seconds; the
        events' wall time is the clock's), flushed at once like history.jsonl."""
        if self._board is None:
            self._board = self._board_type(str(self.path / TENSORBOARD),
                                           purge_step=self._purge_step)
        for key, value in row.items():
            if key != "step" and isinstance(value, (int, float)) and not isinstance(value, bool):
                self._board.add_scalar(key, value, row["step"])
        self._board.flush()

    def checkpoint(self, state: TrainState) -> None:
        if self.writer:
            checkpoint.save(self.path / CHECKPOINT, state)

    def reconfigured(self, config: RunConfig) -> None:
        if self.writer:
            # Atomic: a kill during the write must not leave a run without a readable config.
            checkpoint.write_atomic(self.path / CONFIG,
                                    json.dumps(config.to_dict(), indent=2).encode())

    def finish(self, summary: dict[str, Any]) -> None:
        """Write the run's summary (and close its TensorBoard log)."""
        if self.writer:
            checkpoint.write_atomic(self.path / SUMMARY, json.dumps(summary, indent=2).encode())
        if self._board is not None:
            self._board.close()
            self._board = None


def load_config(run_dir: str | Path) -> RunConfig:
    run_dir = Path(run_dir)
    if not run_dir.is_dir() or not is_run_dir(run_dir):
        raise RunError(f"{run_dir} is not a pinnopt run directory (no config.json)")
    # The modules that registered a custom problem or method, before the config names them.
    plugins.import_recorded((read_metadata(run_dir) or {}).get("plugins", ()), run_dir)
    try:
        return RunConfig.from_dict(json.loads((run_dir / CONFIG).read_text()))
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
               template: TrainState | None = None) -> tuple[TrainState, str | None]:
    """The run's last checkpointed state, in the structure of ``template`` (the run's
    :func:`~pinnopt.training.setup.fresh_state`, made from its config.json when not given),
    and a warning if it fell back to the checkpoint before."""
    if not has_checkpoint(run_dir):
        load_config(run_dir)  # not a run at all: that is the message then
        raise RunError(f"{run_dir} has no checkpoint yet: the run stopped (or is still "
                       f"running) before its first one; {fresh_start_hint(Path(run_dir))}")
    if template is None:
        template = fresh_state(build(load_config(run_dir)))
    try:
        return checkpoint.load(Path(run_dir) / CHECKPOINT, template)
    except checkpoint.CheckpointError as err:
        raise RunError(str(err)) from None


def read_summary(run_dir: str | Path) -> dict[str, Any] | None:
    """The summary of a finished run, ``None`` while it has none (running, or killed)."""
    path = Path(run_dir) / SUMMARY
    return json.loads(path.read_text()) if path.exists() else None


def read_metadata(run_dir: str | Path) -> dict[str, Any] | None:
    path = Path(run_dir) / METADATA
    return json.loads(path.read_text()) if path.exists() else None
