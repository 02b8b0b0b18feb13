"""Tests for numpyro_clustermass.posterior: normalisation, statistics against exact references, draws."""

import math

import jax
import numpy as np
import pytest

from numpyro_clustermass.posterior import MassPosterior, default_grid

GRID = np.linspace(12.5, 16.5, 801)  # dx = 0.005 dex
DX = GRID[1] - GRID[0]


def _norm_logpdf(x, mu, s):
    return -0.5 * ((x - mu) / s) ** 2 - np.log(s) - 0.5 * np.log(2 * np.pi)


def _gaussians(n=5):
    mu = np.linspace(13.8, 15.0, n)
    s = np.linspace(0.1, 0.3, n)
    post = MassPosterior.from_mixture(GRID, np.zeros((n, 1)), mu[:, None], s[:, None])
    return post, mu, s


def _bimodal():
    # weights 0.3 / 0.7, modes at 13.9 and 14.8: mean, median, HPD interval are all non-trivial
    logits = np.log(np.array([[0.3, 0.7], [0.6, 0.4]]))
    locs = np.array([[13.9, 14.8], [14.0, 14.5]])
    scales = np.array([[0.1, 0.15], [0.08, 0.2]])
    return MassPosterior.from_mixture(GRID, logits, locs, scales), logits, locs, scales


def _ref_density(logits, locs, scales):
    w = np.exp(logits - np.log(np.exp(logits).sum(-1, keepdims=True)))
    p = (w[:, None, :] * np.exp(_norm_logpdf(GRID[None, :, None], locs[:, None, :], scales[:, None, :]))).sum(-1)
    return p / (p.sum(-1, keepdims=True) * DX)


def _ref_quantile(p, q):
    # piecewise-constant density on cells: the CDF is linear inside each cell
    edges = np.concatenate([[GRID[0] - DX / 2], GRID + DX / 2])
    cdf = np.concatenate([[0.0], np.cumsum(p) * DX])
    return np.interp(q, cdf, edges)


def _ref_hpdi(p, prob):
    # brute force over all lower edges, upper end interpolated (as documented)
    edges = np.concatenate([[GRID[0] - DX / 2], GRID + DX / 2])
    cdf = np.concatenate([[0.0], np.cumsum(p) * DX])
    cdf /= cdf[-1]
    best = (np.inf, None)
    for i in range(len(edges)):
        if cdf[i] + prob > 1:
            break
        up = np.interp(cdf[i] + prob, cdf, edges)
        if up - edges[i] < best[0]:
            best = (up - edges[i], (edges[i], up))
    return best[1]


def test_density_is_normalised_and_matches_the_mixture():
    post, logits, locs, scales = _bimodal()
    assert post.log_density.shape == (2, GRID.size) and len(post) == 2
    np.testing.assert_allclose(np.exp(np.asarray(post.log_density, np.float64)).sum(-1) * DX, 1.0, atol=1e-5)
    np.testing.assert_allclose(post.density(), _ref_density(logits, locs, scales), rtol=2e-4, atol=1e-6)


def test_gaussian_statistics_are_exact_to_grid_precision():
    post, mu, s = _gaussians()
    np.testing.assert_allclose(post.mean(), mu, atol=1e-4)
    np.testing.assert_allclose(post.median(), mu, atol=1e-4)
    np.testing.assert_allclose(post.mode(), mu, atol=1e-4)  # the parabola is exact for a Gaussian
    q = post.quantiles([0.15865525, 0.84134475])
    assert q.shape == (2, 5)
    np.testing.assert_allclose(q, np.stack([mu - s, mu + s]), atol=2e-4)
    np.testing.assert_allclose(post.hpdi(0.6826895), np.stack([mu - s, mu + s]), atol=DX)
    np.testing.assert_allclose(post.aleatoric_variance, s**2, rtol=1e-5)
    np.testing.assert_array_equal(post.epistemic_variance, 0.0)
    np.testing.assert_allclose(post.variance(), s**2, rtol=1e-3)


