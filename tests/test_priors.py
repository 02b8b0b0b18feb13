"""Tests for numpyro_clustermass.priors: the mass priors and the reweighting kernels."""

from __future__ import annotations

import json
import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from numpyro_clustermass import priors as P

LO, HI = 13.5, 15.3
FINE = np.linspace(LO, HI, 200_001)  # trapezoid error on this grid < 1e-8 for the smooth priors here


def _integral(prior, x=FINE):
    return float(np.trapezoid(np.exp(np.asarray(prior.log_prob(jnp.asarray(x)), dtype=np.float64)), x))


@pytest.fixture(scope="module")
def tinker():
    return P.MassFunction("tinker08", z=0.117, cosmology="planck13", mdef="200c", lo=LO, hi=HI)


@pytest.fixture(scope="module", params=["histogram", "logspline"])
def uniform_training(request):
    rng = np.random.default_rng(0)
    bins = 64 if request.param == "histogram" else None  # the log-spline's default: 512 bins
    return P.TrainingPrior.from_samples(rng.uniform(LO, HI, 200_000), bins=bins, range=(LO, HI), smoothing=1.0,
                                        method=request.param)


# ---------------------------------------------------------------------------------------------- Flat
def test_flat_density_and_support():
    p = P.Flat(LO, HI)
    assert p.support == (LO, HI)
    lp = np.asarray(p.log_prob(jnp.array([13.0, LO, 14.4, HI, 15.31])))
    np.testing.assert_allclose(lp[1:4], -np.log(HI - LO), rtol=1e-6)
    assert lp[0] == -np.inf and lp[4] == -np.inf
    assert abs(_integral(p) - 1) < 1e-6


@pytest.mark.parametrize("lo,hi", [(15.0, 14.0), (14.0, 14.0), (np.nan, 15.0), (13.0, np.inf)])
def test_flat_bad_range(lo, hi):
    with pytest.raises(ValueError):
        P.Flat(lo, hi)


# ------------------------------------------------------------------------------------- TrainingPrior
def test_training_prior_normalised_and_flat_for_uniform_samples(uniform_training):
    p = uniform_training
    assert p.support == (LO, HI)
    assert abs(_integral(p) - 1) < 1e-6
    dens = np.exp(np.asarray(p.log_prob(jnp.linspace(LO, HI, 101)), dtype=np.float64))
    # 200k samples in 64 bins: ~3.1k per bin, Poisson 1.8%; smoothing over ~2.5 bins -> ~1.1% rms; the
    # log-spline's 28 interior knots (~7k samples between knots): measured within 3% inside, 4% at the edges.
    np.testing.assert_allclose(dens, 1 / (HI - LO), rtol=0.06)


def test_training_prior_edges_not_depleted(uniform_training):
    """Reflection at the range edges: a uniform sample's density at the edge equals the interior one
    (a zero-padded smoothing would halve it)."""
    p = uniform_training
    edge = np.exp(np.asarray(p.log_prob(jnp.array([LO, HI]), ), dtype=np.float64))
    np.testing.assert_allclose(edge, 1 / (HI - LO), rtol=0.06)


def test_training_prior_outside_is_minus_inf_and_no_nan(uniform_training):
    lp = np.asarray(uniform_training.log_prob(jnp.array([LO - 1e-3, HI + 1e-3, 10.0, 20.0, jnp.nan])))
    assert np.all(lp == -np.inf)


def test_training_prior_raw_histogram_matches_numpy():
    rng = np.random.default_rng(1)
    x = rng.normal(14.2, 0.3, 5000)
    p = P.TrainingPrior.from_samples(x, bins=20, range=(13.0, 15.5), smoothing=0.0, method="histogram")
    dens, edges = np.histogram(x, bins=20, range=(13.0, 15.5), density=True)
    centres = 0.5 * (edges[1:] + edges[:-1])
    with np.errstate(divide="ignore"):
        np.testing.assert_allclose(np.asarray(p.log_prob(jnp.asarray(centres))), np.log(dens), rtol=1e-5)


@pytest.mark.parametrize("method", ["histogram", "logspline"])
def test_training_prior_tracks_a_nonuniform_distribution(method):
    rng = np.random.default_rng(2)
    x = rng.normal(14.2, 0.3, 100_000)
    with pytest.warns(RuntimeWarning, match="lie outside"):
        p = P.TrainingPrior.from_samples(x, bins=64, range=(13.2, 15.2), method=method)
    t = np.linspace(13.7, 14.7, 11)  # within +-1.7 sigma: high counts
    truth = np.exp(-0.5 * ((t - 14.2) / 0.3) ** 2) / (0.3 * np.sqrt(2 * np.pi))
    truth /= 0.99914  # normalisation of the Gaussian over the range [13.2, 15.2] (-3.33 .. +3.33 sigma)
    np.testing.assert_allclose(np.exp(np.asarray(p.log_prob(jnp.asarray(t)), float)), truth, rtol=0.05)
    assert abs(_integral(p, np.linspace(13.2, 15.2, 200_001)) - 1) < 1e-6


