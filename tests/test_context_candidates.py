"""``benchmarks/context_candidates.py`` (issue 10): candidate survey summaries, on small catalogues."""

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks import context_candidates  # noqa: E402
from numpyro_clustermass.simulate import mock_catalog  # noqa: E402


def test_candidates_are_finite_and_the_profile_spread_follows_the_concentration():
    # measured, seeds 0-3 at 0.02 (Gpc/h)^3: c_gal 2 -> 5 moves the median R_std/R_mean by +0.078..+0.080
    lo = context_candidates.candidates(mock_catalog(volume=0.02, seed=0, n_los=1, nuisance={"c_gal": 2.0}))
    hi = context_candidates.candidates(mock_catalog(volume=0.02, seed=0, n_los=1, nuisance={"c_gal": 5.0}))
    assert all(np.isfinite(v) for v in (*lo.values(), *hi.values()))
    assert 0.05 < hi["R_std/R_mean median"] - lo["R_std/R_mean median"] < 0.11


def test_r2_is_one_for_an_exact_linear_parameter_and_about_zero_for_noise():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((200, 3))
    assert context_candidates.r2(x, 2.0 * x[:, 0] - x[:, 2]) > 0.999
    assert abs(context_candidates.r2(x, rng.standard_normal(200))) < 0.1
