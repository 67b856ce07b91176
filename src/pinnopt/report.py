"""Figures and predictions of a finished (or interrupted) run."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

from pinnopt.precision import uses_float64
from pinnopt.training.batches import batch_for_step
from pinnopt.training.rundir import (
    PLOTS, RunError, load_config, load_state, read_history, read_metadata, read_summary,
)
from pinnopt.training.setup import build, fresh_state


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_run(run_dir: str | Path):
    """The run's setup and its latest parameters."""
    config = load_config(run_dir)
    setup = build(config)
    state, _ = load_state(run_dir, fresh_state(setup))
    return setup, state["params"]


@uses_float64
def predict(run_dir: str | Path, points: np.ndarray) -> np.ndarray:
    """Values of the trained fields at ``points (N, dim)``: ``(N, num_fields)``."""
    setup, params = load_run(run_dir)
    points = np.asarray(points)
    dim = setup.problem.dim
    if points.ndim != 2 or points.shape[1] != dim:
        raise ValueError(
            f"points must have shape (N, {dim}) for problem {setup.problem.name!r} "
            f"(coordinates {', '.join(setup.problem.coords)}), got {points.shape}"
        )
    if not (np.issubdtype(points.dtype, np.floating) or np.issubdtype(points.dtype, np.integer)):
        raise ValueError(f"points must be real numbers, got an array of dtype {points.dtype}")
    if not np.all(np.isfinite(points)):
        raise ValueError("points must be finite (the file holds NaN or Inf)")
    return np.asarray(setup.objective.predict(params, jnp.asarray(points, setup.dtype)))


def plot_history(history: list[dict[str, Any]], out_dir: Path, title: str) -> list[Path]:
    """Loss and errors vs step and vs training time, log–log."""
    plt = _pyplot()
    keys = [k for k in history[0] if k == "loss" or k.startswith(("rms_", "rel_l2_"))]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    steps = np.array([max(r["step"], 1) for r in history], float)
    times = np.array([max(r["time"], 1e-6) for r in history], float)
    for ax, xs, label in ((axes[0], steps, "step"), (axes[1], times, "training time [s]")):
        for k in keys:
            ys = np.array([r.get(k, np.nan) for r in history], float)
            ax.loglog(xs, ys, label=k)
        ax.set_xlabel(label)
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend()
    fig.suptitle(title)
    path = out_dir / "history.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def plot_fields(setup, params, out_dir: Path, resolution: int = 101) -> list[Path]:
    """Solution, reference and error on a grid (problems with two coordinates)."""
    problem = setup.problem
    if problem.dim != 2 or problem.solution is None:
        return []
    plt = _pyplot()
    grid = problem.domain.grid(resolution).astype(setup.dtype)
    u = np.asarray(setup.objective.predict(params, grid))
    ref = np.asarray(problem.reference(grid))
    lo, hi = problem.domain.lo, problem.domain.hi
    extent = (lo[0], hi[0], lo[1], hi[1])
    paths = []
    for i, field in enumerate(problem.fields):
        fig, axes = plt.subplots(1, 3, figsize=(13, 3.8), constrained_layout=True)
        panels = (("network " + field, u[:, i]), ("reference", ref[:, i]),
                  ("error", u[:, i] - ref[:, i]))
        for ax, (name, values) in zip(axes, panels):
            # grid is 'ij' ordered: axis 0 is coordinate 0; show coordinate 0 horizontally.
            image = values.reshape(resolution, resolution).T
            cmap = "RdBu_r" if name == "error" else "viridis"
            im = ax.imshow(image, origin="lower", extent=extent, aspect="auto", cmap=cmap)
            ax.set_title(name)
            ax.set_xlabel(problem.coords[0])
            ax.set_ylabel(problem.coords[1])
            fig.colorbar(im, ax=ax)
        path = out_dir / f"field_{field}.png"
        fig.savefig(path, dpi=110)
        plt.close(fig)
        paths.append(path)
    return paths