def test_training_prior_default_range_and_outside_warning():
    x = np.array([13.6, 14.0, 14.5, 15.0])
    p = P.TrainingPrior.from_samples(x, bins=4)
    assert p.support == (13.6, 15.0)
    with pytest.warns(RuntimeWarning, match="2 of 4 training masses lie outside"):
        q = P.TrainingPrior.from_samples(x, bins=4, range=(13.8, 14.8))
    assert q.n_outside == 2 and q.n_samples == 2


@pytest.mark.parametrize(
    "x,kw,match",
    [
        (np.array([14.0, np.nan, 14.5]), {}, "1 non-finite"),
        (np.array([14.0]), {}, "at least 2"),
        (np.array([14.0, 14.0]), {}, "all training masses are equal"),
        (np.array([14.0, 14.5]), {"range": (15.0, 14.0)}, "lo < hi"),
        (np.array([14.0, 14.5]), {"bins": 0}, "bins"),
        (np.array([14.0, 14.5]), {"smoothing": -1.0}, "smoothing"),
        (np.array([14.0, 14.5]), {"method": "kde"}, "method must be 'logspline' or 'histogram'"),
        (np.array([14.0, 14.5]), {"n_knots": 1}, "n_knots must be an integer >= 2"),
    ],
)
def test_training_prior_bad_input(x, kw, match):
    with pytest.raises(ValueError, match=match):
        P.TrainingPrior.from_samples(x, **kw)


def test_training_prior_serialises_through_json(uniform_training):
    d = json.loads(json.dumps(uniform_training.to_dict()))
    q = P.Prior.from_dict(d)
    assert isinstance(q, P.TrainingPrior)
    t = jnp.linspace(LO - 0.1, HI + 0.1, 333)
    np.testing.assert_array_equal(np.asarray(q.log_prob(t)), np.asarray(uniform_training.log_prob(t)))


def test_logspline_training_prior_is_smooth_where_the_histogram_is_noisy():
    """A steep mass function with a sparse tail, like the lecture's training set: the 64-bin histogram's
    Poisson bumps in the tail (which the reweighting divides by) are absent from the log-spline."""
    rng = np.random.default_rng(3)
    x = 13.5 + rng.exponential(0.25, 200_000)  # log density falls by 1.74 per 0.1 dex: few above 15
    x = x[x < 15.3]
    hist = P.TrainingPrior.from_samples(x, range=(13.5, 15.3), method="histogram")
    spline = P.TrainingPrior.from_samples(x, range=(13.5, 15.3))
    assert spline.method == "logspline" and spline.n_knots == 30
    t = np.linspace(13.55, 15.25, 171)
    truth = -np.log(0.25) - (t - 13.5) / 0.25 - np.log(1 - np.exp(-1.8 / 0.25))
    err_s = np.asarray(spline.log_prob(jnp.asarray(t)), float) - truth
    err_h = np.asarray(hist.log_prob(jnp.asarray(t)), float) - truth
    tail = t > 14.8  # about 1,400 samples above 14.8, a few dozen per histogram bin
    # measured: log-spline rms 0.01 in the bulk and 0.03 in the tail; histogram 0.1 in the tail
    assert np.sqrt(np.mean(err_s[~tail] ** 2)) < 0.03
    assert np.sqrt(np.mean(err_s[tail] ** 2)) < 0.5 * np.sqrt(np.mean(err_h[tail] ** 2))


def test_training_prior_dict_without_method_is_a_histogram():
    d = P.TrainingPrior.from_samples(np.linspace(13.5, 15.3, 1000), bins=8, method="histogram").to_dict()
    del d["method"], d["n_knots"]  # as written before the log-spline existed
    assert P.Prior.from_dict(d).method == "histogram"


def test_training_prior_with_empty_bins_has_minus_inf_not_nan():
    x = np.concatenate([np.full(100, 13.6), np.full(100, 15.2)])
    p = P.TrainingPrior.from_samples(x, bins=18, range=(LO, HI), smoothing=0.5, method="histogram")
    lp = np.asarray(p.log_prob(jnp.linspace(LO, HI, 1001)))
    assert not np.isnan(lp).any()
    assert np.isneginf(lp).any() and np.isfinite(lp).any()
    assert abs(_integral(p) - 1) < 1e-5


