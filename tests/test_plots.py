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


def test_saved_figures_follow_the_umask(tmp_path):
    # save_figure writes through a temporary file; mkstemp alone gives it mode 0600 (readable by its owner only)
    import os

    fig = Figure()
    fig.add_subplot().plot([0, 1], [0, 1])
    old = os.umask(0o022)
    try:
        plots.save_figure(fig, tmp_path / "new" / "fig.png")
    finally:
        os.umask(old)
    assert ((tmp_path / "new" / "fig.png").stat().st_mode & 0o777) == 0o644


def test_binned_predictions_overlay(data, tmp_path):
    post, y = data
    path = tmp_path / "sub" / "binned.png"
    fig = plots.binned_predictions(
        {"MDN mode": post, "MDN mean": (post, "mean"), "MSE": 0.7 * y + 4.3}, y, path=path
    )
    assert isinstance(fig, Figure) and _is_png(path)
    assert not list(path.parent.glob(".tmp-*"))  # atomic write left nothing behind
    main, resid = fig.axes
    # one band (of the last estimator, by default), and the legend says what it is
    assert _legend(main) == ["1:1", "MDN mode: median", "MDN mean: median", "MSE: median",
                             "MSE: 15–85% of predictions per bin", "MSE: 5–95%"]
    assert len(main.lines) == 1 + 3 and len(resid.lines) == 1 + 3
    assert len(main.collections) == 2 and len(resid.collections) == 2  # 5-95 and 15-85 bands of MSE only
    # the lines differ in dash pattern as well as colour: the banded one solid, the others not
    styles = [line.get_linestyle() for line in main.lines[1:]]
    assert styles[2] == "-" and len(set(styles)) == 3
    assert main.get_xlim() == pytest.approx((13.5, 15.3)) and main.get_ylim() == pytest.approx((13.5, 15.3))
    assert "true" in resid.get_xlabel() and "predicted" in main.get_ylabel()
    # the 1:1 line and the median line of the biased MSE estimator (slope 0.7) are what they should be
    np.testing.assert_allclose(main.lines[0].get_ydata(), [13.5, 15.3])
    x_mse, y_mse = main.lines[3].get_data()
    slope = np.polyfit(x_mse, y_mse, 1)[0]
    assert abs(slope - 0.7) < 0.02


def test_binned_predictions_bands_by_label_and_gaps(data):
    post, y = data
    keep = (y < 14.4) | (y > 14.7)  # no truth in 14.4-14.7: three empty 0.1-dex bins
    pred = post.mode()[keep]
    fig = plots.binned_predictions({"a": pred, "b": pred + 0.1}, y[keep], bands="a", title="hello")
    main, resid = fig.axes
    assert main.get_title() == "hello"
    assert _legend(main)[-2:] == ["a: 15–85% of predictions per bin", "a: 5–95%"]
    for ax in (main, resid):
        x, v = ax.lines[1].get_data()
        gap = (x > 14.4) & (x < 14.7)
        assert gap.sum() == 3 and np.all(np.isnan(v[gap]))  # the line breaks at the empty bins ...
        assert np.all(np.isfinite(v[~gap]))  # ... and nowhere else
    # a bin with fewer clusters than min_count is a gap too
    fig = plots.binned_predictions(pred, y[keep], min_count=10_000, bands=False)
    assert np.all(np.isnan(fig.axes[0].lines[1].get_ydata()))
    with pytest.raises(ValueError, match="not labels of estimates"):
        plots.binned_predictions({"a": pred}, y[keep], bands="c")
    with pytest.raises(ValueError, match="min_count"):
        plots.binned_predictions(pred, y[keep], min_count=0)


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
    rw = post.reweight(P.Flat(13.0, 16.0), source=P.Flat(12.0, 17.0))  # a mass function would take 13 s here
    fig = plots.posterior_examples(post, y, reweighted=rw, indices=[0, 5, 9, 11, 20], path=tmp_path / "ex.png")
    assert _is_png(tmp_path / "ex.png")
    assert len(fig.axes) == 5
    for a, i in zip(fig.axes, [0, 5, 9, 11, 20]):
        assert len(a.lines) == 3  # before, after, truth
        assert a.lines[2].get_xdata()[0] == pytest.approx(y[i])
        assert a.get_title() == f"cluster {i}: true {y[i]:.2f}"
        assert "M" in a.get_xlabel() and "p(" in a.get_ylabel()  # every panel has both axis labels
        # zoomed on the posterior (sigma 0.15 dex): far narrower than the 3.8-dex grid, truth inside
        lo, hi = a.get_xlim()
        assert hi - lo < 1.5 and lo < y[i] < hi
    # the legend (one for the figure) names each curve's prior; the reweighted one's is read from the posterior
    assert [t.get_text() for t in fig.legends[0].get_texts()] == [
        "before reweighting", "after reweighting (prior: flat 13–16)", "true mass"]
    with pytest.raises(ValueError, match="indices"):
        plots.posterior_examples(post, y, indices=[len(y)])


