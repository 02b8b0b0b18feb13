"""Tests of the Bayesian inference methods: "bbb", "mc_dropout", "nuts", "laplace", "ensemble".

Every method runs through the one interface (``fit(est, train, method=m)`` then ``fit.posterior(test)``) on a small
mock, with no method-specific code. The traps of DESIGN.md that touch these methods each have a test here or in
tests/test_bnn.py (prior keys): dropout masks, batch-norm state, jitted prediction, NUTS judged in function space.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.contrib.module import flax_module, random_flax_module

import numpyro_clustermass as ncm
from numpyro_clustermass.bnn import WeightPriorError
from numpyro_clustermass.estimators import MDN, MSE, ModelEstimator
from numpyro_clustermass.inference import TrainingPlan, fit, get_method

SMALL = dict(num_epochs=3, batch_size=256, progress_bar=False)
MDN_SMALL = MDN(num_components=2, hidden=(8, 8))


@pytest.fixture(scope="module")
def mock():
    cat = ncm.simulate.mock_catalog(volume=1.0, mass_sampling="flat", n_halos=400, seed=0)
    return cat.split(test_fraction=0.2, seed=1)  # about 950 training and 240 test clusters


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    y = rng.uniform(13.5, 15.0, 600)
    x = np.stack([y + 0.2 * rng.normal(size=600), rng.normal(size=600)], 1)
    return x, y


def _est(**kw):
    return MDN(num_components=2, hidden=(8,), feature_names=("a", "b"), **kw)


# ------------------------------------------------------------------------------------ the one interface
FAST_OPTIONS = {
    "bbb": {},
    "mc_dropout": {},
}


@pytest.mark.parametrize("method", sorted(FAST_OPTIONS))
def test_each_method_runs_through_fit_and_posterior(mock, method):
    train, test = mock
    f = fit(MDN_SMALL, train, method=method, seed=0, **SMALL, **FAST_OPTIONS[method])
    assert f.method == method
    post = f.posterior(test)
    assert post.log_density.shape == (len(test), f.grid.size)
    assert np.isfinite(np.asarray(post.log_density)).all()
    assert (post.aleatoric_variance > 0).all()
    assert (post.epistemic_variance > 0).all()
    assert post.meta["num_draws"] > 1


def test_prediction_is_jit_compiled_once(xy):
    """Trap: no plain Predictive per call; the posterior's chunk function is compiled once and reused."""
    f = fit(_est(), xy, method="mc_dropout", **SMALL)
    f.posterior(xy[0][:50], num_draws=20)
    f.posterior(xy[0][50:100], num_draws=20, seed=3)
    (fn,) = [v for k, v in f._cache.items() if 20 in k]
    assert fn._cache_size() == 1


# ------------------------------------------------------------------------------------ MC dropout
def test_mc_dropout_masks_differ_between_draws(xy):
    """Trap: each predictive draw has its own dropout mask (numpyro.prng_key per draw)."""
    f = fit(_est(), xy, method="mc_dropout", dropout_rate=0.2, **SMALL)
    post = f.posterior(xy[0][:40], num_draws=30, keep_draws=True)
    per_draw_mean = np.sum(np.exp(np.asarray(post.draws_log_density)) * post.grid * post.dx, axis=-1)  # (S, n)
    assert (per_draw_mean.std(axis=0) > 1e-4).all()
    assert (post.epistemic_variance > 0).all()
    # the method's model has the requested rate, and the draws are identical weights
    assert f._model.keywords["net"].dropout_rate == 0.2
    # different posterior seeds give different masks, the same seed the same ones
    a, b = f.posterior(xy[0][:40], num_draws=30, seed=5), f.posterior(xy[0][:40], num_draws=30, seed=5)
    np.testing.assert_array_equal(np.asarray(a.log_density), np.asarray(b.log_density))
    assert not np.allclose(a.epistemic_variance, f.posterior(xy[0][:40], num_draws=30, seed=6).epistemic_variance)


