"""The run directory: every file of a run, written and read here.

    config.json      the RunConfig
    metadata.json    versions, device, git revision, parameter count, plugin modules
    history.jsonl    one row per evaluation: step, time (training seconds), loss and its
                     groups, errors against the reference, the method's scalars
    checkpoint.npz   the latest state (and checkpoint.npz.prev, the one before)
    summary.json     status and final numbers
    plots/           figures (drawn by :mod:`pinnopt.report`)

:class:`RunDir` is the training loop's sink for a run on disk. In a multi-process run only
process 0 writes (``writer``); every process reads.
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


class RunError(RuntimeError):
    """A run cannot be started or resumed; the message is one line for the user."""


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG).exists()


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
    if not overwrite:
        raise RunError(f"{out} already exists and is not empty; resume it with --resume {out}, "
                       f"or choose another --out")
    if not is_run_dir(out):
        raise RunError(f"{out} is not a pinnopt run; refusing to overwrite it")
    return True


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

    def __init__(self, path: str | Path, writer: bool = True):
        self.path = Path(path)
        self.writer = writer
        self.location = str(self.path / CHECKPOINT)

    def start(self, config: RunConfig, meta: dict[str, Any], clear: bool = False) -> None:
        """Begin a new run: its configuration and metadata, after removing an old run's
        history, checkpoints, summary and figures if ``clear``."""
        if not self.writer:
            return
        if clear:
            checkpoint.remove(self.path / CHECKPOINT)
            for name in (HISTORY, SUMMARY):
                (self.path / name).unlink(missing_ok=True)
            shutil.rmtree(self.path / PLOTS, ignore_errors=True)  # the old run's figures
        self.path.mkdir(parents=True, exist_ok=True)
        self.reconfigured(config)
        (self.path / METADATA).write_text(json.dumps(meta, indent=2))

    def restart(self, config: RunConfig, history: list[dict[str, Any]]) -> None:
        """Resume: the history cut back to the checkpoint's rows, the (extended) config."""
        if not self.writer:
            return
        checkpoint.write_atomic(self.path / HISTORY,
                                "".join(json.dumps(r) + "\n" for r in history).encode())
        self.reconfigured(config)

    def record(self, row: dict[str, Any]) -> None:
        if self.writer:
            with open(self.path / HISTORY, "a") as fh:
                fh.write(json.dumps(row) + "\n")

    def checkpoint(self, state: TrainState) -> None:
        if self.writer:
            checkpoint.save(self.path / CHECKPOINT, state)

    def reconfigured(self, config: RunConfig) -> None:
        if self.writer:
            (self.path / CONFIG).write_text(json.dumps(config.to_dict(), indent=2))

    def finish(self, summary: dict[str, Any]) -> None:
        """Write the run's summary."""
        if self.writer:
            checkpoint.write_atomic(self.path / SUMMARY, json.dumps(summary, indent=2).encode())


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