# ------------------------------------------------------------------------------------- MassFunction
def test_mass_function_matches_colossus_shape(tinker):
    """log p - log(dn/dlnM) must be constant: the prior has colossus's shape (ratio test)."""
    from colossus.lss import mass_function as cmf

    from numpyro_clustermass.cosmology import use_cosmology

    x = np.linspace(LO, HI, 157)  # not on the table nodes
    with use_cosmology("planck13"):
        ref = cmf.massFunction(10.0**x, 0.117, q_in="M", q_out="dndlnM", mdef="200c", model="tinker08")
    r = np.asarray(tinker.log_prob(jnp.asarray(x)), dtype=np.float64) - np.log(ref)
    # measured spread 1.5e-5 (float32 log_prob + log-linear interpolation); dn/dlnM spans ~3.5 dex here
    assert np.ptp(r) < 1e-4
    assert np.log(ref[0] / ref[-1]) > 7  # the test is not vacuous: the shape varies strongly


def test_mass_function_normalised(tinker):
    assert abs(_integral(tinker) - 1) < 1e-6
    assert np.asarray(tinker.log_prob(jnp.array([13.49, 15.31]))).tolist() == [-np.inf, -np.inf]


def test_mass_function_restores_global_cosmology():
    from colossus.cosmology import cosmology as cc

    previous = cc.current_cosmo
    try:
        mine = cc.setCosmology("WMAP9")
        P.MassFunction("tinker08", cosmology="planck13", n_table=33)
        assert cc.current_cosmo is mine
        cc.current_cosmo = None
        P.MassFunction("tinker08", cosmology="planck13", n_table=33)
        assert cc.current_cosmo is None
    finally:
        cc.current_cosmo = previous


def test_mass_function_other_models_and_cosmology_object():
    from colossus.cosmology import cosmology as cc

    from numpyro_clustermass.cosmology import use_cosmology

    with use_cosmology("planck13") as c:
        pass
    a = P.MassFunction("despali16", cosmology=c, n_table=65)
    b = P.MassFunction("tinker08", n_table=65)
    assert abs(_integral(a) - 1) < 1e-6
    # two fits of the same physics agree to tens of per cent but are not identical
    t = jnp.linspace(LO, HI, 50)
    d = np.asarray(a.log_prob(t) - b.log_prob(t))
    assert 1e-3 < np.abs(d).max() < 0.5
    assert cc.current_cosmo is None or cc.current_cosmo is not c


def test_mass_function_errors():
    with pytest.raises(ValueError, match="valid models: .*tinker08"):
        P.MassFunction("tinker2008")
    with pytest.raises(ValueError, match="does not support mdef='200c'.*models that support '200c'"):
        P.MassFunction("press74", mdef="200c")
    with pytest.raises(ValueError, match="lo < hi"):
        P.MassFunction(lo=15.0, hi=14.0)
    with pytest.raises(ValueError, match="unknown colossus cosmology"):
        P.MassFunction(cosmology="nope")


def test_mass_function_roundtrip_without_colossus(tinker, monkeypatch):
    d = json.loads(json.dumps(tinker.to_dict()))
    import colossus.lss.mass_function as cmf

    monkeypatch.setattr(cmf, "massFunction", None)  # from_dict must not need colossus
    q = P.prior_from_dict(d)
    t = jnp.linspace(13.4, 15.4, 77)
    np.testing.assert_array_equal(np.asarray(q.log_prob(t)), np.asarray(tinker.log_prob(t)))


# ------------------------------------------------------------------------- FromDistribution / Tabulated
def test_from_distribution_normal_and_truncation():
    d = dist.Normal(14.2, 0.3)
    p = P.FromDistribution(d)
    assert p.support == (-np.inf, np.inf)
    t = jnp.linspace(13.0, 15.5, 11)
    np.testing.assert_allclose(np.asarray(p.log_prob(t)), np.asarray(d.log_prob(t)), rtol=1e-6)
    q = p.truncate(LO, HI)
    from scipy.stats import norm

    mass = norm.cdf(HI, 14.2, 0.3) - norm.cdf(LO, 14.2, 0.3)
    np.testing.assert_allclose(
        np.asarray(q.log_prob(jnp.array([14.0, 15.0]))), np.asarray(d.log_prob(jnp.array([14.0, 15.0]))) - np.log(mass),
        atol=2e-6,
    )
    assert abs(_integral(q) - 1) < 1e-6


