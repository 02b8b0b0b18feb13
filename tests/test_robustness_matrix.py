"""The seed-mean criterion of ``benchmarks/robustness_matrix.py`` (issue 10), on hand-made scores.

The script trains networks for minutes; its bookkeeping of the per-bin bias over training seeds is checked here
on score records shaped like the ones ``score()`` returns.
"""

import re
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import robustness_matrix as matrix  # noqa: E402


def _record(bias, cov):
    return {"bias": np.asarray(bias, float), "cov68_bins": np.asarray(cov, float)}


def test_seed_mean_averages_the_seeds_noise_and_keeps_a_shared_shift():
    n = matrix.EDGES.size - 1
    # noise of +-0.04 that changes sign from seed to seed, and a shift of +0.02 in the last bin shared by all
    noise = np.array([[0.04, -0.04, 0.0], [-0.04, 0.04, 0.0], [0.0, 0.0, 0.0]])
    seeds = []
    for s in range(3):
        b = np.zeros(n)
        b[:3] = noise[s]
        b[-1] = 0.02 + 0.001 * s
        seeds.append(_record(b, np.full(n, 0.60 + 0.05 * s)))
    m = matrix.seed_mean(seeds)
    assert m["max_bias"] == pytest.approx(0.021) and m["worst_bin"] == pytest.approx(matrix.EDGES[-2])
    np.testing.assert_allclose(m["bias"][:3], 0.0, atol=1e-15)
    assert m["se"] == pytest.approx(np.std([0.02, 0.021, 0.022], ddof=1) / np.sqrt(3))
    assert m["cov68"] == pytest.approx((0.65, 0.65))
    # the largest |bias| of any seed and bin is 0.04: the per-seed criterion fails this network, the mean does not
    assert max(abs(r["bias"]).max() for r in seeds) == pytest.approx(0.04)


def test_seed_mean_of_one_seed_has_no_standard_error_and_skips_empty_bins():
    n = matrix.EDGES.size - 1
    b = np.full(n, -0.01)
    b[2] = np.nan  # a bin without test clusters
    b[4] = -0.05
    m = matrix.seed_mean([_record(b, np.linspace(0.5, 0.8, n))])
    assert m["max_bias"] == pytest.approx(-0.05) and m["worst_bin"] == pytest.approx(matrix.EDGES[4])
    assert np.isnan(m["se"]) and m["cov68"] == pytest.approx((0.5, 0.8))


def test_within_bounds_checks_the_bias_and_the_coverage_apart():
    assert matrix.within_bounds(-0.03, (0.60, 0.76)) == (True, True)
    assert matrix.within_bounds(0.031, (0.62, 0.70)) == (False, True)
    assert matrix.within_bounds(0.01, (0.62, 0.81)) == (True, False)
    assert matrix.within_bounds(0.01, (0.55, 0.70)) == (True, False)


def test_context_from_own_surveys_gives_each_universe_its_own_surveys_summaries():
    from numpyro_clustermass.features import SURVEY_CONTEXT_NAMES, survey_context
    from numpyro_clustermass.simulate import mock_catalog

    family = mock_catalog(volume=0.02, seed=3, nuisance="prior", sub_volume=0.01, n_los=1)
    ctx = matrix.context_from_own_surveys(family, 0.01, seed=50, n_los=1)
    universe = np.asarray(family["sub_volume"])
    for k, u in enumerate(np.unique(universe)):
        rows = universe == u
        drawn = {c[3:]: float(family[c][np.flatnonzero(rows)[0]]) for c in family.colnames if c.startswith("nu_")}
        own = survey_context(mock_catalog(volume=0.01, seed=50 + k, nuisance=drawn, n_los=1), by=None)
        for name in SURVEY_CONTEXT_NAMES:
            np.testing.assert_array_equal(ctx[name][rows], own[name][0])
    assert ctx.meta["survey_context"]["own_survey_volume"] == 0.01 and len(ctx) == len(family)
    with pytest.raises(ValueError, match="needs a family catalogue"):
        matrix.context_from_own_surveys(mock_catalog(volume=0.01, seed=0, n_los=1), 0.01, seed=0)


def test_variants_sit_at_the_edges_of_the_family_range_where_one_is_given():
    cases = dict(matrix.variants(["alpha_sat", "sigma8"], 3.0, {"alpha_sat": (0.95, 1.05)}))
    assert list(cases) == ["fiducial", "alpha_sat = 0.95", "alpha_sat = 1.05", "sigma8 = 0.76", "sigma8 = 0.87",
                           "clustered_excess = 3"]
    assert cases["alpha_sat = 0.95"] == {"alpha_sat": 0.95} and cases["fiducial"] is None
    assert [label for label, _ in matrix.variants(["alpha_sat"], 0.0)] == ["fiducial", "alpha_sat = 0.85",
                                                                          "alpha_sat = 1.05"]


@pytest.mark.parametrize("argv, match", [
    (["--family-range", "alpha_sat", "0.8", "1.0"], r"--family-range: nuisance parameter 'alpha_sat': the range "
                                                    r"\(0.8, 1.0\) must have lo < hi and lie in \[0.85, 1.05\]"),
    (["--family-range", "c_gal", "3", "two"], r"--family-range: nuisance parameter 'c_gal': a range is a pair"),
    (["--family-range", "clustered_excess", "1", "2"], "--family-range clustered_excess: not a family parameter"),
    (["--family-range", "c_gal", "2", "3", "--family-fixed", "c_gal"], "also in --family-fixed"),
])
def test_a_bad_family_range_is_a_usage_error_before_any_work(argv, match, capsys):
    with pytest.raises(SystemExit) as exit_info:
        matrix.main(argv)
    assert exit_info.value.code == 2
    assert re.search(match, capsys.readouterr().err)
