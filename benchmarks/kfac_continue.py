"""KFAC* on 2d Poisson (or 4+1d heat) in the training loop without a run directory, for tuning
runs that continue from a saved state (docs/kfac.md, "Late training on the medium net").

    python benchmarks/kfac_continue.py OUT.pkl SECONDS HPARAMS_JSON [START.pkl|-] [problem net]

Trains for SECONDS of step time (compilation and evaluation excluded) with the kfac-star
hyper-parameters HPARAMS_JSON, from the network init of PRNGKey(0) (not the trainer's
initialisation) or from the parameters and state saved in START.pkl; prints the final RMS
error and a few of the loop's evaluation rows (on its geometric schedule, ratio 1.25), and
saves parameters and state to OUT.pkl. 2d Poisson uses one fixed batch (PRNGKey(1));
problems with resample redraw it every step, from a chain of keys split off PRNGKey(0).

Two keys of HPARAMS_JSON are the loop's, not the optimiser's: "_resample_every" (k: redraw
the points every k steps; 0 keeps one batch) and "_param_ema" (β_p > 0: also report the error
of the Polyak average p̄ ← β_p p̄ + (1 − β_p) θ of the iterates, as rms_avg).
"""

import dataclasses
import json
import pickle
import sys

import jax
import jax.numpy as jnp

jax.config.update("jax_enable_x64", True)

from pinnopt.config import RunConfig  # noqa: E402
from pinnopt.optim import Method  # noqa: E402
from pinnopt.residuals import Batch  # noqa: E402
from pinnopt.training import loop  # noqa: E402
from pinnopt.training.setup import build  # noqa: E402


def with_average(method: Method, beta: float) -> Method:
    """``method`` whose state also carries the Polyak average of its iterates."""

    def init(params):
        return method.init(params), params

    def step(params, state, batch, key):
        inner, average = state
        params, inner, info = method.step(params, inner, batch, key)
        average = jax.tree_util.tree_map(lambda a, p: beta * a + (1 - beta) * p, average, params)
        return params, (inner, average), info

    return Method(init, step)


out, seconds, hp = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
every = int(hp.pop("_resample_every", 1))
pema = float(hp.pop("_param_ema", 0.0))
start = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] != "-" else None
prob = sys.argv[5] if len(sys.argv) > 5 else "poisson"
net = sys.argv[6] if len(sys.argv) > 6 else "medium"
saved = pickle.load(open(start, "rb")) if start else {"time": 0.0, "steps": 0}
t_off, steps0 = saved["time"], saved["steps"]
cfg = RunConfig(method="kfac-star", problem=prob, problem_options={"dim": 2 if prob == "poisson" else 4},
                net=net, hparams=hp, steps=10**12, time_budget=t_off + seconds, eval_ratio=1.25,
                checkpoint_every=1e12, plots=False, on_divergence="stop")
setup = build(cfg)
obj, kfac = setup.objective, setup.method

params = obj.net.init(jax.random.PRNGKey(0), jnp.float64)
kfac_state = kfac.init(params)
if start:
    params = saved["params"]
    old, new = saved["state"], kfac.init(params)
    kfac_state = type(new)(*[o for o in old][:len(new)]) if len(old) >= len(new) else new
    kfac_state = kfac_state._replace(step=new.step + 1)  # keep counter parity irrelevant
method, method_state = kfac, kfac_state
if pema > 0:
    method, method_state = with_average(kfac, pema), (kfac_state, params)
setup = dataclasses.replace(setup, method=method)

resample = setup.problem.resample and every > 0
fixed = obj.sample(jax.random.PRNGKey(1))
sample = jax.jit(obj.sample)
draws = {"count": 0, "key": jax.random.PRNGKey(0), "batch": fixed}


def batches(step: int) -> Batch:
    """Every ``every`` steps of this session the next key of the chain, else the last draw."""
    while resample and draws["count"] <= (step - steps0) // every:
        draws["key"], key = jax.random.split(draws["key"])
        draws["batch"] = sample(key)
        draws["count"] += 1
    return draws["batch"]


standard = loop.standard_evaluation(setup)


def evaluate(params, state, batch):
    row = standard(params, state, batch)
    if pema > 0:
        row["rms_avg"] = obj.errors(state[1], setup.eval_points, setup.eval_reference)["rms_u"]
    return row


state = {"step": steps0, "train_time": t_off, "params": params, "method_state": method_state,
         "next_eval": steps0}
outcome = loop.run(setup, state, batches, loop.MemorySink(), evaluate=evaluate)
if outcome.status != "completed":
    print(f"{outcome.status}: {outcome.message}")
log = [{"t": r["time"], "steps": r["step"], "rms_u": r["rms_u"], "loss": r["loss"],
        **{k[len("method_"):]: v for k, v in r.items() if k.startswith("method_")},
        **({"rms_avg": r["rms_avg"]} if "rms_avg" in r else {})}
       for r in outcome.history if r["step"] > steps0]  # rows after a step carry its scalars
final = outcome.state
n, t = final["step"] - steps0, final["train_time"] - t_off
print(json.dumps({"hp": hp, "ms_per_step": 1e3 * t / max(n, 1), **log[-1]}))
for r in log[::max(1, len(log)//12)]: print("  t %7.1f rms %.3e loss %.3e a %.2e mu %.3f lamM %.1e rho %.3f" % (
    r["t"], r["rms_u"], r["loss"], r["step_size"], r["momentum"], r.get("model_damping", 0), r.get("rho", 0))
    + ("  avg %.3e" % r["rms_avg"] if "rms_avg" in r else ""))
kfac_state = final["method_state"][0] if pema > 0 else final["method_state"]
pickle.dump({"params": final["params"], "state": kfac_state, "time": final["train_time"],
             "steps": final["step"]}, open(out, "wb"))