def test_from_distribution_bounded_support_no_nan():
    p = P.FromDistribution(dist.Uniform(13.0, 15.0))
    assert p.support == (13.0, 15.0)
    lp = np.asarray(p.log_prob(jnp.array([12.0, 14.0, 16.0])))
    assert lp[0] == -np.inf and lp[2] == -np.inf and np.isclose(lp[1], -np.log(2.0))
    g = P.FromDistribution(dist.Gamma(2.0, 1.0))  # support (0, inf): still a valid 1-D prior
    assert g.support == (0.0, np.inf) and float(g.log_prob(-1.0)) == -np.inf
    with pytest.raises(ValueError, match="scalar"):
        P.FromDistribution(dist.Normal(jnp.zeros(2), 1.0))
    with pytest.raises(TypeError):
        P.FromDistribution("normal")


def test_from_distribution_infinite_product_normalised_by_quad():
    p = P.FromDistribution(dist.Normal(14.0, 0.3)) * P.FromDistribution(dist.Normal(14.6, 0.4))
    # product of Gaussians: N(mu, s) with 1/s^2 = 1/0.09 + 1/0.16
    s2 = 1 / (1 / 0.09 + 1 / 0.16)
    mu = s2 * (14.0 / 0.09 + 14.6 / 0.16)
    t = jnp.array([13.8, 14.2, 14.5])
    ref = -0.5 * (np.asarray(t) - mu) ** 2 / s2 - 0.5 * np.log(2 * np.pi * s2)
    np.testing.assert_allclose(np.asarray(p.log_prob(t)), ref, atol=1e-5)


def test_tabulated_exact_normalisation_and_minus_inf():
    g = np.linspace(13.0, 16.0, 31)
    f = -3.0 * (g - 13.0)
    f[:5] = -np.inf
    p = P.Tabulated(g, f)
    # zero below g[5] = 13.5 (integrate from there: a trapezoid across the jump would add half a cell)
    assert abs(_integral(p, np.linspace(13.5, 16.0, 300_001)) - 1) < 1e-6
    lp = np.asarray(p.log_prob(jnp.linspace(12.0, 17.0, 5001)))
    assert not np.isnan(lp).any()
    assert float(p.log_prob(13.35)) == -np.inf  # in a segment with a -inf end
    assert np.isfinite(float(p.log_prob(float(g[5]))))  # exactly at the first finite node
    with pytest.raises(ValueError, match="strictly increasing"):
        P.Tabulated(g[::-1], f)
    with pytest.raises(ValueError, match="NaN"):
        P.Tabulated(g, np.full_like(g, np.nan))
    with pytest.raises(ValueError, match="zero everywhere"):
        P.Tabulated(g, np.full_like(g, -np.inf))


# ------------------------------------------------------------------------------ composition, helpers
def test_product_of_flats_is_flat_on_intersection():
    p = P.Flat(13.0, 15.0) * P.Flat(14.0, 16.0)
    assert isinstance(p, P.Product) and p.support == (14.0, 15.0)
    np.testing.assert_allclose(float(p.log_prob(14.5)), 0.0, atol=1e-6)
    nested = P.Product([p, P.Flat(14.2, 15.5)])
    assert len(nested.factors) == 3 and nested.support == (14.2, 15.0)
    with pytest.raises(ValueError, match="do not overlap"):
        P.Flat(13.0, 14.0) * P.Flat(14.5, 15.0)


def test_product_massfunction_times_training_prior_normalised(tinker, uniform_training):
    p = tinker * uniform_training * P.FromDistribution(dist.Normal(14.3, 0.5))
    assert abs(_integral(p) - 1) < 1e-6
    rt = P.prior_from_dict(json.loads(json.dumps((tinker * uniform_training).truncate(13.8, 15.0).to_dict())))
    t = jnp.linspace(13.7, 15.1, 29)
    np.testing.assert_allclose(
        np.asarray(rt.log_prob(t)), np.asarray((tinker * uniform_training).truncate(13.8, 15.0).log_prob(t)), atol=1e-6
    )


def test_truncate_step_prior_exact():
    p = P.TrainingPrior.from_samples(np.array([13.6, 13.7, 14.6, 14.9]), bins=4, range=(13.5, 15.3), smoothing=0,
                                     method="histogram")
    q = p.truncate(13.9, 15.0)
    assert q.support == (13.9, 15.0)
    assert abs(_integral(q, np.linspace(13.9, 15.0, 400_001)) - 1) < 1e-5
    with pytest.raises(ValueError, match="does not overlap"):
        p.truncate(16.0, 17.0)
    with pytest.raises(ValueError, match="lo < hi"):
        p.truncate(15.0, 14.0)


