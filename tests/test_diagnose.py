"""`pinnopt diagnose gradient-noise`: the statistics, the outputs, and the CLI's errors."""

import json

import numpy as np
import pytest

import pinnopt  # noqa: F401
from pinnopt import cli, diagnose
from pinnopt.problems import make_problem


def test_snr_statistics_of_known_gradients():
    # Two batches of 2-vectors: mean (1, 0), per-coordinate sample variances 2 and 0.
    grads = np.array([[2.0, 0.0], [0.0, 0.0]])
    stats = diagnose._snr(grads)
    assert stats["signal"] == 1.0 and stats["noise"] == 2.0
    assert stats["snr"] == 0.5 and stats["snr_debiased"] == (1.0 - 2.0 / 2) / 2.0
    assert not stats["fixed"] and diagnose._snr(np.ones((3, 2)))["fixed"]
    # Pure noise sits near the floor 1/B; a shared signal lifts it far above.
    rng = np.random.default_rng(0)
    noise = rng.normal(size=(16, 4000))
    assert abs(diagnose._snr(noise)["snr"] - 1 / 16) < 0.01
    assert diagnose._snr(noise + 10.0)["snr"] > 50  # ‖E g‖² / tr C = 100


def test_operator_orders_of_the_groups():
    orders = {g.name: diagnose.operator_order(g)
              for g in make_problem("klein_gordon", formulation="standard").groups}
    assert orders == {"interior": 2, "initial": 1, "boundary": 0}
    first = make_problem("klein_gordon", formulation="first-order")
    assert {diagnose.operator_order(g) for g in first.groups} == {0, 1}
    assert diagnose.formulations_of("helmholtz") == ("standard", "first-order")
    assert diagnose.formulations_of("convection") == ("default",)


def test_gradient_noise_writes_json_and_figure(tmp_path):
    settings = diagnose.NoiseSettings(steps=(0, 2), batches=3, eps=(1e-3, 1e-2), draws=1)
    results = diagnose.gradient_noise(
        "convection_diffusion", ["standard"], options={"n_interior": 32, "alpha": 0.1},
        seed=1, settings=settings, out=tmp_path)
    saved = json.loads((tmp_path / diagnose.JSON_NAME).read_text())
    assert saved == json.loads(json.dumps(results))
    assert (tmp_path / diagnose.FIGURE_NAME).stat().st_size > 10_000
    assert saved["options"]["sampling"] == "uniform"  # re-drawn batches must differ
    standard = saved["formulations"]["standard"]
    assert [s["step"] for s in standard["stages"]] == [0, 2]
    groups = standard["stages"][0]["groups"]
    assert set(groups) == {"interior", "boundary", "total"}
    assert groups["interior"]["order"] == 2 and groups["boundary"]["order"] == 0
    for name in ("interior", "total"):
        assert groups[name]["noise"] > 0 and np.isfinite(groups[name]["snr"])
    for stats in groups.values():
        assert set(stats["sensitivity"]) == {"0.001", "0.01"}
    # The two boundary points never move, so their gradient has no batch noise; a value
    # residual of the only output passes the output perturbation on unchanged.
    assert groups["boundary"]["fixed"] and groups["boundary"]["snr"] is None
    assert abs(groups["boundary"]["amplification"]["0.001"] - 1.0) < 1e-9
    # The perturbation's effect on the gradient grows with its size.
    sens = groups["total"]["sensitivity"]
    assert sens["0.01"] > sens["0.001"] > 0
    assert "snr" in diagnose.summary(saved) and "boundary" in diagnose.summary(saved)


@pytest.mark.parametrize("argv,message", [
    (["diagnose", "gradient-noise", "--problem", "nope"], "unknown"),
    (["diagnose", "gradient-noise", "--problem", "convection", "--formulation", "first-order"],
     "formulations default"),
    (["diagnose", "gradient-noise", "--problem", "helmholtz", "--steps", "a,b"], "--steps"),
    (["diagnose", "gradient-noise", "--problem", "helmholtz", "--batches", "1"], "batches"),
    (["diagnose", "gradient-noise", "--problem", "helmholtz", "--problem-opt", "formulation=x"],
     "--formulation"),
    (["diagnose", "gradient-noise", "--problem", "helmholtz", "--problem-opt", "bogus=1"], "no option"),
    (["diagnose", "noise"], "invalid choice"),
])
def test_cli_rejects_bad_input_with_one_line(argv, message, capsys, tmp_path):
    assert cli.main([*argv, "--out", str(tmp_path)] if "noise" not in argv else argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("pinnopt: error:") and message in err and "\n" not in err