def test_bimodal_statistics_match_numpy_references():
    post, logits, locs, scales = _bimodal()
    p = _ref_density(logits, locs, scales)
    w = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    np.testing.assert_allclose(post.mean(), (w * locs).sum(-1), atol=2e-4)
    qs = [0.05, 0.16, 0.5, 0.84, 0.95]
    ref_q = np.stack([[_ref_quantile(p[i], q) for i in range(2)] for q in qs])
    np.testing.assert_allclose(post.quantiles(qs), ref_q, atol=2e-4)
    np.testing.assert_allclose(post.mode(), GRID[np.argmax(p, -1)], atol=DX)
    assert abs(post.mode()[0] - 14.8) < 0.02  # the taller peak, not the first
    for prob in (0.5, 0.68, 0.9):
        ref = np.array([_ref_hpdi(p[i], prob) for i in range(2)]).T
        got = post.hpdi(prob)
        np.testing.assert_allclose(got, ref, atol=2e-4)
        # the interval holds the asked probability
        for i in range(2):
            inside = (GRID >= got[0, i]) & (GRID <= got[1, i])
            assert abs(p[i][inside].sum() * DX - prob) < 2 * p[i].max() * DX


def test_sample_follows_the_density():
    post, logits, locs, scales = _bimodal()
    s = post.sample(jax.random.key(0), 40000)
    assert s.shape == (40000, 2)
    np.testing.assert_allclose(s.mean(0), post.mean(), atol=0.01)
    # empirical CDF at the reference quantiles
    p = _ref_density(logits, locs, scales)
    for q in (0.1, 0.5, 0.9):
        x = np.array([_ref_quantile(p[i], q) for i in range(2)])
        np.testing.assert_allclose((s < x).mean(0), q, atol=0.01)
    s2 = post.sample(jax.random.key(0), 40000)
    np.testing.assert_array_equal(s, s2)


def test_log_prob_interpolates_and_is_minus_inf_outside():
    post, mu, s = _gaussians()
    y = mu + 0.37 * s
    np.testing.assert_allclose(post.log_prob(y), _norm_logpdf(y, mu, s), atol=2e-3)
    y2 = np.stack([mu, mu - s])
    assert post.log_prob(y2).shape == (2, 5)
    out = post.log_prob(np.full(5, 17.0))
    assert np.all(np.isneginf(out))
    with pytest.raises(ValueError, match="one log-mass per cluster"):
        post.log_prob(np.zeros(3))


def test_chunking_and_padding_do_not_change_results():
    rng = np.random.default_rng(1)
    n, k = 23, 3
    args = (rng.normal(size=(n, k)), rng.uniform(13.6, 15.0, (n, k)), rng.uniform(0.05, 0.3, (n, k)))
    big = MassPosterior.from_mixture(GRID, *args)
    small = MassPosterior.from_mixture(GRID, *args, chunk_size=5)
    np.testing.assert_allclose(np.asarray(small.log_density), np.asarray(big.log_density), rtol=1e-6, atol=1e-5)
    for stat in (lambda p: p.mean(), lambda p: p.mode(), lambda p: p.quantiles([0.2, 0.7]),
                 lambda p: p.log_prob(args[1][:, 0])):
        np.testing.assert_allclose(stat(small), stat(big), atol=1e-5)
    # HPD intervals: equal widths; near-ties between candidate intervals may shift the ends by one cell
    h_small, h_big = small.hpdi(0.68), big.hpdi(0.68)
    np.testing.assert_allclose(np.diff(h_small, axis=0), np.diff(h_big, axis=0), atol=1e-5)
    np.testing.assert_allclose(h_small, h_big, atol=DX + 1e-5)
    np.testing.assert_allclose(small.sample(jax.random.key(3), 7), big.sample(jax.random.key(3), 7), atol=1e-5)


