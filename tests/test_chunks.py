"""Compiled chunks of steps: the same numbers as step by step, resume-exact wherever a run
stops, divergence inside a chunk handled as before, drawing inside the loop timed."""

import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from pinnopt.config import ConfigError, RunConfig
from pinnopt.geometry import Box
from pinnopt.precision import float64
from pinnopt.problems import Problem, register_problem
from pinnopt.residuals import ResidualGroup
from pinnopt.taylor import Derivatives
from pinnopt.training import loop
from pinnopt.training.batches import StepBatches, batch_for_step, step_keys
from pinnopt.training.setup import build, fresh_state

from faults import register_faulty

TINY = {"n_interior": 64, "n_boundary": 16}


def config(**kw) -> RunConfig:
    base = dict(method="adam", net="2-8-1", problem_options=dict(TINY), steps=40,
                time_budget=None, plots=False, checkpoint_every=0.0, eval_ratio=1.3)
    base.update(kw)
    return RunConfig(**base)


def train(cfg: RunConfig, state=None, logs=None) -> loop.Outcome:
    setup = build(cfg)
    batches = StepBatches(setup.objective, cfg.seed, cfg.resample_every)
    log = (lambda m: None) if logs is None else logs.append
    return loop.run(setup, fresh_state(setup) if state is None else state, batches,
                    loop.MemorySink(), log=log)


def leaves(outcome: loop.Outcome) -> list[np.ndarray]:
    state = outcome.state
    return [np.asarray(x) for x in
            jax.tree_util.tree_leaves((state["params"], state["method_state"]))]


def assert_same_state(a: loop.Outcome, b: loop.Outcome) -> None:
    assert a.state["step"] == b.state["step"]
    for x, y in zip(leaves(a), leaves(b), strict=True):
        np.testing.assert_array_equal(x, y)


def rows(outcome: loop.Outcome) -> list[dict]:
    return [{k: v for k, v in r.items() if k != "time"} for r in outcome.history]


