"""Property-based tests of MassPosterior and its reweighting on random small grids and random densities.

Shapes are drawn from a few fixed sizes so that the compiled kernels are reused across examples. The
number of examples per property is ``NCM_PROPERTY_EXAMPLES`` (default 20, the whole file in well under
30 s); run ``NCM_PROPERTY_EXAMPLES=2000 pytest tests/test_properties_posterior.py`` for a thorough search.
"""

from __future__ import annotations

import os
import warnings

import jax
import numpy as np
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from numpyro_clustermass.posterior import MassPosterior
from numpyro_clustermass.priors import Flat, Tabulated

N_EXAMPLES = int(os.environ.get("NCM_PROPERTY_EXAMPLES", "20"))
PROP = settings(max_examples=N_EXAMPLES, deadline=None, suppress_health_check=[HealthCheck.too_slow])
N_CLUSTERS, N_COMPONENTS = 3, 2
GRID_SIZES = (16, 33, 64)


@st.composite
def grids(draw):
    lo = draw(st.floats(10.0, 15.0))
    width = draw(st.floats(0.5, 4.0))
    size = draw(st.sampled_from(GRID_SIZES))
    return np.linspace(lo, lo + width, size)


@st.composite
def mixture_posteriors(draw, unimodal=False):
    """A grid and Gaussian mixtures whose components sit inside it (or slightly beyond), any width from a
    third of a cell to the whole grid."""
    grid = draw(grids())
    lo, hi = grid[0], grid[-1]
    dx = (hi - lo) / (grid.size - 1)
    shape = (N_CLUSTERS, N_COMPONENTS)
    floats = lambda a, b: st.floats(float(a), float(b))  # noqa: E731
    locs = np.array(draw(st.lists(floats(lo - 0.1 * (hi - lo), hi + 0.1 * (hi - lo)), min_size=6, max_size=6)))
    log_scales = np.array(draw(st.lists(floats(np.log(dx / 3), np.log(hi - lo)), min_size=6, max_size=6)))
    logits = np.array(draw(st.lists(st.floats(-5.0, 5.0), min_size=6, max_size=6))).reshape(shape)
    locs, scales = locs.reshape(shape), np.exp(log_scales).reshape(shape)
    if unimodal:
        locs[:, 1], scales[:, 1] = locs[:, 0], scales[:, 0]  # one Gaussian per cluster
    post = MassPosterior.from_mixture(grid, logits, locs, scales)
    return post


@st.composite
def positive_priors(draw, grid):
    """A Tabulated prior, strictly positive on and around the grid, with a random log density."""
    lo, hi = grid[0] - 1.0, grid[-1] + 1.0
    vals = draw(st.lists(st.floats(-6.0, 6.0), min_size=9, max_size=9))
    return Tabulated(np.linspace(lo, hi, 9), np.array(vals))


def _cells(post):
    return post.grid[0] - post.dx / 2, post.grid[-1] + post.dx / 2


def _ld(post):
    return np.asarray(post.log_density, np.float64)


def _f32_tol(*lds):
    """float32 rounding of log densities of magnitude up to L: exp() is off by ~L * 1.2e-7 relative (a
    posterior whose mass under the target lies in its far tail, log density ~ -1000, keeps only that)."""
    big = max(float(np.max(np.abs(ld[np.isfinite(ld)]), initial=1.0)) for ld in lds)
    return 3e-5 + 4 * np.finfo(np.float32).eps * big


def _assert_normalised(post, source=None):
    ld = _ld(post)
    assert not np.isnan(ld).any() and not (ld == np.inf).any()
    tol = _f32_tol(ld, *([] if source is None else [_ld(source)]))
    np.testing.assert_allclose(np.exp(ld).sum(-1) * post.dx, 1.0, rtol=tol)


# ------------------------------------------------------------------------------------------ reweighting
@PROP
@given(st.data())
def test_reweighting_to_the_source_prior_is_the_identity(data):
    post = data.draw(mixture_posteriors())
    a = data.draw(positive_priors(post.grid))
    out = post.reweight(a, source=a)
    # float32: log(q) + w - w, renormalised; measured |Δ| <= 4e-6 over 2000 examples
    np.testing.assert_allclose(_ld(out), _ld(post), atol=2e-5, rtol=0)
    _assert_normalised(out)


@PROP
@given(st.data())
def test_reweighted_posteriors_are_normalised_and_never_nan(data):
    post = data.draw(mixture_posteriors())
    lo, hi = post.grid[0], post.grid[-1]
    a = data.draw(st.floats(float(lo), float(hi)))
    b = data.draw(st.floats(float(lo), float(hi)))
    assume(abs(a - b) > 1e-3)
    target = Flat(min(a, b), max(a, b))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # clusters with no mass on the target: filled
        out = post.reweight(target, source=data.draw(positive_priors(post.grid)), on_empty="warn")
    _assert_normalised(out, post)
    # all the mass is on the cells that overlap the target's support
    keep = (post.grid + post.dx / 2 > target.lo) & (post.grid - post.dx / 2 < target.hi)
    assert np.all(np.isneginf(_ld(out)[:, ~keep]))


