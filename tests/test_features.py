import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from numpyro_clustermass.catalog import FEATURE_NAMES, CatalogError
from numpyro_clustermass.features import _moments_kernel, features_from_members, summarize


def _ragged(rng, n_mocks, lo=3, hi=60):
    sizes = rng.integers(lo, hi, size=n_mocks)
    mock = np.repeat(np.arange(n_mocks), sizes)
    perm = rng.permutation(mock.size)  # the kernel must not need sorted input
    R = rng.uniform(0, 1.6, mock.size)
    v = rng.normal(0, 700, mock.size) + 150
    m = 9.5 + rng.exponential(0.5, mock.size)
    return mock[perm], R[perm], v[perm], m[perm]


def test_summaries_match_scipy_per_mock():
    rng = np.random.default_rng(0)
    mock, R, v, m = _ragged(rng, 200)
    cols = summarize(mock, R, v, m)
    for k in range(0, 200, 17):
        sel = mock == k
        assert cols["Ngal"][k] == sel.sum()
        np.testing.assert_allclose(cols["sigv"][k], np.std(v[sel], ddof=1), rtol=2e-5)
        for q, arr in (("R", R), ("m", m), ("v", v)):
            x = arr[sel]
            np.testing.assert_allclose(cols[f"{q}_mean"][k], x.mean(), rtol=2e-5, atol=1e-4)
            np.testing.assert_allclose(cols[f"{q}_std"][k], x.std(), rtol=2e-5)
            np.testing.assert_allclose(cols[f"{q}_skew"][k], stats.skew(x), rtol=1e-3, atol=2e-5)
            np.testing.assert_allclose(cols[f"{q}_kurt"][k], stats.kurtosis(x), rtol=1e-3, atol=5e-5)


def test_mask_selects_galaxies():
    rng = np.random.default_rng(1)
    mock, R, v, m = _ragged(rng, 50)
    mask = rng.uniform(size=mock.size) < 0.6
    masked = summarize(mock, R, v, m, num_mocks=50, mask=mask)
    direct = summarize(mock[mask], R[mask], v[mask], m[mask], num_mocks=50)
    for name in ("Ngal", "sigv", "v_kurt", "R_skew"):
        np.testing.assert_allclose(masked[name], direct[name], rtol=1e-5, equal_nan=True)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 2**31 - 1), shift=st.floats(-3000, 3000))
def test_shape_moments_are_shift_and_order_invariant(seed, shift):
    rng = np.random.default_rng(seed)
    mock, R, v, m = _ragged(rng, 7)
    base = summarize(mock, R, v, m, num_mocks=7)
    perm = rng.permutation(mock.size)
    moved = summarize(mock[perm], R[perm], v[perm] + shift, m[perm], num_mocks=7)
    for name in ("sigv", "v_std", "v_skew", "v_kurt", "R_kurt"):
        np.testing.assert_allclose(moved[name], base[name], rtol=5e-3, atol=5e-3)
    np.testing.assert_allclose(moved["v_mean"], base["v_mean"] + shift, rtol=1e-5, atol=0.05)


def test_empty_and_tiny_mocks_give_nan_not_garbage():
    cols = summarize(np.array([0, 0, 2]), np.array([0.1, 0.2, 0.3]), np.array([10.0, 20.0, 5.0]),
                     np.array([10.0, 10.0, 10.0]), num_mocks=3)
    assert cols["Ngal"].tolist() == [2, 0, 1]
    assert np.isnan(cols["sigv"][1]) and np.isnan(cols["sigv"][2])
    assert np.isnan(cols["m_skew"][0])  # zero spread: shape undefined, as in scipy


def test_one_compilation_for_similar_sizes():
    rng = np.random.default_rng(3)
    summarize(*_ragged(rng, 300), num_mocks=300)
    before = _moments_kernel._cache_size()
    summarize(*_ragged(rng, 310), num_mocks=310)
    summarize(*_ragged(rng, 305), num_mocks=305)
    assert _moments_kernel._cache_size() - before <= 1


def test_feature_matrix_from_members():
    rng = np.random.default_rng(4)
    mock, R, v, m = _ragged(rng, 20)
    x = features_from_members({"mock": mock, "R": R, "v": v, "log_mstar": m})
    assert x.shape == (20, len(FEATURE_NAMES))
    cols = summarize(mock, R, v, m)
    np.testing.assert_allclose(x[:, 0], np.log10(cols["Ngal"]))
    np.testing.assert_allclose(x[:, 1], np.log10(cols["sigv"].astype(float)))


def test_bad_member_input_names_the_column():
    mock = np.array([0, 0, 1])
    ok = np.ones(3)
    with pytest.raises(CatalogError, match="'v'.*1 of 3"):
        summarize(mock, ok, np.array([1.0, np.nan, 2.0]), ok)
    with pytest.raises(CatalogError, match="num_mocks"):
        summarize(mock, ok, ok, ok, num_mocks=1)
    with pytest.raises(CatalogError, match="shape"):
        summarize(mock, ok[:2], ok, ok)