def test_log_prob_is_jax_traceable(tinker, uniform_training):
    for p in [tinker, uniform_training, P.Flat(), P.FromDistribution(dist.Normal(14, 0.3)).truncate(LO, HI),
              tinker * P.Flat(14.0, 15.0)]:
        t = jnp.linspace(13.0, 16.0, 64)
        # equal up to float32 rounding (XLA fuses the jitted interpolation differently: 1 ulp seen)
        np.testing.assert_allclose(np.asarray(jax.jit(p.log_prob)(t)), np.asarray(p.log_prob(t)), rtol=3e-7)
        jax.vmap(p.log_prob)(t)


def test_unserialisable_prior_gives_clear_error():
    p = P.FromDistribution(dist.Normal(14, 0.3))
    with pytest.raises(TypeError, match="tabulate"):
        p.to_dict()
    t = p.tabulate(np.linspace(LO, HI, 181))
    assert isinstance(P.prior_from_dict(t.to_dict()), P.Tabulated)
    with pytest.raises(ValueError, match="unknown prior type"):
        P.prior_from_dict({"type": "Bogus"})


def test_evaluate_on_grid_and_errors():
    g = np.linspace(13.0, 16.0, 7)
    lp = P.evaluate_on_grid(P.Flat(LO, HI), g)
    assert np.isfinite(np.asarray(lp)).tolist() == [False, True, True, True, True, False, False]
    with pytest.raises(ValueError, match="no support on the grid"):
        P.evaluate_on_grid(P.Flat(LO, HI), np.linspace(11.0, 12.0, 5))
    with pytest.raises(TypeError):
        P.evaluate_on_grid(lambda x: x, g)


@pytest.mark.parametrize(
    "grid,match",
    [
        (np.linspace(13, 16, 10)[::-1], "increasing"),
        (np.array([13.0, 13.1, 13.3, 13.4]), "uniform"),
        (np.ones((2, 3)), "1-D"),
        (np.array([13.0]), "at least 2"),
        (np.array([13.0, np.nan, 14.0]), "non-finite"),
    ],
)
def test_check_grid_errors(grid, match):
    with pytest.raises(ValueError, match=match):
        P.check_grid(grid)


def test_check_grid_accepts_float32_linspace():
    P.check_grid(np.linspace(12.0, 16.0, 4097).astype(np.float32))


# ------------------------------------------------------------------------------- reweighting kernel
G = 48
GRID = np.linspace(13.0, 16.0, G).astype(np.float32)
DX = float((np.float64(GRID[-1]) - np.float64(GRID[0])) / (G - 1))  # the kernel uses the mean step


def _np_reweight(ld, lt, ls):
    """Plain float64 numpy reference."""
    ld, lt, ls = (np.asarray(a, np.float64) for a in (ld, lt, ls))
    ok = np.isfinite(lt) & np.isfinite(ls)
    with np.errstate(invalid="ignore"):
        new = np.where(ok, ld + np.where(ok, lt - ls, 0.0), -np.inf)
    m = new.max(-1, keepdims=True)
    return new - (m + np.log(np.exp(new - m).sum(-1, keepdims=True) * DX))


finite_logs = arrays(np.float32, (5, G), elements=st.floats(-30, 30, width=32))
masks = arrays(np.bool_, (5, G))
prior_logs = arrays(np.float32, (G,), elements=st.floats(-20, 20, width=32))
prior_masks = arrays(np.bool_, (G,), elements=st.booleans())
HSET = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _normalise(ld):
    ld = np.asarray(ld, np.float64)
    m = ld.max(-1, keepdims=True)
    return (ld - (m + np.log(np.exp(ld - m).sum(-1, keepdims=True) * DX))).astype(np.float32)


