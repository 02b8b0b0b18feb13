"""diagnostics.compare: several fits on the same clusters, each against a reference; every number is checked
against a direct call of the tool it comes from (metrics, MassPosterior, az.loo, function_space_convergence)."""

import copy
import warnings

import arviz as az
import numpy as np
import pandas as pd
import pytest
from scipy import integrate, stats

import numpyro_clustermass as ncm
from numpyro_clustermass import metrics, plots
from numpyro_clustermass.catalog import Catalog, CatalogError
from numpyro_clustermass.diagnostics import (
    EPISTEMIC_RATIO_THRESHOLD,
    PARETO_K_THRESHOLD,
    arviz_major_version,
    Comparison,
    compare,
    compare_posteriors,
    function_space_convergence,
)
from numpyro_clustermass.posterior import MassPosterior

pytestmark = [
    # tiny fits: their posteriors may touch the grid's edge and the short chains do not converge; not under test
    pytest.mark.filterwarnings("ignore::numpyro_clustermass.FitWarning"),
    pytest.mark.filterwarnings("ignore::numpyro_clustermass.diagnostics.ConvergenceWarning"),
    # ArviZ's Pareto-k warning on few draws is expected (compare lets it through on purpose)
    pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto distribution:UserWarning"),
]

NAMES = ("Logsigv", "LogNgal")
TINY = dict(num_epochs=20, batch_size=64, progress_bar=False, seed=1)
NUTS = dict(num_warmup=30, num_samples=30, num_chains=2, mass_matrix="adapt", max_tree_depth=4,
            bayesian_layers="last")


@pytest.fixture(scope="module")
def mock():
    cat = ncm.simulate.mock_catalog(volume=1.0, mass_sampling="flat", n_halos=120, seed=0)
    return cat.split(test_fraction=0.25, seed=1)  # about 270 training and 90 test clusters, split by halo


@pytest.fixture(scope="module")
def fits(mock):
    train, _ = mock
    est = ncm.MDN(2, (8,), feature_names=NAMES)
    f_map = ncm.fit(est, train, **TINY)
    f_drop = ncm.fit(est, train, method="mc_dropout", num_draws=32, **TINY)  # ArviZ 1.x's PSIS needs >= 25
    f_nuts = ncm.fit(est, train, method="nuts", init=f_map, **NUTS, **TINY)  # last layer, trunk at the MAP fit
    return {"map": f_map, "mc_dropout": f_drop, "nuts": f_nuts}