def test_draws_give_the_variance_split_and_the_average_density():
    rng = np.random.default_rng(2)
    S, n, k = 6, 4, 2
    logits = rng.normal(size=(S, n, k))
    locs = rng.uniform(14.0, 14.6, (S, n, k))
    scales = rng.uniform(0.05, 0.2, (S, n, k))
    post = MassPosterior.from_mixture(GRID, logits, locs, scales, keep_draws=True)
    w = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    means = (w * locs).sum(-1)
    variances = (w * (scales**2 + locs**2)).sum(-1) - means**2
    np.testing.assert_allclose(post.epistemic_variance, means.var(0), rtol=1e-4)
    np.testing.assert_allclose(post.aleatoric_variance, variances.mean(0), rtol=1e-4)
    ref = np.mean([_ref_density(logits[s], locs[s], scales[s]) for s in range(S)], axis=0)
    np.testing.assert_allclose(post.density(), ref, rtol=5e-4, atol=1e-6)
    assert post.draws_log_density.shape == (S, n, GRID.size)
    np.testing.assert_allclose(post.mean(), means.mean(0), atol=2e-4)
    np.testing.assert_allclose(post.variance(), post.total_variance, rtol=2e-3)


def test_select_and_from_log_density():
    post, mu, s = _gaussians()
    sub = post.select([4, 0])
    np.testing.assert_allclose(sub.mean(), mu[[4, 0]], atol=1e-4)
    np.testing.assert_allclose(post.select(mu > 14.5).mean(), mu[mu > 14.5], atol=1e-4)
    raw = _norm_logpdf(GRID[None, :], mu[:, None], s[:, None]) + 3.0  # unnormalised
    again = MassPosterior.from_log_density(GRID, raw)
    np.testing.assert_allclose(np.asarray(again.log_density), np.asarray(post.log_density), rtol=1e-5, atol=1e-4)
    np.testing.assert_allclose(again.aleatoric_variance, s**2, rtol=1e-3)  # default: the grid variance
    stacked = MassPosterior.from_log_density(GRID, np.stack([raw, raw]))  # (S, n, G) averages draws
    np.testing.assert_allclose(np.asarray(stacked.log_density), np.asarray(post.log_density), rtol=1e-5, atol=1e-4)


def test_default_grid_and_bad_inputs():
    g = default_grid(np.array([13.5, 14.0, 15.3]))
    assert g.size == 512 and math.isclose(g[0], 13.0) and math.isclose(g[-1], 15.8)
    with pytest.raises(ValueError, match="uniform"):
        MassPosterior(np.array([1.0, 2.0, 4.0]), np.zeros((1, 3)))
    with pytest.raises(ValueError, match="shape"):
        MassPosterior(GRID, np.zeros((2, 5)))
    post, _, _ = _gaussians()
    with pytest.raises(ValueError, match=r"prob must be in \(0, 1\]; got prob=\[1.5\]"):
        post.hpdi(1.5)
    with pytest.raises(ValueError, match="quantile levels"):
        post.quantiles([0.5, 2.0])


# ------------------------------------------------------------- bad input, faults and edge cases
@pytest.mark.parametrize("prob", [0.0, -0.1, 1.5, float("nan")])
def test_hpdi_rejects_a_probability_outside_0_1(prob):
    post, _, _ = _gaussians(2)
    with pytest.raises(ValueError, match=r"hpdi probability prob must be in \(0, 1\]; got prob=\[" + str(prob)):
        post.hpdi(prob)
    with pytest.raises(TypeError, match="one probability"):
        post.hpdi([0.5, 0.6])


