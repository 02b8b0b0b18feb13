"""Shift detection (issue 10, part 4) and coverage by bin (part 5): the fit's feature reference, the per-cluster
out-of-distribution score and warning, the catalogue-level two-sample test, their save/load round trip, and
coverage_by_bin on a constructed case with known coverage."""

from __future__ import annotations

import hashlib
import json
import os
import sys
import threading
import warnings
import zipfile

import numpy as np
import pytest

import numpyro_clustermass as ncm
from numpyro_clustermass import metrics, plots
from numpyro_clustermass.diagnostics import covariate_shift
from numpyro_clustermass.posterior import MassPosterior
from numpyro_clustermass.shift import FeatureReference, mmd_test
from numpyro_clustermass.simulate import mock_catalog

# a small MDN is enough: shift detection looks at the features, not at the network's quality
EST = dict(num_components=2, hidden=(8,))


@pytest.fixture(scope="module")
def mock_fit():
    train = mock_catalog(volume=0.01, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ncm.FitWarning)  # two epochs learn little; not what is tested here
        return ncm.fit(ncm.MDN(**EST), train, num_epochs=2, batch_size=256, progress_bar=False)


def _shift_warnings(record):
    return [w for w in record if issubclass(w.category, ncm.CovariateShiftWarning)]


# ---------------------------------------------------------------------------------------------- FeatureReference
def test_reference_threshold_is_calibrated_and_shifted_rows_score_higher():
    """Heavy-tailed and discrete columns (like the kurtosis columns and LogNgal): the held-out alarm rate is near
    alpha, and rows moved out score higher than the same rows unmoved."""
    rng = np.random.default_rng(0)

    def draw(n):
        x = np.column_stack([rng.standard_t(3, n), rng.normal(size=n), np.round(rng.exponential(2.0, n)),
                             rng.normal(size=n)])
        x[:, 3] += 0.8 * x[:, 1]  # correlated columns
        return (x - np.array([0.0, 0.0, 2.0, 0.0])) / np.array([1.7, 1.0, 2.0, 1.3])

    ref = FeatureReference.build(draw(20000), draw(5000), seed=0)
    assert ref.held_out and ref.reservoir.shape == (2000, 4)
    test = draw(50000)
    s = ref.score(test)
    # alpha = 0.001: 50 of 50000 expected; the threshold is estimated from the top 7 of 7000 held-out scores
    # (5000 given, 2000 reservoir), so the realised rate spreads by a factor ~2 around it
    assert 0.0002 < np.mean(s > ref.threshold) < 0.003
    moved = test[:1000].copy()
    moved[:, 1] += 3.0
    assert np.mean(ref.score(moved) > s[:1000]) > 0.9 and np.median(ref.score(moved)) > 2 * np.median(s)
    beyond = test[:5].copy()
    beyond[:, 0] = ref.quantiles[-1, 0] + 1.0  # beyond the training range of column 0
    assert np.all(ref.score(beyond) > ref.threshold)
    p = ref.tail_probability(np.array([0.0, ref.threshold, 1e9]))
    assert p[0] == 1.0 and p[2] == pytest.approx(1.0 / (1 + ref.calibration.size))


def test_reference_bad_input():
    rng = np.random.default_rng(1)
    ref = FeatureReference.build(rng.normal(size=(100, 3)))
    assert ref.held_out and ref.reservoir.shape == (50, 3) and ref.n_train == 50  # half set aside
    one_halo = FeatureReference.build(rng.normal(size=(6, 3)), groups=np.zeros(6))
    assert not one_halo.held_out and one_halo.n_train == 6  # nothing left to hold out
    with pytest.raises(ValueError, match=r"shape \(n, 3\)"):
        ref.score(np.zeros((2, 4)))
    with pytest.raises(ValueError, match="non-finite"):
        FeatureReference.build(np.full((10, 2), np.nan))
    with pytest.raises(ValueError, match="max_rows"):
        mmd_test(ref, rng.normal(size=(50, 3)), max_rows=0)


