"""Taylor-mode versus nested-autodiff Laplacians: loss-and-gradient timing, side by side.

The loss is the 2d Poisson loss of docs/methods.md §9 (900 interior, 120 boundary points,
float64). The nested-autodiff variant computes each point's Laplacian as the trace of
``jax.hessian`` of the network; the Taylor-mode variant uses :func:`pinnopt.taylor.jet`.
Both are jit-compiled and timed (median of repeats) in one process.
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np

from pinnopt.machine import machine, results_dir
from pinnopt.nets import MLP
from pinnopt.problems import make_problem
from pinnopt.residuals import Objective


def autodiff_loss(objective: Objective):
    """The same loss with Laplacians from nested autodiff (trace of the Hessian)."""
    net = objective.net
    problem = objective.problem
    interior, boundary = problem.groups

    def u(params, x):
        return net.apply(params, x[None])[0, 0]

    def loss(params, batch):
        xi, xb = batch["interior"], batch["boundary"]
        lap = jax.vmap(lambda x: jnp.trace(jax.hessian(u, argnums=1)(params, x)))(xi)
        source = -jax.vmap(lambda x, l: interior.fn(x, _jet_like(l)))(xi, jnp.zeros_like(lap))
        r_int = -lap - source
        r_bdy = jax.vmap(lambda x: u(params, x))(xb) - problem.solution(xb)[:, 0]
        return 0.5 * jnp.mean(r_int**2) + 0.5 * jnp.mean(r_bdy**2)

    return loss


def _jet_like(second):
    # The interior residual is −Δu − f; with Δu = 0 it returns −f, which recovers f.
    from pinnopt.taylor import Jet

    return Jet(value=jnp.zeros(1), grad=jnp.zeros((0, 1)), second=jnp.reshape(second, (1,)))


def _time(fn, *args, repeats: int) -> float:
    jax.block_until_ready(fn(*args))  # compile and warm up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        jax.block_until_ready(fn(*args))
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def run(quick: bool = False, out: str | Path | None = None) -> Path:
    """Time both Laplacians on two network sizes; writes ``results.md`` / ``results.json`` and
    returns the results directory."""
    out = Path(out) if out else results_dir("taylor-speed", quick)
    out.mkdir(parents=True, exist_ok=True)
    problem = make_problem("poisson", dim=2)
    nets = {"small": (2, 64, 1), "medium": (2, 64, 64, 48, 48, 1)}
    repeats = 3 if quick else 20
    rows = []
    for label, sizes in nets.items():
        net = MLP(sizes)
        objective = Objective(problem, net)
        params = net.init(jax.random.PRNGKey(0))
        batch = objective.sample(jax.random.PRNGKey(1))
        taylor = jax.jit(jax.value_and_grad(objective.loss))
        nested = jax.jit(jax.value_and_grad(autodiff_loss(objective)))
        (l1, _), (l2, _) = taylor(params, batch), nested(params, batch)
        agree = abs(float(l1) - float(l2)) / abs(float(l2))
        t_taylor = _time(taylor, params, batch, repeats=repeats)
        t_nested = _time(nested, params, batch, repeats=repeats)
        rows.append({"net": "-".join(map(str, sizes)), "D": net.num_params,
                     "taylor_ms": 1e3 * t_taylor, "nested_autodiff_ms": 1e3 * t_nested,
                     "speedup": t_nested / t_taylor, "loss_rel_diff": agree})
        print(f"{rows[-1]['net']} (D={net.num_params}): Taylor {1e3 * t_taylor:.2f} ms, "
              f"nested autodiff {1e3 * t_nested:.2f} ms, speed-up {t_nested / t_taylor:.1f}x")
    info = machine()
    (out / "results.json").write_text(json.dumps({"rows": rows, "machine": info}, indent=2))
    lines = [
        "# Taylor-mode vs nested-autodiff Laplacian: value and gradient of the 2d Poisson loss",
        "",
        "900 interior + 120 boundary points, float64, jit-compiled, median of "
        f"{repeats} calls after warm-up. Command: `pinnopt bench taylor-speed`.",
        "",
        "| net | D | Taylor-mode [ms] | nested autodiff [ms] | speed-up | loss rel. diff |",
        "|---|---|---|---|---|---|",
    ]
    lines += [f"| {r['net']} | {r['D']} | {r['taylor_ms']:.2f} | {r['nested_autodiff_ms']:.2f} | "
              f"{r['speedup']:.1f}x | {r['loss_rel_diff']:.1e} |" for r in rows]
    lines += ["", f"Machine: {info['cpu']}, {info['cores']} cores, {info['device']}, jax {info['jax']}, "
                  f"load average {info['load_average_1min']:.2f} (other processes share the cores)."]
    (out / "results.md").write_text("\n".join(lines) + "\n")
    return out
