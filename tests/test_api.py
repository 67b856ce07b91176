"""The README's Python example: a problem in a few lines, registered and trained by name."""

import jax.numpy as jnp
import numpy as np

import pinnopt as po
from pinnopt.train import read_history


def test_user_defined_problem_trains_by_name(tmp_path):
    box = po.Box.cube(2)
    problem = po.Problem(
        name="my-poisson", domain=box, coords=("x", "y"), fields=("u",),
        groups=(
            po.ResidualGroup("interior", box.interior(), 128,
                             lambda x, u: u.second[0] + 2 * jnp.pi**2 * jnp.prod(jnp.sin(jnp.pi * x)),
                             po.Derivatives.laplacian(2)),
            po.ResidualGroup("boundary", box.boundary(), 32, lambda x, u: u.value[0], role="boundary"),
        ),
        solution=lambda x: jnp.prod(jnp.sin(jnp.pi * x), axis=-1, keepdims=True),
    )
    po.register_problem("my-poisson", lambda: problem)
    summary = po.train(po.RunConfig(problem="my-poisson", method="lbfgs", steps=300, time_budget=None,
                                    plots=False), out=tmp_path / "mine", progress=False, log=lambda m: None)
    history = read_history(tmp_path / "mine")
    assert summary["status"] == "completed"
    assert history[-1]["rms_u"] < history[0]["rms_u"] / 3
    values = po.predict(tmp_path / "mine", np.full((3, 2), 0.5))
    assert values.shape == (3, 1) and abs(values[0, 0] - 1.0) < 0.4


def test_importing_pinnopt_leaves_jax_in_32_bits_and_runs_use_float64(tmp_path):
    """A library import does not change the caller's JAX; a run enables 64 bits for its own
    duration (its history holds float64 losses) and restores the caller's setting after."""
    import subprocess
    import sys

    script = (
        "import jax, jax.numpy as jnp, pinnopt as po\n"
        "assert not jax.config.jax_enable_x64 and jnp.zeros(1).dtype == jnp.float32\n"
        "s = po.train(po.RunConfig(method='adam', steps=2, time_budget=None, plots=False,"
        " net='2-8-1', problem_options={'n_interior': 16, 'n_boundary': 8}), out='r',"
        " progress=False, log=lambda m: None)\n"
        "assert s['status'] == 'completed'\n"
        "assert not jax.config.jax_enable_x64 and jnp.zeros(1).dtype == jnp.float32\n"
        "with po.float64():\n"
        "    assert jnp.zeros(1).dtype == jnp.float64\n"
        "p = po.predict('r', __import__('numpy').zeros((3, 2)))\n"
        "assert p.dtype == 'float64', p.dtype\n"
        "print('ok')\n")
    proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300, env={**__import__("os").environ,
                                                          "JAX_PLATFORMS": "cpu"})
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stderr[-2000:]
