"""Record loss/error histories of a few method configurations on the pre-refactor code."""
import json, subprocess, sys
import pinnopt
from pinnopt.config import RunConfig
from pinnopt.train import Trainer

CASES = {
    "alm-helmholtz": dict(problem="helmholtz", problem_options={"n_interior": 64, "n_boundary": 16}, net="2-8-1", method="alm", hparams={"inner_steps": 3}),
    "lagrange-helmholtz": dict(problem="helmholtz", problem_options={"n_interior": 64, "n_boundary": 16}, net="2-8-1", method="lagrange", hparams={"inner_steps": 3}),
    "capu-adam-helmholtz": dict(problem="helmholtz", problem_options={"n_interior": 64, "n_boundary": 16}, net="2-8-1", method="capu", hparams={"inner": "adam", "inner_lr": 1e-2, "inner_steps": 3}),
    "adam-lbfgs-poisson": dict(problem="poisson", problem_options={"n_interior": 64, "n_boundary": 16}, net="2-8-1", method="adam-lbfgs", hparams={"switch_step": 3}),
    "engd-poisson": dict(problem="poisson", problem_options={"n_interior": 64, "n_boundary": 16}, net="2-8-1", method="engd"),
    "kfac-star-poisson": dict(problem="poisson", problem_options={"n_interior": 64, "n_boundary": 16}, net="2-8-1", method="kfac-star"),
    "hrgrad-poisson": dict(problem="poisson", problem_options={"n_interior": 64, "n_boundary": 16}, net="2-8-1", method="hrgrad", hparams={"kappa": 0.3, "lr": 1e-2}),
    "mconfig-poisson": dict(problem="poisson", problem_options={"n_interior": 64, "n_boundary": 16}, net="2-8-1", method="mconfig", hparams={"lr": 1e-2}),
    "adam-transport-apnn": dict(problem="transport", problem_options={"eps_range": [1e-4, 1.0], "eps_embedding": 4, "nv": 8, "n_interior": 32, "n_boundary": 16, "n_initial": 16, "reference_nx": 50, "reference_nv": 16, "n_eval_x": 20}, net="16-16/16-16", method="adam", hparams={"lr": 1e-2}),
    "pcgrad-transport-vanilla": dict(problem="transport", problem_options={"eps_range": [1e-2, 1.0], "loss": "vanilla", "nv": 8, "n_interior": 32, "n_boundary": 16, "n_initial": 16, "reference_nx": 50, "reference_nv": 16, "n_eval_x": 20}, net="16-16", method="pcgrad", hparams={"tasks": "eps-decades"}),
    "adam-bgk": dict(problem="bgk", problem_options={"eps_range": [1e-2, 1.0], "nv": 8, "n_interior": 32, "n_boundary": 16, "n_initial": 16, "reference_nx": 40, "reference_nv": 16, "n_eval_x": 20}, method="adam", hparams={"lr": 1e-2}),
}
out = {}
for name, kw in CASES.items():
    cfg = RunConfig(steps=6, time_budget=None, eval_ratio=1.01, plots=False, **kw)
    t = Trainer(cfg, "/tmp/golden-run", progress=False, log=lambda m: None)
    t._append_history = lambda row: None
    t._checkpoint = lambda *a: None
    t._summary = lambda status, message, step, tt, history: history
    hist = t.run(t.fresh_state(), [])
    out[name] = {"config": cfg.to_dict(), "loss": [r["loss"] for r in hist], "errors": {k: [r[k] for r in hist] for k in hist[0] if k.startswith(("rel_l2_", "rms_"))}}
    print(name, out[name]["loss"])
rev = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
json.dump({"recorded_at": rev, "cases": out}, open(sys.argv[1], "w"), indent=1)
