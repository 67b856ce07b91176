"""Figures of a finished (or interrupted) run, and its text summary.

Each figure has a builder that returns a matplotlib ``Figure`` (or ``None`` where it does not
apply to the run's problem) and a ``plot_*`` function that writes it into ``run_dir/plots``;
:func:`plot_run` writes them all:

    history.png          loss and errors against step and training time (log axes)
    field_<f>.png        two-coordinate problems: the network's field on a grid; beside it the
                         reference and the error (diverging colours centred on 0) where the
                         reference covers the whole grid
    reference_lines.png  two-coordinate problems whose reference is known along a line only
                         (cavity: Ghia et al.'s u(y) at x = 1/2 and v(x) at y = 1/2): the
                         network's profile along that line over the reference points
    multipliers.png      constrained methods: the multipliers over their points
    conflict.png         multi-task methods: task-gradient conflict and task losses
    profiles_eps.png     kinetic problems: scored fields against x for each ε
    errors_eps.png       runs with per-ε metrics (``rel_l2_<field>_eps<ε>``) at two or more ε:
                         the final relative L2 error of each scored field against ε, log–log

:func:`per_eps_lines` gives the text of those per-ε errors and the worst ε (for
:func:`describe` and the end of ``train``).
"""

from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from pinnopt.precision import uses_float64
from pinnopt.trained import TrainedModel, load
from pinnopt.training.batches import batch_for_step
from pinnopt.training.rundir import (
    PLOTS, RunError, load_config, read_history, read_metadata, read_summary,
)

if TYPE_CHECKING:
    from matplotlib.figure import Figure

LINE_STYLES = ("-", "--", ":", "-.")
"""History curves take the ten colours of ``tab10`` with the first style, then again with the
next: 40 curves that differ in colour or style."""


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(fig: Figure, path: Path) -> Path:
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


def _title(fig: Figure, text: str, fontsize: float = 10) -> None:
    """``text`` as the figure's title, wrapped to the figure's width."""
    chars = int(fig.get_figwidth() * 72 / (0.55 * fontsize))
    fig.suptitle(textwrap.fill(text, chars), fontsize=fontsize)


