"""MassPosterior.reweight: the lecture's prior swap at the posterior level."""

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from numpyro_clustermass.posterior import MassPosterior
from numpyro_clustermass.priors import Flat, MassFunction, TrainingPrior

GRID = np.linspace(12.8, 16.0, 321)


def _post(mu, sd, training=None, draws=False):
    mu = np.atleast_2d(mu)
    return MassPosterior.from_mixture(GRID, np.zeros_like(mu)[..., None], mu[..., None],
                                      np.full(mu.shape + (1,), sd), training_log_mass=training, keep_draws=draws)


@settings(max_examples=30, deadline=None)
@given(mu=st.lists(st.floats(13.6, 15.2), min_size=1, max_size=5), sd=st.floats(0.05, 0.4))
def test_training_prior_to_itself_and_flat_to_flat_are_identities(mu, sd):
    rng = np.random.default_rng(0)
    training = rng.uniform(13.5, 15.3, 3000)
    post = _post(np.array(mu), sd, training)
    same = post.reweight(post.prior)
    # Identity on the grid cells that overlap the training support (the cell straddling an edge is kept
    # even when its centre lies just outside); outside them the source is zero and no mass is kept.
    lo, hi = post.prior.support
    inside = (GRID + post.dx / 2 > lo) & (GRID - post.dx / 2 < hi)
    expected = np.exp(np.asarray(post.log_density)) * inside
    expected /= expected.sum(-1, keepdims=True) * post.dx
    np.testing.assert_allclose(np.exp(same.log_density), expected, atol=2e-5)
    flat = post.reweight(Flat(12.0, 17.0), source=Flat(12.0, 17.0))
    np.testing.assert_allclose(np.exp(flat.log_density), np.exp(post.log_density), atol=1e-5)
    assert not np.isnan(np.asarray(flat.log_density)).any()


def test_reweighting_removes_a_known_prior_and_round_trips():
    # Likelihood N(15.0, 0.2) under a steep "training" prior shifts the posterior low; reweighting to flat
    # recovers the likelihood's mode.
    rng = np.random.default_rng(1)
    training = 13.5 - np.log10(rng.uniform(size=200_000)) / 1.8  # p(m) ∝ 10^(-1.8 m) above 13.5
    prior = TrainingPrior.from_samples(training[training < 15.6], range=(13.5, 15.6))
    loglik = -0.5 * ((GRID - 15.0) / 0.2) ** 2
    log_post = loglik + np.asarray(prior.evaluate(GRID, check_support=False))
    post = MassPosterior.from_log_density(GRID, log_post[None], source_prior=prior)
    assert post.mode()[0] < 14.95
    flat = post.reweight(Flat(13.5, 15.6))
    assert flat.mode()[0] == pytest.approx(15.0, abs=0.011)
    back = flat.reweight(prior)
    np.testing.assert_allclose(np.exp(back.log_density), np.exp(post.log_density), atol=2e-4)


def test_bayesian_draws_are_reweighted_before_mixing_and_keep_the_split():
    training = np.random.default_rng(2).uniform(13.5, 15.3, 5000)
    mu = np.array([[14.2, 14.8], [14.4, 14.6]])  # (S=2 draws, n=2 clusters)
    post = _post(mu, 0.15, training, draws=True)
    assert post.epistemic_variance.min() > 0
    target = MassFunction(lo=13.5, hi=15.3)
    rw = post.reweight(target)
    assert rw.draws_log_density.shape == post.draws_log_density.shape
    assert rw.epistemic_variance.min() > 0 and rw.prior is target
    # Without kept draws the split keeps its proportions.
    rw2 = _post(mu, 0.15, training, draws=False).reweight(target)
    frac = post.epistemic_variance / post.total_variance
    np.testing.assert_allclose(rw2.epistemic_variance / rw2.total_variance, frac, rtol=1e-4)


def test_no_overlap_is_an_error_not_nan():
    # Log-space densities keep far tails finite (those reweight fine, to the target's edge); a density that
    # is exactly zero on the target's support cannot be reweighted.
    ld = np.where(np.abs(GRID - np.array([[13.0], [14.8]])) < 0.2, 0.0, -np.inf)
    post = MassPosterior.from_log_density(GRID, ld, training_log_mass=np.random.default_rng(0).uniform(12.8, 15.3, 1000))
    with pytest.raises(ValueError, match="1 of 2 clusters"):
        post.reweight(Flat(14.5, 15.3))
    with pytest.warns(RuntimeWarning, match="1 of 2 clusters"):
        out = post.reweight(Flat(14.5, 15.3), on_empty="warn")
    assert np.isfinite(out.mode()).all()


def test_posterior_without_prior_information_asks_for_source():
    post = _post(np.array([14.0]), 0.1)
    with pytest.raises(ValueError, match="source="):
        post.reweight(Flat())


def test_reweight_rejects_a_target_that_is_not_a_prior():
    post = _post(np.array([14.0]), 0.1, np.random.default_rng(0).uniform(13.5, 15.3, 1000))
    with pytest.raises(TypeError, match="log_target must be a numpyro_clustermass.priors.Prior .* got str 'flat'"):
        post.reweight("flat")
    with pytest.raises(TypeError, match="log_source must be a numpyro_clustermass.priors.Prior"):
        post.reweight(Flat(13.5, 15.3), source="training")


def test_truths_just_inside_the_flat_edge_keep_a_finite_log_score():
    """Case: after reweighting to Flat(13.5, 15.3) on a grid whose cell centre lies below 13.5, truths in
    [13.5, 13.502] had -inf density and metrics.summary counted them as off the grid."""
    from numpyro_clustermass import metrics

    grid = np.linspace(13.0, 15.8, 512)  # the quickstart's default_grid: the centre 13.4986 is below 13.5
    y = np.array([13.5, 13.5005, 13.501, 13.502, 14.4, 15.2995, 15.3])
    training = np.random.default_rng(0).uniform(13.5, 15.3, 20_000)
    post = MassPosterior.from_mixture(grid, np.zeros((y.size, 1)), (y + 0.05)[:, None], np.full((y.size, 1), 0.2),
                                      training_log_mass=training)
    flat = post.reweight(Flat(13.5, 15.3))
    ls = flat.log_prob(y)
    assert np.all(np.isfinite(ls))
    # the density just inside the edge is the posterior's (a Gaussian 0.05 dex away: log N ~ 0.7), not 0
    assert np.all(ls[:4] > 0.5)
    s = metrics.summary(flat, y)
    assert s["n_off_grid"] == 0 and s["n_zero_density"] == 0 and np.isfinite(s["log_score_mean"])
    # masses well outside the prior's support still have zero density, and are not called off the grid
    s2 = metrics.summary(flat, np.where(np.arange(y.size) == 4, 13.45, y))
    assert s2["n_off_grid"] == 0 and s2["n_zero_density"] == 1 and s2["log_score_mean"] == -np.inf
