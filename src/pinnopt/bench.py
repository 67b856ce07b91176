"""Benchmark suites: named sets of run configurations, their results table and figures.

A suite is a TOML file ``benchmarks/suites/<name>.toml``::

    description = "..."
    [defaults]          # RunConfig settings shared by every run
    time_budget = 300
    [quick]             # overrides for ``--quick`` (CI-sized smoke runs)
    time_budget = 3
    [[runs]]
    name = "poisson2d-D257-adam"
    group = "poisson2d-D257"     # runs of a group share an error-vs-time figure
    problem = "poisson"
    problem_options = { dim = 2 }
    method = "adam"
    hparams = { lr = 1e-3 }
    seeds = [0, 1, 2]            # or seed = 0: one run
    quick = { problem_options = { n_interior = 60 } }   # this run's extra ``--quick`` overrides

With ``--quick`` the suite's ``[quick]`` table and then the run's own ``quick`` table are laid
over the run's settings; their ``problem_options`` and ``hparams`` are merged key by key into
the run's (so a quick run can shrink the point count of a large problem and keep its ``dim``).

A run with ``seeds`` stands for one run per seed, named ``<name>-s<seed>`` in group
``<group>-s<seed>`` (one figure per seed). The suite's runs are ordered seed by seed (every
run's first seed, then every run's second one, ...), so that a suite cut short has compared
all its configurations on the seeds it finished.

Results go to ``benchmarks/results/<suite>`` (``<suite>-quick`` for quick runs): one run
directory per configuration, ``results.md`` and ``results.csv`` (final errors, seconds per step,
steps done), ``error_vs_time_<group>.png`` and ``machine.json``. A run that already completed
is not repeated, and an interrupted one is resumed, so a killed suite continues where it was;
a run whose recorded settings differ from the suite's (the suite was edited) is trained again.
``dry_run`` lists what a suite would do without doing it.

With ``jobs = N`` (``pinnopt bench SUITE --jobs N``) N runs train at a time, each in its own
process pinned to one core, writing its output to ``runs/<name>.log``; the terminal gets a
line per started and per finished run. ``jobs = 1`` trains the runs one after the other in
this process.

A suite may extend others with ``include = ["other-suite"]``: the other suite's runs (with
its own defaults) come first, and a run that already completed in the other suite's results
with an identical configuration is copied from there instead of being trained again (so
``kfac`` extends ``kfac-first-order`` without re-running the first-order baselines).
"""

from __future__ import annotations

import csv
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import tomllib
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from pinnopt import speed
from pinnopt.config import ConfigError, RunConfig
from pinnopt.machine import machine, results_dir
from pinnopt.precision import uses_float64
from pinnopt.train import RunError, read_history, resume, train
from pinnopt.training.rundir import has_checkpoint

SUITES_DIR = Path("benchmarks") / "suites"
BUILTIN = ("taylor-speed",)
REQUESTED = "suite_config.json"
"""The settings the suite asked for, kept beside the run: ``config.json`` can differ from them
when a divergence retry switched to safer hyper-parameters."""

KEEP, COPY, RESUME, TRAIN, RETRAIN = "kept", "copy", "resume", "train", "retrain"
"""What a suite does with a run (:func:`plan`): keep its completed result, copy it from an
included suite's results, resume it from its checkpoint, train it, or train it again because
the suite's settings for it changed."""


@dataclass
class SuiteRun:
    """One run of a suite; ``origin`` is the stem of the suite file that defines it."""

    name: str
    group: str
    config: RunConfig
    origin: str


def find_suite(name: str) -> Path:
    """The TOML file of suite ``name`` (a name under ``benchmarks/suites`` or a path)."""
    path = Path(name)
    if path.suffix == ".toml":
        if not path.exists():
            raise ConfigError(f"suite file {name!r} does not exist")
        return path
    candidate = SUITES_DIR / f"{name}.toml"
    if candidate.exists():
        return candidate
    known = sorted(p.stem for p in SUITES_DIR.glob("*.toml")) if SUITES_DIR.exists() else []
    raise ConfigError(
        f"unknown suite {name!r}; known: {', '.join(known + list(BUILTIN)) or 'none'} "
        f"(suites are read from ./{SUITES_DIR}, run from the repository root)"
    )