def test_hpdi_tiny_and_full_probability_give_ordered_intervals_inside_the_cells():
    post, mu, s = _gaussians()
    lo_cells, hi_cells = GRID[0] - DX / 2, GRID[-1] + DX / 2
    for prob in (1e-12, 1e-9, 1e-6):
        lo, hi = post.hpdi(prob)
        assert np.all(lo <= hi) and np.all(lo >= lo_cells - 1e-6) and np.all(hi <= hi_cells + 1e-6)
        # the shortest tiny interval sits in the highest cell: within one cell of the mode
        np.testing.assert_allclose(lo, mu, atol=DX + 1e-4)
    lo, hi = post.hpdi(1.0)  # every cell holding mass, up to float32 tails below 1e-6 in all
    assert np.all(lo <= mu - 4 * s) and np.all(hi >= mu + 4 * s) and np.all(hi <= hi_cells + 1e-5)


def test_hpdi_binary_search_gives_the_sweeps_intervals_on_random_posteriors():
    """The vectorised binary search (hpdi off CPU) against the two-pointer sweep (hpdi on CPU) on random 1-6
    component mixtures, some multimodal, some narrower than a cell, some cut by the grid's edge, plus rows with
    empty cells: the same interval to float32 rounding (measured: identical on 2048 such rows at 512 points)."""
    import jax.numpy as jnp

    from numpyro_clustermass.posterior import _hpdi_kernel, _k_hpdi, _k_hpdi_search

    rng = np.random.default_rng(5)
    n, k, g = 300, 6, np.linspace(13.0, 16.0, 257)
    logits = rng.normal(0, 2, (n, k))
    logits[rng.random((n, k)) < 0.4] = -np.inf
    logits[:, 0] = np.maximum(logits[:, 0], 0.0)  # one live component per row
    locs = rng.uniform(12.8, 16.2, (n, k))
    scales = np.exp(rng.uniform(np.log(0.002), np.log(0.5), (n, k)))
    post = MassPosterior.from_mixture(g, logits, locs, scales)
    ld = np.asarray(post.log_density).copy()
    ld[:20, 100:140] = -np.inf  # empty cells inside the support
    post = MassPosterior(g, ld - np.log(np.exp(ld).sum(-1, keepdims=True) * (g[1] - g[0])))
    assert _hpdi_kernel(post.log_density) is _k_hpdi  # these tests run on CPU
    for prob in (1e-9, 0.05, 0.3, 0.5, 0.68, 0.9, 0.95, 0.997, 1.0):
        p = jnp.float32(prob)
        sweep = np.asarray(_k_hpdi(post.log_density, post._grid32, p))
        search = np.asarray(_k_hpdi_search(post.log_density, post._grid32, p))
        np.testing.assert_allclose(search, sweep, rtol=0, atol=1e-5, err_msg=f"prob={prob}")


@pytest.mark.parametrize("qs,err,match", [
    ([float("nan")], ValueError, r"quantile levels must be in \[0, 1\]; got qs=\[nan\] \(NaN is not"),
    ([0.5, -0.1], ValueError, r"got qs=\[-0.1\]"),
    ([1.0 + 1e-9], ValueError, r"in \[0, 1\]"),
    ([[0.1, 0.2]], ValueError, "1-D sequence; got qs of shape"),
    (["a"], TypeError, "quantile levels must be numbers"),
])
def test_quantiles_reject_bad_levels(qs, err, match):
    post, _, _ = _gaussians(2)
    with pytest.raises(err, match=match):
        post.quantiles(qs)


def test_quantiles_at_0_and_1_are_the_ends_of_the_cells_with_mass():
    post, mu, s = _gaussians(2)
    q = post.quantiles([0.0, 1.0])
    assert np.all(q[0] >= GRID[0] - DX / 2 - 1e-5) and np.all(q[1] <= GRID[-1] + DX / 2 + 1e-5)
    assert np.all(q[0] < mu - 4 * s) and np.all(q[1] > mu + 4 * s)


@pytest.mark.parametrize("num", [-1, 2.5, True, "3", None])
def test_sample_rejects_a_bad_num_samples(num):
    post, _, _ = _gaussians(2)
    with pytest.raises(ValueError, match=f"num_samples must be a non-negative int .*got {num!r}"):
        post.sample(jax.random.key(0), num)


