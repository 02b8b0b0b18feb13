"""Survey context (issue 10): catalogue-level summaries as features, per universe of the simulator's family."""

import numpy as np
import pytest
from scipy import stats

import numpyro_clustermass as ncm
from numpyro_clustermass.catalog import FEATURE_NAMES, CatalogError
from numpyro_clustermass.features import MIN_SURVEY_ROWS, SURVEY_CONTEXT_NAMES, survey_context
from numpyro_clustermass.simulate import mock_catalog


@pytest.fixture(scope="module")
def family():
    # four universes of 0.005 (Gpc/h)^3, about 300 mocks each
    return mock_catalog(volume=0.02, seed=1, nuisance="prior", sub_volume=0.005, n_los=1)


def test_each_universe_gets_its_own_summaries_computed_independently(family):
    ctx = survey_context(family)
    assert len(ctx) == len(family) and ctx.meta["survey_context"]["num_surveys"] == 4
    sub = np.asarray(family["sub_volume"])
    for k in np.unique(sub):
        rows = sub == k
        for name in SURVEY_CONTEXT_NAMES:  # one value per universe
            assert np.unique(ctx[name][rows]).size == 1
        col = {c: np.asarray(family[c][rows], dtype=np.float64) for c in ("Ngal", "sigv", "R_mean", "v_kurt")}
        n, s = np.log10(col["Ngal"]), np.log10(col["sigv"])
        lr = np.log10(col["R_mean"]) + 0.15
        fit_ns = stats.linregress(s - 2.7, n)
        expect = [fit_ns.intercept, fit_ns.slope, stats.linregress(lr, s).intercept,
                  stats.linregress(lr, n).intercept, np.median(col["v_kurt"]), np.median(col["R_mean"]),
                  *np.percentile(n, [90, 99]), stats.linregress(n - 1.3, s).slope]
        got = [ctx[name][rows][0] for name in SURVEY_CONTEXT_NAMES]
        np.testing.assert_allclose(got, expect, rtol=1e-9, atol=1e-12)
    # the universes differ (their occupations and interlopers were drawn)
    assert np.unique(ctx["ctx_Ngal_at_sigv"]).size == 4
    # the original columns, members and metadata are carried along; the input is not modified
    for c in family.colnames:
        np.testing.assert_array_equal(ctx[c], family[c])
    assert ctx.meta["nuisance"] == family.meta["nuisance"] and "ctx_R_mean" not in family


def test_survey_argument_gives_every_row_the_other_catalogues_summaries(family):
    flat = mock_catalog(mass_sampling="flat", n_halos=60, seed=3, n_los=1)
    ctx = survey_context(flat, survey=family)
    whole = survey_context(family, by=None)  # the family as one survey
    for name in SURVEY_CONTEXT_NAMES:
        assert np.all(ctx[name] == whole[name][0])
    assert ctx.meta["survey_context"]["from_other_catalog"] and ctx.meta["survey_context"]["num_surveys"] == 1
    # a catalogue without the grouping column is one survey
    assert survey_context(flat.select(np.arange(len(flat))))["ctx_R_mean"].std() == 0