def test_mmd_test_finds_the_shifted_feature():
    rng = np.random.default_rng(2)
    names = ("a", "b", "c", "d")
    ref = FeatureReference.build(rng.normal(size=(10000, 4)), rng.normal(size=(1000, 4)), feature_names=names)
    same = mmd_test(ref, rng.normal(size=(3000, 4)), num_permutations=200, seed=0)
    x = rng.normal(size=(3000, 4))
    x[:, 2] += 0.3
    moved = mmd_test(ref, x, num_permutations=200, seed=0)
    assert not same.shifted and same.drivers == ()
    assert moved.shifted and moved.pvalue == pytest.approx(1 / 201) and moved.drivers == ("c",)
    assert moved.per_feature.feature[0] == "c" and moved.per_feature.mean_shift[0] == pytest.approx(0.3, abs=0.06)


# ---------------------------------------------------------------------------------------------- with a fit
def test_in_distribution_catalogue_raises_no_alarm(mock_fit):
    test = mock_catalog(volume=0.01, seed=1)
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        post = mock_fit.posterior(test)
    assert not _shift_warnings(record)
    assert post.ood_score.shape == (len(test),)
    res = covariate_shift(mock_fit, test, num_permutations=200)
    # a 5% test (benchmarks/shift_detection.py measures its false-alarm rate): this seed gives p well above it
    assert not res.shifted and 0 < res.n_catalog <= 1000
    assert res.drivers == ()


def test_scores_and_densities_do_not_depend_on_the_chunking(mock_fit):
    """Fit.posterior standardises and scores the features a chunk at a time (so that its memory beyond the result
    does not grow with the catalogue): chunks of 7 rows give the scores of the whole catalogue at once and the
    densities of one chunk, and the edge-peak check sees every row."""
    test = mock_catalog(volume=0.01, seed=1)
    whole = mock_fit.posterior(test)
    chunked = mock_fit.posterior(test, chunk_size=7)
    direct = mock_fit.feature_reference.score(mock_fit.x_scaler.transform(test.features()))
    np.testing.assert_allclose(whole.ood_score, direct, rtol=1e-12)
    # not bit for bit: numpy's matrix products of 7 rows and of 2723 can round differently (1 ulp, 4.6e-15
    # relative, in 9% of the rows in one CI run); a row scored in the wrong chunk or against the wrong rows would
    # differ at order one
    np.testing.assert_allclose(chunked.ood_score, whole.ood_score, rtol=1e-12)
    # float32 network outputs of batches of other shapes round differently too: up to 2.9e-5 (2.7e-6 relative)
    # in the posteriors' tails at log density -8 on one machine
    np.testing.assert_allclose(np.asarray(chunked.log_density), np.asarray(whole.log_density), rtol=1e-5,
                               atol=1e-5)
    np.testing.assert_allclose(chunked.aleatoric_variance, whole.aleatoric_variance, rtol=1e-5)
    # a grid that starts at the two-epoch network's median mode: the posteriors below it peak on its lower edge,
    # wherever they fall among the chunks
    narrow = np.linspace(float(np.median(whole.mode())), float(mock_fit.grid[-1]), 101)
    counts = []
    for size in (7, 4096):
        with warnings.catch_warnings(record=True) as record:
            warnings.simplefilter("always")
            mock_fit.posterior(test, grid=narrow, chunk_size=size)
        msgs = [str(w.message) for w in record if "posteriors peak in the outer" in str(w.message)]
        assert len(msgs) == 1
        counts.append(msgs[0].split(" of ")[0])
    assert counts[0] == counts[1] and int(counts[0]) > 0


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the priority is set per thread on Linux only")
def test_fit_builds_the_reference_beside_the_training_at_the_lowest_priority(monkeypatch):
    """The reference is built in another thread at nice 19, so that it takes the cores the first epoch leaves
    idle (a scratch A/B of 12 alternating fits, twice: the first epoch was 4-16 ms slower at the usual priority);
    the caller's priority is left alone."""
    from numpyro_clustermass.inference import fitting

    seen = {}

    class Recording(FeatureReference):
        @classmethod
        def build(cls, *args, **kwargs):
            seen["thread"] = threading.get_native_id()
            seen["nice"] = os.getpriority(os.PRIO_PROCESS, seen["thread"])
            return FeatureReference.build(*args, **kwargs)

    monkeypatch.setattr(fitting, "FeatureReference", Recording)
    before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ncm.FitWarning)
        f = ncm.fit(ncm.MDN(**EST), mock_catalog(volume=0.005, seed=1), num_epochs=1, progress_bar=False)
    assert isinstance(f.feature_reference, FeatureReference)
    assert seen["thread"] != threading.get_native_id()
    assert seen["nice"] == 19
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == before