@HSET
@given(finite_logs, masks, prior_logs, prior_masks)
def test_self_reweighting_is_identity(ld, mask, ls, pmask):
    """Training prior -> itself leaves a posterior (zero outside the prior's support) unchanged."""
    pmask[G // 2] = True  # the prior has some support
    ls = np.where(pmask, ls, -np.inf).astype(np.float32)
    mask[:, G // 2] = True
    ld = np.where(mask & pmask, ld, -np.inf).astype(np.float32)
    ld = _normalise(ld)
    out = np.asarray(P.reweight_log_density(GRID, ld, ls, ls))
    assert not np.isnan(out).any()
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(ld))
    # float32: |Δ log| measured <= 9.6e-7 over 2000 random examples
    np.testing.assert_allclose(out[np.isfinite(ld)], ld[np.isfinite(ld)], atol=4e-6, rtol=0)


@HSET
@given(finite_logs, masks)
def test_flat_to_flat_is_identity(ld, mask):
    mask[:, 0] = True
    ld = _normalise(np.where(mask, ld, -np.inf))
    out = np.asarray(P.reweight_log_density(GRID, ld, P.Flat(12.0, 17.0), P.Flat(12.5, 16.5)))
    np.testing.assert_array_equal(np.isfinite(out), np.isfinite(ld))
    np.testing.assert_allclose(out[np.isfinite(ld)], ld[np.isfinite(ld)], atol=4e-6, rtol=0)


@HSET
@given(finite_logs, prior_logs, prior_logs, st.floats(-50, 50), st.floats(-50, 50))
def test_invariant_to_constant_prior_offsets(ld, lt, ls, a, b):
    out1 = np.asarray(P.reweight_log_density(GRID, ld, lt, ls))
    out2 = np.asarray(P.reweight_log_density(GRID, ld, (lt + np.float32(a)), (ls + np.float32(b))))
    # float32 rounding of (lt + a), |values| <= 70: measured <= 2.3e-5 over 2000 random examples
    np.testing.assert_allclose(out2, out1, atol=5e-5, rtol=0)
    np.testing.assert_allclose(np.exp(out1.astype(np.float64)).sum(-1) * DX, 1.0, rtol=1e-5)


@HSET
@given(finite_logs, masks, prior_logs, prior_masks, prior_logs, prior_masks)
def test_never_nan_and_matches_numpy(ld, mask, lt, tmask, ls, smask):
    ld = np.where(mask, ld, -np.inf).astype(np.float32)
    lt = np.where(tmask, lt, -np.inf).astype(np.float32)
    ls = np.where(smask, ls, -np.inf).astype(np.float32)
    if not (tmask & smask).any():
        with pytest.raises(ValueError, match="no common support"):
            P.reweight_log_density(GRID, ld, lt, ls, on_empty="warn")
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = np.asarray(P.reweight_log_density(GRID, ld, lt, ls, on_empty="warn"))
    assert not np.isnan(out).any() and not (out == np.inf).any()
    # every row is normalised, including the filled empty ones
    np.testing.assert_allclose(np.exp(out.astype(np.float64)).sum(-1) * DX, 1.0, rtol=2e-5)
    with np.errstate(invalid="ignore"):
        ref = _np_reweight(ld, lt, ls)
    rows = np.isfinite(ref).any(-1)
    np.testing.assert_array_equal(np.isfinite(out[rows]), np.isfinite(ref[rows]))
    fin = np.isfinite(ref[rows])
    np.testing.assert_allclose(out[rows][fin], ref[rows][fin], atol=2e-5, rtol=0)


def test_reweight_exact_gaussian_case():
    """Gaussian posterior N(14.5, 0.2) from a flat source to a Gaussian target N(14.0, 0.2): the result is
    N(14.25, 0.2/sqrt 2), which the grid reproduces exactly up to float32."""
    grid = np.linspace(12.5, 16.5, 801)
    dx = grid[1] - grid[0]
    ld = -0.5 * ((grid - 14.5) / 0.2) ** 2
    ld = ld - np.log(np.exp(ld).sum() * dx)
    out = np.asarray(
        P.reweight_log_density(grid, ld[None], P.FromDistribution(dist.Normal(14.0, 0.2)), P.Flat(12.0, 17.0))
    )[0]
    p = np.exp(out.astype(np.float64))
    mean = (p * grid).sum() * dx
    sd = np.sqrt((p * (grid - mean) ** 2).sum() * dx)
    assert abs(mean - 14.25) < 1e-5 and abs(sd - 0.2 / np.sqrt(2)) < 1e-5


def test_reweight_zero_source_region_gets_no_mass(uniform_training):
    """Outside the training support the source is 0: no division by zero, no mass there."""
    grid = np.linspace(13.0, 16.0, 301)
    ld = np.zeros((2, 301)) - np.log(3.0)  # flat posteriors over the whole grid
    out = np.asarray(P.reweight_log_density(grid, ld, P.Flat(12.0, 17.0), uniform_training))
    outside = (grid < LO) | (grid > HI)
    assert np.all(out[:, outside] == -np.inf) and np.all(np.isfinite(out[:, ~outside]))


def test_reweight_empty_rows_raise_or_warn_with_count():
    grid = np.linspace(13.0, 16.0, 31)
    ld = np.full((4, 31), -np.inf)
    ld[:, 15] = 0.0  # all mass at 14.5
    ld[2:, :] = 0.0  # rows 2, 3 are flat
    target = P.Flat(15.0, 16.0)
    with pytest.raises(ValueError, match="2 of 4 clusters have no posterior mass"):
        P.reweight_log_density(grid, ld, target, P.Flat(12.0, 17.0))
    with pytest.warns(RuntimeWarning, match="2 of 4 clusters"):
        out = np.asarray(P.reweight_log_density(grid, ld, target, P.Flat(12.0, 17.0), on_empty="warn"))
    # the filled rows are the target/source ratio normalised on the grid (here: flat on [15, 16])
    np.testing.assert_allclose(out[0], out[2], atol=1e-6)
    assert np.all(out[:2, grid < 15.0] == -np.inf)
    with pytest.raises(ValueError, match="on_empty"):
        P.reweight_log_density(grid, ld[2:], target, P.Flat(12.0, 17.0), on_empty="ignore")


def test_reweight_input_validation():
    grid = np.linspace(13.0, 16.0, 31)
    ld = np.zeros((2, 31))
    with pytest.raises(ValueError, match="last axis of length 31"):
        P.reweight_log_density(grid, ld[:, :30], P.Flat(), P.Flat())
    with pytest.raises(ValueError, match="uniform"):
        P.reweight_log_density(grid ** 1.01, ld, P.Flat(), P.Flat())
    bad = ld.copy()
    bad[1, 3] = np.nan
    with pytest.raises(ValueError, match="1 NaN"):
        P.reweight_log_density(grid, bad, P.Flat(), P.Flat())
    with pytest.raises(ValueError, match="NaN or \\+inf"):
        P.reweight_log_density(grid, ld, np.full(31, np.nan), P.Flat())
    with pytest.raises(ValueError, match="no support on the grid"):
        P.reweight_log_density(grid, ld, P.Flat(17.0, 18.0), P.Flat())


def test_reweight_inside_user_jit():
    grid = np.linspace(13.0, 16.0, 31)
    lt = np.asarray(P.evaluate_on_grid(P.Flat(LO, HI), grid))
    f = jax.jit(lambda ld: P.reweight_log_density(grid, ld, lt, jnp.zeros(31)))
    out = np.asarray(f(jnp.zeros((3, 31))))
    assert np.allclose(np.exp(out).sum(-1) * (grid[1] - grid[0]), 1.0, atol=1e-5)


# ------------------------------------------------------------------------------- mixture variant
def test_mixture_reweight_matches_per_draw_reference():
    rng = np.random.default_rng(3)
    ld = rng.normal(size=(4, 3, G)).astype(np.float32)
    lt = rng.normal(size=G).astype(np.float32)
    ls = rng.normal(size=G).astype(np.float32)
    w = np.array([0.1, 0.2, 0.3, 0.4])
    out = np.asarray(P.reweight_mixture_log_density(GRID, ld, lt, ls, draw_weights=w))
    per = np.exp(_np_reweight(ld, lt, ls))
    ref = np.log(np.tensordot(w, per, axes=1))
    np.testing.assert_allclose(out, ref, atol=2e-5)
    # not the same as reweighting the mixture: each draw has its own normaliser
    mix = np.log(np.tensordot(w, np.exp(_normalise(ld).astype(np.float64)), axes=1))
    other = _np_reweight(mix, lt, ls)
    assert np.abs(other - ref).max() > 1e-2


def test_mixture_with_identical_draws_equals_single():
    rng = np.random.default_rng(4)
    one = rng.normal(size=(3, G)).astype(np.float32)
    ld = np.broadcast_to(one, (5, 3, G))
    a = np.asarray(P.reweight_mixture_log_density(GRID, ld, P.Flat(13.5, 15.3), P.Flat(12.0, 17.0)))
    b = np.asarray(P.reweight_log_density(GRID, one, P.Flat(13.5, 15.3), P.Flat(12.0, 17.0)))
    np.testing.assert_array_equal(np.isfinite(a), np.isfinite(b))
    np.testing.assert_allclose(a[np.isfinite(a)], b[np.isfinite(b)], atol=2e-6)
    with pytest.raises(ValueError, match="draw_weights"):
        P.reweight_mixture_log_density(GRID, ld, P.Flat(), P.Flat(12.0, 17.0), draw_weights=[1, 2])
    with pytest.raises(ValueError, match="shape"):
        P.reweight_mixture_log_density(GRID, one[0], P.Flat(), P.Flat(12.0, 17.0))


def test_reweight_inside_user_jit_fills_empty_rows_without_nan():
    grid = np.linspace(13.0, 16.0, 31)
    lt = np.asarray(P.evaluate_on_grid(P.Flat(15.0, 16.0), grid))
    ld = np.zeros((2, 31))
    ld[0, 16:] = -np.inf  # all mass below 14.5: no overlap with the target
    out = np.asarray(jax.jit(lambda a: P.reweight_log_density(grid, a, lt, jnp.zeros(31)))(jnp.asarray(ld)))
    assert not np.isnan(out).any()
    np.testing.assert_allclose(out[0], out[1], atol=1e-6)  # row 0 filled with the normalised target


def test_reweight_disjoint_target_and_source_is_an_error():
    grid = np.linspace(13.0, 16.0, 31)
    with pytest.raises(ValueError, match="no common support"):
        P.reweight_log_density(grid, np.zeros((2, 31)), P.Flat(13.0, 14.0), P.Flat(14.5, 16.0), on_empty="warn")


# ------------------------------------------------------------------------------- bad priors, edge cells
class _BadPrior(P.Prior):
    """A user's prior whose log_prob is NaN above 15.5 and +inf below 13.2."""

    support = (13.0, 16.0)

    def log_prob(self, x):
        x = jnp.asarray(x)
        return jnp.where(x > 15.5, jnp.nan, jnp.where(x < 13.2, jnp.inf, 0.0))

    def __repr__(self):
        return "BadPrior()"


def test_prior_with_nan_or_inf_log_prob_is_rejected_like_the_same_array():
    grid = np.linspace(13.0, 16.0, 31)  # 5 points above 15.5 (NaN), 2 below 13.2 (+inf)
    ld = np.zeros((2, 31))
    as_array = np.asarray(_BadPrior().log_prob(grid))
    for target, what in ((_BadPrior(), "log_target BadPrior\\(\\): its log_prob"), (as_array, "log_target \\(an array\\)")):
        with pytest.raises(ValueError, match=what + " gives 5 NaN and 2 \\+inf value\\(s\\) at 7 of 31 grid points"):
            P.reweight_log_density(grid, ld, target, P.Flat(12.0, 17.0))
    with pytest.raises(ValueError, match="log_source BadPrior\\(\\): its log_prob gives 5 NaN"):
        P.reweight_log_density(grid, ld, P.Flat(12.0, 17.0), _BadPrior())
    with pytest.raises(ValueError, match="BadPrior\\(\\): its log_prob gives 5 NaN"):
        P.evaluate_on_grid(_BadPrior(), grid)


@pytest.mark.parametrize("target", ["flat", None, {"type": "Flat"}, lambda x: x, np.array(["a"] * 31)])
def test_reweight_target_that_is_not_a_prior_or_an_array_is_a_type_error(target):
    grid = np.linspace(13.0, 16.0, 31)
    with pytest.raises(TypeError, match="log_target must be a numpyro_clustermass.priors.Prior"):
        P.reweight_log_density(grid, np.zeros((1, 31)), target, P.Flat(12.0, 17.0))


def test_evaluate_on_cells_gives_a_straddling_cell_its_mean_density():
    grid = np.linspace(13.0, 16.0, 7)  # dx = 0.5: the cell [13.25, 13.75] of centre 13.5 straddles 13.6
    lp = np.asarray(P.evaluate_on_cells(P.Flat(13.6, 15.3), grid))
    assert np.isfinite(lp).tolist() == [False, True, True, True, True, True, False]
    np.testing.assert_allclose(np.exp(lp[1]), (13.75 - 13.6) / 0.5 / 1.7, rtol=1e-5)
    np.testing.assert_allclose(np.exp(lp[5]), (15.3 - 15.25) / 0.5 / 1.7, rtol=1e-4)
    np.testing.assert_allclose(lp[2:5], -np.log(1.7), rtol=1e-6)  # centres inside: the point value
    # a Gaussian's edge cell: mean of the density over the part of the cell inside the support
    tn = P.FromDistribution(dist.Normal(14.0, 0.3)).truncate(13.6, 15.3)
    ref = np.log(_integral(tn, np.linspace(13.6, 13.75, 20001)) / 0.5)
    np.testing.assert_allclose(np.asarray(P.evaluate_on_cells(tn, grid))[1], ref, rtol=1e-5)
    # a support narrower than a cell still has its cell
    narrow = np.asarray(P.evaluate_on_cells(P.Flat(14.1, 14.2), grid))
    assert np.isfinite(narrow).tolist() == [False, False, True, False, False, False, False]
    np.testing.assert_allclose(np.exp(narrow[2]), 1 / 0.5, rtol=1e-5)
    with pytest.raises(ValueError, match="no support on the grid"):
        P.evaluate_on_cells(P.Flat(17.0, 18.0), grid)
    with pytest.raises(TypeError, match="must be a priors.Prior"):
        P.evaluate_on_cells(np.zeros(7), grid)