def history_figure(history: list[dict[str, Any]], title: str) -> Figure:
    """Loss and errors against step and against training time, log–log. Log axes have no
    place for step 0 and time 0: each panel starts at the first row after it."""
    plt = _pyplot()
    from matplotlib import ticker

    keys = [k for k in history[0] if k == "loss" or k.startswith(("rms_", "rel_l2_"))]
    colours = plt.get_cmap("tab10").colors
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2), layout="constrained")
    steps = np.array([r["step"] for r in history], float)
    times = np.array([r["time"] for r in history], float)
    for ax, xs, label in ((axes[0], steps, "step (from step 1)"),
                          (axes[1], times, "training time [s] (from step 1)")):
        shown = xs > 0
        for i, key in enumerate(keys):
            ys = np.array([r.get(key, np.nan) for r in history], float)
            ax.loglog(xs[shown], ys[shown], color=colours[i % len(colours)],
                      ls=LINE_STYLES[(i // len(colours)) % len(LINE_STYLES)],
                      lw=1.8 if key == "loss" else 1.2, label=key)
        ax.set_xlabel(label)
        ax.set_ylabel("loss and errors" if len(keys) > 1 else "loss")
        # Ticks at 1, 2, 5 × 10^k with plain labels: minor labels of a short log axis overlap.
        ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
        ax.xaxis.set_minor_formatter(ticker.NullFormatter())
        ax.grid(True, which="both", alpha=0.3)
    fig.legend(*axes[0].get_legend_handles_labels(), loc="outside right upper",
               fontsize=7 if len(keys) > 8 else 9, ncols=1 + len(keys) // 24)
    _title(fig, title)
    return fig


def plot_history(history: list[dict[str, Any]], out_dir: Path, title: str) -> list[Path]:
    return [_save(history_figure(history, title), out_dir / "history.png")]


def field_figures(model: TrainedModel, resolution: int = 101) -> dict[str, Figure]:
    """``{"field_<f>": figure}`` for a problem with two coordinates: the network's field on a
    grid, and where the reference covers the whole grid, the reference (same colour scale)
    and the error (network − reference, diverging colours with limits ±max |error|). A
    reference known at a few points only is left to :func:`reference_lines_figure` rather
    than drawn as empty maps."""
    problem = model.problem
    if problem.dim != 2:
        return {}
    plt = _pyplot()
    grid = np.asarray(problem.domain.grid(resolution))
    u = model.predict(grid)
    ref = np.asarray(problem.reference(grid)) if problem.solution is not None else None
    lo, hi = problem.domain.lo, problem.domain.hi
    extent = (lo[0], hi[0], lo[1], hi[1])
    figures = {}
    for i, field in enumerate(problem.fields):
        full = ref is not None and bool(np.all(np.isfinite(ref[:, i])))
        panels = [(f"network {field}", u[:, i])]
        if full:
            panels += [(f"reference {field}", ref[:, i]), ("error (network − reference)",
                                                           u[:, i] - ref[:, i])]
        low = min(np.min(values) for _, values in panels[:2])
        high = max(np.max(values) for _, values in panels[:2])
        fig, axes = plt.subplots(1, len(panels), figsize=(4.4 * len(panels), 3.8),
                                 layout="constrained", squeeze=False)
        for ax, (name, values) in zip(axes[0], panels):
            # grid is 'ij' ordered: axis 0 is coordinate 0; show coordinate 0 horizontally.
            image = values.reshape(resolution, resolution).T
            if name.startswith("error"):
                limit = float(np.max(np.abs(values))) or 1.0
                style = {"cmap": "RdBu_r", "vmin": -limit, "vmax": limit}
            else:
                style = {"cmap": "viridis", "vmin": low, "vmax": high}
            im = ax.imshow(image, origin="lower", extent=extent, aspect="auto", **style)
            ax.set_title(name)
            ax.set_xlabel(problem.coords[0])
            ax.set_ylabel(problem.coords[1])
            fig.colorbar(im, ax=ax)
        figures[f"field_{field}"] = fig
    return figures


def plot_fields(model: TrainedModel, out_dir: Path) -> list[Path]:
    return [_save(fig, out_dir / f"{name}.png") for name, fig in field_figures(model).items()]


def _reference_lines(model: TrainedModel) -> list[tuple[str, int, np.ndarray, np.ndarray]]:
    """For each scored field whose reference points (the evaluation points where it is
    finite, at least three) lie on one line of constant coordinate: ``(field, the fixed
    coordinate's index, the points (M, 2), the reference there (M,))``."""
    problem = model.problem
    if problem.dim != 2 or problem.solution is None:
        return []
    x = np.asarray(problem.eval_points())
    ref = np.asarray(problem.reference(x))
    lines = []
    for field in problem.scored_fields:
        column = ref[:, problem.fields.index(field)]
        known = np.isfinite(column)
        if known.sum() < 3:
            continue
        fixed = [k for k in range(2) if np.ptp(x[known, k]) == 0]
        if len(fixed) == 1:
            lines.append((field, fixed[0], x[known], column[known]))
    return lines


def reference_lines_figure(model: TrainedModel, resolution: int = 201) -> Figure | None:
    """Scored fields along the lines where the reference is given (one coordinate fixed):
    the network's profile over the reference points, with the RMS error at those points.
    For the cavity: u(y) at x = 1/2 and v(x) at y = 1/2 against Ghia et al. (1982)."""
    lines = _reference_lines(model)
    if not lines:
        return None
    problem = model.problem
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(lines), figsize=(5 * len(lines), 4), layout="constrained",
                             squeeze=False)
    for ax, (field, fixed, points, reference) in zip(axes[0], lines):
        along, i = 1 - fixed, problem.fields.index(field)
        order = np.argsort(points[:, along])
        points, reference = points[order], reference[order]
        line = np.repeat(points[:1], resolution, axis=0)
        line[:, along] = np.linspace(problem.domain.lo[along], problem.domain.hi[along],
                                     resolution)
        rms = float(np.sqrt(np.mean((model.predict(points)[:, i] - reference) ** 2)))
        ax.plot(line[:, along], model.predict(line)[:, i], "-", lw=1.5, label="network")
        ax.plot(points[:, along], reference, "o", mfc="none", color="k", label="reference")
        ax.set_xlabel(problem.coords[along])
        ax.set_ylabel(field)
        ax.set_title(f"{field}({problem.coords[along]}) at {problem.coords[fixed]} = "
                     f"{points[0, fixed]:g}: RMS error {rms:.2e}", fontsize=10)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=9)
    _title(fig, problem.description or problem.name)
    return fig


def plot_reference_lines(model: TrainedModel, out_dir: Path) -> list[Path]:
    fig = reference_lines_figure(model)
    return [] if fig is None else [_save(fig, out_dir / "reference_lines.png")]


def multipliers_figure(model: TrainedModel) -> Figure | None:
    """The pointwise multipliers λ of a constrained method (``alm``, ``lagrange``, ``capu``)
    over their constraint points, one panel per group and component (1 or 2 coordinates)."""
    problem = model.problem
    multipliers = getattr(model.method_state, "multipliers", None)
    if problem.dim not in (1, 2) or not isinstance(multipliers, dict) or not multipliers:
        return None
    # The points the multipliers belong to: the run's fixed training batch.
    config = model.config
    batch = batch_for_step(model.objective, config.seed, model.step, config.resample_every)
    panels = [(name, k) for name, lam in multipliers.items() for k in range(lam.shape[1])]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8),
                             layout="constrained", squeeze=False)
    for ax, (name, k) in zip(axes[0], panels):
        x = np.asarray(batch[name])
        lam = np.asarray(multipliers[name])[:, k]
        label = f"λ {name}" + (f"[{k}]" if multipliers[name].shape[1] > 1 else "")
        if problem.dim == 1:
            order = np.argsort(x[:, 0])
            ax.plot(x[order, 0], lam[order], ".-", ms=3, lw=0.6)
            ax.set_ylabel(label)
        else:
            sc = ax.scatter(x[:, 0], x[:, 1], c=lam, s=8, cmap="viridis")
            fig.colorbar(sc, ax=ax, label=label)
            ax.set_ylabel(problem.coords[1])
        ax.set_xlabel(problem.coords[0])
        ax.set_title(f"{label}: mean {lam.mean():.3g}, max {lam.max():.3g}")
    _title(fig, f"multipliers at step {model.step} ({config.method})")
    return fig