def test_posterior_examples_default_choice_spreads_over_mass(data):
    post, y = data
    fig = plots.posterior_examples(post, y, n=4, prior_names=("A", None), labels=("p", "q"))
    shown = np.array([a.lines[-1].get_xdata()[0] for a in fig.axes])
    # nearest to the centres of 4 equal bins over the true-mass range, in increasing mass (uniform truths
    # over 13.5-15.3 with 1500 clusters: each within 0.01 dex of its target)
    targets = y.min() + (np.arange(4) + 0.5) / 4 * (y.max() - y.min())
    np.testing.assert_allclose(shown, targets, atol=0.01)
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["p (prior: A)", "true mass"]
    again = plots.posterior_examples(post, y, n=4)
    assert [a.get_title() for a in again.axes] == [a.get_title() for a in fig.axes]  # reproducible
    # without truths the clusters are spread by posterior median; zoom=False shows the whole grid
    fig = plots.posterior_examples(post, n=3, zoom=False)
    assert len(fig.axes) == 3 and fig.axes[0].get_xlim() == pytest.approx((GRID[0], GRID[-1]))


def test_posterior_examples_into_given_axes(data):
    post, _ = data
    fig = Figure()
    axes = fig.subplots(1, 2)
    out = plots.posterior_examples(post, indices=[1, 2], ax=axes)
    assert out is fig and all(len(a.lines) == 1 for a in axes)
    assert axes[0].get_legend() is not None and not fig.legends


def test_pit_histogram(data, tmp_path):
    post, y = data
    fig = plots.pit_histogram(post, y, bins=12, path=tmp_path / "pit.png")
    assert _is_png(tmp_path / "pit.png")
    a = fig.axes[0]
    assert len(a.patches) >= 12 and "KS p" in a.get_title() and a.get_xlabel() == "PIT"
    assert len(a.lines) == 1 and a.lines[0].get_ydata()[0] == 1.0
    with pytest.raises(ValueError, match="truth_log_mass"):
        plots.pit_histogram(post)


def test_pit_histogram_says_what_it_tests(data):
    post, y = data
    flat = post.reweight(P.Flat(13.0, 16.0), source=P.Flat(12.0, 17.0))
    fig = plots.pit_histogram(flat, y, label="the flat one", truth_name="a uniform draw")
    a = fig.axes[0]
    title = a.get_title()
    assert title.startswith(f"PIT of the flat one (n = {len(y)})") and "KS p" in title
    caption = " ".join(t.get_text() for t in a.texts).replace("\n", " ")
    assert "uniform" in caption and "failing is expected" in caption
    assert "prior: flat 13–16" in caption and "drawn from: a uniform draw" in caption
    # a calibrated sample is called consistent, a tilted one rejected
    u = np.random.default_rng(3).uniform(size=2000)
    assert plots.pit_histogram(u).axes[0].get_title().endswith("consistent with uniform")
    assert plots.pit_histogram(u**2, caption=False).axes[0].get_title().endswith("uniformity rejected at 5%")
    assert not plots.pit_histogram(u, caption=False).axes[0].texts


def test_coverage_curve_plot(data, tmp_path):
    post, y = data
    fig = plots.coverage_curve(post, y, probs=[0.2, 0.5, 0.68, 0.9, 0.95], path=tmp_path / "cov.svg",
                               label="the test posterior")
    assert (tmp_path / "cov.svg").read_text().lstrip().startswith("<?xml")
    a = fig.axes[0]
    assert len(a.lines) == 3 and _legend(a)[:3] == ["ideal", "central intervals", "HPD intervals"]
    assert a.get_title() == f"coverage of the test posterior (n = {len(y)})"
    nominal, empirical = a.lines[1].get_data()
    np.testing.assert_allclose(nominal, [0.2, 0.5, 0.68, 0.9, 0.95])
    # calibrated by construction: within 4 binomial sigma
    assert np.all(np.abs(empirical - nominal) < 4 * np.sqrt(nominal * (1 - nominal) / len(y)))
    assert a.get_xlabel() == "nominal coverage" and a.get_ylabel() == "empirical coverage"
    assert plots.coverage_curve(post, y, probs=[0.5]).axes[0].get_title() == f"coverage (n = {len(y)})"


def test_no_pyplot_state_is_created(data):
    import matplotlib.pyplot as plt

    before = plt.get_fignums()
    post, y = data
    plots.pit_histogram(post, y)
    plots.binned_predictions(post, y)
    assert plt.get_fignums() == before
