"""Grid-convergence and asymptotic-limit studies of the kinetic reference solvers.

Writes benchmarks/results/reference/convergence.md. Run from the repository root:

    .venv/bin/python benchmarks/reference_convergence.py

About 4 minutes on 2 (shared) CPU cores. Studies:

1. transport, ε = 1 (T = 1) and ε = 1e-8 (T = 0.1): nx = 50..400 with Δt = Δx/2 against an
   nx = 1600 solution; observed orders in L1, L2 (RMS) and L∞ over the coarse cell centres.
   For ε = 1 also without the split of the uncollided particles (plain discrete ordinates,
   nx = 50..200 against nx = 800).
2. transport, ε = 1e-8: distance to the diffusion-limit series, per nx.
3. transport, ε from 1e-1 to 1e-8 at nx = 800: distance to the diffusion-limit series.
4. transport, ε = 1: nv = 30 and 60 against nv = 120 (velocity quadrature error).
5. BGK, ε = 1e-2: nx = 50..800, successive differences (fine cells averaged pairwise).
6. BGK at ε = 1e-1..1e-5 against the Euler solution on 3200 cells; the Euler scheme's own
   error at the same nx gives the floor that the difference reaches.
"""

from __future__ import annotations

import platform
import time
from pathlib import Path

import numpy as np
import scipy

from pinnopt.reference.bgk import solve_bgk
from pinnopt.reference.euler import solve_euler
from pinnopt.reference.transport import diffusion_limit_rho, solve_transport

OUT = Path(__file__).parent / "results" / "reference" / "convergence.md"
X_EVAL = np.linspace(0.0, 1.0, 101)  # the transport benchmark's 100-ish evaluation points


def norms(e: np.ndarray) -> tuple[float, float, float]:
    """(L1, L2, L∞) of an error on a uniform grid (means, so grid-independent scales)."""
    return float(np.mean(np.abs(e))), float(np.sqrt(np.mean(e**2))), float(np.max(np.abs(e)))


def order_table(levels: list[int], errors: list[tuple[float, float, float]]) -> list[str]:
    """Markdown rows: level, the three norms, and log2 of successive ratios."""
    rows = [
        "| nx | L1 | L2 | L∞ | order L1 | order L2 | order L∞ |",
        "|---|---|---|---|---|---|---|",
    ]
    for i, (n, e) in enumerate(zip(levels, errors)):
        orders = (
            ["–"] * 3
            if i == 0
            else [f"{np.log2(p / c):.2f}" for p, c in zip(errors[i - 1], e)]
        )
        cells = [f"{x:.2e}" for x in e] + orders
        rows.append(f"| {n} | " + " | ".join(cells) + " |")
    return rows


def transport_grid(
    eps: float, t_final: float, levels: list[int], ref_nx: int, split: bool | None = None
) -> list[str]:
    ref = solve_transport(eps, t_final, nx=ref_nx, split_uncollided=split)
    errors = []
    for nx in levels:
        sol = solve_transport(eps, t_final, nx=nx, split_uncollided=split)
        errors.append(norms(sol.rho[-1] - ref.rho_at(sol.x)))
    variant = "" if split is None else f", split_uncollided={split}"
    return [
        f"### Transport, ε = {eps:g}, T = {t_final:g}{variant}: Δt = Δx/2, reference nx = {ref_nx}",
        "",
        *order_table(levels, errors),
        "",
    ]


def transport_vs_series_by_grid(levels: list[int]) -> list[str]:
    exact = diffusion_limit_rho(0.1, X_EVAL)
    errors = [norms(solve_transport(1e-8, 0.1, nx=nx).rho_at(X_EVAL) - exact) for nx in levels]
    return [
        "### Transport, ε = 1e-8, T = 0.1: distance to the diffusion-limit series "
        "(101 points on [0, 1], incl. the boundary values)",
        "",
        *order_table(levels, errors),
        "",
    ]


def transport_vs_series_by_eps(eps_values: list[float], nx: int) -> list[str]:
    exact = diffusion_limit_rho(0.1, X_EVAL)
    rows = [
        f"### Transport, T = 0.1, nx = {nx}: distance to the diffusion-limit series vs ε",
        "",
        "| ε | L1 | L2 | L∞ | L2/ε | ρ(t, 0) |",
        "|---|---|---|---|---|---|",
    ]
    for eps in eps_values:
        sol = solve_transport(eps, 0.1, nx=nx)
        e = norms(sol.rho_at(X_EVAL) - exact)
        rows.append(
            f"| {eps:g} | " + " | ".join(f"{x:.2e}" for x in e)
            + f" | {e[1] / eps:.3g} | {sol.rho_boundary[0]:.6f} |"
        )
    return rows + [""]