@pytest.mark.parametrize(
    "name, lo, hi, column, low, high",
    [
        # richness at fixed dispersion and at fixed radius rises with the occupation normalisation
        # (measured, 4 seeds at 0.02 (Gpc/h)^3: +0.127..+0.165 and +0.175..+0.184)
        ("lambda0", 4.875, 10.12, "ctx_Ngal_at_R", 0.12, 0.25),
        ("lambda0", 4.875, 10.12, "ctx_Ngal_at_sigv", 0.08, 0.25),
        # faster members: higher dispersion at fixed radius, lighter velocity wings
        # (measured: +0.020..+0.021 dex and -0.338..-0.370)
        ("velocity_bias_mean", 0.9, 1.1, "ctx_sigv_at_R", 0.012, 0.04),
        ("velocity_bias_mean", 0.9, 1.1, "ctx_v_kurt", -0.6, -0.2),
        # a steeper occupation puts more galaxies in the massive halos: the richness tail moves out
        # (measured, 4 seeds: 90th percentile +0.086..+0.099, 99th +0.186..+0.221)
        ("alpha_sat", 0.85, 1.05, "ctx_Ngal_p90", 0.05, 0.15),
        ("alpha_sat", 0.85, 1.05, "ctx_Ngal_p99", 0.12, 0.30),
    ],
)
def test_summaries_respond_to_the_occupation_and_the_velocity_bias(name, lo, hi, column, low, high):
    a = survey_context(mock_catalog(volume=0.02, seed=0, n_los=1, nuisance={name: lo}))
    b = survey_context(mock_catalog(volume=0.02, seed=0, n_los=1, nuisance={name: hi}))
    assert low < b[column][0] - a[column][0] < high


def test_bad_input_raises(family):
    with pytest.raises(CatalogError, match=f"{MIN_SURVEY_ROWS - 1} rows, fewer than {MIN_SURVEY_ROWS}"):
        survey_context(family.select(np.arange(MIN_SURVEY_ROWS - 1)))
    with pytest.raises(CatalogError, match="0 rows"):
        survey_context(mock_catalog(mass_sampling="flat", n_halos=60, seed=3, n_los=1),
                       survey=family.select(np.zeros(len(family), dtype=bool)))
    sub = np.asarray(family["sub_volume"])  # one universe cut below the minimum, the others whole
    keep = (sub != sub[0]) | (np.cumsum(sub == sub[0]) <= MIN_SURVEY_ROWS - 1)
    with pytest.raises(CatalogError, match=f"1 survey\\(s\\) have fewer than {MIN_SURVEY_ROWS} rows"):
        survey_context(family.select(keep))
    cols = dict(family.columns)
    cols["R_mean"] = np.where(np.arange(len(family)) == 3, 0.0, cols["R_mean"])
    with pytest.raises(CatalogError, match="R_mean must be positive"):
        survey_context(ncm.Catalog(cols, validate=False))
    cols.pop("v_kurt")
    with pytest.raises(CatalogError, match="lacks the column 'v_kurt'"):
        survey_context(ncm.Catalog(cols, validate=False))
    with pytest.raises(TypeError, match="Catalog"):
        survey_context(np.zeros((100, 14)))


@pytest.mark.filterwarnings("ignore::numpyro_clustermass.FitWarning")  # two epochs learn little; not the point
def test_a_context_model_names_the_missing_columns_and_the_helper(family):
    train = survey_context(family)
    est = ncm.MDN(2, (8,), feature_names=FEATURE_NAMES + SURVEY_CONTEXT_NAMES)
    f = ncm.fit(est, train, num_epochs=2, batch_size=256, progress_bar=False)
    assert f.posterior(train).mode().shape == (len(train),)
    with pytest.raises(CatalogError, match="survey_context"):
        f.posterior(family)