def test_column_quantiles_match_numpy_on_ties_and_a_single_row():
    from numpyro_clustermass.shift import column_quantiles

    rng = np.random.default_rng(3)
    x = np.column_stack([rng.integers(0, 5, 500).astype(float), rng.standard_t(2, 500)])  # ties, heavy tails
    lv = np.linspace(0.0, 1.0, 257)
    np.testing.assert_allclose(column_quantiles(x, lv), np.quantile(x, lv, axis=0), rtol=0, atol=1e-12)
    np.testing.assert_array_equal(column_quantiles(x[:1], lv), np.repeat(x[:1], lv.size, axis=0))
    for bad_x, bad_lv, match in ((x[:0], lv, r"x must be \(n >= 1, d\); got shape \(0, 2\)"),
                                 (x[:, 0], lv, r"x must be \(n >= 1, d\); got shape \(500,\)"),
                                 (x, [0.5, 1.5], "levels must be a 1-D array in \\[0, 1\\]"),
                                 (x, [np.nan], "levels must be a 1-D array in \\[0, 1\\]")):
        with pytest.raises(ValueError, match=match):
            column_quantiles(bad_x, bad_lv)


def test_shifted_catalogue_warns_and_is_detected(mock_fit):
    """No interloper background (the mock's default is 0.02 per (Mpc/h)^3) moves many clusters beyond the training
    features: the warning and the test fire."""
    test = mock_catalog(volume=0.01, seed=1)
    shifted = mock_catalog(volume=0.01, seed=1, n_background=0.0)
    base = mock_fit.posterior(test).ood_score
    with pytest.warns(ncm.CovariateShiftWarning, match=r"\d+ of \d+ clusters have features outside"):
        post = mock_fit.posterior(shifted)
    assert np.median(post.ood_score) > np.median(base)
    res = covariate_shift(mock_fit, shifted, num_permutations=200)
    assert res.shifted and res.pvalue < 0.01 and len(res.drivers) >= 1
    # selecting and reweighting keep the score
    assert np.array_equal(post.select([0, 2]).ood_score, post.ood_score[[0, 2]])
    assert np.array_equal(post.reweight(ncm.priors.Flat(13.5, 15.3)).ood_score, post.ood_score)


def test_one_shifted_column_scores_higher(mock_fit):
    test = mock_catalog(volume=0.01, seed=1)
    cols = dict(test.columns)
    cols["R_mean"] = cols["R_mean"] + 3.0 * np.std(cols["R_mean"])
    moved = ncm.Catalog(cols)
    with pytest.warns(ncm.CovariateShiftWarning):
        s_moved = mock_fit.posterior(moved).ood_score
    s_test = mock_fit.posterior(test).ood_score
    assert np.mean(s_moved > s_test) > 0.95 and np.median(s_moved) > 1.5 * np.median(s_test)
    assert covariate_shift(mock_fit, moved, num_permutations=100).drivers[0] == "R_mean"


