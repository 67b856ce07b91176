"""A trained model loaded from a run (``pinnopt.load``), and the figures of a run."""

from __future__ import annotations

import jax
import numpy as np
import pytest

import pinnopt as po
from pinnopt import report
from pinnopt.problems.cavity import ghia_re100
from pinnopt.residuals import Objective
from pinnopt.trained import CHUNK, TrainedModel

TINY = {"n_interior": 16, "n_boundary": 8}


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    po.train(po.RunConfig(problem="poisson", problem_options=TINY, net="2-8-1", method="adam",
                          steps=3, time_budget=None, plots=False),
             out=out, progress=False, log=lambda message: None)
    return out


def in_memory(problem: str, net: str, **options) -> TrainedModel:
    """A model of ``problem`` with initial parameters, without a run."""
    config = po.RunConfig(problem=problem, problem_options=options, net=net, method="adam")
    built = config.build_problem()
    model = config.build_net(built)
    return TrainedModel(config, built, model, model.init(jax.random.PRNGKey(0)))


# -- the loaded model ---------------------------------------------------------------------------


def test_load_gives_a_model_compiled_once_for_every_call(tiny_run, monkeypatch):
    traces = []
    original = Objective.predict

    def counted(self, params, x):
        traces.append(x.shape)
        return original(self, params, x)

    monkeypatch.setattr(Objective, "predict", counted)
    model = po.load(tiny_run)
    assert model.config.problem == "poisson" and model.problem.name == "poisson"
    assert model.fields == ("u",) and model.coords == ("x1", "x2") and model.step == 3
    x = np.random.default_rng(0).random((CHUNK + 5, 2))
    values = model.predict(x)
    assert values.shape == (CHUNK + 5, 1) and values.dtype == np.float64
    np.testing.assert_array_equal(model(x[:3]), values[:3])
    assert model.predict(x[:0]).shape == (0, 1)
    direct = np.asarray(model.net.apply(model.params, x))
    np.testing.assert_allclose(values, direct, rtol=1e-12, atol=1e-14)
    assert len(traces) == 1, traces  # one compilation, whatever the number of points
    np.testing.assert_allclose(po.predict(tiny_run, x[:4]), values[:4], rtol=1e-12)