def test_sample_zero_draws_and_key_types():
    post, _, _ = _gaussians(2)
    assert post.sample(jax.random.key(0), 0).shape == (0, 2)
    np.testing.assert_array_equal(post.sample(3, 5), post.sample(jax.random.key(3), 5))
    assert post.sample(jax.random.PRNGKey(0), np.int64(4)).shape == (4, 2)
    with pytest.raises(TypeError, match="rng_key must be a JAX PRNG key"):
        post.sample(None, 5)


def test_log_prob_next_to_a_zero_cell_uses_the_cell_value():
    g = np.linspace(0.0, 1.0, 11)  # dx = 0.1, cells [g - 0.05, g + 0.05]
    ld = np.full((1, 11), -np.inf)
    ld[0, 5:8] = 0.0  # mass on cells 5..7: [0.45, 0.75]
    post = MassPosterior.from_log_density(g, ld)
    level = float(np.asarray(post.log_density)[0, 5])
    out = post.log_prob(np.array([[0.46], [0.5], [0.62], [0.74], [0.44], [0.76]]))[:, 0]
    np.testing.assert_allclose(out[:4], level, atol=1e-5)  # inside the cells with mass, even between
    assert np.all(np.isneginf(out[4:]))  # a centre with mass and one without (before: -inf at 0.46, 0.74)
    # the outer half cells belong to the grid, as for quantiles, samples and metrics.pit
    edge = MassPosterior.from_log_density(g, np.zeros((1, 11)))
    np.testing.assert_allclose(edge.log_prob(np.array([[-0.04], [1.04]])), -np.log(1.1), atol=1e-5)
    with pytest.raises(ValueError, match="log10_mass has 1 NaN"):
        edge.log_prob(np.array([np.nan]))
    assert np.all(np.isneginf(edge.log_prob(np.array([[-0.06], [1.06]]))))


def test_constructors_reject_nan_inputs_and_bad_chunk_sizes():
    with pytest.raises(ValueError, match="1 NaN and 1 \\+inf"):
        MassPosterior.from_log_density(GRID, np.where(np.arange(GRID.size) == 3, np.nan,
                                                      np.where(np.arange(GRID.size) == 4, np.inf, 0.0))[None])
    with pytest.raises(ValueError, match="1 of 2 row\\(s\\) with zero density everywhere"):
        MassPosterior.from_log_density(GRID, np.stack([np.zeros(GRID.size), np.full(GRID.size, -np.inf)]))
    ones = np.ones((2, 1))
    with pytest.raises(ValueError, match="scales has 1 value\\(s\\) that are not finite and > 0"):
        MassPosterior.from_mixture(GRID, 0 * ones, 14 * ones, np.array([[0.2], [0.0]]))
    with pytest.raises(ValueError, match="locs has 1 non-finite"):
        MassPosterior.from_mixture(GRID, 0 * ones, np.array([[14.0], [np.nan]]), 0.2 * ones)
    with pytest.raises(ValueError, match="every component at -inf"):
        MassPosterior.from_mixture(GRID, np.array([[0.0], [-np.inf]]), 14 * ones, 0.2 * ones)
    with pytest.raises(ValueError, match="chunk_size must be a positive int"):
        MassPosterior.from_mixture(GRID, 0 * ones, 14 * ones, 0.2 * ones, chunk_size=0)
    with pytest.raises(ValueError, match="log_density must have shape"):
        MassPosterior.from_log_density(GRID, np.zeros(GRID.size))


def test_select_rejects_out_of_range_indices_and_wrong_length_masks():
    post, mu, _ = _gaussians()
    with pytest.raises(IndexError, match="1 index\\(es\\) outside \\[-5, 5\\)"):
        post.select([0, 5])  # JAX indexing would clamp 5 to 4 silently
    with pytest.raises(ValueError, match="boolean mask of rows must have shape \\(5,\\)"):
        post.select(np.array([True, False, True]))
    with pytest.raises(TypeError, match="boolean mask or integer indices"):
        post.select([0.5])
    np.testing.assert_allclose(post.select([-1]).mean(), mu[-1:], atol=1e-4)
    assert len(post.select([])) == 0