def plot_multipliers(model: TrainedModel, out_dir: Path) -> list[Path]:
    fig = multipliers_figure(model)
    return [] if fig is None else [_save(fig, out_dir / "multipliers.png")]


def conflict_figure(history: list[dict[str, Any]], title: str) -> Figure | None:
    """Gradient conflict over training for multi-task methods (``method_cos_min`` etc. in the
    history): pairwise cosines of the task gradients, the fraction of conflicting pairs and
    the smallest cosine of the update with a task gradient; beside it, the task losses."""
    rows = [r for r in history if "method_cos_min" in r]
    if not rows:
        return None
    plt = _pyplot()
    steps = np.array([r["step"] for r in rows], float)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), layout="constrained")
    for key, label in (("cos_min", "min cos(g_i, g_j)"), ("cos_mean", "mean cos(g_i, g_j)"),
                       ("conflict_fraction", "fraction of pairs in conflict"),
                       ("update_cos_min", "min cos(update, g_i)")):
        values = [r.get(f"method_{key}", np.nan) for r in rows]
        axes[0].plot(steps, values, ".-", ms=3, lw=1, label=label)
    axes[0].axhline(0.0, color="k", lw=0.6)
    axes[0].set_xscale("log")  # diagnostics exist from step 1 on
    axes[0].set_ylim(-1.05, 1.05)
    axes[0].set_xlabel("step")
    axes[0].set_ylabel("cosine, fraction")
    axes[0].set_title("task-gradient conflict")
    axes[0].legend(fontsize=8)
    task_keys = [k for k in rows[-1] if k.startswith("method_task_loss_")]
    for key in task_keys:
        values = np.array([r.get(key, np.nan) for r in rows], float)
        axes[1].plot(np.maximum(steps, 1), np.where(values > 0, values, np.nan), lw=1,
                     label=key.removeprefix("method_task_loss_"))
    axes[1].set_xscale("log")
    axes[1].set_yscale("log")
    axes[1].set_xlabel("step")
    axes[1].set_ylabel("task loss")
    axes[1].set_title("task losses")
    if task_keys:
        axes[1].legend(fontsize=7, ncol=2 if len(task_keys) > 6 else 1)
    axes[1].grid(True, which="both", alpha=0.3)
    _title(fig, title)
    return fig


