"""Tests for numpyro_clustermass.plots: files are written and axes hold what they should (not pixels)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import numpy as np
import pytest
from matplotlib.figure import Figure

from numpyro_clustermass import plots
from numpyro_clustermass import priors as P
from numpyro_clustermass.posterior import MassPosterior

GRID = np.linspace(12.5, 16.3, 256)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    n = 1500
    y = rng.uniform(13.5, 15.3, n)
    mu = y + 0.15 * rng.standard_normal(n)
    post = MassPosterior.from_mixture(GRID, np.zeros((n, 1)), mu[:, None], np.full((n, 1), 0.15))
    return post, y


def _is_png(path):
    with open(path, "rb") as f:
        return f.read(8) == b"\x89PNG\r\n\x1a\n"


def _legend(ax):
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_binned_predictions_overlay(data, tmp_path):
    post, y = data
    path = tmp_path / "sub" / "binned.png"
    fig = plots.binned_predictions(
        {"MDN mode": post, "MDN mean": (post, "mean"), "MSE": 0.7 * y + 4.3}, y, path=path
    )
    assert isinstance(fig, Figure) and _is_png(path)
    assert not list(path.parent.glob(".tmp-*"))  # atomic write left nothing behind
    main, resid = fig.axes
    assert _legend(main) == ["1:1", "MDN mode", "MDN mean", "MSE"]
    assert len(main.lines) == 1 + 3 and len(resid.lines) == 1 + 3
    assert len(main.collections) == 2 * 3 and len(resid.collections) == 2 * 3  # 5-95 and 15-85 bands
    assert main.get_xlim() == pytest.approx((13.5, 15.3)) and main.get_ylim() == pytest.approx((13.5, 15.3))
    assert "true" in resid.get_xlabel() and "predicted" in main.get_ylabel()
    # the 1:1 line and the median line of the biased MSE estimator (slope 0.7) are what they should be
    np.testing.assert_allclose(main.lines[0].get_ydata(), [13.5, 15.3])
    x_mse, y_mse = main.lines[3].get_data()
    slope = np.polyfit(x_mse, y_mse, 1)[0]
    assert abs(slope - 0.7) < 0.02


def test_binned_predictions_single_axes_and_no_bands(data):
    post, y = data
    fig = Figure()
    ax = fig.subplots()
    out = plots.binned_predictions(post.mode(), y, ax=ax, bands=False)
    assert out is fig and len(fig.axes) == 1
    assert len(ax.lines) == 2 and len(ax.collections) == 0
    assert "true" in ax.get_xlabel()
    with pytest.raises(ValueError, match="no estimates"):
        plots.binned_predictions({}, y)


def test_training_prior_plot(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.normal(14.2, 0.35, 20_000)
    prior = P.TrainingPrior.from_samples(x, bins=64, range=(13.0, 15.5))
    fig = plots.training_prior(x[(x >= 13.0) & (x <= 15.5)], prior, range=(13.0, 15.5), path=tmp_path / "p.pdf")
    assert (tmp_path / "p.pdf").read_bytes()[:4] == b"%PDF"
    a = fig.axes[0]
    assert len(a.patches) == 64 and len(a.lines) == 1
    assert _legend(a)[1] == "TrainingPrior"
    # the curve is the prior's density
    t, d = a.lines[0].get_data()
    np.testing.assert_allclose(d, np.exp(np.asarray(prior.log_prob(t), float)), rtol=1e-6)
    fig2 = plots.training_prior(x, P.FromDistribution(__import__("numpyro").distributions.Normal(14.2, 0.35)))
    assert np.isfinite(fig2.axes[0].lines[0].get_xdata()).all()


def test_posterior_examples_before_after(data, tmp_path):
    post, y = data
    rw = MassPosterior(GRID, P.reweight_log_density(GRID, post.log_density, P.MassFunction(n_table=129), P.Flat(12.0, 17.0)))
    fig = plots.posterior_examples(post, y, reweighted=rw, indices=[0, 5, 9, 11, 20], path=tmp_path / "ex.png")
    assert _is_png(tmp_path / "ex.png")
    assert len(fig.axes) == 5
    for a, i in zip(fig.axes, [0, 5, 9, 11, 20]):
        assert len(a.lines) == 3  # before, after, truth
        assert a.lines[2].get_xdata()[0] == pytest.approx(y[i])
        assert a.get_title() == f"cluster {i}"
    assert _legend(fig.axes[0]) == ["before reweighting", "after reweighting", "truth"]
    with pytest.raises(ValueError, match="indices"):
        plots.posterior_examples(post, y, indices=[len(y)])


def test_posterior_examples_into_given_axes(data):
    post, _ = data
    fig = Figure()
    axes = fig.subplots(1, 2)
    out = plots.posterior_examples(post, indices=[1, 2], ax=axes)
    assert out is fig and all(len(a.lines) == 1 for a in axes)


def test_pit_histogram(data, tmp_path):
    post, y = data
    fig = plots.pit_histogram(post, y, bins=12, path=tmp_path / "pit.png")
    assert _is_png(tmp_path / "pit.png")
    a = fig.axes[0]
    assert len(a.patches) >= 12 and "KS p" in a.get_title() and a.get_xlabel() == "PIT"
    assert len(a.lines) == 1 and a.lines[0].get_ydata()[0] == 1.0
    with pytest.raises(ValueError, match="truth_log_mass"):
        plots.pit_histogram(post)


def test_coverage_curve_plot(data, tmp_path):
    post, y = data
    fig = plots.coverage_curve(post, y, probs=[0.2, 0.5, 0.68, 0.9, 0.95], path=tmp_path / "cov.svg")
    assert (tmp_path / "cov.svg").read_text().lstrip().startswith("<?xml")
    a = fig.axes[0]
    assert len(a.lines) == 3 and _legend(a)[:3] == ["ideal", "central", "hpd"]
    nominal, empirical = a.lines[1].get_data()
    np.testing.assert_allclose(nominal, [0.2, 0.5, 0.68, 0.9, 0.95])
    # calibrated by construction: within 4 binomial sigma
    assert np.all(np.abs(empirical - nominal) < 4 * np.sqrt(nominal * (1 - nominal) / len(y)))
    assert a.get_xlabel() == "nominal coverage" and a.get_ylabel() == "empirical coverage"


def test_no_pyplot_state_is_created(data):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    post, y = data
    plots.pit_histogram(post, y)
    plots.binned_predictions(post, y)
    assert plt.get_fignums() == before
