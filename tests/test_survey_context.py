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
                  stats.linregress(lr, n).intercept, np.median(col["v_kurt"]), np.median(col["R_mean"])]
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
    # robustness_matrix (3 seeds, 8000 halos): the context network within +0.033 of the truth on this variant,
    # the fiducial-trained one at -0.19; here 10^14.0-14.5 only, where the context network has no high-mass offset.
    # Measured once (training seed 0, deterministic): own survey -0.014..+0.015, fiducial survey -0.172..-0.117
    print("reweighted-mode bias 10^14.0-14.5, own survey:", np.round(bias["own"], 3), "fiducial survey:",
          np.round(bias["fiducial"], 3))
    assert np.all(np.abs(bias["own"]) < 0.05), bias
    assert np.all(bias["fiducial"] < -0.06) and bias["fiducial"].min() < -0.1, bias