def test_posteriors_of_one_training_set_share_its_fitted_prior():
    # the log-spline training prior is fitted once per training set, not once per posterior (or per select)
    from numpyro_clustermass import posterior as P
    from numpyro_clustermass.priors import Flat, TrainingPrior

    rng = np.random.default_rng(4)
    m = rng.normal(14.0, 0.3, 5000)
    g = np.linspace(12.5, 16.0, 351)
    mk = lambda n: MassPosterior.from_mixture(g, np.zeros((n, 1)), rng.uniform(13.8, 14.6, (n, 1)),  # noqa: E731
                                              np.full((n, 1), 0.15), training_log_mass=m)
    a, b = mk(3), mk(5)
    assert a.prior is b.prior and a.select([0, 1]).prior is a.prior
    assert isinstance(a.prior, TrainingPrior)
    # the same densities as a prior fitted afresh
    np.testing.assert_allclose(np.asarray(a.reweight(Flat(13.5, 15.3)).log_density),
                               np.asarray(a.reweight(Flat(13.5, 15.3), source=TrainingPrior.from_samples(m)).log_density),
                               atol=1e-5)
    # another training set gets its own; at most eight are kept
    others = [P.training_prior(m + 0.01 * k) for k in range(1, 10)]
    assert all(o is not a.prior for o in others) and len(P._TRAINING_PRIORS) <= 8


def test_chunks_are_joined_in_place():
    # RowsBuffer writes each chunk into one array (donated, so no second copy of the catalogue's densities is
    # made) and cuts the padded last chunk; the result equals a concatenation
    import jax.numpy as jnp

    from numpyro_clustermass.posterior import RowsBuffer

    parts = [jnp.arange(12.0).reshape(4, 3) + 100 * k for k in range(3)]
    buf = RowsBuffer(n=10)
    buf.put(parts[0], 0, 4)
    first = buf.result()
    buf.put(parts[1], 4, 8)
    assert first.is_deleted()  # the buffer was donated: the write was in place
    buf.put(parts[2], 8, 10)  # the last chunk is padded to 4 rows; 2 are kept
    np.testing.assert_array_equal(np.asarray(buf.result()), np.concatenate([np.asarray(p) for p in parts])[:10])
    # along the draws axis, and one unpadded chunk is kept as it is
    d = RowsBuffer(n=4, axis=1)
    d.put(parts[0][None], 0, 4)
    assert d.result() is not None and d.result().shape == (1, 4, 3)
    with pytest.raises(ValueError, match="no chunk"):
        RowsBuffer(n=3).result()


def test_host_rows_join_chunks_one_late_and_cut_the_padding():
    # HostRows copies a chunk to the host when the next one is put (so a dispatch loop stays at most two chunks
    # ahead), along any axis, cutting the padded last chunk; with no chunk it says so
    import jax.numpy as jnp

    from numpyro_clustermass.posterior import HostRows

    parts = [jnp.arange(12.0).reshape(3, 4) + 100 * k for k in range(3)]  # (draws, chunk rows)
    rows = HostRows(n=10, axis=1)
    rows.put(parts[0], 0, 4)
    assert rows._out is None  # nothing copied yet: the first chunk is pending
    rows.put(parts[1], 4, 8)
    rows.put(parts[2], 8, 10)
    out = rows.result()
    assert isinstance(out, np.ndarray) and out.dtype == np.float32
    np.testing.assert_array_equal(out, np.concatenate([np.asarray(p) for p in parts], axis=1)[:, :10])
    with pytest.raises(ValueError, match="no chunk was put"):
        HostRows(n=3).result()