@pytest.fixture(scope="module")
def compared(fits, mock):
    """compare's result on the test clusters, and the warnings it let through."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        c = compare(fits, mock[1])
    return c, [str(w.message) for w in caught]


@pytest.fixture(scope="module")
def result(compared):
    return compared[0]


def test_compare_numbers_equal_direct_metric_calls(fits, mock, result):
    test = mock[1]
    y = test.log_mass
    c = result
    assert isinstance(c, Comparison) and c.reference == "nuts"
    assert list(c.table.index) == ["map", "mc_dropout", "nuts"] and c.table.index.name == "fit"
    ref = fits["nuts"].posterior(test)
    lo, hi = metrics.LOG_MASS_RANGE
    sel = (y >= lo) & (y <= hi)
    for name, f in fits.items():
        post = f.posterior(test)
        np.testing.assert_array_equal(np.asarray(c.posteriors[name].log_density), np.asarray(post.log_density))
        row = c.table.loc[name]
        assert row["method"] == f.method and row["n_clusters"] == len(test)
        assert row["n_draws"] == post.meta["num_draws"]
        assert row["log_score"] == pytest.approx(np.mean(metrics.log_score(post, y)), rel=1e-12)
        assert row["crps"] == pytest.approx(np.mean(metrics.crps(post, y)), rel=1e-12)
        cov = metrics.coverage(post, y, (0.68, 0.95)).empirical.to_numpy()
        assert [row["coverage_68"], row["coverage_95"]] == pytest.approx(cov, abs=1e-12)
        res = metrics.residual_stats(metrics.point_estimate(post, "mode")[sel] - y[sel])
        assert row["bias_median"] == pytest.approx(res["bias_median"], rel=1e-12)
        assert row["scatter_68"] == pytest.approx(res["scatter_68"], rel=1e-12)
        assert row["pred_std"] == pytest.approx(np.mean(post.std()), rel=1e-6)
        assert row["aleatoric_std"] == pytest.approx(np.mean(np.sqrt(post.aleatoric_variance)), rel=1e-6)
        assert row["epistemic_std"] == pytest.approx(np.mean(np.sqrt(post.epistemic_variance)), rel=1e-6, abs=0)
        # against the reference
        assert row["mean_abs_diff"] == pytest.approx(np.mean(np.abs(post.mean() - ref.mean())), rel=1e-6, abs=1e-12)
        assert row["std_ratio"] == pytest.approx(np.mean(post.std() / ref.std()), rel=1e-6)
        w1 = compare_posteriors(post, ref)["wasserstein1"]
        assert row["w1"] == pytest.approx(np.mean(w1), rel=1e-12, abs=1e-15)
        assert row["epistemic_ratio"] == pytest.approx(np.mean(post.epistemic_variance)
                                                       / np.mean(ref.epistemic_variance), rel=1e-6)
        # the per-bin table is metrics.binned's
        b = metrics.binned(post, y)
        mine = c.binned[c.binned.fit == name].reset_index(drop=True)
        for col, theirs in (("n", "n"), ("coverage_68", "cov_central_68"), ("coverage_95", "cov_central_95"),
                            ("bias_median", "bias_median"), ("crps", "crps"), ("log_score", "log_score")):
            np.testing.assert_array_equal(mine[col].to_numpy(), b[theirs].to_numpy(), err_msg=col)
        # per cluster
        pc = c.per_cluster[c.per_cluster.fit == name]
        np.testing.assert_array_equal(pc["mean"].to_numpy(), post.mean())
        np.testing.assert_array_equal(pc["w1"].to_numpy(), w1)
        np.testing.assert_array_equal(pc["log_mass"].to_numpy(), y)
    assert c.table.loc["nuts", ["mean_abs_diff", "w1"]].tolist() == [0.0, 0.0]
    assert c.table.loc["nuts", ["std_ratio", "epistemic_ratio"]].tolist() == [1.0, 1.0]


def test_compare_loo_and_function_space_convergence(fits, mock, compared):
    test = mock[1]
    c, caught = compared
    assert np.isnan(c.table.loc["map", "elpd_loo"]) and "map" not in c.loo  # a point fit: LOO does not apply
    for name in ("mc_dropout", "nuts"):
        expected = az.loo(fits[name].to_arviz(test), pointwise=True)
        v1 = arviz_major_version() >= 1  # ArviZ 1.x names the fields elpd and p
        row = c.table.loc[name]
        assert row["elpd_loo"] == pytest.approx(expected.elpd if v1 else expected.elpd_loo, rel=1e-10)
        assert row["elpd_loo_se"] == pytest.approx(expected.se, rel=1e-10)
        assert row["p_loo"] == pytest.approx(expected.p if v1 else expected.p_loo, rel=1e-10)
        bad = int(np.sum(np.asarray(expected.pareto_k) > PARETO_K_THRESHOLD))
        assert row["n_pareto_k_bad"] == bad
        assert any(n.startswith(f"{name}: {bad} of") for n in c.notes) == (bad > 0)
        if bad:  # ArviZ's own warning is not hidden (it warns from k above min(1 - 1/log10(S), 0.7))
            assert any("Pareto" in m for m in caught), caught
        assert set(c.idata) == set(fits)
    # NUTS: R-hat and ESS of each draw's predictive mean on these clusters, every draw of both chains
    f = fits["nuts"]
    total = 2 * NUTS["num_samples"]
    post = f.posterior(test, num_draws=total, keep_draws=True)
    p = np.exp(np.asarray(post.draws_log_density, dtype=np.float64))
    means = (p / p.sum(-1, keepdims=True)) @ post.grid
    conv = function_space_convergence(means.reshape(2, NUTS["num_samples"], -1))
    assert c.table.loc["nuts", "rhat_max"] == pytest.approx(conv["max_rhat"], rel=1e-6)
    assert c.table.loc["nuts", "ess_bulk_min"] == pytest.approx(conv["min_ess_bulk"], rel=1e-6)
    assert c.table.loc[["map", "mc_dropout"], "rhat_max"].isna().all()
    if conv["max_rhat"] >= 1.05:  # the tiny chains: the report says they did not converge
        assert any(n.startswith("nuts: function-space R-hat") for n in c.notes)


def test_loo_that_arviz_refuses_is_a_note_not_an_error(fits, mock):
    c = compare({"mc_dropout": fits["mc_dropout"]}, mock[1], reference=None, num_draws=8)
    if arviz_major_version() >= 1:  # 8 draws: too few for ArviZ 1.x's PSIS (5 draws in the tail)
        assert np.isnan(c.table.loc["mc_dropout", "elpd_loo"]) and c.loo == {}
        assert any(n.startswith("mc_dropout: PSIS-LOO not computed: az.loo refused (") for n in c.notes), c.notes
    else:  # ArviZ 0.x computes it (with its Pareto-k warning)
        assert np.isfinite(c.table.loc["mc_dropout", "elpd_loo"]) and set(c.loo) == {"mc_dropout"}


def test_w1_is_zero_against_itself_and_matches_hand_computations():
    g = np.linspace(12.0, 16.5, 1801)

    def gauss(mu, sd):
        mu, sd = np.atleast_1d(mu), np.atleast_1d(sd)
        return MassPosterior.from_mixture(g, np.zeros((mu.size, 1)), mu[:, None], sd[:, None])

    a = gauss([14.0, 14.5], [0.2, 0.1])
    assert compare_posteriors(a, a)["wasserstein1"].tolist() == [0.0, 0.0]
    # equal widths: W1 = |mu_a - mu_b|
    d = compare_posteriors(gauss([14.0, 14.5], [0.2, 0.1]), gauss([14.3, 14.45], [0.2, 0.1]))
    np.testing.assert_allclose(d["wasserstein1"], [0.3, 0.05], atol=2e-5)
    # unequal widths (the CDFs cross): W1 = int |Phi_a - Phi_b| dm, by quadrature
    d = compare_posteriors(gauss(14.0, 0.15), gauss(14.1, 0.3))
    exact, _ = integrate.quad(lambda m: abs(stats.norm.cdf(m, 14.0, 0.15) - stats.norm.cdf(m, 14.1, 0.3)), 12.0, 16.5,
                              points=[14.0, 14.1], limit=200)
    assert d["wasserstein1"][0] == pytest.approx(exact, abs=2e-5)
    # a coarse grid: the crossing cells are integrated exactly (two triangles), not as |mean of the ends|
    gc = np.linspace(12.0, 16.5, 91)
    pa = MassPosterior.from_mixture(gc, np.zeros((1, 1)), np.full((1, 1), 14.0), np.full((1, 1), 0.15))
    pb = MassPosterior.from_mixture(gc, np.zeros((1, 1)), np.full((1, 1), 14.1), np.full((1, 1), 0.3))
    fa = np.r_[0, np.cumsum(np.exp(np.asarray(pa.log_density[0], np.float64)))]
    fb = np.r_[0, np.cumsum(np.exp(np.asarray(pb.log_density[0], np.float64)))]
    fa, fb = fa / fa[-1], fb / fb[-1]
    edges = np.linspace(gc[0] - pa.dx / 2, gc[-1] + pa.dx / 2, gc.size + 1)
    fine = np.linspace(edges[0], edges[-1], 400_001)
    brute = np.trapezoid(np.abs(np.interp(fine, edges, fa) - np.interp(fine, edges, fb)), fine)
    assert compare_posteriors(pa, pb)["wasserstein1"][0] == pytest.approx(brute, rel=1e-6)


def test_epistemic_note_for_a_fit_below_the_reference(fits, mock, result):
    ratios = result.table["epistemic_ratio"]
    assert ratios["map"] == 0.0
    note = [n for n in result.notes if n.startswith("map: epistemic variance 0 x the reference's (nuts")]
    assert note and "it has none (a point fit)" in note[0]
    for name in ("mc_dropout",):  # above the threshold: no note
        assert (ratios[name] < EPISTEMIC_RATIO_THRESHOLD) == any(n.startswith(f"{name}: epistemic") for n in
                                                                 result.notes)
    # against MC dropout, whose dropout masks give more epistemic variance than NUTS's last layer here
    c = compare(fits, mock[1], reference="mc_dropout", arviz=False)
    r = c.table.loc["nuts", "epistemic_ratio"]
    expected = (np.mean(c.posteriors["nuts"].epistemic_variance)
                / np.mean(c.posteriors["mc_dropout"].epistemic_variance))
    assert r == pytest.approx(expected, rel=1e-6)
    assert r < EPISTEMIC_RATIO_THRESHOLD, r  # measured: about 0.01 on this tiny problem
    note = [n for n in c.notes if n.startswith("nuts: epistemic variance")]
    assert note == [f"nuts: epistemic variance {r:.3g} x the reference's (mc_dropout; mean over clusters, below "
                    f"{EPISTEMIC_RATIO_THRESHOLD:g}): it under-estimates the reference's epistemic uncertainty"]
    # a threshold below every ratio: no note
    c = compare(fits, mock[1], reference="mc_dropout", arviz=False, epistemic_threshold=r / 2)
    assert not [n for n in c.notes if n.startswith("nuts: epistemic")]


def test_reference_none_list_input_and_grid_handling(fits, mock):
    test = mock[1]
    c = compare([fits["map"], fits["mc_dropout"]], test, reference=None, arviz=False)
    assert list(c.table.index) == ["map", "mc_dropout"]  # a list is named by method
    assert not {"mean_abs_diff", "std_ratio", "w1", "epistemic_ratio"} & set(c.table.columns)
    assert "ref_mean" not in c.per_cluster and c.idata == {} and c.table["elpd_loo"].isna().all()
    # posteriors on different default grids: one grid spanning both, every density evaluated on it
    other = copy.copy(fits["mc_dropout"])
    other.grid = np.linspace(fits["map"].grid[0] - 0.3, fits["map"].grid[-1] + 0.2, 300)
    c = compare({"map": fits["map"], "wide": other}, test, reference="map", arviz=False)
    assert c.grid[0] == pytest.approx(other.grid[0]) and c.grid[-1] == pytest.approx(other.grid[-1])
    assert np.diff(c.grid).max() <= max(np.diff(fits["map"].grid).max(), np.diff(other.grid).max()) + 1e-12
    assert any(n.startswith("the fits' default grids differ") for n in c.notes)
    for name, f in (("map", fits["map"]), ("wide", other)):
        np.testing.assert_array_equal(np.asarray(c.posteriors[name].log_density),
                                      np.asarray(f.posterior(test, grid=c.grid).log_density))


def test_fits_on_different_features_need_a_catalog(fits, mock):
    train, test = mock
    f_other = ncm.fit(ncm.MDN(2, (8,), feature_names=("Logsigv", "v_std")), train, **TINY)
    c = compare({"map": fits["map"], "other": f_other}, test, reference="map", arviz=False)
    np.testing.assert_array_equal(np.asarray(c.posteriors["other"].log_density),
                                  np.asarray(f_other.posterior(test).log_density))
    with pytest.raises(ValueError, match=r"trained on different features .*pass a Catalog"):
        compare({"map": fits["map"], "other": f_other}, test.features(NAMES), reference="map")
    missing = Catalog({k: v for k, v in test.columns.items() if k != "v_std"}, validate=False)
    with pytest.raises(CatalogError, match=r"fit 'other': .*v_std"):
        compare({"map": fits["map"], "other": f_other}, missing, reference="map", arviz=False)


def test_catalogue_without_true_masses_keeps_the_reference_comparison(fits, mock, result):
    test = mock[1]
    no_truth = Catalog({k: v for k, v in test.columns.items() if k not in ("M200c", "log_mass")}, validate=False)
    c = compare(fits, no_truth)
    scored = ["log_score", "crps", "coverage_68", "coverage_95", "bias_median", "scatter_68", "elpd_loo"]
    assert c.table[scored].isna().all().all()
    assert len(c.binned) == 0 and "log_mass" not in c.per_cluster and c.loo == {}
    assert any(n.startswith("the catalogue has no true masses") for n in c.notes)
    assert set(c.idata) == set(fits)  # the ArviZ objects are built, without log_likelihood
    for col in ("mean_abs_diff", "std_ratio", "w1", "epistemic_ratio", "pred_std", "rhat_max"):
        np.testing.assert_allclose(c.table[col].to_numpy(), result.table[col].to_numpy(), rtol=1e-12, err_msg=col)
    # a bare feature array has no truth either
    c = compare({"map": fits["map"], "nuts": fits["nuts"]}, test.features(NAMES), arviz=False)
    assert c.table["log_score"].isna().all() and np.isfinite(c.table["w1"]).all()


def test_compare_error_paths(fits, mock):
    test = mock[1]
    with pytest.raises(ValueError, match=r"reference 'nuts' is not among the fits \('map'\).*reference=None"):
        compare({"map": fits["map"]}, test)
    with pytest.raises(ValueError, match=r"several fits have the method 'map': pass a dict"):
        compare([fits["map"], fits["map"]], test, reference=None)
    with pytest.raises(ValueError, match="at least one fit"):
        compare({}, test, reference=None)
    with pytest.raises(TypeError, match=r"fits\['x'\] is a str, not a Fit"):
        compare({"x": "fit.ncm"}, test, reference=None)
    with pytest.raises(TypeError, match="dict name -> Fit or a list"):
        compare(fits["map"], test, reference=None)
    with pytest.raises(ValueError, match=r"probs must be interval probabilities in \(0, 1\)"):
        compare(fits, test, probs=(0.68, 1.5))
    with pytest.raises(ValueError, match="epistemic_threshold must be a finite number > 0"):
        compare(fits, test, epistemic_threshold=0)
    with pytest.raises(ValueError, match=r"fit 'map': .*1 of 90 log-masses are NaN"):
        y = test.log_mass.copy()
        y[3] = np.nan
        compare({"map": fits["map"]}, (test.features(NAMES), y), reference=None)


def test_comparison_figures(result):
    fig = plots.compare_to_reference(result)
    assert len(fig.axes) == 2
    assert [t.get_text() for t in fig.axes[1].get_legend().get_texts()] == ["1:1", "map", "mc_dropout"]
    fig = plots.coverage_by_mass(result)
    assert [a.get_title() for a in fig.axes] == ["68% intervals", "95% intervals"]
    assert [t.get_text() for t in fig.axes[0].get_legend().get_texts()] == ["nominal", "map", "mc_dropout", "nuts"]
    no_ref = result._replace(reference=None, per_cluster=result.per_cluster.drop(columns=["ref_mean", "ref_std"]))
    with pytest.raises(ValueError, match="no reference fit"):
        plots.compare_to_reference(no_ref)
    with pytest.raises(ValueError, match="no true masses"):
        plots.coverage_by_mass(result._replace(binned=pd.DataFrame(columns=["fit", "bin_mid", "coverage_68"])))