def plot_conflict(history: list[dict[str, Any]], out_dir: Path, title: str) -> list[Path]:
    fig = conflict_figure(history, title)
    return [] if fig is None else [_save(fig, out_dir / "conflict.png")]


def eps_profiles_figure(model: TrainedModel) -> Figure | None:
    """Scored fields against x on the evaluation set, one curve per value of the ``eps``
    coordinate, network (solid) against the reference (dashed): problems with coordinates
    ``x`` and ``eps`` (the kinetic problems, evaluated at the final time)."""
    problem = model.problem
    if not {"x", "eps"} <= set(problem.coords) or problem.solution is None:
        return None
    plt = _pyplot()
    points = np.asarray(problem.eval_points())
    reference = np.asarray(problem.reference(points))
    u = model.predict(points)
    ix, ie = problem.coords.index("x"), problem.coords.index("eps")
    eps_values = sorted(set(points[:, ie].tolist()), reverse=True)
    fields = problem.scored_fields
    fig, axes = plt.subplots(1, len(fields), figsize=(5 * len(fields), 4.4),
                             layout="constrained", squeeze=False)
    colours = plt.cm.viridis(np.linspace(0.0, 0.9, len(eps_values)))
    for ax, field in zip(axes[0], fields):
        i = problem.fields.index(field)
        for colour, eps in zip(colours, eps_values):
            rows = np.flatnonzero(points[:, ie] == eps)
            rows = rows[np.argsort(points[rows, ix])]
            ax.plot(points[rows, ix], reference[rows, i], "--", color=colour, lw=1)
            ax.plot(points[rows, ix], u[rows, i], "-", color=colour, lw=1.2,
                    label=f"ε = {eps:.0e}")
        ax.set_xlabel("x")
        ax.set_ylabel(field)
        ax.set_title(field)
        ax.grid(True, alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    _title(fig, f"{problem.description}: network (solid), reference (dashed)", fontsize=9)
    return fig


def plot_eps_profiles(model: TrainedModel, out_dir: Path) -> list[Path]:
    fig = eps_profiles_figure(model)
    return [] if fig is None else [_save(fig, out_dir / "profiles_eps.png")]


PER_EPS = re.compile(r"^rel_l2_(?P<field>.+)_eps(?P<eps>[0-9.]+e[+-][0-9]+)$")
"""A per-ε metric name: ``rel_l2_rho_eps1e-08`` (:func:`pinnopt.problems.kinetic.eps_tag`)."""


def per_eps_errors(row: dict[str, Any]) -> dict[str, dict[float, float]]:
    """``{field: {ε: relative L2 error}}`` from the per-ε metrics of a history row or a
    summary's ``final``, ε in decreasing order; empty when there are none."""
    out: dict[str, dict[float, float]] = {}
    for key, value in row.items():
        match = PER_EPS.match(key)
        if match and isinstance(value, (int, float)):
            out.setdefault(match["field"], {})[float(match["eps"])] = float(value)
    return {field: dict(sorted(errors.items(), reverse=True)) for field, errors in out.items()}


def per_eps_lines(row: dict[str, Any]) -> list[str]:
    """Text lines of the per-ε errors of ``row``: one per field (``rel. L2 rho per eps: 1e+00
    6.13e-01, ...``) and the worst ε of each field; nothing without per-ε metrics."""
    errors = per_eps_errors(row)
    lines = [f"rel. L2 {field} per eps: "
             + ", ".join(f"{eps:.0e} {value:.3e}" for eps, value in values.items())
             for field, values in errors.items()]
    if errors:
        worst = {field: max(values.items(), key=lambda item: _nan_last(item[1]))
                 for field, values in errors.items()}
        lines.append("worst eps: " + ", ".join(f"{field} {value:.3e} at eps = {eps:.0e}"
                                               for field, (eps, value) in worst.items()))
    return lines


def _nan_last(value: float) -> float:
    """Sort key that ranks NaN (a failed evaluation) above every error."""
    return float("inf") if value != value else value


def eps_errors_figure(history: list[dict[str, Any]], title: str) -> Figure | None:
    """Final relative L2 error of each scored field against ε, log–log, one line per field,
    the worst ε of each field circled: runs whose last evaluation has per-ε metrics at two
    or more ε (the kinetic problems over a range of ε)."""
    rows = [r for r in history if per_eps_errors(r)]
    if not rows:
        return None
    errors = per_eps_errors(rows[-1])
    if max(len(values) for values in errors.values()) < 2:
        return None
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.4), layout="constrained")
    for field, values in errors.items():
        eps = np.array(list(values), float)
        err = np.array(list(values.values()), float)
        (line,) = ax.loglog(eps, err, "o-", ms=4, lw=1.4, label=field)
        worst = int(np.argmax(np.where(np.isnan(err), np.inf, err)))
        ax.plot(eps[worst], err[worst], "o", ms=11, mfc="none", color=line.get_color())
    ax.set_xlabel("ε")
    ax.set_ylabel("relative L2 error at the final time")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=9)
    _title(fig, f"{title}: step {rows[-1]['step']}, worst ε circled", fontsize=9)
    return fig


