"""KFAC* on 2d Poisson (or 4+1d heat) in a plain loop, for tuning runs that continue from a
saved state (docs/kfac.md, "Late training on the medium net").

    python benchmarks/kfac_continue.py OUT.pkl SECONDS HPARAMS_JSON [START.pkl|-] [problem net]

Trains for SECONDS of step time (compilation and evaluation excluded) with the kfac-star
hyper-parameters HPARAMS_JSON, from the network init of PRNGKey(0) (not the trainer's
initialisation) or from the parameters and state saved in START.pkl; prints the final RMS
error and a few logged rows, and saves parameters and state to OUT.pkl. 2d Poisson uses one
fixed batch (PRNGKey(1)); problems with resample redraw it every step.

Two keys of HPARAMS_JSON are the loop's, not the optimiser's: "_resample_every" (k: redraw
the points every k steps; 0 keeps one batch) and "_param_ema" (β_p > 0: also report the error
of the Polyak average p̄ ← β_p p̄ + (1 − β_p) θ of the iterates, as rms_avg).
"""
import json, pickle, sys, time, jax, jax.numpy as jnp, numpy as np
jax.config.update("jax_enable_x64", True)
from pinnopt.config import RunConfig
from pinnopt.train import build
out, seconds, hp = sys.argv[1], float(sys.argv[2]), json.loads(sys.argv[3])
every = int(hp.pop("_resample_every", 1)); pema = float(hp.pop("_param_ema", 0.0))
start = sys.argv[4] if len(sys.argv) > 4 and sys.argv[4] != "-" else None
prob = sys.argv[5] if len(sys.argv) > 5 else "poisson"; net = sys.argv[6] if len(sys.argv) > 6 else "medium"
cfg = RunConfig(method="kfac-star", problem=prob, problem_options={"dim": 2 if prob == "poisson" else 4},
                net=net, hparams=hp)
s = build(cfg); obj, m = s.objective, s.method
resample = s.problem.resample and every > 0
key = jax.random.PRNGKey(0)
params = obj.net.init(jax.random.PRNGKey(0), jnp.float64)
state = m.init(params); t_off = 0.0; steps0 = 0
if start:
    d = pickle.load(open(start, "rb"))
    params = d["params"]; t_off = d["time"]; steps0 = d["steps"]
    old = d["state"]; new = m.init(params)
    state = type(new)(*[o for o in old][:len(new)]) if len(old) >= len(new) else new
    state = state._replace(step=new.step + 1)  # keep counter parity irrelevant
batch = obj.sample(jax.random.PRNGKey(1))
step = jax.jit(m.step)
err = jax.jit(lambda p: obj.errors(p, s.eval_points, s.eval_reference))
sample = jax.jit(obj.sample)
p, st, info = step(params, state, batch, None); jax.block_until_ready(p)  # compile (discarded)
avg = params
mix = jax.jit(lambda a, p: jax.tree_util.tree_map(lambda x, y: pema * x + (1 - pema) * y, a, p))
log = []; t = 0.0; n = 0; next_eval = 1.0; infos = []
while t < seconds:
    if resample and n % every == 0:
        key, k = jax.random.split(key); batch = sample(k)
    t0 = time.perf_counter()
    params, state, info = step(params, state, batch, None)
    jax.block_until_ready(params); t += time.perf_counter() - t0; n += 1
    if pema > 0:
        avg = mix(avg, params)
    if t >= next_eval or t >= seconds:
        e = err(params); row = {"t": t + t_off, "steps": n + steps0, "rms_u": float(e["rms_u"]),
               **{k: float(v) for k, v in info.items()}}
        if pema > 0:
            row["rms_avg"] = float(err(avg)["rms_u"])
        log.append(row); next_eval = t * 1.25
print(json.dumps({"hp": hp, "ms_per_step": 1e3 * t / n, "steps": n, **log[-1]}))
for r in log[::max(1, len(log)//12)]: print("  t %7.1f rms %.3e loss %.3e a %.2e mu %.3f lamM %.1e rho %.3f" % (
    r["t"], r["rms_u"], r["loss"], r["step_size"], r["momentum"], r.get("model_damping", 0), r.get("rho", 0))
    + ("  avg %.3e" % r["rms_avg"] if "rms_avg" in r else ""))
pickle.dump({"params": params, "state": state, "time": t + t_off, "steps": n + steps0}, open(out, "wb"))
