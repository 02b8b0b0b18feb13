"""The lecture's headline results, end to end on lecture-sized mocks (slow: a few minutes each).

1. Trained on natural-mode (Tinker08) mocks, the MDN's posterior mean is biased toward the bulk of the
   training masses; reweighted to a flat prior, the posterior mode is not.
2. Trained on flat-mass mocks and applied to natural-mode mocks, reweighting to the Tinker08 mass function
   calibrates the posteriors.
3. The conditional spline flow keeps the reweighted mode's bound of 1. on the same training and test sets,
   and scores higher than the MDN.
"""

import numpy as np
import pytest

import numpyro_clustermass as ncm
from numpyro_clustermass import metrics, priors

pytestmark = pytest.mark.slow

#: Measured: at 1e-3 the reweighted mode's high-mass bins are off by up to 0.09 dex (quickstart comment).
LR = 3e-4


@pytest.fixture(scope="module")
def lecture_split():
    """The headline tests' lecture-sized natural-mode training set and its held-out 20%."""
    cat = ncm.simulate.mock_catalog(volume=1.0, seed=0)
    return cat.split(test_fraction=0.2, seed=1)


@pytest.fixture(scope="module")
def lecture_mdn(lecture_split):
    return ncm.fit(ncm.MDN(16, (128, 128, 64)), lecture_split[0], seed=0, learning_rate=LR, progress_bar=False)


@pytest.fixture(scope="module")
def flat_test():
    # The bias of a point estimate at fixed true mass does not depend on how test masses are distributed, so
    # test on flat-mass mocks: about 4000 per 0.1-dex bin (halo-bootstrap standard error of the median
    # 0.002-0.004 dex; between independent test catalogues a bin's median moves by up to 0.014), where a
    # natural test set holds a few dozen above 10^14.8.
    return ncm.simulate.mock_catalog(mass_sampling="flat", n_halos=24_000, seed=99)


HEADLINE_EDGES = np.round(np.arange(14.0, 15.01, 0.1), 2)


def _flat_mode_bias(post, test):
    """Median (mode - true) per 0.1-dex bin from 10^14 to 10^15 after reweighting to Flat(13.5, 15.3)."""
    flat = post.reweight(priors.Flat(13.5, 15.3))
    return metrics.binned(flat, test, estimator="mode", edges=HEADLINE_EDGES)["bias_median"].to_numpy()


def test_reweighted_mode_removes_the_training_prior_bias(lecture_mdn, flat_test):
    post = lecture_mdn.posterior(flat_test)
    mode_bias = _flat_mode_bias(post, flat_test)
    mean_bias = metrics.binned(post, flat_test, estimator="mean", edges=HEADLINE_EDGES)["bias_median"].to_numpy()
    # Measured with `python3 benchmarks/headline_seeds.py` (training seeds 0-4, this test set, the defaults of
    # issue 12: plateau schedule, equal-mixture start): the largest |mode bias| of any seed and bin is 0.027 dex
    # (-0.020 to -0.027 at 10^14.3, where this test set's median sits 0.007 below the pooled two test sets'),
    # the median over seeds within [-0.022, +0.017], the spread over seeds 0.001-0.003 dex per bin (under the
    # earlier defaults, Flax start and cosine: 0.001-0.013). A fresh machine trains another network from the same
    # seed (XLA's CPU code differs between processors), so the bound is the 5-seed maximum plus 0.008 (close to
    # three times the largest spread over seeds and twice the test set's standard error, 0.004). With the
    # lecture's histogram prior the same networks reach +0.034 at 10^14.9 (`--source histogram`). MDN
    # mean, median over seeds: -0.068 at 10^14.0, -0.052 at 10^14.9.
    assert np.all(np.abs(mode_bias) <= 0.035), mode_bias
    assert max(abs(mean_bias[0]), abs(mean_bias[-1])) > 0.05, mean_bias


def test_the_flow_keeps_the_headline_bound_and_outscores_the_mdn_overall_and_at_the_lower_edge(
        lecture_split, lecture_mdn, flat_test):
    """The lecture's bonus head on the same training set and flat test set as the MDN's headline test."""
    train, held = lecture_split
    flow = ncm.fit(ncm.Flow(hidden=(128, 128, 64), bounds=(13.5, 15.3)), train, seed=0, learning_rate=LR,
                   progress_bar=False)
    mode_bias = _flat_mode_bias(flow.posterior(flat_test), flat_test)
    # Measured with `python3 benchmarks/headline_seeds.py --estimator flow` (training seeds 0-4, this test set):
    # the largest |mode bias| of any seed and bin is 0.027 dex (-0.027 at 10^14.8), as the MDN's; the spread over
    # seeds 0.001-0.007 dex per bin. The bound is the MDN's (the test above).
    assert np.all(np.abs(mode_bias) <= 0.035), mode_bias
    ls_flow, ls_mdn = (metrics.log_score(f.posterior(held), held) for f in (flow, lecture_mdn))
    lowest = held.log_mass < 13.6
    # Measured with `python3 benchmarks/flow_vs_mdn.py --volume 1.0` (seeds 0-2): 0.855 +- 0.000 against
    # 0.849 +- 0.001 overall, 1.392 +- 0.005 against 1.367 +- 0.004 in the lowest 0.1-dex bin (13,921 rows)
    assert np.isfinite(ls_flow).all()
    assert ls_flow.mean() > ls_mdn.mean() + 0.002, (ls_flow.mean(), ls_mdn.mean())
    assert ls_flow[lowest].mean() > ls_mdn[lowest].mean() + 0.01, (ls_flow[lowest].mean(), ls_mdn[lowest].mean())


