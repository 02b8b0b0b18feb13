"""Tests for numpyro_clustermass.models: sites, likelihoods, the full-data scale, dropout under seed."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.infer.util import log_density

from numpyro_clustermass.models import mdn_model, regression_model
from numpyro_clustermass.nets import MDNNet, RegressionNet

X = jax.random.normal(jax.random.key(0), (32, 5))
Y = jax.random.normal(jax.random.key(1), (32,))
MDN_NET = MDNNet(num_components=4, hidden=(16, 8))
REG_NET = RegressionNet(hidden=(16, 8))


def _trace(model, *args, seed=0, **kwargs):
    return handlers.trace(handlers.seed(model, seed)).get_trace(*args, **kwargs)


def test_mdn_sites_and_likelihood_match_the_net():
    tr = _trace(mdn_model, X, Y, net=MDN_NET)
    assert set(tr) == {"nn$params", "data", "obs"}
    assert tr["obs"]["is_observed"] and tr["obs"]["fn"].batch_shape == (32,)
    params = tr["nn$params"]["value"]
    logits, locs, scales = MDN_NET.apply({"params": params}, X)
    ref = jax.nn.logsumexp(
        jax.nn.log_softmax(logits) + dist.Normal(locs, scales).log_prob(Y[:, None]), axis=-1
    ).sum()
    ll, _ = log_density(mdn_model, (X, Y), {"net": MDN_NET}, {"nn$params": params})
    np.testing.assert_allclose(ll, ref, rtol=1e-5)


def test_regression_likelihood_is_gaussian_with_fitted_sigma():
    tr = _trace(regression_model, X, Y, net=REG_NET)
    assert set(tr) == {"nn$params", "sigma", "data", "obs"}
    params = {"nn$params": tr["nn$params"]["value"], "sigma": 0.7}
    mu = REG_NET.apply({"params": params["nn$params"]}, X)
    ll, _ = log_density(regression_model, (X, Y), {"net": REG_NET}, params)
    np.testing.assert_allclose(ll, dist.Normal(mu, 0.7).log_prob(Y).sum(), rtol=1e-5)


@pytest.mark.parametrize("model,net", [(mdn_model, MDN_NET), (regression_model, REG_NET)])
def test_num_data_scales_the_likelihood_to_the_full_data(model, net):
    params = {k: v["value"] for k, v in _trace(model, X, Y, net=net).items() if v["type"] == "param"}
    ll_batch, _ = log_density(model, (X, Y), {"net": net}, params)
    ll_full, _ = log_density(model, (X, Y), {"net": net, "num_data": 320}, params)
    np.testing.assert_allclose(ll_full, 10.0 * ll_batch, rtol=1e-5)


def test_predictive_mode_samples_obs():
    tr = _trace(mdn_model, X, net=MDN_NET)
    assert not tr["obs"]["is_observed"] and tr["obs"]["value"].shape == (32,)


def test_dropout_masks_differ_between_seeds_and_vanish_when_deterministic():
    net = MDNNet(num_components=3, hidden=(64, 64), dropout_rate=0.3)
    params = _trace(mdn_model, X, net=net)["nn$params"]["value"]

    def locs(seed, deterministic=False):
        sub = handlers.substitute(mdn_model, data={"nn$params": params})
        tr = _trace(sub, X, net=net, deterministic=deterministic, seed=seed)
        return np.asarray(tr["obs"]["fn"].component_distribution.loc)

    assert not np.allclose(locs(1), locs(2))
    np.testing.assert_array_equal(locs(1, True), locs(2, True))


def test_dropout_without_seed_is_a_clear_error():
    net = MDNNet(num_components=2, hidden=(8,), dropout_rate=0.5)
    params = _trace(mdn_model, X, net=net)["nn$params"]["value"]
    with pytest.raises(RuntimeError, match="needs a random key"):
        handlers.substitute(mdn_model, data={"nn$params": params})(X, Y, net=net)
