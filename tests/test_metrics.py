"""Tests for numpyro_clustermass.metrics on cases with known answers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from scipy.stats import norm

from numpyro_clustermass import metrics as M
from numpyro_clustermass import priors as P
from numpyro_clustermass.posterior import MassPosterior

GRID = np.linspace(12.0, 17.0, 512)


def gaussian_posteriors(mu, sigma, grid=GRID):
    mu = np.asarray(mu, float)
    sigma = np.broadcast_to(np.asarray(sigma, float), mu.shape)
    return MassPosterior.from_mixture(grid, np.zeros((mu.size, 1)), mu[:, None], sigma[:, None])


@pytest.fixture(scope="module")
def calibrated():
    """Gaussian posteriors N(mu_i, s_i) with truths drawn from them: calibrated by construction."""
    rng = np.random.default_rng(42)
    n = 20_000
    mu = rng.uniform(13.0, 15.8, n)
    s = rng.uniform(0.1, 0.3, n)
    y = mu + s * rng.standard_normal(n)
    return gaussian_posteriors(mu, s), y, mu, s


# --------------------------------------------------------------------------------------------- CRPS, PIT
def test_crps_matches_gaussian_closed_form(calibrated):
    post, y, mu, s = calibrated
    sel = slice(0, 3000)
    c = M.crps(post.select(np.arange(3000)), y[sel])
    z = (y[sel] - mu[sel]) / s[sel]
    ref = s[sel] * (z * (2 * norm.cdf(z) - 1) + 2 * norm.pdf(z) - 1 / np.sqrt(np.pi))
    # measured: max |rel err| 2.5e-4, max |abs err| 1.4e-5 (grid dx = 0.0098, sigma >= 0.1, float32)
    np.testing.assert_allclose(c, ref, rtol=1e-3, atol=5e-5)


def test_crps_point_like_and_off_grid():
    # all mass in one grid cell: the grid density is uniform on [g - dx/2, g + dx/2], whose CRPS is exact:
    # y outside the cell: |y - g| - dx/6; y at the cell centre: dx/12
    g0, dx = GRID[200], GRID[1] - GRID[0]
    post = gaussian_posteriors([g0], [1e-4])
    np.testing.assert_allclose(M.crps(post, [g0 + 0.3]), 0.3 - dx / 6, atol=2e-6)
    np.testing.assert_allclose(M.crps(post, [g0 - 0.3]), 0.3 - dx / 6, atol=2e-6)
    np.testing.assert_allclose(M.crps(post, [g0]), dx / 12, atol=2e-6)
    # beyond the grid the integrand is 1 on [grid end, y]: CRPS grows by exactly the distance
    far = M.crps(post, [18.0]) - M.crps(post, [17.5])
    np.testing.assert_allclose(far, 0.5, atol=1e-5)
    below = M.crps(post, [10.0]) - M.crps(post, [11.0])
    np.testing.assert_allclose(below, 1.0, atol=1e-5)


def test_pit_matches_gaussian_cdf(calibrated):
    post, y, mu, s = calibrated
    u = M.pit(post, y)
    # measured max |err| 1.2e-4 (cell-constant density on a 0.0098-dex grid)
    np.testing.assert_allclose(u, norm.cdf((y - mu) / s), atol=5e-4)
    assert M.pit(post.select([0, 1]), [5.0, 25.0]).tolist() == [0.0, 1.0]


def test_pit_uniformity_calibrated_passes_miscalibrated_fails(calibrated):
    post, y, mu, s = calibrated
    t = M.pit_uniformity(M.pit(post, y))
    assert t.n == y.size and t.dof == 9 and t.counts.sum() == y.size
    assert t.ks_pvalue > 0.01 and t.chi2_pvalue > 0.01
    over = gaussian_posteriors(mu, 0.6 * s)  # over-confident: U-shaped PIT
    t2 = M.pit_uniformity(M.pit(over, y))
    assert t2.ks_pvalue < 1e-10 and t2.chi2_pvalue < 1e-10
    assert t2.counts[0] > 1.5 * t2.counts[5] and t2.counts[-1] > 1.5 * t2.counts[5]


def test_pit_uniformity_bad_input():
    with pytest.raises(ValueError, match="\\[0, 1\\]"):
        M.pit_uniformity([0.1, 1.2])
    with pytest.raises(ValueError, match="at least 2"):
        M.pit_uniformity([0.5])
    with pytest.raises(ValueError, match="bins"):
        M.pit_uniformity([0.1, 0.2], bins=1)


# ----------------------------------------------------------------------------------------------- coverage
@pytest.mark.parametrize("kind", ["central", "hpd"])
def test_coverage_nominal_for_calibrated(calibrated, kind):
    post, y, _, _ = calibrated
    c = M.coverage(post, y, [0.5, 0.68, 0.9, 0.95], kind=kind)
    assert list(c.columns) == ["nominal", "empirical", "stderr", "n"]
    z = (c.empirical - c.nominal) / c.stderr
    assert np.all(np.abs(z) < 3.5), c


def test_coverage_detects_overconfidence(calibrated):
    post, y, mu, s = calibrated
    over = gaussian_posteriors(mu, 0.6 * s)
    c = M.coverage(over, y, [0.68, 0.95])
    # expected: 2 Phi(0.6 z_p) - 1 = 0.456 and 0.760
    np.testing.assert_allclose(c.empirical, [2 * norm.cdf(0.6 * 0.9945) - 1, 2 * norm.cdf(0.6 * 1.96) - 1], atol=0.015)
    assert np.all(c.empirical < c.nominal - 10 * c.stderr)


def test_coverage_curve_default_levels(calibrated):
    post, y, _, _ = calibrated
    sub = post.select(np.arange(2000))
    cc = M.coverage_curve(sub, y[:2000])
    assert len(cc) == 19 and np.isclose(cc.nominal.iloc[0], 0.05) and np.isclose(cc.nominal.iloc[-1], 0.95)
    assert np.all(np.diff(cc.empirical) >= 0)
    with pytest.raises(ValueError, match="kind"):
        M.coverage(sub, y[:2000], [0.5], kind="equal")
    with pytest.raises(ValueError, match="\\(0, 1\\)"):
        M.coverage(sub, y[:2000], [1.0])


# ------------------------------------------------------------------------------------ binned statistics
def test_binned_points_known_bias_and_scatter():
    rng = np.random.default_rng(0)
    y = rng.uniform(13.3, 15.5, 40_000)
    pred = y + 0.1 + 0.2 * rng.standard_normal(y.size)
    df = M.binned(pred, y)
    assert len(df) == 18 and df.attrs["estimator"] == "points"
    np.testing.assert_allclose(df.bin_lo.iloc[[0, -1]], [13.5, 15.2])
    assert df.n.sum() + df.attrs["n_outside"] == y.size and df.attrs["n_outside"] > 0
    # ~1800 per bin: stderr of the median 1.25 * 0.2 / sqrt(1800) = 0.006
    np.testing.assert_allclose(df.bias_median, 0.1, atol=0.025)
    np.testing.assert_allclose(df.scatter_std, 0.2, rtol=0.06)
    np.testing.assert_allclose(df.scatter_68, 0.2, rtol=0.08)
    np.testing.assert_allclose(df.pred_p50 - df.bin_mid, 0.1, atol=0.03)
    assert {"pred_p05", "pred_p15", "pred_p85", "pred_p95"} <= set(df.columns)
    assert not any(c.startswith("cov_") for c in df.columns)


def test_binned_empty_bins_and_custom_edges():
    y = np.array([13.55, 13.56, 15.0, 15.3])
    df = M.binned(y, y, edges=[13.5, 14.0, 14.5, 15.3])
    assert df.n.tolist() == [2, 0, 2]  # 15.3 falls in the last, right-closed bin
    assert np.isnan(df.bias_median.iloc[1]) and np.isnan(df.pred_p50.iloc[1])
    with pytest.raises(ValueError, match="increasing"):
        M.binned(y, y, edges=[14.0, 13.0])
    with pytest.raises(ValueError, match="4 values but the prediction has 3"):
        M.binned(y[:3], y)
    with pytest.raises(ValueError, match="non-finite"):
        M.binned(y, np.array([np.nan, 14, 14, 14]))


def test_binned_posterior_unbiased_vs_shifted(calibrated):
    """Calibrated posteriors with truths drawn from them: no bias in bins away from the mu range's edges;
    the same posteriors shifted by +0.1 dex: the bias is detected in every bin."""
    post, y, mu, s = calibrated
    df = M.binned(post, y, estimator="mode")
    assert df.attrs["estimator"] == "mode"
    inner = df[(df.bin_lo >= 13.8) & (df.bin_hi <= 15.0 + 1e-9)]  # mu spans 13.0-15.8: no edge effect here
    # ~800 clusters per bin, residual sd ~0.21: stderr of the median ~0.009
    assert np.all(np.abs(inner.bias_median) < 0.035)
    for col in ["cov_central_68", "cov_hpd_68", "cov_central_95", "cov_hpd_95"]:
        nominal = 0.68 if col.endswith("68") else 0.95
        assert np.all(np.abs(inner[col] - nominal) < 4 * np.sqrt(nominal * (1 - nominal) / inner.n))
    shifted = gaussian_posteriors(mu + 0.1, s)
    ds = M.binned(shifted, y, estimator="mean")
    inner_s = ds[(ds.bin_lo >= 13.8) & (ds.bin_hi <= 15.0 + 1e-9)]
    np.testing.assert_allclose(inner_s.bias_median, inner.bias_median + 0.1, atol=0.01)
    assert np.all(inner_s.bias_median > 0.06)
    assert np.all(inner_s.cov_central_68 < inner.cov_central_68)
    assert np.all(inner_s.crps > inner.crps) and np.all(inner_s.log_score < inner.log_score)


def test_binned_estimator_choice_uses_posterior_methods():
    # skewed two-component mixtures: mode, median and mean differ
    n = 200
    rng = np.random.default_rng(5)
    y = rng.uniform(13.6, 15.2, n)
    locs = np.stack([y, y + 0.4], axis=1)
    post = MassPosterior.from_mixture(GRID, np.log(np.tile([0.7, 0.3], (n, 1))), locs, np.full((n, 2), 0.1))
    for est in ["mode", "mean", "median"]:
        a = M.binned(post, y, estimator=est)
        b = M.binned(getattr(post, est)(), y)
        np.testing.assert_allclose(a.bias_median, b.bias_median, equal_nan=True)
    assert M.binned(post, y, estimator="mean").bias_median.mean() > M.binned(post, y, estimator="mode").bias_median.mean() + 0.05
    with pytest.raises(ValueError, match="estimator"):
        M.binned(post, y, estimator="max")


def test_truth_from_catalog_like_object(calibrated):
    post, y, _, _ = calibrated

    class Cat:
        log_mass = y

    pd.testing.assert_frame_equal(M.binned(post.mode(), Cat()), M.binned(post.mode(), y))


# ----------------------------------------------------------------------------------------------- summary
def test_summary_calibrated(calibrated):
    post, y, _, _ = calibrated
    s = M.summary(post, y)
    for p in ("68", "95"):
        nominal = int(p) / 100
        assert abs(s[f"coverage_central_{p}"] - nominal) < 3.5 * s[f"coverage_stderr_{p}"]
        assert abs(s[f"coverage_hpd_{p}"] - nominal) < 3.5 * s[f"coverage_stderr_{p}"]
    assert s["pit_ks_pvalue"] > 0.01 and s["n_off_grid"] == 0
    # mean CRPS of N(mu, s) forecasts for truths drawn from them: E|X - Y| - E|X - X'|/2 = s/sqrt(pi),
    # with E[s] = 0.2; the sample mean's stderr is ~0.0006
    assert abs(s["crps_mean"] - 0.2 / np.sqrt(np.pi)) < 0.002
    # mean log score: -E[log s] - 1/2 log(2 pi e)
    ref_ls = -np.mean(np.log(np.random.default_rng(42).uniform(0.1, 0.3, 200_000))) - 0.5 * np.log(2 * np.pi * np.e)
    assert abs(s["log_score_mean"] - ref_ls) < 0.03
    with pytest.raises(TypeError, match="MassPosterior"):
        M.summary(post.mode(), y)


def test_summary_counts_truths_off_grid():
    post = gaussian_posteriors([14.0, 14.5], 0.2)
    s = M.summary(post, [14.1, 17.5])
    assert s["n_off_grid"] == 1 and s["n_zero_density"] == 0 and s["log_score_mean"] == -np.inf


# ------------------------------------------------------------- priors + metrics: the lecture's reweighting
def test_reweighting_to_the_population_prior_calibrates_posteriors():
    """Truths drawn from the Tinker08 mass function, observations x = y + N(0, 0.2). Posteriors N(x, 0.2)
    (a flat prior) are calibrated marginally (x - y is symmetric) but not given the observation: for
    massive-looking clusters the steep mass function puts the truth lower. Reweighting from the flat source
    to the Tinker08 target gives the exact Bayesian posteriors, calibrated given any selection on x."""
    rng = np.random.default_rng(7)
    mf = P.MassFunction("tinker08", lo=13.5, hi=15.3)
    fine = np.linspace(13.5, 15.3, 20001)
    cdf = np.cumsum(np.exp(np.asarray(mf.log_prob(fine), float)))
    cdf /= cdf[-1]
    n = 20_000
    y = np.interp(rng.uniform(size=n), cdf, fine)
    x = y + 0.2 * rng.standard_normal(n)
    grid = np.linspace(12.3, 16.5, 512)
    flat_post = gaussian_posteriors(x, 0.2, grid)
    ld = P.reweight_log_density(grid, flat_post.log_density, mf, P.Flat(12.0, 17.0))
    post = MassPosterior(grid, ld)
    hi_x = np.flatnonzero(x > 14.4)  # a selection on the observable: ~930 clusters
    assert hi_x.size > 800
    before = M.summary(flat_post.select(hi_x), y[hi_x])
    after = M.summary(post.select(hi_x), y[hi_x])
    assert before["pit_ks_pvalue"] < 1e-10 and before["bias_median"] > 0.1  # the wrong prior is detected
    assert after["pit_ks_pvalue"] > 0.01 and after["pit_chi2_pvalue"] > 0.01
    for p in ("68", "95"):
        assert abs(after[f"coverage_central_{p}"] - int(p) / 100) < 3.5 * after[f"coverage_stderr_{p}"]
        assert abs(after[f"coverage_hpd_{p}"] - int(p) / 100) < 3.5 * after[f"coverage_stderr_{p}"]
    full_before, full_after = M.summary(flat_post, y), M.summary(post, y)
    assert full_after["crps_mean"] < full_before["crps_mean"]
    # every truth lies in the prior's support, including within one grid cell of its 13.5 edge: all score
    # finitely (the cell straddling the edge is on the grid), and better than under the wrong prior
    ls = M.log_score(post, y)
    assert np.isfinite(ls).all() and full_after["n_zero_density"] == 0
    assert ls.mean() > M.log_score(flat_post, y).mean()


def test_summary_json_is_strict_json_with_nulls_and_reasons(tmp_path):
    import json

    from numpyro_clustermass.quickstart import write_summary_json

    post = gaussian_posteriors([14.0, 14.5], 0.2)
    s = M.summary(post, [14.1, 17.5], lo=15.0, hi=15.3)  # one truth off the grid, none in the bias range
    assert s["log_score_mean"] == -np.inf and np.isnan(s["bias_median"])
    path = tmp_path / "summary.json"
    write_summary_json({"MDN": s, "n_test": np.int64(2), "x": np.float32(0.5)}, str(path))
    text = path.read_text()
    assert "Infinity" not in text and "NaN" not in text

    def reject(token):
        raise AssertionError(f"non-JSON constant {token}")

    back = json.loads(text, parse_constant=reject)
    assert back["MDN"]["log_score_mean"] is None and back["MDN"]["bias_median"] is None
    assert back["n_test"] == 2 and back["x"] == 0.5 and back["MDN"]["n_off_grid"] == 1
    reason = back["non_finite"]["MDN.log_score_mean"]
    assert reason["value"] == "-inf" and "zero posterior density" in reason["reason"]
    assert "no cluster" in back["non_finite"]["MDN.bias_median"]["reason"]


def test_pit_stays_in_the_unit_interval_in_float32():
    # A truth in a posterior's far upper tail sums float32 cell masses to a CDF a few ulps above 1 (seen on a
    # flat test catalogue: PIT = 1.0000001, which pit_uniformity and summary refused).
    rng = np.random.default_rng(0)
    g = np.linspace(13.0, 15.8, 512)
    n = 2000
    locs = rng.uniform(13.4, 15.0, (n, 3))
    post = MassPosterior.from_mixture(g, rng.normal(size=(n, 3)), locs, rng.uniform(0.03, 0.2, (n, 3)))
    u = M.pit(post, rng.uniform(15.2, 15.79, n))
    assert np.all((u >= 0) & (u <= 1)), (u.min(), u.max())
    M.pit_uniformity(u)  # accepted
