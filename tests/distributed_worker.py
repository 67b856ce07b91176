"""Runs in a subprocess of ``tests/test_distributed.py`` with four host devices.

``python distributed_worker.py OUT_DIR`` trains every method family a few steps on 1 and 4
devices, and some on 2 as well (same configuration, same global batch), through the real
:class:`Trainer`, and writes ``OUT_DIR/results.json``: ``{case: {devices: flat final
parameters}}``, the sharding of the alm multipliers, and the errors for an uneven batch and
for too many devices. Compilation dominates its run time, so XLA's optimisations are off
(the same for every device count).
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import jax

jax.config.update("jax_enable_x64", True)
jax.config.update("jax_disable_most_optimizations", True)  # compile time dominates

import numpy as np  # noqa: E402
from jax.flatten_util import ravel_pytree  # noqa: E402

from pinnopt.config import ConfigError, RunConfig  # noqa: E402
from pinnopt.train import Trainer, load_state  # noqa: E402

STEPS = 3
POISSON = {"dim": 2, "n_interior": 48, "n_boundary": 24}
# (method, hyper-parameters, problem options, device counts). The damping of ENGD and
# Hessian-free keeps their solves well conditioned, and Hessian-free runs few CG iterations:
# with ill-conditioned solves or long CG runs the round-off of summing over points in another
# order is amplified far above 1e-10 (docs/distributed.md).
CASES = [
    ("adam", {"lr": 1e-2}, {**POISSON, "resample": True}, (1, 2, 4)),
    ("lbfgs", {}, POISSON, (1, 4)),
    ("engd", {"variant": "full", "damping": 1e-3}, POISSON, (1, 4)),
    ("engd", {"variant": "woodbury", "damping": 1e-3}, POISSON, (1, 4)),
    ("hessian-free", {"cg_iters": 3, "damping": 1e-3}, POISSON, (1, 4)),
    ("kfac", {}, POISSON, (1, 2, 4)),
    ("kfac-star", {}, POISSON, (1, 4)),
    ("hrgrad", {"lr": 1e-2}, POISSON, (1, 4)),
    ("alm", {"inner_steps": 2}, POISSON, (1, 2, 4)),
]


def run(method, hparams, options, devices, out: Path):
    config = RunConfig(problem="poisson", problem_options=options, net="2-8-1", method=method,
                       hparams=hparams, steps=STEPS, time_budget=None, dtype="float64",
                       plots=False, checkpoint_every=1e9, devices=devices)
    out.mkdir(parents=True)
    trainer = Trainer(config, out, progress=False, log=lambda message: None)
    state = trainer.fresh_state()
    summary = trainer.run(state, [])
    assert summary["status"] == "completed", summary
    final, _ = load_state(out, state)  # no config.json here: the fresh state is the template
    return trainer, final


def main(out_dir: str) -> None:
    out_dir = Path(out_dir)
    assert jax.device_count() == 4, jax.devices()
    results: dict[str, dict[str, list[float]]] = {}
    extra: dict[str, object] = {}
    for method, hparams, options, device_counts in CASES:
        label = method + "".join(f"-{v}" for v in hparams.values() if isinstance(v, str))
        results[label] = {}
        for devices in device_counts:
            trainer, final = run(method, hparams, options, devices,
                                 out_dir / f"{label}-{devices}")
            flat, _ = ravel_pytree(final["params"])
            results[label][str(devices)] = np.asarray(flat).tolist()
            if trainer.parallel is not None:  # the points really were split
                batch = trainer.placed_batch(0)
                extra.setdefault("batch_devices", {})[f"{label}-{devices}"] = len(
                    batch["interior"].sharding.device_set)
            if method == "alm" and devices == 4:
                lam = final["method_state"].multipliers["boundary"]
                sharding = trainer.parallel.state_sharding(
                    trainer.setup.method.init(final["params"])).multipliers["boundary"]
                extra["alm_multiplier_spec"] = str(sharding.spec)
                extra["alm_multiplier_shape"] = list(np.shape(lam))
    for name, options, devices in (("uneven", {**POISSON, "n_interior": 50}, 4),
                                   ("too_many", POISSON, 8)):
        try:
            run("adam", {}, options, devices, out_dir / name)
            extra[f"{name}_error"] = None
        except ConfigError as err:
            extra[f"{name}_error"] = str(err)
    (out_dir / "results.json").write_text(json.dumps({"params": results, **extra}))


if __name__ == "__main__":
    main(sys.argv[1])