def test_mc_dropout_rate_zero_draws_coincide(xy):
    f = fit(_est(), xy, method="mc_dropout", dropout_rate=0.0, **SMALL)
    post = f.posterior(xy[0][:40], num_draws=10, keep_draws=True)
    d = np.asarray(post.draws_log_density)
    np.testing.assert_array_equal(d, np.broadcast_to(d[0], d.shape))
    np.testing.assert_allclose(post.epistemic_variance, 0.0, atol=1e-9)


def test_mc_dropout_uses_estimator_rate_and_rejects_rate_on_user_model(xy):
    f = fit(_est(dropout_rate=0.3), xy, method="mc_dropout", **SMALL)
    assert f._model.keywords["net"].dropout_rate == 0.3

    def my_model(x, y=None):
        numpyro.sample("obs", dist.Normal(jnp.zeros(x.shape[0]), 1.0), obs=y)

    with pytest.raises(TypeError, match="not one of the package's models"):
        fit(ModelEstimator(my_model, feature_names=("a", "b")), xy, method="mc_dropout", dropout_rate=0.1, **SMALL)


# ------------------------------------------------------------------------------------ BBB
def _plan(n, bsz=64, features=2):
    return TrainingPlan(num_data=n, batch_size=bsz, steps_per_epoch=n // bsz, num_epochs=2, num_features=features)


def test_bbb_loss_is_full_data_negative_elbo_with_analytic_kl():
    """Minibatch scaling: loss = N/B * batch NLL (at the means, scales ~0) + KL(q || prior) counted once."""
    n, bsz = 640, 64
    x = jax.random.normal(jax.random.key(0), (bsz, 2))
    y = jax.random.normal(jax.random.key(1), (bsz,))
    est = _est()
    impl = get_method("bbb")(est.model, _plan(n, bsz), weight_prior=dist.Normal(0, 2.0), init_scale=1e-6)
    state = impl.init(jax.random.key(2), x, y)
    params = impl.get_params(state)
    # the guide starts at the flax initial weights with the requested scale
    sites = [k for k in params if k.startswith("nn/")]
    assert len(sites) == 8
    _, loss = impl.step(state, x, y)
    # reference: the deterministic model at the guide means, and the Normal-Normal KL for every weight
    det = est.model
    sub = {"nn$params": _nested(params, "nn"), }
    tr = handlers.trace(handlers.substitute(handlers.seed(det, 0), sub)).get_trace(x, y)
    nll = -float(tr["obs"]["fn"].log_prob(y).sum())
    s = 1e-6
    kl = sum(float(jnp.sum(jnp.log(2.0 / s) + (s**2 + params[k] ** 2) / (2 * 2.0**2) - 0.5)) for k in sites)
    np.testing.assert_allclose(float(loss), n / bsz * nll + kl, rtol=1e-4)


def _nested(params, name):
    out = {}
    for k, v in params.items():
        if k.startswith(name + "/"):
            node = out
            parts = k[len(name) + 1:].split(".")
            for p in parts[:-1]:
                node = node.setdefault(p, {})
            node[parts[-1]] = v
    return out


def test_bbb_initial_scales_are_small_and_init_from_map_fit(xy):
    x, y = jnp.asarray(xy[0][:64], jnp.float32), jnp.asarray(xy[1][:64] - 14.25, jnp.float32)
    map_fit = fit(_est(), xy, method="map", **SMALL)
    plan = _plan(map_fit.info["n_train"])
    impl = get_method("bbb")(_est().model, plan, init=map_fit, init_scale=0.02, bayesian_layers="last")
    state = impl.init(jax.random.key(0), x, y)
    svi_params = impl.get_params(state)
    np.testing.assert_allclose(svi_params["nn/head.locs.kernel"], map_fit.params["nn$params"]["head"]["locs"]["kernel"])
    # the non-Bayesian trunk starts at the MAP trunk too
    np.testing.assert_allclose(svi_params["nn$params"]["trunk"]["Dense_0"]["kernel"],
                               map_fit.params["nn$params"]["trunk"]["Dense_0"]["kernel"])
    draws = impl.sample(jax.random.key(1), state, 2000)
    sd = np.asarray(draws["nn/head.locs.kernel"]).std(axis=0)
    np.testing.assert_allclose(sd, 0.02, rtol=0.1)  # 2000 draws: sd of the sd about 1.6%


def test_bbb_init_map_runs_the_map_method_first(xy):
    f = fit(_est(), xy, method="bbb", init="map", map_options={"num_epochs": 2}, **SMALL)
    assert f.info["map_source"] == "map method" and f.info["map_epochs_run"] == 2
    assert (f.posterior(xy[0][:20]).epistemic_variance > 0).all()


def test_bbb_bad_prior_fails_before_training(xy):
    with pytest.raises(WeightPriorError, match="'head.loc' matches no parameter"):
        fit(_est(), xy, method="bbb", weight_prior={"head.loc": dist.Normal(0, 1)}, **SMALL)
    with pytest.raises(WeightPriorError, match="not a NumPyro distribution"):
        fit(_est(), xy, method="bbb", weight_prior={"*": 0.1}, **SMALL)


def test_bbb_model_without_latents_is_a_clear_error(xy):
    def det_model(x, y=None):
        w = numpyro.param("w", jnp.zeros(x.shape[-1]))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("obs", dist.Normal(x @ w, 1.0), obs=y)

    with pytest.raises(ValueError, match="no latent sample sites"):
        fit(ModelEstimator(det_model, feature_names=("a", "b")), xy, method="bbb", **SMALL)


# ------------------------------------------------------------------------------------ batch-norm state
class _BNNet(nn.Module):
    @nn.compact
    def __call__(self, x, train: bool = True):
        h = nn.Dense(8)(x)
        h = nn.BatchNorm(use_running_average=not train, momentum=0.5)(h)
        return nn.Dense(1)(nn.relu(h))[..., 0]


def _bn_model(x, y=None, num_data=None, deterministic=False, bayesian=False):
    if bayesian:
        net = random_flax_module("nn", _BNNet(), {"Dense_1.kernel": dist.Normal(0, 1)}, input_shape=(1, x.shape[-1]),
                                 mutable=["batch_stats"])
    else:
        net = flax_module("nn", _BNNet(), input_shape=(1, x.shape[-1]), mutable=["batch_stats"])
    mu = net(x, train=not deterministic)
    with numpyro.plate("data", x.shape[0]), handlers.scale(scale=1.0 if num_data is None else num_data / x.shape[0]):
        numpyro.sample("obs", dist.Normal(mu, 0.5), obs=y)


@pytest.mark.parametrize("method", ["bbb"])
def test_batch_norm_running_stats_reach_the_posterior(xy, method):
    """Trap: batch statistics live in the SVI state's mutable_state, not in params; predictions must use them."""
    import functools

    model = functools.partial(_bn_model, bayesian=method == "bbb")
    f = fit(ModelEstimator(model, feature_names=("a", "b")), xy, method=method, **SMALL)
    stats = f.params["nn$state"]["batch_stats"]["BatchNorm_0"]
    assert not np.allclose(stats["mean"], 0.0)  # updated from the initial zeros
    k_draws, _ = jax.random.split(jax.random.key(f.seed))  # the key Fit.posterior draws the weights with
    draws = f._method.sample(k_draws, f.state, 1)
    assert "nn$state" in draws
    np.testing.assert_allclose(draws["nn$state"]["batch_stats"]["BatchNorm_0"]["mean"][0], stats["mean"])
    # the posterior mean equals the net applied with those running statistics (deterministic=True)
    xs = f.features(xy[0][:30])
    draw0 = jax.tree.map(lambda a: a[0], draws)
    p = dict(draw0["nn$params"])
    if method == "bbb":
        p["Dense_1"] = dict(p["Dense_1"], kernel=draw0["nn/Dense_1.kernel"])
    mu = _BNNet().apply({"params": p, "batch_stats": draw0["nn$state"]["batch_stats"]}, jnp.asarray(xs), train=False)
    post = f.posterior(xy[0][:30], num_draws=1)
    scale, mean = float(np.asarray(f.y_scaler.scale).reshape(())), float(np.asarray(f.y_scaler.mean).reshape(()))
    expected = np.asarray(mu) * scale + mean
    np.testing.assert_allclose(post.mean(), expected, atol=2e-2)
