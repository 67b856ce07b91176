"""Where a KFAC* step's time goes (docs/kfac.md): the full jitted step and its parts, each
jitted and timed on its own (median of 30), at the network's initial parameters.

    python benchmarks/kfac_step_profile.py [net] [problem]      # default: medium poisson
"""
import time, sys, jax, jax.numpy as jnp
jax.config.update("jax_enable_x64", True)
from pinnopt.config import RunConfig
from pinnopt.train import build
from pinnopt.optim import kfac as K
net = sys.argv[1] if len(sys.argv) > 1 else "medium"
prob = sys.argv[2] if len(sys.argv) > 2 else "poisson"
dim = 2 if prob == "poisson" else 4
cfg = RunConfig(method="kfac-star", problem=prob, problem_options={"dim": dim}, net=net,
                hparams={"damping": 1e-12, "ema": 0.5, "initial_lr": 0.0})
s = build(cfg)
obj, m = s.objective, s.method
params = obj.net.init(jax.random.PRNGKey(0), jnp.float64)
batch = obj.sample(jax.random.PRNGKey(1))
st = m.init(params)
def t(name, f, *a, n=30):
    f = jax.jit(f); r = f(*a); jax.block_until_ready(r)
    ts = []
    for _ in range(n):
        t0 = time.perf_counter(); jax.block_until_ready(f(*a)); ts.append(time.perf_counter() - t0)
    ts.sort(); print(f"{name:28s} {1e3*ts[len(ts)//2]:8.2f} ms"); return r
step = t("full step", m.step, params, st, batch, None)
cur = K._Curvature(obj, 1e-12, 0.5, 1, 1)
stats = t("curvature pass", cur.evaluate, params, batch)
t("loss+grad", lambda st_: K.loss_and_gradient(st_), stats)
t("batch factors", lambda st_: K._batch_terms(cur.passes, cur.terms, st_, batch), stats)
fac, inv = t("refresh (factors+inverse)", lambda s_, st_: cur.refresh(s_, st_, batch), st, stats)
_, g = K.loss_and_gradient(stats)
d = K.natural_direction(inv, g)
t("jvp products", lambda st_, d_: K.jacobian_products(st_, [d_, d_]), stats, d)
t("loss (trial)", obj.loss, params, batch)
t("natural direction", K.natural_direction, inv, g)