@PROP
@given(st.data())
def test_reweighting_composes(data):
    post = data.draw(mixture_posteriors())
    a, b, c = (data.draw(positive_priors(post.grid)) for _ in range(3))
    direct = post.reweight(c, source=a)
    two_steps = post.reweight(b, source=a).reweight(c)  # the first result knows its prior is b
    assert two_steps.prior is c
    # float32 round-off of two renormalisations: a few ulp of the largest |log density|
    np.testing.assert_allclose(_ld(two_steps), _ld(direct), atol=_f32_tol(_ld(direct)), rtol=0)


@PROP
@given(st.data())
def test_truths_inside_a_flat_prior_have_non_zero_reweighted_density(data):
    """The prior's edge may cut any grid cell: masses inside the support never get zero density."""
    post = data.draw(mixture_posteriors())
    lo, hi = post.grid[0], post.grid[-1]
    a = data.draw(st.floats(float(lo), float(lo + 0.5 * (hi - lo))))
    b = data.draw(st.floats(float(a + 0.1 * (hi - lo)), float(hi)))
    source = data.draw(positive_priors(post.grid))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = post.reweight(Flat(a, b), source=source, on_empty="warn")
    u = np.array([data.draw(st.floats(a, b)) for _ in range(N_CLUSTERS)])
    for y in (u, np.full(N_CLUSTERS, a), np.full(N_CLUSTERS, b)):
        lp = out.log_prob(y)
        # zero only where the mixture itself underflowed to zero in float32 (far tails): check the cells
        # holding y (both, within float32 rounding of a cell edge)
        t = (y - post.grid[0]) / post.dx + 0.5
        rows = np.arange(N_CLUSTERS)
        cells = [np.clip(np.floor(t + d).astype(int), 0, post.grid.size - 1) for d in (-1e-3, 1e-3)]
        has_mass = np.isfinite(_ld(out)[rows, cells[0]]) | np.isfinite(_ld(out)[rows, cells[1]])
        assert np.all(np.isfinite(lp[has_mass]))


# ------------------------------------------------------------------------------------------ statistics
@PROP
@given(mixture_posteriors(), st.lists(st.floats(0.0, 1.0), min_size=1, max_size=6))
def test_quantiles_are_monotone_in_q_and_inside_the_cells(post, qs):
    qs = np.sort(np.array(qs))
    q = post.quantiles(qs)
    lo, hi = _cells(post)
    tol = 1e-5 * max(1.0, abs(hi))
    assert np.all(np.diff(q, axis=0) >= -tol)
    assert np.all(q >= lo - tol) and np.all(q <= hi + tol)


@PROP
@given(mixture_posteriors(unimodal=True), st.one_of(st.floats(1e-12, 1.0), st.sampled_from([1e-9, 0.5, 1.0])))
def test_hpdi_is_ordered_inside_the_cells_and_contains_the_mode(post, prob):
    lower, upper = post.hpdi(prob)
    lo, hi = _cells(post)
    tol = 1e-5 * max(1.0, abs(hi))
    assert np.all(lower <= upper)
    assert np.all(lower >= lo - tol) and np.all(upper <= hi + tol)
    # the lower end is a cell edge, so the interval is the shortest to within one grid spacing
    mode = post.mode()
    assert np.all(mode >= lower - post.dx - tol) and np.all(mode <= upper + post.dx + tol)
    if prob >= 0.05:
        # it holds prob of the mass (cell-constant density; the upper end interpolated)
        mass = _mass_between(post, lower, upper)
        np.testing.assert_allclose(mass, prob, atol=2e-4 + 1e-6 / prob)


def _mass_between(post, a, b):
    """Mass of the cell-constant density between a and b per cluster (float64 reference)."""
    p = np.exp(_ld(post)) * post.dx
    p /= p.sum(-1, keepdims=True)
    e = np.concatenate([[post.grid[0] - post.dx / 2], post.grid + post.dx / 2])
    cdf = np.concatenate([np.zeros((p.shape[0], 1)), np.cumsum(p, -1)], axis=-1)
    return np.array([np.interp(b[i], e, cdf[i]) - np.interp(a[i], e, cdf[i]) for i in range(p.shape[0])])


@PROP
@given(mixture_posteriors())
def test_mean_is_inside_the_grid(post):
    m = post.mean()
    tol = 1e-5 * max(1.0, abs(post.grid[-1]))
    assert np.all(m >= post.grid[0] - tol) and np.all(m <= post.grid[-1] + tol)
    assert np.all(post.variance() >= 0)


@PROP
@given(mixture_posteriors(), st.integers(0, 2**31 - 1))
def test_samples_are_inside_the_cells_and_have_non_zero_density(post, seed):
    s = post.sample(jax.random.key(seed), 64)
    lo, hi = _cells(post)
    tol = 1e-5 * max(1.0, abs(hi))
    assert s.shape == (64, N_CLUSTERS)
    assert np.all(s >= lo - tol) and np.all(s <= hi + tol)
    assert np.all(np.isfinite(post.log_prob(s)))  # a draw never lands where the density is zero


@pytest.mark.parametrize("bad", [0.0, -1e-9, 1.0 + 1e-6, float("nan"), float("inf")])
def test_hpdi_out_of_range_probabilities_are_errors(bad):
    post = MassPosterior.from_log_density(np.linspace(0.0, 1.0, 16), np.zeros((1, 16)))
    with pytest.raises(ValueError, match=r"prob must be in \(0, 1\]"):
        post.hpdi(bad)