@pytest.mark.slow
def test_the_network_reads_the_occupation_off_the_survey():
    """Trained across 100 universes, the MDN weighs the clusters of a universe with 35% fewer satellites right
    when given that universe's survey summaries, and as the fiducial-trained network does (0.1-0.2 dex light)
    when given the fiducial universe's: the same network, the same clusters, only the survey differs."""
    from numpyro_clustermass import metrics, priors

    family = survey_context(mock_catalog(volume=1.0, seed=0, nuisance="prior", sub_volume=0.01))
    f = ncm.fit(ncm.MDN(16, (128, 128, 64), feature_names=FEATURE_NAMES + SURVEY_CONTEXT_NAMES),
                family.split(test_fraction=0.2, seed=1)[0], seed=0, learning_rate=3e-4, progress_bar=False)
    lean = {"lambda0": 4.875}
    test = mock_catalog(mass_sampling="flat", n_halos=4000, seed=1007, nuisance=lean)
    edges = np.round(np.arange(14.0, 14.51, 0.1), 2)
    bias = {}
    for name, survey in (("own", mock_catalog(volume=0.1, seed=2007, nuisance=lean)),
                         ("fiducial", mock_catalog(volume=0.1, seed=2000))):
        post = f.posterior(survey_context(test, survey=survey)).reweight(priors.Flat(13.5, 15.3))
        bias[name] = metrics.binned(post, test, estimator="mode", edges=edges)["bias_median"].to_numpy()
    # robustness_matrix (3 seeds, 8000 halos, nine summaries): the context network within 0.024 dex of the truth on
    # this variant, the fiducial-trained one at -0.19; here 10^14.0-14.5 only, where the context network has no
    # high-mass offset.
    # Measured once (training seed 0, deterministic, nine summaries): own survey -0.012..+0.012, fiducial survey
    # -0.175..-0.127 (six summaries: -0.014..+0.015 and -0.172..-0.117)
    print("reweighted-mode bias 10^14.0-14.5, own survey:", np.round(bias["own"], 3), "fiducial survey:",
          np.round(bias["fiducial"], 3))
    assert np.all(np.abs(bias["own"]) < 0.05), bias
    assert np.all(bias["fiducial"] < -0.06) and bias["fiducial"].min() < -0.1, bias


def _context_identification():
    """benchmarks/context_identification.py, loaded from its file (benchmarks/ is not an installed package)."""
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "context_identification.py"
    spec = importlib.util.spec_from_file_location("context_identification", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cross_validated_residual_recovers_the_noise_of_a_linear_relation():
    ci = _context_identification()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 3))
    y = 2.0 * x[:, 0] - x[:, 1] + rng.normal(0, 0.1, 400)
    lin = ci.cv_residual_std(ci.design(x, 1), y, folds=10)
    assert 0.09 < lin < 0.11  # the noise, not the 2.2 of y
    assert ci.cv_residual_std(ci.design(x[:, 2:], 1), y, folds=10) > 2.0  # an unrelated feature explains nothing
    assert ci.design(x, 2).shape == (400, 1 + 3 + 6)


@pytest.fixture(scope="module")
def identification():
    return _context_identification().measure(volume=0.4, sub_volume=0.01, seeds=(0,), folds=5)


def test_the_summaries_identify_the_occupation_normalisation_and_background_not_the_cosmology(identification):
    """40 universes of 0.01 (Gpc/h)^3. Linear cross-validated R^2 measured over family seeds 0, 1, 2 (nine
    summaries): lambda0 0.80-0.93, n_background 0.98-0.99, omega_m -0.78..-0.14, sigma8 -0.62..-0.15; alpha_sat
    -0.25..+0.55 is too noisy at this size to assert (the benchmark's 200 universes: docs/nuisance.md)."""
    m = identification
    r = {k: v["linear_r2"] for k, v in m["rows"].items()}
    assert m["n_universes"] == 40
    assert r["lambda0"] > 0.7 and r["n_background"] > 0.9
    assert r["omega_m"] < 0.2 and r["sigma8"] < 0.2
    assert all(v["prior_std"] > 0 for v in m["rows"].values())


def test_context_identification_refuses_too_few_universes():
    with pytest.raises(ValueError, match="too few for 10-fold"):
        _context_identification().measure(volume=0.05, sub_volume=0.01, seeds=(0,), folds=10)
    for bad in (1, 0, 2.5, True):
        with pytest.raises(ValueError, match="folds must be an int >= 2"):
            _context_identification().measure(volume=0.05, sub_volume=0.01, seeds=(0,), folds=bad)


def test_context_identification_skips_a_regression_with_too_few_universes_per_coefficient(identification):
    m = identification  # 32 universes per training fold, 55 quadratic coefficients
    assert all(np.isnan(v["quadratic_r2"]) and np.isfinite(v["linear_r2"]) for v in m["rows"].values())