def load_suite(path: Path, quick: bool = False, _seen: tuple[str, ...] = ()
               ) -> tuple[dict[str, Any], list[SuiteRun]]:
    """The suite's data and its runs (included suites' runs first, ``seeds`` expanded)."""
    if path.stem in _seen:
        raise ConfigError(f"suite {str(path)!r} includes itself (through {' -> '.join(_seen)})")
    try:
        data = tomllib.loads(path.read_text())
    except tomllib.TOMLDecodeError as err:
        raise ConfigError(f"suite {str(path)!r} is not valid TOML: {err}") from None
    defaults = dict(data.get("defaults", {}))
    if quick:
        defaults.update(data.get("quick", {}))
    includes = data.get("include", [])
    if isinstance(includes, str):
        includes = [includes]
    if not isinstance(includes, list) or not all(isinstance(i, str) for i in includes):
        raise ConfigError(f"suite {str(path)!r}: include must be a suite name or a list of them")
    included: list[SuiteRun] = []
    for other in includes:
        included += load_suite(find_suite(other), quick, _seen + (path.stem,))[1]
    names = {r.name for r in included}
    if len(names) < len(included):
        raise ConfigError(f"suite {str(path)!r}: included suites share run names")
    entries = data.get("runs", [] if includes else None)
    if not isinstance(entries, list) or not (entries or included):
        raise ConfigError(f"suite {str(path)!r} has no [[runs]]")
    own: list[tuple[int, SuiteRun]] = []  # (position of the seed in its list, run)
    for entry in entries:
        entry = dict(entry)
        name = entry.pop("name", None)
        if not name or not isinstance(name, str):
            raise ConfigError(f"suite {str(path)!r}: every run needs a unique name (got {name!r})")
        group = entry.pop("group", name)
        run_quick = entry.pop("quick", {})
        if not isinstance(run_quick, dict):
            raise ConfigError(f"suite run {name!r}: quick must be a table of settings "
                              f"(got {run_quick!r})")
        for position, (run_name, run_group, seed) in enumerate(_expand_seeds(name, group, entry)):
            if run_name in names:
                raise ConfigError(
                    f"suite {str(path)!r}: every run needs a unique name (got {run_name!r} twice)")
            names.add(run_name)
            settings = {**defaults, **entry}
            if seed is not None:
                settings["seed"] = seed
            if quick:
                settings = _overlay(_overlay(settings, data.get("quick", {})), run_quick)
            try:
                config = RunConfig.from_dict(settings)
            except ConfigError as err:
                raise ConfigError(f"suite run {run_name!r}: {err}") from None
            own.append((position, SuiteRun(run_name, run_group, config, path.stem)))
    own.sort(key=lambda item: item[0])  # stable: seed by seed, in the file's order within one
    return data, included + [run for _, run in own]