def test_save_load_round_trip_keeps_the_reference(mock_fit, tmp_path):
    path = mock_fit.save(tmp_path / "fit.ncm")
    g = ncm.load(path)
    a, b = mock_fit.feature_reference, g.feature_reference
    for name in ("quantiles", "levels", "center", "whitening", "calibration", "reservoir"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    assert (a.alpha, a.held_out, a.n_train, a.feature_names) == (b.alpha, b.held_out, b.n_train, b.feature_names)
    test = mock_catalog(volume=0.005, seed=3)
    np.testing.assert_array_equal(g.posterior(test).ood_score, mock_fit.posterior(test).ood_score)
    assert covariate_shift(g, test, num_permutations=50).pvalue == covariate_shift(mock_fit, test,
                                                                                  num_permutations=50).pvalue


def _strip_reference(src, dst):
    """A copy of a fit file as written before fits kept a feature reference (manifest and checksum redone)."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    manifest = json.loads(members["manifest.json"])
    manifest.pop("feature_reference")
    for name in [n for n in manifest["arrays"] if n.startswith("feature_reference_")]:
        members.pop(manifest["arrays"].pop(name)["member"])
    text = json.dumps(manifest).encode()
    members["manifest.json"], members["manifest.sha256"] = text, (hashlib.sha256(text).hexdigest() + "\n").encode()
    with zipfile.ZipFile(dst, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)


def test_old_fit_file_loads_without_shift_detection(mock_fit, tmp_path):
    path = mock_fit.save(tmp_path / "fit.ncm")
    old = tmp_path / "old.ncm"
    _strip_reference(path, old)
    with pytest.warns(ncm.FitWarning, match="saved before fits kept a summary"):
        g = ncm.load(old)
    assert g.feature_reference is None
    test = mock_catalog(volume=0.005, seed=3)
    post = g.posterior(test)
    assert post.ood_score is None
    np.testing.assert_array_equal(post.log_density, mock_fit.posterior(test).log_density)
    with pytest.raises(ValueError, match="refit it to test for covariate shift"):
        covariate_shift(g, test)


# ---------------------------------------------------------------------------------------------- coverage_by_bin
def _gaussian_posterior(mu, sd=0.1):
    n = mu.size
    return MassPosterior.from_mixture(np.linspace(12.5, 16.5, 2001), np.zeros((n, 1)), mu[:, None],
                                      np.full((n, 1), sd))


def test_coverage_by_bin_on_a_constructed_case():
    """Posteriors N(mu, 0.1): the 68% central interval is mu +- 0.0994, the 95% one mu +- 0.196. Truths at mu (both
    cover), at mu + 0.15 (only the 95% covers) and at mu + 0.3 (neither), in chosen mass bins."""
    mu = np.concatenate([np.full(40, 14.05), np.full(30, 14.17), np.full(20, 14.55), np.full(20, 14.25)])
    off = np.concatenate([np.zeros(40), np.full(30, 0.15), np.zeros(20), np.full(20, 0.3)])
    y = mu + off  # true-mass bins: 14.0 (40 at mu), 14.3 (30 at +0.15), 14.5 (20 at mu and 20 at +0.3)
    df = metrics.coverage_by_bin(_gaussian_posterior(mu), y)
    assert len(df) == 18 and df.n.sum() == 110 and df.attrs["by"] == "log_mass"
    row = df.set_index(df.bin_lo.round(2))
    assert (row.loc[14.0, "n"], row.loc[14.0, "coverage_68"], row.loc[14.0, "coverage_95"]) == (40, 1.0, 1.0)
    assert (row.loc[14.3, "n"], row.loc[14.3, "coverage_68"], row.loc[14.3, "coverage_95"]) == (30, 0.0, 1.0)
    assert (row.loc[14.5, "n"], row.loc[14.5, "coverage_68"], row.loc[14.5, "coverage_95"]) == (40, 0.5, 0.5)
    assert row.loc[14.5, "stderr_68"] == pytest.approx(np.sqrt(0.68 * 0.32 / 40))
    assert row.loc[14.5, "stderr_95"] == pytest.approx(np.sqrt(0.95 * 0.05 / 40))
    assert np.isnan(row.loc[13.5, "coverage_68"]) and row.loc[13.5, "n"] == 0
    # binned by the posterior centre instead (a user array)
    by_mu = metrics.coverage_by_bin(_gaussian_posterior(mu), y, by=mu, edges=[14.0, 14.1, 14.2, 14.3, 14.6])
    assert by_mu.n.tolist() == [40, 30, 20, 20]
    assert by_mu.coverage_68.tolist() == [1.0, 0.0, 0.0, 1.0] and by_mu.coverage_95.tolist() == [1.0, 1.0, 0.0, 1.0]
    assert by_mu.attrs["by"] == "value"


def test_coverage_by_bin_of_a_feature_and_bad_input():
    cat = mock_catalog(volume=0.005, seed=4)
    mu = cat.log_mass
    post = _gaussian_posterior(mu)
    df = metrics.coverage_by_bin(post, cat, by="Logsigv", bins=5)
    assert len(df) == 5 and df.n.sum() == len(cat) and df.attrs["by"] == "Logsigv"
    assert np.all(df.coverage_68 == 1.0)  # every truth at its posterior's centre
    assert metrics.coverage_by_bin(post, cat, by="n_interlopers", bins=3).n.sum() == len(cat)
    with pytest.raises(TypeError, match="must be a Catalog"):
        metrics.coverage_by_bin(post, mu, by="Logsigv")
    with pytest.raises(ValueError, match="no column 'nope'"):
        metrics.coverage_by_bin(post, cat, by="nope")
    with pytest.raises(ValueError, match="shape"):
        metrics.coverage_by_bin(post, cat, by=np.zeros(3))
    fig = plots.coverage_by_bin(df)
    assert fig.axes[0].get_xlabel() == "Logsigv"