def plot_eps_errors(history: list[dict[str, Any]], out_dir: Path, title: str) -> list[Path]:
    fig = eps_errors_figure(history, title)
    return [] if fig is None else [_save(fig, out_dir / "errors_eps.png")]


@uses_float64
def plot_run(run_dir: str | Path) -> list[Path]:
    """Write all figures of a run into ``run_dir/plots``; returns their paths."""
    run_dir = Path(run_dir)
    history = read_history(run_dir)
    if not history:
        raise RunError(f"{run_dir} has no history yet")
    out_dir = run_dir / PLOTS
    out_dir.mkdir(exist_ok=True)
    model = load(run_dir)
    title = f"{model.problem.description} — {model.config.method}, D = {model.net.num_params}"
    return (plot_history(history, out_dir, title) + plot_fields(model, out_dir)
            + plot_reference_lines(model, out_dir) + plot_multipliers(model, out_dir)
            + plot_conflict(history, out_dir, title) + plot_eps_profiles(model, out_dir)
            + plot_eps_errors(history, out_dir, title))


def describe(run_dir: str | Path) -> str:
    """A text summary of a run: status, final numbers, versions."""
    run_dir = Path(run_dir)
    config = load_config(run_dir)
    lines = [f"run {run_dir}: {config.problem} {config.problem_options or ''} with {config.method}"]
    s = read_summary(run_dir)
    if s is not None:
        lines.append(f"status: {s['status']} ({s['message']}); {s['steps']} steps, "
                     f"{s['train_time']:.1f} s")
        lines += [f"  {k}: {v:.4e}" for k, v in s["final"].items()
                  if isinstance(v, float) and k not in ("time",)]
        lines += [f"  {line}" for line in per_eps_lines(s["final"])]
    else:
        lines.append("status: no summary (the run was killed); resume it with --resume")
    m = read_metadata(run_dir)
    if m is not None:
        lines.append("versions: " + ", ".join(
            f"{k} {m.get(k)}" for k in ("pinnopt", "jax", "jaxlib", "numpy", "python")))
        lines.append(f"device: {m.get('device')}; git revision: {m.get('git_revision')}")
    return "\n".join(lines)