def test_flat_training_reweighted_to_tinker08_is_calibrated():
    # Train over a wider mass range than the test set, so that the training prior has no edge where the
    # test posteriors live (a mixture head cannot represent a hard edge, and a steep target prior magnifies
    # its roll-off: trained on 13.5-15.3 exactly, 68% coverage came out at 0.617).
    # One line of sight per training halo: the projections of a halo share their galaxies (and stellar-mass
    # moments), which lets the net memorise halos and leaves it over-confident (3 projections of 40k halos:
    # 1000-halo PIT KS p = 3e-4; 1 projection of 120k halos: p = 0.057).
    train = ncm.simulate.mock_catalog(mass_sampling="flat", n_halos=120_000, n_los=1, seed=5, log_mass_min=13.1,
                                      log_mass_max=15.7)
    test = ncm.simulate.mock_catalog(volume=0.3, seed=6)
    f = ncm.fit(ncm.MDN(16, (128, 128, 64)), train, seed=0, learning_rate=LR, progress_bar=False)
    post = f.posterior(test)
    # Both catalogues keep Ngal >= 10, so the training histogram is flat x P(selected | M) and the test
    # masses are Tinker08 x P(selected | M). Swap the generating priors and the selection cancels; swapping
    # the histogram for Tinker08 would divide by P(selected | M) once (measured: PIT counts rising from
    # 82 to 112 per decile on 1000 halos, KS p = 0.02 instead of 0.057).
    tinker = post.reweight(priors.MassFunction("tinker08", lo=13.5, hi=15.3), source=priors.Flat(13.1, 15.7))
    s_raw = metrics.summary(post, test)
    s = metrics.summary(tinker, test)
    # Measured with `python3 benchmarks/calibration_seeds.py` (training seeds 0-4, 81.6k mocks, the defaults of
    # issue 12: plateau schedule, equal-mixture start): central 0.677-0.680 / 0.949-0.951, HPD 0.673-0.679 /
    # 0.947-0.949; KS distance 0.005-0.007 against 0.040-0.052 before reweighting (ratio 0.106-0.188). Under the
    # earlier defaults (Flax start, cosine) coverage ranged over 0.659-0.687 and the ratio up to 0.41. Bounds: the
    # largest coverage deviation (0.007) plus 0.013 (four times the spread over seeds, 0.003, for a fresh
    # machine's other network), and twice the largest ratio.
    for p in ("68", "95"):
        assert abs(s[f"coverage_central_{p}"] - int(p) / 100) <= 0.02, s
        assert abs(s[f"coverage_hpd_{p}"] - int(p) / 100) <= 0.02, s
    assert s["pit_ks_statistic"] < 0.4 * s_raw["pit_ks_statistic"]

    # PIT uniformity on 1000 independent halos (one line of sight each: projections of a halo are
    # correlated). Measured with benchmarks/calibration_seeds.py, seeds 0-4: KS p = 0.074-0.19 after
    # reweighting, 1.6e-5 to 7.8e-4 before, at least 245 times higher after than before (earlier defaults:
    # 0.0013-0.053 after, up to 1.2e-4 before). p varies by a factor 50 between seeds before reweighting, so the
    # bounds are wide: 15x below the lowest p after, 13x above the highest p before, a 20x contrast (12x below
    # the lowest measured).
    rng = np.random.default_rng(0)
    one_los = np.flatnonzero(test["los"] == 0)
    rows = rng.choice(one_los, 1000, replace=False)
    u_rw = metrics.pit(tinker.select(rows), test.log_mass[rows])
    u_raw = metrics.pit(post.select(rows), test.log_mass[rows])
    p_rw, p_raw = metrics.pit_uniformity(u_rw).ks_pvalue, metrics.pit_uniformity(u_raw).ks_pvalue
    assert p_rw > 5e-3 and p_raw < 1e-2 and p_rw > 20 * p_raw, (p_rw, p_raw)


def test_mass_sigma_baseline_by_nuts_and_the_mdn_beats_it_twice():
    from numpyro_clustermass.scaling import MassObservableRelation, fit_power_law

    cat = ncm.simulate.mock_catalog(volume=0.3, seed=0)
    train, test = cat.split(test_fraction=0.5, seed=3)
    test = test.select((test.log_mass > 14.0) & (test.log_mass < 15.0))
    high = train.select(train.log_mass > 14.5)  # Ho et al. fit the power law above 10^14.5
    law = fit_power_law(high.log_mass, high["sigv"])
    ls_scatter = np.std(law.predict_log_mass(test["sigv"]) - test.log_mass)

    grid = np.linspace(12.0, 16.5, 900)
    f = ncm.fit(MassObservableRelation(), high, method="nuts", grid=grid, progress_bar=False,
                map_options=dict(learning_rate=1e-2, num_epochs=120))
    assert f.info["function_space"]["max_rhat"] < 1.05
    post = f.posterior(test)
    nuts_scatter = np.std(post.mode() - test.log_mass)
    assert post.epistemic_variance.min() > 0
    # Measured: least squares 0.342 dex, NUTS posterior mode 0.335 dex (Ho et al. 2019: 0.369).
    assert nuts_scatter == pytest.approx(ls_scatter, abs=0.02)

    mdn = ncm.fit(ncm.MDN(16, (128, 128, 64)), train, seed=0, learning_rate=LR, progress_bar=False)
    flat = mdn.posterior(test).reweight(priors.Flat(13.5, 15.3))
    mdn_scatter = np.std(flat.mode() - test.log_mass)
    assert 2 * mdn_scatter <= nuts_scatter, (mdn_scatter, nuts_scatter)