def test_load_computes_no_reference_and_no_residual_check(tiny_run, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("loading a model computed something it does not need")

    monkeypatch.setattr(po.Problem, "reference", refuse)
    monkeypatch.setattr(po.Problem, "eval_points", refuse)
    monkeypatch.setattr("pinnopt.training.setup.check_problem", refuse)
    assert po.predict(tiny_run, np.full((2, 2), 0.5)).shape == (2, 1)


def test_predict_refuses_bad_points(tiny_run):
    model = po.load(tiny_run)
    with pytest.raises(ValueError, match=r"shape \(N, 2\)"):
        model.predict(np.zeros((3, 3)))
    with pytest.raises(ValueError, match="finite"):
        model.predict(np.full((1, 2), np.nan))


# -- figures ------------------------------------------------------------------------------------


def test_cavity_draws_ghia_centre_lines_and_no_blank_maps():
    model = in_memory("cavity", "2-8-3", n_interior=16, n_lid=8, n_walls=8)
    fig = report.reference_lines_figure(model)
    u_axes, v_axes = fig.axes
    table = ghia_re100()
    for ax, name, along, title in ((u_axes, "u", 1, "u(y) at x = 0.5"),
                                   (v_axes, "v", 0, "v(x) at y = 0.5")):
        assert ax.get_title().startswith(title)
        lines = {line.get_label(): line for line in ax.get_lines()}
        reference, network = lines["reference"], lines["network"]
        rows = table[name][np.argsort(table[name][:, along])]
        np.testing.assert_allclose(reference.get_xdata(), rows[:, along])
        np.testing.assert_allclose(reference.get_ydata(), rows[:, 2])
        assert len(network.get_xdata()) > 100 and np.all(np.isfinite(network.get_ydata()))
    for name, figure in report.field_figures(model).items():
        (image,) = [im for ax in figure.axes for im in ax.get_images()]  # network only
        assert np.all(np.isfinite(image.get_array())), name
    assert report.field_figures(model).keys() == {"field_u", "field_v", "field_p"}


def test_error_maps_are_centred_on_zero_with_a_diverging_map():
    model = in_memory("poisson", "2-8-1", **TINY)
    (fig,) = report.field_figures(model).values()
    network, reference, error = [ax.get_images()[0] for ax in fig.axes if ax.get_images()]
    assert error.get_cmap().name == "RdBu_r"
    low, high = error.get_clim()
    assert low == -high and high >= np.max(np.abs(error.get_array()))
    assert network.get_clim() == reference.get_clim()
    assert report.reference_lines_figure(model) is None


def history(keys: list[str], steps=(0, 1, 2, 5, 10)) -> list[dict]:
    return [{"step": s, "time": 0.3 * s, **{k: 1.0 / (s + 1 + i) for i, k in enumerate(keys)}}
            for s in steps]


def test_history_axes_legend_colours_and_no_fake_start():
    keys = ["loss"] + [f"rel_l2_{f}_eps1e-0{i}" for f in "TRU" for i in range(5)] + [
        "rms_T", "rms_rho", "rms_u"]
    assert len(keys) == 19  # as many as BGK's
    fig = report.history_figure(history(keys), "a title " * 30)
    step_ax, time_ax = fig.axes
    for ax in (step_ax, time_ax):
        assert ax.get_ylabel() == "loss and errors" and ax.get_xlabel()
        assert len(ax.get_lines()) == 19
    # Step 0 and time 0 have no place on a log axis: no point is moved to make one.
    np.testing.assert_allclose(step_ax.get_lines()[0].get_xdata(), [1, 2, 5, 10])
    np.testing.assert_allclose(time_ax.get_lines()[0].get_xdata(), [0.3, 0.6, 1.5, 3.0])
    styles = {(line.get_color(), line.get_linestyle()) for line in step_ax.get_lines()}
    assert len(styles) == 19
    (legend,) = fig.legends
    assert [t.get_text() for t in legend.get_texts()] == keys
    fig.canvas.draw()
    inside = fig.bbox
    for artist in (legend, fig._suptitle):
        box = artist.get_window_extent()
        assert inside.x0 <= box.x0 and box.x1 <= inside.x1 and box.y1 <= inside.y1, artist


def test_kinetic_profile_title_fits_the_figure():
    model = in_memory("transport", None, eval_eps=[1.0, 1e-2], n_eval_x=20, reference_nx=40,
                      reference_nv=12, nv=8)
    fig = report.eps_profiles_figure(model)
    fig.canvas.draw()
    box = fig._suptitle.get_window_extent()
    assert fig.bbox.x0 <= box.x0 and box.x1 <= fig.bbox.x1 and box.y1 <= fig.bbox.y1
    assert fig.axes[0].get_ylabel() == "rho"


def test_overwrite_removes_the_old_runs_figures(tmp_path):
    config = po.RunConfig(problem="poisson", problem_options=TINY, net="2-8-1", method="adam",
                          steps=1, time_budget=None, plots=False)
    out = tmp_path / "run"
    po.train(config, out=out, progress=False, log=lambda message: None)
    (out / "plots").mkdir()
    (out / "plots" / "field_old.png").write_bytes(b"stale")
    po.train(config, out=out, progress=False, overwrite=True, log=lambda message: None)
    assert not (out / "plots" / "field_old.png").exists()


def test_errors_against_eps_for_a_kinetic_run_and_not_for_another(tmp_path, tiny_run,
                                                                   monkeypatch):
    """A transport run evaluated at five ε gets ``errors_eps.png`` (ρ against ε, log–log,
    worst ε circled) and the per-ε errors with the worst ε in its text summary; a Poisson
    run gets neither."""
    monkeypatch.setenv("PINNOPT_CACHE", str(tmp_path / "cache"))
    out = tmp_path / "kinetic"
    options = dict(eps_range=[1e-4, 1.0], loss="vanilla", nv=4, n_interior=4, n_boundary=2,
                   n_initial=4, n_eval_x=6, reference_nx=20, reference_nv=8)
    messages = []
    po.train(po.RunConfig(problem="transport", problem_options=options, net="4", method="adam",
                          steps=2, time_budget=None, plots=False),
             out=out, progress=False, log=messages.append)
    paths = report.plot_run(out)
    assert out / "plots" / "errors_eps.png" in paths and (out / "plots" / "errors_eps.png").exists()
    summary = report.describe(out)
    assert "rel. L2 rho per eps: 1e+00 " in summary and "1e-04 " in summary
    assert "worst eps: rho " in summary
    assert any(m.startswith("worst eps: rho ") for m in messages)  # the end of train says it too
    fig = report.eps_errors_figure(report.read_history(out), "t")
    (line, circle) = fig.axes[0].get_lines()
    np.testing.assert_allclose(line.get_xdata(), [1.0, 1e-1, 1e-2, 1e-3, 1e-4])
    assert fig.axes[0].get_xscale() == "log" and fig.axes[0].get_yscale() == "log"
    assert float(circle.get_ydata()[0]) == max(line.get_ydata())
    assert all(p.name != "errors_eps.png" for p in report.plot_run(tiny_run))
    assert not (tiny_run / "plots" / "errors_eps.png").exists()
    assert "per eps" not in report.describe(tiny_run)


def test_per_eps_lines_name_every_field_and_the_worst_eps():
    row = {"loss": 1.0, "rel_l2_rho": 0.5, "rel_l2_rho_eps1e+00": 0.6, "rel_l2_rho_eps1e-03": 0.02,
           "rel_l2_u_eps1e+00": 0.1, "rel_l2_u_eps1e-03": 0.25}
    assert report.per_eps_lines(row) == [
        "rel. L2 rho per eps: 1e+00 6.000e-01, 1e-03 2.000e-02",
        "rel. L2 u per eps: 1e+00 1.000e-01, 1e-03 2.500e-01",
        "worst eps: rho 6.000e-01 at eps = 1e+00, u 2.500e-01 at eps = 1e-03"]
    assert report.per_eps_lines({"loss": 1.0, "rel_l2_u": 0.1}) == []
    assert report.eps_errors_figure([{"step": 1, "rel_l2_rho_eps1e+00": 0.1}], "one ε") is None