def _overlay(settings: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``settings`` with ``overrides`` laid over them; the ``problem_options`` and ``hparams``
    tables are merged key by key rather than replaced."""
    merged = {**settings, **overrides}
    for key in ("problem_options", "hparams"):
        if isinstance(settings.get(key), dict) and isinstance(overrides.get(key), dict):
            merged[key] = {**settings[key], **overrides[key]}
    return merged


def _expand_seeds(name: str, group: str, entry: dict[str, Any]
                  ) -> list[tuple[str, str, int | None]]:
    """``(name, group, seed)`` of each run an entry stands for; pops its ``seeds``.

    ``seed`` is None for an entry without ``seeds`` (its own ``seed`` or the default applies).
    """
    if "seeds" not in entry:
        return [(name, group, None)]
    seeds = entry.pop("seeds")
    if "seed" in entry:
        raise ConfigError(f"suite run {name!r}: give either seed or seeds, not both")
    if (not isinstance(seeds, list) or not seeds or len(set(seeds)) < len(seeds)
            or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in seeds)):
        raise ConfigError(f"suite run {name!r}: seeds must be a non-empty list of distinct "
                          f"non-negative integers (got {seeds!r})")
    return [(f"{name}-s{seed}", f"{group}-s{seed}", seed) for seed in seeds]


@uses_float64
def run_suite(name: str, quick: bool = False, out: str | Path | None = None,
              progress: bool = True, jobs: int = 1, dry_run: bool = False) -> Path:
    """Run every configuration of a suite and write its table and figures; returns the directory.

    ``jobs`` runs train at a time, each in a process of its own pinned to one core (with 1, in
    this process). ``dry_run`` prints what would be done with each run and does nothing.
    """
    if name == "taylor-speed":
        if dry_run:
            print("taylor-speed: timing only, nothing is trained")
            return Path(out) if out else results_dir("taylor-speed", quick)
        return speed.run(quick=quick, out=out)
    path = find_suite(name)
    data, runs = load_suite(path, quick)
    out = Path(out) if out else results_dir(path.stem, quick)
    for run in runs:
        run.config.plots = False
    actions = plan(out, path.stem, runs, quick)
    if dry_run:
        for run, action in zip(runs, actions):
            print(f"{action:>7}  {run.name}")
        todo = sum(a in (RESUME, TRAIN, RETRAIN) for a in actions)
        print(f"{todo} of {len(runs)} runs would train, in {out}")
        return out
    cores = _cores(jobs)
    (out / "runs").mkdir(parents=True, exist_ok=True)
    if (any(a in (RESUME, TRAIN, RETRAIN) for a in actions)
            or not (out / "machine.json").exists()):
        # The machine (and its load) of the invocation that trains; a call that only
        # re-tabulates finished runs keeps the record of the one that trained them.
        (out / "machine.json").write_text(json.dumps(machine(), indent=2))
    work = []
    for run, action in zip(runs, actions):
        if action == COPY:
            shutil.copytree(_included_run(run, quick), out / "runs" / run.name)
            print(f"[{run.name}] copied from {_included_run(run, quick).parent.parent}")
        elif action == KEEP:
            print(f"[{run.name}] done before: kept")
        else:
            work.append((run, action))
    if jobs == 1:
        interrupted = _run_here(out, work, progress)
    else:
        interrupted = _run_parallel(out, work, cores)
    if interrupted:
        print(f"suite interrupted: run the same command to continue; results so far in {out}/runs")
        return out
    rows = []
    for run in runs:
        summary = json.loads((out / "runs" / run.name / "summary.json").read_text())
        rows.append(_row(run.name, run.group, run.config, summary))
    write_table(out, data.get("description", path.stem), rows)
    plot_groups(out, rows)
    print(f"results in {out}/results.md")
    return out


def plan(out: Path, suite: str, runs: list[SuiteRun], quick: bool = False) -> list[str]:
    """What :func:`run_suite` does with each run in results directory ``out`` (KEEP, COPY,
    RESUME, TRAIN or RETRAIN); ``suite`` is the stem of the suite file run."""
    actions = []
    for run in runs:
        run_dir = out / "runs" / run.name
        if not run_dir.exists():
            included = run.origin != suite and _completed(_included_run(run, quick), run.config)
            actions.append(COPY if included else TRAIN)
        elif not _same_config(run_dir, run.config):
            actions.append(RETRAIN)
        elif _completed(run_dir, run.config):
            actions.append(KEEP)
        elif has_checkpoint(run_dir):  # either format: an old run's checkpoint.pkl resumes too
            actions.append(RESUME)
        else:
            actions.append(TRAIN)
    return actions


def _included_run(run: SuiteRun, quick: bool) -> Path:
    return results_dir(run.origin, quick) / "runs" / run.name


def _completed(run_dir: Path, config: RunConfig) -> bool:
    """Whether ``run_dir`` holds a finished (not interrupted) run of ``config``."""
    try:
        summary = json.loads((run_dir / "summary.json").read_text())
    except (OSError, ValueError):
        return False
    return summary.get("status") != "interrupted" and _same_config(run_dir, config)


def _same_config(run_dir: Path, config: RunConfig) -> bool:
    """Whether the run in ``run_dir`` was set up with ``config`` (figures aside)."""
    recorded = run_dir / REQUESTED
    if not recorded.exists():
        recorded = run_dir / "config.json"
    try:
        done = RunConfig.from_dict(json.loads(recorded.read_text()))
    except (OSError, ValueError, ConfigError):
        return False
    done.plots = False
    return done == config


def execute(run_dir: Path, config: RunConfig, action: str, progress: bool) -> dict[str, Any]:
    """Train (TRAIN, RETRAIN) or resume (RESUME) one run and record the suite's settings."""
    if action == RESUME:
        summary = resume(run_dir, progress=progress)
    else:
        # Until this run finishes, its config.json is what the suite asked for.
        (run_dir / REQUESTED).unlink(missing_ok=True)
        summary = train(config, out=run_dir, progress=progress, overwrite=True)
    (run_dir / REQUESTED).write_text(json.dumps(config.to_dict(), indent=2))
    return summary


def _run_here(out: Path, work: list[tuple[SuiteRun, str]], progress: bool) -> bool:
    """Train ``work`` one run after the other in this process; whether a run was interrupted
    (then the rest is left for the next invocation)."""
    for run, action in work:
        if action == RETRAIN:
            print(f"[{run.name}] settings changed since the recorded run: trained again")
        summary = execute(out / "runs" / run.name, run.config, action, progress)
        if summary["status"] == "interrupted":
            return True
    return False


def _cores(jobs: int) -> list[int]:
    """The cores the ``jobs`` parallel runs are pinned to (one each)."""
    if jobs < 1:
        raise ConfigError(f"--jobs must be at least 1 (got {jobs})")
    if jobs == 1:
        return []
    if not hasattr(os, "sched_setaffinity"):
        raise ConfigError("--jobs above 1 pins runs to cores, which needs Linux")
    available = sorted(os.sched_getaffinity(0))
    if jobs > len(available):
        raise ConfigError(f"--jobs {jobs}, but this process may use only {len(available)} "
                          f"cores ({','.join(map(str, available))})")
    return available[:jobs]


@dataclass
class _Job:
    run: SuiteRun
    core: int
    process: subprocess.Popen
    log: TextIO


def _acknowledged(job: _Job) -> bool:
    """Whether the worker's log says it heard the stop signal (the loop's first-signal line)."""
    try:
        return "stopping" in Path(job.log.name).read_text(errors="replace")
    except OSError:
        return False


def _run_parallel(out: Path, work: list[tuple[SuiteRun, str]], cores: list[int]) -> bool:
    """Train ``work`` in worker processes, one per core of ``cores`` at a time; whether the
    suite was interrupted. Runs that fail are reported after the others have finished."""
    pending, free = deque(work), list(cores)
    active: list[_Job] = []
    failed: list[str] = []
    interrupted = False
    total, finished = len(work), 0
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    try:
        while active or (pending and not interrupted):
            while pending and free and not interrupted:
                run, action = pending.popleft()
                active.append(_start(out, run, action, free.pop(0)))
            time.sleep(0.2)
            for job in [j for j in active if j.process.poll() is not None]:
                active.remove(job)
                free.append(job.core)
                job.log.close()
                finished += 1
                status = _report(out, job, f"{finished}/{total}")
                interrupted |= status == "interrupted"
                if status is None:
                    failed.append(job.run.name)
    except KeyboardInterrupt:
        # Workers checkpoint and stop on SIGINT. One still starting up can miss it (before
        # its trainer listens), so it is repeated to the workers that have not said they are
        # stopping; a second SIGINT to one that did would abort its step.
        while active:
            for job in active:
                if not _acknowledged(job):
                    job.process.send_signal(signal.SIGINT)
            time.sleep(2.0)
            for job in [j for j in active if j.process.poll() is not None]:
                active.remove(job)
                job.log.close()
        return True
    finally:
        signal.signal(signal.SIGTERM, previous)
    if failed:
        raise RunError(f"{len(failed)} runs failed: {', '.join(failed)} "
                       f"(see {out}/runs/<name>.log)")
    return interrupted


def _raise_interrupt(signum: int, frame: Any) -> None:
    """SIGTERM handler of a parallel suite: stop it as Ctrl-C does."""
    raise KeyboardInterrupt


def _start(out: Path, run: SuiteRun, action: str, core: int) -> _Job:
    """Start a worker process (``python -m pinnopt.bench``) for one run, pinned to ``core``."""
    run_dir = out / "runs" / run.name
    log_path = out / "runs" / f"{run.name}.log"
    log = open(log_path, "a")
    verb = {RESUME: "resuming", TRAIN: "training", RETRAIN: "training again (settings changed)"}
    log.write(f"--- {verb[action]} {run.name} on core {core}, "
              f"{time.strftime('%Y-%m-%d %H:%M:%S')}\n")
    log.flush()
    env = dict(os.environ)
    env.setdefault("OPENBLAS_NUM_THREADS", "1")  # one thread for the one core
    env["PYTHONUNBUFFERED"] = "1"  # the log shows each line at once (_acknowledged reads it)
    command = [sys.executable, "-m", "pinnopt.bench", str(core), str(run_dir.resolve()), action,
               json.dumps(run.config.to_dict())]
    process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
    print(f"[{run.name}] {verb[action]} on core {core} (log: {log_path})", flush=True)
    return _Job(run, core, process, log)


def _report(out: Path, job: _Job, count: str) -> str | None:
    """Print one line about a finished worker; its run's status, or None when it failed."""
    name = job.run.name
    try:
        summary = json.loads((out / "runs" / name / "summary.json").read_text())
    except (OSError, ValueError):
        summary = None
    if job.process.returncode != 0 or summary is None:
        print(f"[{name}] failed (exit status {job.process.returncode}; "
              f"see {out}/runs/{name}.log) [{count}]", flush=True)
        return None
    # the relative errors, which the suites' targets are stated in; RMS where there are none
    final = summary["final"]
    kind = "rel_l2_" if any(k.startswith("rel_l2_") for k in final) else "rms_"
    errors = ", ".join(f"{k} {v:.3e}" for k, v in final.items() if k.startswith(kind))
    print(f"[{name}] {summary['status']}: {summary['steps']} steps in "
          f"{summary['train_time']:.1f} s; {errors} [{count}]", flush=True)
    return summary["status"]


def _worker(argv: list[str]) -> None:
    """A parallel run's process: ``CORE RUN_DIR ACTION CONFIG_JSON``."""
    core, run_dir, action, config = argv
    os.sched_setaffinity(0, {int(core)})  # before JAX starts its thread pools
    execute(Path(run_dir), RunConfig.from_dict(json.loads(config)), action, progress=False)


def _row(name: str, group: str, config: RunConfig, summary: dict[str, Any]) -> dict[str, Any]:
    final = summary["final"]
    row = {
        "name": name, "group": group, "problem": config.problem,
        "dim": config.problem_options.get("dim", ""), "method": config.method,
        "D": summary["num_params"], "status": summary["status"], "steps": summary["steps"],
        "train_time_s": round(summary["train_time"], 2),
        "ms_per_step": round(1e3 * summary["seconds_per_step"], 3) if summary["seconds_per_step"] else "",
        "loss": final.get("loss", ""),
    }
    row.update({k: v for k, v in final.items() if k.startswith(("rms_", "rel_l2_"))})
    row["hparams"] = json.dumps(config.hparams, sort_keys=True)
    return row


def write_table(out: Path, description: str, rows: list[dict[str, Any]]) -> None:
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(out / "results.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=keys)
        writer.writeheader()
        writer.writerows(rows)

    def fmt(v):
        return f"{v:.3e}" if isinstance(v, float) and k not in ("train_time_s", "ms_per_step") else str(v)

    lines = [f"# {description}", "", "| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    for r in rows:
        cells = []
        for k in keys:
            cells.append(fmt(r.get(k, "")))
        lines.append("| " + " | ".join(cells) + " |")
    m = json.loads((out / "machine.json").read_text())
    gpu = "".join(f", {label} {m[key]}" for key, label in (
        ("gpu_driver", "driver"), ("cuda_runtime", "CUDA runtime"), ("cudnn", "cuDNN"))
        if m.get(key))
    device = m["device"] + (f" ({m['device_kind']})" if gpu and m.get("device_kind") else "")
    lines += ["", f"Machine: {m['cpu']}, {m['cores']} cores, {device}{gpu}, jax {m['jax']}, "
                  f"load average {m['load_average_1min']:.2f} when the suite started"
                  + (f", pinned to {m['cores_used']} of the cores." if m.get("cores_used")
                     and m["cores_used"] < m["cores"] else ".")]
    (out / "results.md").write_text("\n".join(lines) + "\n")


def plot_groups(out: Path, rows: list[dict[str, Any]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault(r["group"], []).append(r)
    for group, members in groups.items():
        fig, ax = plt.subplots(figsize=(6, 4.2), constrained_layout=True)
        for r in members:
            history = read_history(out / "runs" / r["name"])
            key = next((k for k in history[0] if k.startswith("rms_")), None) if history else None
            if key is None:
                continue
            ts = [max(h["time"], 1e-4) for h in history]
            label = r["name"].removeprefix(group).strip("-") or r["method"]
            ax.loglog(ts, [h[key] for h in history], label=f"{label} ({key})")
        ax.set_xlabel("training time [s]")
        ax.set_ylabel("RMS error")
        ax.set_title(f"{group} (D = {members[0]['D']})")
        ax.grid(True, which="both", alpha=0.3)
        ax.legend()
        fig.savefig(out / f"error_vs_time_{group}.png", dpi=110)
        plt.close(fig)


if __name__ == "__main__":
    _worker(sys.argv[1:])