CASES = {
    "adam": {},
    "lbfgs": dict(method="lbfgs"),
    "engd": dict(method="engd"),
    "kfac-star": dict(method="kfac-star", steps=25),
    "adam, redrawn every 3 steps": dict(problem_options={**TINY, "resample": True},
                                       resample_every=3),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_chunks_give_the_numbers_of_one_step_per_call(case):
    """Chunk lengths 1 (every step its own call), 7 and auto: the same bits and rows."""
    with float64():
        one = train(config(chunk_steps=1, **CASES[case]))
        for chunk_steps in (7, "auto"):
            chunked = train(config(chunk_steps=chunk_steps, **CASES[case]))
            assert_same_state(one, chunked)
            assert rows(one) == rows(chunked)
    assert one.chunk_steps == 1 and one.status == "completed"


@pytest.mark.parametrize("case", ["adam", "engd"])
def test_a_step_in_a_chunk_gives_the_bits_of_a_step_compiled_alone(case):
    """The optimisation barrier in the chunk keeps XLA from moving the work on the fixed batch
    out of the loop; without it ENGD (damping 1e-10) drifted 4e-4 in the loss in 3 steps.
    (KFAC and KFAC* still differ from a step compiled alone by a few ulp: docs/architecture.md.)"""
    with float64():
        cfg = config(steps=12, chunk_steps=16, **CASES[case])
        chunked = train(cfg)
        setup = build(cfg)
        state = fresh_state(setup)
        params, mstate = state["params"], state["method_state"]
        step = jax.jit(setup.method.step)
        for s in range(cfg.steps):
            batch = batch_for_step(setup.objective, cfg.seed, s, cfg.resample_every)
            params, mstate, _ = step(params, mstate, batch, step_keys(cfg.seed, s)[1])
    alone = jax.tree_util.tree_leaves((params, mstate))
    for x, y in zip(leaves(chunked), alone, strict=True):
        np.testing.assert_array_equal(x, np.asarray(y))


def test_a_run_stopped_anywhere_and_resumed_equals_the_uninterrupted_run():
    """Stopped at step 17 (inside a chunk of the uninterrupted run, not an evaluation step)
    and resumed with another chunk length: the same bits at step 40, and the same rows at
    every step both runs evaluated."""
    with float64():
        full = train(config(method="lbfgs", chunk_steps=8))
        part = train(config(method="lbfgs", chunk_steps=8, steps=17))
        assert part.state["step"] == 17
        resumed = train(config(method="lbfgs", chunk_steps=3), state=part.state)
    assert_same_state(full, resumed)
    done = {r["step"]: r for r in rows(part)[:-1] + rows(resumed)}
    common = [r for r in rows(full) if r["step"] in done]
    assert len(common) >= 10
    assert all(done[r["step"]] == r for r in common)


faulty = register_faulty("test-chunk-faulty", lr=1e-2, fail_at_step=5, poison_params=False)


@pytest.mark.parametrize("policy", ["retry", "stop"])
def test_a_non_finite_step_inside_a_chunk_is_handled_as_step_by_step(policy):
    """Step 5 fails inside the chunk 1..9 (evaluations at 0, 1, 10): the chunk is rolled back,
    its steps are replayed one at a time, and the retries (1e-5 -> 1e-4 -> 1e-3) or the stop
    happen at step 5 as with one step per call, with the same final bits."""
    outcomes, logs = {}, {}
    with float64():
        for chunk_steps in (1, 16):
            logs[chunk_steps] = []
            cfg = config(method="test-chunk-faulty", hparams={"damping": 1e-5}, steps=12,
                         eval_ratio=10.0, chunk_steps=chunk_steps, on_divergence=policy)
            outcomes[chunk_steps] = train(cfg, logs=logs[chunk_steps])
    one, chunked = outcomes[1], outcomes[16]
    assert_same_state(one, chunked)
    assert rows(one) == rows(chunked)
    assert logs[1] == logs[16]
    assert (chunked.status, chunked.message) == (one.status, one.message)
    if policy == "retry":
        assert chunked.status == "completed" and chunked.state["step"] == 12
        assert [r["step"] for r in chunked.history] == [0, 1, 10, 12]
        assert [m.split(";")[0] for m in logs[16]] == ["warning: non-finite values in step 5"] * 2
        assert chunked.config.hparams["damping"] == pytest.approx(1e-3)
    else:
        assert chunked.status == "diverged" and "step 5" in chunked.message
        assert chunked.state["step"] == 5 and [r["step"] for r in chunked.history] == [0, 1]
        assert bool(jnp.isfinite(chunked.state["method_state"]["factor"]))


def test_points_drawn_inside_the_loop_count_as_training_time():
    """A sampler that takes 30 ms (a host callback inside the compiled draw) and a problem
    that redraws every step: 6 steps in chunks train at least 6 × 30 ms."""

    def slow(x):
        time.sleep(0.03)
        return np.zeros_like(x)

    box = Box.cube(2)
    uniform = box.interior()

    def sampler(key, n):
        x = uniform(key, n)
        return x + jax.pure_callback(slow, jax.ShapeDtypeStruct(x.shape, x.dtype), x)

    problem = Problem(
        name="slow-draws", domain=box, coords=("x", "y"), fields=("u",), resample=True,
        groups=(ResidualGroup("interior", sampler, 16, lambda x, u: u.second[0] + 1.0,
                              Derivatives.laplacian(2)),),
        solution=lambda x: jnp.zeros((x.shape[0], 1)))
    register_problem("slow-draws", lambda: problem)
    with float64():
        cfg = config(problem="slow-draws", problem_options={}, steps=6, eval_ratio=10.0,
                     chunk_steps=8)
        setup = build(cfg)
        batches = StepBatches(setup.objective, cfg.seed, cfg.resample_every)
        assert batches.in_loop() is not None
        outcome = loop.run(setup, fresh_state(setup), batches, loop.MemorySink(),
                           log=lambda m: None)
    assert outcome.state["step"] == 6 and [r["step"] for r in outcome.history] == [0, 1, 6]
    assert outcome.state["train_time"] >= 6 * 0.03


def test_scrambled_sobol_redraws_are_drawn_on_the_host_one_step_per_call():
    with float64():
        setup = build(config(problem="helmholtz", net=None, method="adam",
                             problem_options={"resample": True, "n_interior": 32,
                                              "n_boundary": 32}))
        batches = StepBatches(setup.objective, 0, 1)
        assert not batches.fixed and batches.in_loop() is None


def test_chunk_boundaries():
    assert loop.chunk_end(0, 1, 100, 64) == 1            # the next evaluation
    assert loop.chunk_end(13, 15, 100, 64) == 15
    assert loop.chunk_end(70, 500, 100, 64) == 100       # the step budget
    assert loop.chunk_end(70, 500, 1000, 64) == 128      # the next multiple of K
    assert loop.chunk_end(130, 130, 1000, 64) == 192     # evaluated already
    assert loop.auto_chunk_steps(1e-3) == 64             # 0.1 s / 1 ms = 100 -> 64
    assert loop.auto_chunk_steps(0.3) == 1
    assert loop.auto_chunk_steps(0.0) == loop.MAX_CHUNK_STEPS


@pytest.mark.parametrize("value, needle", [
    (0, "chunk_steps=0 must be at least 1"),
    ("often", "chunk_steps='often' must be 'auto' or an integer"),
    (2.5, "chunk_steps=2.5 must be an integer"),
])
def test_chunk_steps_rejects_bad_values(value, needle):
    with pytest.raises(ConfigError, match=needle.replace(".", r"\.")):
        config(chunk_steps=value)