def plot_multipliers(run_dir: Path, setup, out_dir: Path) -> list[Path]:
    """The pointwise multipliers λ of a constrained method (``alm``, ``lagrange``, ``capu``)
    over their constraint points, one panel per group and component (1 or 2 coordinates)."""
    problem = setup.problem
    state, _ = load_state(run_dir, fresh_state(setup))
    multipliers = getattr(state["method_state"], "multipliers", None)
    if problem.dim not in (1, 2) or not isinstance(multipliers, dict) or not multipliers:
        return []
    # The points the multipliers belong to: the run's fixed training batch.
    config = setup.config
    batch = batch_for_step(setup.objective, config.seed, state["step"], config.resample_every)
    panels = [(name, k) for name, lam in multipliers.items() for k in range(lam.shape[1])]
    plt = _pyplot()
    fig, axes = plt.subplots(1, len(panels), figsize=(4.6 * len(panels), 3.8),
                             constrained_layout=True, squeeze=False)
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
    fig.suptitle(f"multipliers at step {state['step']} ({setup.config.method})")
    path = out_dir / "multipliers.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def plot_conflict(history: list[dict[str, Any]], out_dir: Path, title: str) -> list[Path]:
    """Gradient conflict over training for multi-task methods (``method_cos_min`` etc. in the
    history): pairwise cosines of the task gradients, the fraction of conflicting pairs and
    the smallest cosine of the update with a task gradient; beside it, the task losses."""
    rows = [r for r in history if "method_cos_min" in r]
    if not rows:
        return []
    plt = _pyplot()
    steps = np.array([r["step"] for r in rows], float)
    fig, axes = plt.subplots(1, 2, figsize=(11, 4), constrained_layout=True)
    for key, label in (("cos_min", "min cos(g_i, g_j)"), ("cos_mean", "mean cos(g_i, g_j)"),
                       ("conflict_fraction", "fraction of pairs in conflict"),
                       ("update_cos_min", "min cos(update, g_i)")):
        values = [r.get(f"method_{key}", np.nan) for r in rows]
        axes[0].plot(steps, values, ".-", ms=3, lw=1, label=label)
    axes[0].axhline(0.0, color="k", lw=0.6)
    axes[0].set_xscale("log")  # diagnostics exist from step 1 on
    axes[0].set_ylim(-1.05, 1.05)
    axes[0].set_xlabel("step")
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
    axes[1].set_title("task losses")
    if task_keys:
        axes[1].legend(fontsize=7, ncol=2 if len(task_keys) > 6 else 1)
    axes[1].grid(True, which="both", alpha=0.3)
    fig.suptitle(title)
    path = out_dir / "conflict.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


def plot_eps_profiles(setup, params, out_dir: Path) -> list[Path]:
    """Scored fields against x on the evaluation set, one curve per value of the ``eps``
    coordinate, network (solid) against the reference (dashed): problems with coordinates
    ``x`` and ``eps`` (the kinetic problems, evaluated at the final time)."""
    problem = setup.problem
    if not {"x", "eps"} <= set(problem.coords) or problem.solution is None:
        return []
    plt = _pyplot()
    points = np.asarray(setup.eval_points)
    reference = np.asarray(setup.eval_reference)
    u = np.asarray(setup.objective.predict(params, setup.eval_points))
    ix, ie = problem.coords.index("x"), problem.coords.index("eps")
    eps_values = sorted(set(points[:, ie].tolist()), reverse=True)
    fields = problem.scored_fields
    fig, axes = plt.subplots(1, len(fields), figsize=(5 * len(fields), 4),
                             constrained_layout=True, squeeze=False)
    colours = plt.cm.viridis(np.linspace(0.0, 0.9, len(eps_values)))
    for ax, field in zip(axes[0], fields):
        i = problem.fields.index(field)
        for colour, eps in zip(colours, eps_values):
            rows = np.flatnonzero(points[:, ie] == eps)
            rows = rows[np.argsort(points[rows, ix])]
            ax.plot(points[rows, ix], reference[rows, i], "--", color=colour, lw=1)
            ax.plot(points[rows, ix], u[rows, i], "-", color=colour, lw=1.2, label=f"ε = {eps:.0e}")
        ax.set_xlabel("x")
        ax.set_title(field)
        ax.grid(True, alpha=0.3)
    axes[0][-1].legend(fontsize=8)
    fig.suptitle(f"{problem.description}: network (solid), reference (dashed)", fontsize=9)
    path = out_dir / "profiles_eps.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return [path]


@uses_float64
def plot_run(run_dir: str | Path) -> list[Path]:
    """Write all figures of a run into ``run_dir/plots``; returns their paths."""
    run_dir = Path(run_dir)
    history = read_history(run_dir)
    if not history:
        raise RunError(f"{run_dir} has no history yet")
    out_dir = run_dir / PLOTS
    out_dir.mkdir(exist_ok=True)
    setup, params = load_run(run_dir)
    title = f"{setup.problem.description} — {setup.config.method}, D = {setup.net.num_params}"
    return (plot_history(history, out_dir, title) + plot_fields(setup, params, out_dir)
            + plot_multipliers(run_dir, setup, out_dir) + plot_conflict(history, out_dir, title)
            + plot_eps_profiles(setup, params, out_dir))


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
    else:
        lines.append("status: no summary (the run was killed); resume it with --resume")
    m = read_metadata(run_dir)
    if m is not None:
        lines.append("versions: " + ", ".join(
            f"{k} {m.get(k)}" for k in ("pinnopt", "jax", "jaxlib", "numpy", "python")))
        lines.append(f"device: {m.get('device')}; git revision: {m.get('git_revision')}")
    return "\n".join(lines)
