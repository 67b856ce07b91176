"""``pinnopt diagnose gradient-noise``: how much of the loss gradient is noise early in training.

The diagnosis of [FLUX] (docs/methods.md §6): early in training the network output carries
perturbations, and a residual with a k-th order operator amplifies a mode of wavenumber ω by
ω^k, so the gradient of a high-order residual is dominated by noise. This module measures
that, per residual group, for each formulation of a problem (standard = second order,
first-order = flux form), at initialisation and after a few Adam steps:

- Signal-to-noise ratio across re-drawn collocation batches. With ``g_b`` the gradient of the
  group's loss term ``w_g/(2N_g)‖r_g‖²`` on batch ``b = 1..B``, ``ḡ`` their mean and
  ``tr Ĉ = Σ_b ‖g_b − ḡ‖² / (B − 1)`` the total variance,

      snr = ‖ḡ‖² / tr Ĉ.

  A gradient that is pure noise gives snr ≈ 1/B (the floor); ``snr_debiased`` subtracts that
  bias, (‖ḡ‖² − tr Ĉ / B) / tr Ĉ, an unbiased estimate of ‖E g‖² / tr C (it may be negative).
- Sensitivity to small random perturbations of the output layer: ``[W, b]`` of the last layer
  becomes ``[W, b] + ε · rms(W) · ξ`` with ξ standard normal; on one fixed batch,

      sensitivity(ε)   = ‖g(θ + δ) − g(θ)‖ / ‖g(θ)‖               (mean over draws of ξ),
      amplification(ε) = rms(r(θ + δ) − r(θ)) / rms(u(θ + δ) − u(θ)),

  the second being how much the group's residual amplifies the output perturbation: about 1
  for value residuals, growing with the operator order.

Each group is labelled with its operator order (2 if it uses a second-order term, 1 if it uses
first derivatives, 0 otherwise). Problems whose sampling is an option are diagnosed with
``sampling="uniform"`` unless given, so that re-drawn batches differ.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from pinnopt.config import ConfigError, RunConfig
from pinnopt.nets import Params
from pinnopt.precision import uses_float64
from pinnopt.problems import PROBLEMS, problem_options
from pinnopt.problems.forms import FORMULATIONS
from pinnopt.residuals import Batch, Objective, ResidualGroup
from pinnopt.training import loop
from pinnopt.training.rundir import RunError
from pinnopt.training.setup import build, fresh_state

JSON_NAME = "gradient_noise.json"
FIGURE_NAME = "gradient_noise.png"


@dataclass(frozen=True)
class NoiseSettings:
    """``steps``: Adam steps after which to measure (0 = initialisation); ``batches``: re-drawn
    batches per SNR estimate; ``eps``: relative sizes of the output-layer perturbation;
    ``draws``: perturbations per size; ``lr``: Adam learning rate."""

    steps: tuple[int, ...] = (0, 100)
    batches: int = 16
    eps: tuple[float, ...] = (1e-3, 1e-2, 1e-1)
    draws: int = 8
    lr: float = 1e-3

    def __post_init__(self):
        if not self.steps or any(int(s) != s or s < 0 for s in self.steps):
            raise ValueError(f"steps must be non-negative integers, got {self.steps}")
        if self.batches < 2:
            raise ValueError(f"batches must be at least 2, got {self.batches}")
        if not self.eps or any(not e > 0 for e in self.eps):
            raise ValueError(f"eps must be positive numbers, got {self.eps}")
        if self.draws < 1 or not self.lr > 0:
            raise ValueError("draws must be >= 1 and lr > 0")


def operator_order(group: ResidualGroup) -> int:
    if group.derivs.second is not None and any(c != 0 for c in group.derivs.second):
        return 2
    return 1 if group.derivs.num_directions else 0


def formulations_of(problem: str) -> tuple[str, ...]:
    """The formulations a problem offers (``("default",)`` if it has one only)."""
    return FORMULATIONS if "formulation" in problem_options(problem) else ("default",)


def _flat(tree) -> jax.Array:
    return jnp.concatenate([jnp.ravel(a) for a in jax.tree_util.tree_leaves(tree)])


def _perturb_last_layer(params: Params, key: jax.Array, eps: float) -> Params:
    last = params[-1]
    scale = eps * jnp.sqrt(jnp.mean(last["W"] ** 2))
    kw, kb = jax.random.split(key)
    new_last = {"W": last["W"] + scale * jax.random.normal(kw, last["W"].shape, last["W"].dtype),
                "b": last["b"] + scale * jax.random.normal(kb, last["b"].shape, last["b"].dtype)}
    return [*params[:-1], new_last]


class _Probe:
    """Jitted per-group losses and gradients, residuals and outputs of one objective."""

    def __init__(self, objective: Objective):
        self.objective = objective
        groups = objective.groups
        net = objective.net

        def losses_and_gradients(params, batch):
            losses, pullback = jax.vjp(lambda p: objective.group_losses(p, batch), params)
            grads = {}
            for g in groups:
                seed = {name: jnp.zeros_like(v) for name, v in losses.items()}
                seed[g.name] = jnp.ones_like(losses[g.name])
                grads[g.name] = _flat(pullback(seed)[0])
            return losses, grads

        def residuals_and_outputs(params, batch):
            res = objective.group_residuals(params, batch)
            out = {g.name: net.apply(params, batch[g.name]) for g in groups}
            return res, out

        self.losses_and_gradients = jax.jit(losses_and_gradients)
        self.residuals_and_outputs = jax.jit(residuals_and_outputs)

    def gradients(self, params, batch):
        return self.losses_and_gradients(params, batch)[1]

    def loss(self, params, batch) -> float:
        return float(sum(self.losses_and_gradients(params, batch)[0].values()))


def _snr(grads: np.ndarray) -> dict[str, Any]:
    """SNR statistics of gradients ``(B, D)`` from ``B`` batches. A group whose points do not
    change between batches (fixed boundary points) has no batch noise: its ``snr`` is
    ``None`` and ``fixed`` is true."""
    b = grads.shape[0]
    mean = grads.mean(axis=0)
    noise = float(np.sum(grads.var(axis=0, ddof=1)))
    signal = float(mean @ mean)
    fixed = noise <= 1e-20 * signal or noise == 0.0
    return {
        "signal": signal,
        "noise": noise,
        "snr": None if fixed else signal / noise,
        "snr_debiased": None if fixed else (signal - noise / b) / noise,
        "fixed": fixed,
        "grad_norm": float(np.sqrt(np.mean(np.sum(grads**2, axis=1)))),
    }


def measure(probe: _Probe, params: Params, batches: Sequence[Batch], key: jax.Array,
            settings: NoiseSettings) -> dict[str, Any]:
    """All statistics of one parameter state: per group and for the total loss."""
    groups = probe.objective.groups
    per_batch = [probe.gradients(params, b) for b in batches]
    stacked = {g.name: np.stack([np.asarray(p[g.name]) for p in per_batch]) for g in groups}
    stacked["total"] = sum(stacked[g.name] for g in groups)
    out: dict[str, Any] = {name: _snr(v) for name, v in stacked.items()}
    for g in groups:
        out[g.name].update(role=g.role, order=operator_order(g))

    base_batch = batches[0]
    g0 = {name: v[0] for name, v in stacked.items()}
    r0, u0 = probe.residuals_and_outputs(params, base_batch)
    for name in out:
        out[name]["sensitivity"] = {}
        if name != "total":
            out[name]["amplification"] = {}
    for eps in settings.eps:
        sens = {name: [] for name in out}
        amp = {g.name: [] for g in groups}
        for draw in range(settings.draws):
            key, sub = jax.random.split(key)
            moved = _perturb_last_layer(params, sub, eps)
            g1 = probe.gradients(moved, base_batch)
            g1 = {name: np.asarray(v) for name, v in g1.items()}
            g1["total"] = sum(g1[g.name] for g in groups)
            for name in out:
                denom = max(np.linalg.norm(g0[name]), np.finfo(float).tiny)
                sens[name].append(float(np.linalg.norm(g1[name] - g0[name]) / denom))
            r1, u1 = probe.residuals_and_outputs(moved, base_batch)
            for g in groups:
                dr = np.sqrt(np.mean((np.asarray(r1[g.name]) - np.asarray(r0[g.name])) ** 2))
                du = np.sqrt(np.mean((np.asarray(u1[g.name]) - np.asarray(u0[g.name])) ** 2))
                amp[g.name].append(float(dr / max(du, np.finfo(float).tiny)))
        for name in out:
            out[name]["sensitivity"][f"{eps:g}"] = float(np.mean(sens[name]))
        for g in groups:
            out[g.name]["amplification"][f"{eps:g}"] = float(np.mean(amp[g.name]))
    return out


def diagnose_formulation(config: RunConfig, settings: NoiseSettings) -> dict[str, Any]:
    """Statistics at each of ``settings.steps`` for one problem (one formulation) of
    ``config``, trained between them by the training loop with Adam (``settings.lr``)."""
    config = dataclasses.replace(config, method="adam", hparams={"lr": settings.lr},
                                 time_budget=None, on_divergence="stop", plots=False)
    setup = build(config, reference=False)
    objective, problem, net = setup.objective, setup.problem, setup.net
    probe = _Probe(objective)
    root = jax.random.PRNGKey(config.seed)
    state = fresh_state(setup)
    params = state["params"]
    if not (isinstance(params, list) and all(isinstance(p, dict) and "W" in p for p in params)):
        raise ValueError("gradient-noise diagnosis needs a plain MLP network")
    # Batches 0..B-1 for the SNR; the training batch (fixed, or re-drawn if the problem says so).
    batches = [objective.sample(jax.random.fold_in(jax.random.fold_in(root, 1), b))
               for b in range(settings.batches)]
    train_key = jax.random.fold_in(root, 2)
    fixed_batch = objective.sample(train_key)

    def training_batch(step: int) -> Batch:
        # The diagnosis' own redraws (keys folded from train_key, not the trainer's step
        # keys), so that its recorded numbers (docs/flux.md) stay reproducible.
        if not problem.resample:
            return fixed_batch
        return objective.sample(jax.random.fold_in(train_key, step))

    stages = []
    for target in sorted(set(settings.steps)):
        if target > state["step"]:
            stage = dataclasses.replace(setup, config=dataclasses.replace(config, steps=target))
            outcome = loop.run(stage, state, training_batch, loop.MemorySink(), log=lambda m: None)
            if outcome.status != "completed":
                raise RunError(f"gradient-noise diagnosis of {problem.name!r}: {outcome.message}")
            state = outcome.state
        step, params = state["step"], state["params"]
        stats = measure(probe, params, batches, jax.random.fold_in(root, 3 + step), settings)
        stages.append({"step": step, "loss": float(probe.loss(params, batches[0])), "groups": stats})
    return {"fields": list(problem.fields), "net": net.describe(), "num_params": net.num_params,
            "stages": stages}


@uses_float64
def gradient_noise(problem: str, formulations: Sequence[str] | None = None,
                   options: dict[str, Any] | None = None, net: str | None = None,
                   seed: int = 0, settings: NoiseSettings = NoiseSettings(),
                   out: str | Path | None = None) -> dict[str, Any]:
    """Diagnose ``problem`` in each formulation (default: all it offers); write
    ``gradient_noise.json`` and ``gradient_noise.png`` into ``out`` (if given)."""
    if problem not in PROBLEMS:
        raise ConfigError(f"problem={problem!r} is unknown; choose from {', '.join(sorted(PROBLEMS))}")
    available = formulations_of(problem)
    formulations = tuple(formulations or available)
    for f in formulations:
        if f not in available:
            raise ConfigError(f"problem {problem!r} has formulations {', '.join(available)}; got {f!r}")
    options = dict(options or {})
    if "formulation" in options:
        raise ConfigError("give the formulation with --formulation, not as a problem option")
    if "sampling" in problem_options(problem) and "sampling" not in options:
        options["sampling"] = "uniform"
    results: dict[str, Any] = {
        "problem": problem, "options": options, "seed": seed,
        "settings": {"steps": list(settings.steps), "batches": settings.batches,
                     "eps": list(settings.eps), "draws": settings.draws, "lr": settings.lr},
        "formulations": {},
    }
    for f in formulations:
        opts = dict(options) if f == "default" else {**options, "formulation": f}
        config = RunConfig(problem=problem, problem_options=opts, net=net, seed=seed)
        results["formulations"][f] = diagnose_formulation(config, settings)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        (out / JSON_NAME).write_text(json.dumps(results, indent=2))
        plot(results, out / FIGURE_NAME)
    return results


def summary(results: dict[str, Any]) -> str:
    """A table of the results: per formulation, stage and group."""
    eps = [f"{e:g}" for e in results["settings"]["eps"]]
    small = eps[int(np.argmin(results["settings"]["eps"]))]
    lines = [f"gradient noise of {results['problem']} {results['options'] or ''} "
             f"(B = {results['settings']['batches']} batches; noise floor of snr = "
             f"{1 / results['settings']['batches']:.3g}; amp = rms Δr / rms Δu at ε = {small})",
             f"{'formulation':<12} {'step':>5} {'group':<12} {'role':<10} {'k':>2} {'snr':>10} "
             f"{'debiased':>10} {'amp':>9} " + " ".join(f"{'dg/g@' + e:>11}" for e in eps)]

    def num(value, width):
        return f"{'fixed':>{width}}" if value is None else f"{value:>{width}.3e}"

    for form, res in results["formulations"].items():
        for stage in res["stages"]:
            for name, st in stage["groups"].items():
                order = "" if st.get("order") is None else str(st["order"])
                amp = st.get("amplification", {}).get(small)
                lines.append(
                    f"{form:<12} {stage['step']:>5} {name:<12} {st.get('role', 'sum'):<10} "
                    f"{order:>2} {num(st['snr'], 10)} {num(st['snr_debiased'], 10)} "
                    f"{'' if amp is None else f'{amp:.3g}':>9} "
                    + " ".join(f"{st['sensitivity'][e]:>11.3e}" for e in eps))
    return "\n".join(lines)


def plot(results: dict[str, Any], path: Path) -> Path:
    """Per stage (columns): SNR per group (bars), gradient sensitivity vs ε (lines) and the
    residual's amplification of the output perturbation at the smallest ε (bars)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    forms = results["formulations"]
    n_stages = max(len(r["stages"]) for r in forms.values())
    fig, axes = plt.subplots(3, n_stages, figsize=(5.5 * n_stages, 11), constrained_layout=True,
                             squeeze=False)
    colours = {0: "tab:green", 1: "tab:blue", 2: "tab:red"}
    styles = ["-", "--", ":", "-."]
    eps_small = f"{min(results['settings']['eps']):g}"
    for col in range(n_stages):
        ax_snr, ax_sens, ax_amp = axes[:, col]
        labels, snr, amp, amp_labels, bar_colours, amp_colours = [], [], [], [], [], []
        for fi, (form, res) in enumerate(forms.items()):
            if col >= len(res["stages"]):
                continue
            stage = res["stages"][col]
            for name, stats in stage["groups"].items():
                order = stats.get("order")
                colour = colours.get(order, "0.4")
                label = f"{form}\n{name}" + (f" (k={order})" if order is not None else "")
                labels.append(label)
                # Fixed points (no batch noise) get no bar.
                snr.append(np.nan if stats["snr"] is None else max(stats["snr"], 1e-12))
                bar_colours.append(colour)
                eps = [float(e) for e in stats["sensitivity"]]
                ax_sens.loglog(eps, list(stats["sensitivity"].values()), styles[fi % 4],
                               marker="o", color=colour, label=f"{form}: {name}")
                if "amplification" in stats:
                    amp.append(max(stats["amplification"][eps_small], 1e-12))
                    amp_labels.append(label)
                    amp_colours.append(colour)
            ax_snr.set_title(f"after {stage['step']} Adam steps")
        ax_snr.bar(range(len(snr)), snr, color=bar_colours)
        ax_snr.axhline(1.0 / results["settings"]["batches"], color="k", lw=0.8, ls=":",
                       label="noise floor 1/B")
        ax_snr.set_yscale("log")
        ax_snr.set_xticks(range(len(labels)), labels, rotation=70, fontsize=7)
        ax_snr.set_ylabel("SNR  ‖E g‖² / E‖g − E g‖²  (no bar: fixed points)")
        ax_snr.legend(fontsize=7)
        ax_sens.set_xlabel("ε (relative output-layer perturbation)")
        ax_sens.set_ylabel("‖Δg‖ / ‖g‖")
        ax_sens.grid(True, which="both", alpha=0.3)
        ax_sens.legend(fontsize=6)
        ax_amp.bar(range(len(amp)), amp, color=amp_colours)
        ax_amp.set_yscale("log")
        ax_amp.set_xticks(range(len(amp_labels)), amp_labels, rotation=70, fontsize=7)
        ax_amp.set_ylabel(f"rms Δr / rms Δu  (ε = {eps_small})")
    fig.suptitle(f"gradient noise: {results['problem']} "
                 "(operator order k: red 2, blue 1, green 0; grey: total loss)")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