def transport_velocity(nx: int, nvs: list[int], ref_nv: int) -> list[str]:
    ref = solve_transport(1.0, 1.0, nx=nx, nv=ref_nv)
    rows = [
        f"### Transport, ε = 1, T = 1, nx = {nx}: velocity quadrature, against nv = {ref_nv}",
        "",
        "| nv | L1 | L2 | L∞ | L∞ on x > 0.1 |",
        "|---|---|---|---|---|",
    ]
    for nv in nvs:
        e = solve_transport(1.0, 1.0, nx=nx, nv=nv).rho[-1] - ref.rho[-1]
        far = np.max(np.abs(e[ref.x > 0.1]))
        rows.append(f"| {nv} | " + " | ".join(f"{x:.2e}" for x in norms(e)) + f" | {far:.2e} |")
    return rows + [""]


def bgk_grid(eps: float, levels: list[int]) -> list[str]:
    sols = [solve_bgk(eps, nx=nx) for nx in levels]
    rows = [
        f"### BGK, ε = {eps:g}, T = 0.1, cfl = 0.5, nv = 64: successive differences "
        "(L1 over x, fine cells averaged pairwise)",
        "",
        "| nx | ρ: ‖u_nx − u_2nx‖ | order | u | order | T | order |",
        "|---|---|---|---|---|---|---|",
    ]
    previous = None
    for coarse, fine in zip(sols[:-1], sols[1:]):
        diffs = [
            float(np.mean(np.abs(qc[-1] - qf[-1].reshape(-1, 2).mean(axis=1))))
            for qc, qf in ((coarse.rho, fine.rho), (coarse.u, fine.u), (coarse.T, fine.T))
        ]
        cells = []
        for i, d in enumerate(diffs):
            cells += [f"{d:.2e}", "–" if previous is None else f"{np.log2(previous[i] / d):.2f}"]
        rows.append(f"| {coarse.x.size} | " + " | ".join(cells) + " |")
        previous = diffs
    return rows + [""]


def bgk_vs_euler(eps_values: list[float], nx_values: list[int], ref_nx: int) -> list[str]:
    euler = solve_euler(nx=ref_nx)
    rows = [
        f"### BGK against Euler (nx = {ref_nx}), T = 0.1: L1 difference of (ρ, u, T)",
        "",
        "| solver | nx | ρ | u | T (temperature) |",
        "|---|---|---|---|---|",
    ]

    def row(label: str, sol) -> str:
        fields = (sol.rho, sol.u, sol.T)
        gaps = [np.mean(np.abs(q[-1] - e)) for q, e in zip(fields, euler.moments_at(sol.x))]
        return f"| {label} | {sol.x.size} | " + " | ".join(f"{g:.2e}" for g in gaps) + " |"

    for nx in nx_values:
        rows += [row(f"BGK ε = {eps:g}", solve_bgk(eps, nx=nx)) for eps in eps_values]
        rows.append(row("Euler (floor)", solve_euler(nx=nx)))
    return rows + [""]


def main() -> None:
    start = time.time()
    with open("/proc/cpuinfo") as cpuinfo:
        models = [line.split(":", 1)[1].strip() for line in cpuinfo
                  if line.startswith("model name")]
    cpu = models[0] if models else platform.processor()
    body: list[str] = []

    def run(study, *args) -> None:
        t0 = time.time()
        lines = study(*args) + [f"({time.time() - t0:.0f} s)", ""]
        body.extend(lines)
        print("\n".join(lines), flush=True)

    run(transport_grid, 1.0, 1.0, [50, 100, 200, 400], 1600)
    run(transport_grid, 1.0, 1.0, [50, 100, 200], 800, False)
    run(transport_grid, 1e-8, 0.1, [50, 100, 200, 400], 1600)
    run(transport_vs_series_by_grid, [50, 100, 200, 400, 800])
    run(transport_vs_series_by_eps, [1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6, 1e-8], 800)
    run(transport_velocity, 200, [30, 60], 120)
    run(bgk_grid, 1e-2, [50, 100, 200, 400, 800])
    run(bgk_vs_euler, [1e-1, 1e-2, 1e-3, 1e-4, 1e-5], [400], 3200)
    run(bgk_vs_euler, [1e-4, 1e-5], [800], 3200)

    header = [
        "# Reference solvers: measured convergence",
        "",
        "Generated by `.venv/bin/python benchmarks/reference_convergence.py` "
        f"({time.strftime('%Y-%m-%d')}, {time.time() - start:.0f} s total).",
        f"Machine: {cpu}, {platform.machine()}, Python {platform.python_version()}, "
        f"numpy {np.__version__}, scipy {scipy.__version__}, float64.",
        "Orders are log2 of successive error ratios (grids refined by 2, Δt ∝ Δx).",
        "",
    ]
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text("\n".join(header + body))
    print(f"wrote {OUT} in {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
