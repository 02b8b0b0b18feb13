"""Tests of the Bayesian inference methods: "bbb", "mc_dropout", "nuts", "laplace", "ensemble".

Every method runs through the one interface (``fit(est, train, method=m)`` then ``fit.posterior(test)``) on a small
mock, with no method-specific code. The traps of DESIGN.md that touch these methods each have a test here or in
tests/test_bnn.py (prior keys): dropout masks, batch-norm state, jitted prediction, NUTS judged in function space.
"""

import warnings

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
from numpyro_clustermass.estimators import MDN, ModelEstimator
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
    "ensemble": {"num_members": 3},
    "laplace": {"map_options": {"num_epochs": 5}},
    "nuts": {"map_options": {"num_epochs": 5}, "num_warmup": 50, "num_samples": 50, "max_tree_depth": 5},
}


@pytest.mark.parametrize("method", [pytest.param(m, marks=pytest.mark.slow) if m in ("nuts", "laplace") else m
                                    for m in sorted(FAST_OPTIONS)])  # nuts, laplace: ~30 s each, also tested below
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
    _, loss = jax.jit(impl.step)(state, x, y)  # one program, not each operation compiled on its own
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


@pytest.mark.slow
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


@pytest.mark.parametrize("method", ["bbb", "ensemble"])
def test_batch_norm_running_stats_reach_the_posterior(xy, method):
    """Trap: batch statistics live in the SVI state's mutable_state, not in params; predictions must use them."""
    import functools

    model = functools.partial(_bn_model, bayesian=method == "bbb")
    f = fit(ModelEstimator(model, feature_names=("a", "b")), xy, method=method, **SMALL)
    stats = f.params["nn$state"]["batch_stats"]["BatchNorm_0"]
    assert not np.allclose(stats["mean"], 0.0)  # updated from the initial zeros
    if method == "ensemble":
        stats = jax.tree.map(lambda a: a[0], stats)
    k_draws, _ = jax.random.split(jax.random.key(f.seed))  # the key Fit.posterior draws the weights with
    draws = f._method.sample(k_draws, f.state, 1)
    if method == "ensemble":  # keep the first member only
        draws = jax.tree.map(lambda a: a[:1], draws)
    assert "nn$state" in draws
    np.testing.assert_allclose(draws["nn$state"]["batch_stats"]["BatchNorm_0"]["mean"][0], stats["mean"])
    # the posterior mean equals the net applied with those running statistics (deterministic=True)
    xs = f.features(xy[0][:30])
    draw0 = jax.tree.map(lambda a: a[0], draws)
    p = dict(draw0["nn$params"])
    if method == "bbb":
        p["Dense_1"] = dict(p["Dense_1"], kernel=draw0["nn/Dense_1.kernel"])
    mu = _BNNet().apply({"params": p, "batch_stats": draw0["nn$state"]["batch_stats"]}, jnp.asarray(xs), train=False)
    if method == "ensemble":
        f._method = f._method._replace(sample=lambda k, st, n: draws)
    post = f.posterior(xy[0][:30], num_draws=1)
    scale, mean = float(np.asarray(f.y_scaler.scale).reshape(())), float(np.asarray(f.y_scaler.mean).reshape(()))
    expected = np.asarray(mu) * scale + mean
    np.testing.assert_allclose(post.mean(), expected, atol=2e-2)


# ------------------------------------------------------------------------------------ ensembles
def test_ensemble_members_differ_and_train_as_one_program(xy):
    f = fit(_est(), xy, method="ensemble", num_members=4, **SMALL)
    kern = np.asarray(f.params["nn$params"]["head"]["locs"]["kernel"])
    assert kern.shape[0] == 4 and not np.allclose(kern[0], kern[1])
    assert f.info["traces"]["epoch"] <= 1  # one compiled epoch function for all members and epochs
    post = f.posterior(xy[0][:30], num_draws=100)
    assert post.meta["num_draws"] == 4
    # equal-weight mixture: the epistemic variance is the variance of the members' (head) means
    from numpyro_clustermass.inference.nuts import predictive_means

    members = f._method.sample(jax.random.key(0), f.state, 100)
    means = np.asarray(predictive_means(f._model, deterministic=True)(members, jnp.asarray(f.features(xy[0][:30]))))
    scale = float(np.asarray(f.y_scaler.scale).reshape(()))
    np.testing.assert_allclose(post.epistemic_variance, np.var(means, axis=0) * scale**2, rtol=1e-3, atol=1e-8)


# ------------------------------------------------------------------------------------ conjugate checks
def _linear_model(x, y=None, num_data=None, deterministic=False):
    """Bayesian linear regression with known noise: the posterior is Gaussian and known in closed form."""
    w = numpyro.sample("w", dist.Normal(0.0, 1.0).expand([x.shape[-1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0.0, 1.0))
    with numpyro.plate("data", x.shape[0]), handlers.scale(scale=1.0 if num_data is None else num_data / x.shape[0]):
        numpyro.sample("obs", dist.Normal(x @ w + b, LIN_SIGMA), obs=y)


LIN_SIGMA = 0.5


def _linear_data(n=200):
    rng = np.random.default_rng(3)
    x = rng.normal(size=(n, 2))
    y = 14.0 + 0.3 * (x @ np.array([1.0, -0.5])) + 0.25 * rng.normal(size=n)
    return x, y


def _exact_linear_posterior(f, x, y):
    xs = np.asarray(f.x_scaler.transform(x), np.float64)
    ys = np.asarray(f.y_scaler.transform(y), np.float64).reshape(-1)
    a = np.column_stack([xs, np.ones(len(xs))])
    prec = a.T @ a / LIN_SIGMA**2 + np.eye(3)
    cov = np.linalg.inv(prec)
    return cov @ (a.T @ ys) / LIN_SIGMA**2, cov


def test_the_compiled_start_is_initialize_models_on_constrained_sites():
    """start_at_values (the Laplace and NUTS start, the model traced under jit) against NumPyro's initialize_model
    (op by op) on the M-sigma model, whose scatter (positive) and correlation (Cholesky factor) sites are
    transformed: the same unconstrained start and the same potential there and away from it; a site without a
    value takes initialize_model's own start."""
    from numpyro.infer.initialization import init_to_value
    from numpyro.infer.util import initialize_model

    from numpyro_clustermass.inference.laplace import start_at_values
    from numpyro_clustermass.scaling import mass_observable_model

    rng = np.random.default_rng(1)
    y = rng.normal(size=200).astype(np.float32)
    x = (0.5 * y[:, None] + 0.3 * rng.normal(size=(200, 2))).astype(np.float32)
    values = {"intercept": jnp.array([0.1, -0.2]), "slope": jnp.array([0.5, 0.4]), "scatter": jnp.array([0.3, 0.35]),
              "corr_cholesky": jnp.linalg.cholesky(jnp.array([[1.0, 0.3], [0.3, 1.0]]))}
    key = jax.random.key(0)

    def reference(vals):
        return initialize_model(key, mass_observable_model, init_strategy=init_to_value(values=vals),
                                model_args=(x, y), dynamic_args=False)

    ref = reference(values)
    potential_fn, z0 = start_at_values(key, mass_observable_model, values, (x, y))
    assert set(z0) == set(ref.param_info.z) == set(values)
    for k, v in ref.param_info.z.items():
        np.testing.assert_allclose(z0[k], v, rtol=1e-6, atol=1e-6, err_msg=k)
    assert not np.allclose(z0["scatter"], values["scatter"])  # transformed: log
    moved = jax.tree.map(lambda a: a + 0.1, z0)
    for z in (z0, moved):
        np.testing.assert_allclose(potential_fn(z), ref.potential_fn(z), rtol=1e-6)

    some = {k: v for k, v in values.items() if k != "slope"}
    _, z_some = start_at_values(key, mass_observable_model, some, (x, y))
    for k, v in reference(some).param_info.z.items():
        np.testing.assert_array_equal(z_some[k], v, err_msg=k)


def test_laplace_is_exact_on_a_gaussian_posterior():
    x, y = _linear_data()
    est = ModelEstimator(_linear_model, feature_names=("a", "b"))
    f = fit(est, (x, y), method="laplace", validation_fraction=0.0, num_epochs=5, batch_size=64,
            progress_bar=False)
    mean, cov = _exact_linear_posterior(f, x, y)
    perm = [2, 0, 1]  # the flat latent vector is ordered like the sorted site names: b, w[0], w[1]
    st = f.state
    np.testing.assert_allclose(np.asarray(st.mode), mean[perm], atol=2e-4)  # the exact mode
    np.testing.assert_allclose(np.asarray(st.scale @ st.scale.T), cov[np.ix_(perm, perm)], rtol=1e-3, atol=1e-7)
    assert f.info["clipped_eigenvalues"] == 0 and f.info["potential_at_mode"] <= f.info["potential_at_map"]
    draws = f._method.sample(jax.random.key(0), st, 4000)
    np.testing.assert_allclose(np.asarray(draws["w"]).std(0), np.sqrt(np.diag(cov))[:2], rtol=0.06)


def test_laplace_warns_when_its_centre_is_not_a_mode():
    # one epoch of MAP and no refinement: the Hessian at the MAP weights has negative eigenvalues (6 of 54 when
    # this test was written), which the floor hides from the draws; the user is told, with the numbers
    from numpyro_clustermass.diagnostics import ConvergenceWarning

    rng = np.random.default_rng(0)
    y = rng.uniform(13.5, 15.0, 600)
    x = y[:, None] + 0.1 * rng.normal(size=(600, 3))
    with pytest.warns(ConvergenceWarning, match=r"not centred at a posterior mode: \d+ of 54 eigenvalues.*"
                                                r"refine_mode=False"):
        f = fit(MDN(2, (8,), feature_names=("a", "b", "c")), (x, y), method="laplace", num_epochs=1,
                batch_size=128, progress_bar=False, refine_mode=False)
    assert f.info["clipped_eigenvalues"] > 0 and f.info["hessian_min_eigenvalue"] < 0


@pytest.mark.slow
def test_nuts_is_generic_and_matches_an_exact_posterior():
    """A plain NumPyro model with scalar latents (no network) runs through method="nuts" as it is."""
    x, y = _linear_data()
    est = ModelEstimator(_linear_model, feature_names=("a", "b"))
    f = fit(est, (x, y), method="nuts", validation_fraction=0.2, num_epochs=5, batch_size=64, progress_bar=False,
            num_warmup=300, num_samples=500)
    assert sorted(f.info["latent_sites"]) == ["b", "w"]
    assert f.info["converged"] and f.info["function_space"]["max_rhat"] < 1.05
    samples = f.state.samples
    assert samples["w"].shape == (2, 500, 2)  # (chains, draws, ...) kept in the state
    # exact posterior on the rows NUTS saw (the training side of the validation split)
    from numpyro_clustermass.inference.fitting import _validation_split

    tr = ~_validation_split(len(y), 0.2, None, 0)
    mean, cov = _exact_linear_posterior(f, x[tr], y[tr])
    w = np.asarray(samples["w"]).reshape(-1, 2)
    sd = np.sqrt(np.diag(cov))[:2]
    assert np.all(np.abs(w.mean(0) - mean[:2]) < 4 * sd / np.sqrt(200)), (w.mean(0), mean[:2], sd)  # ESS >= 200
    np.testing.assert_allclose(w.std(0), sd, rtol=0.15)
    assert f._method.sample(jax.random.key(0), f.state, 50)["w"].shape == (50, 2)


# ------------------------------------------------------------------------------------ NUTS in function space
def test_nuts_reports_function_space_convergence_on_held_out_clusters(xy):
    """Trap: NUTS mixing is judged on per-cluster predictive means of the validation split, not on weights."""
    from numpyro_clustermass.diagnostics import function_space_convergence
    from numpyro_clustermass.inference.nuts import predictive_means

    f = fit(_est(), xy, method="nuts", map_options={"num_epochs": 10}, num_warmup=60, num_samples=60,
            max_tree_depth=5, **SMALL)
    info = f.info
    assert info["function_space_set"] == "validation" and info["function_space_clusters"] == info["n_val"]
    assert info["num_latent"] == 54  # the head only: 3 x (8 x 2 + 2)
    assert set(info["latent_sites"]) == {f"nn/head.{m}.{p}" for m in ("logits", "locs", "scales")
                                         for p in ("kernel", "bias")}
    assert np.isfinite(info["weight_space_max_rhat"])
    # recompute the diagnostic from the kept weight-space samples
    c, s = 2, 60
    flat = jax.tree.map(lambda a: a.reshape((c * s,) + a.shape[2:]), f.state.samples)
    fixed = jax.tree.map(lambda a: jnp.broadcast_to(a, (c * s,) + jnp.shape(a)), f.state.fixed)
    from numpyro_clustermass.inference.fitting import _validation_split

    is_val = _validation_split(len(xy[1]), 0.1, None, 0)
    x_val = jnp.asarray(f.features(xy[0][is_val]))
    means = np.asarray(predictive_means(f._model, deterministic=True)({**fixed, **flat}, x_val)).reshape(c, s, -1)
    ref = function_space_convergence(means)
    assert info["function_space"]["max_rhat"] == pytest.approx(ref["max_rhat"], rel=1e-6)
    assert info["converged"] == (ref["max_rhat"] < 1.05)


def test_nuts_bad_prior_and_no_latents_are_errors(xy):
    with pytest.raises(WeightPriorError, match="outside bayesian_layers"):
        fit(_est(), xy, method="nuts", weight_prior={"trunk": dist.Normal(0, 1)}, **SMALL)

    def det_model(x, y=None):
        w = numpyro.param("w", jnp.zeros(x.shape[-1]))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("obs", dist.Normal(x @ w, 1.0), obs=y)

    with pytest.raises(ValueError, match="no latent sample sites"):
        fit(ModelEstimator(det_model, feature_names=("a", "b")), xy, method="nuts", map_options={"num_epochs": 1},
            **SMALL)


def test_gaussian_at_mode_never_moves_uphill_after_a_failed_bfgs():
    """jax's BFGS can stop after a failed line search with an x far from the start and an opt.fun that is not
    the potential there (here: fun 3.9, potential 280 at x, 20.1 at the start); the mode is judged by the potential
    at x. Without Newton steps the start is kept; with them the true mode (0, 0) is reached."""
    from numpyro_clustermass.inference.laplace import gaussian_at_mode

    def potential(z):
        return jnp.sum(jnp.exp(3.0 * z["z"]) - 3.0 * z["z"])

    z0 = {"z": jnp.array([1.0, -1.0])}
    g = gaussian_at_mode(potential, z0, max_newton=0)
    assert g["info"]["potential_at_mode"] <= g["info"]["potential_at_map"] + 1e-4, g["info"]
    np.testing.assert_allclose(g["mode"], [1.0, -1.0])
    g = gaussian_at_mode(potential, z0)
    np.testing.assert_allclose(g["mode"], [0.0, 0.0], atol=1e-3)
    # the Hessian at the mode is diag(9, 9): covariance 1/9
    np.testing.assert_allclose(np.diag(g["scale"] @ g["scale"].T), [1 / 9, 1 / 9], rtol=1e-3)


def test_laplace_refuses_a_huge_dense_hessian(xy):
    with pytest.raises(ValueError, match="max_params"):
        fit(_est(), xy, method="laplace", bayesian_layers="all", max_params=20, map_options={"num_epochs": 1},
            **SMALL)


# ------------------------------------------------------------------------------------ bad options: errors at fit time
@pytest.fixture
def no_training(monkeypatch):
    """Make any training or sampling fail loudly: an option error must come before either."""
    import numpyro_clustermass.inference._bayes as bayes
    import numpyro_clustermass.inference.laplace as laplace
    import numpyro_clustermass.inference.nuts as nuts

    def must_not_run(*a, **k):
        raise AssertionError("training or sampling started before the options were checked")

    for mod in (bayes, nuts, laplace):
        monkeypatch.setattr(mod, "map_params_from", must_not_run)
    monkeypatch.setattr(nuts, "MCMC", must_not_run)
    monkeypatch.setattr(bayes, "drive_epochs", must_not_run)


@pytest.mark.parametrize("option, value, message", [
    ("num_chains", 1.5, r"num_chains must be an integer >= 1 \(2 or more for R-hat\); got 1\.5"),
    ("num_chains", 0, r"num_chains must be an integer >= 1 .*got 0"),
    ("num_chains", True, r"num_chains must be an integer >= 1 .*got True"),
    ("num_warmup", -1, r"num_warmup must be an integer >= 0; got -1"),
    ("num_warmup", 10.5, r"num_warmup must be an integer >= 0; got 10\.5"),
    ("num_samples", 0, r"num_samples must be an integer >= 1; got 0"),
    ("num_samples", -5, r"num_samples must be an integer >= 1; got -5"),
    ("num_samples", 2.5, r"num_samples must be an integer >= 1; got 2\.5"),
    ("target_accept_prob", 1.5, r"target_accept_prob must be a finite number in \(0, 1\) .*; got 1\.5"),
    ("target_accept_prob", 0.0, r"target_accept_prob must be a finite number in \(0, 1\) .*; got 0\.0"),
    ("target_accept_prob", float("nan"), r"target_accept_prob must be a finite number in \(0, 1\) .*; got nan"),
    ("max_tree_depth", 0, r"max_tree_depth must be an integer in \[1, 30\] .*2\*\*max_tree_depth.*; got 0"),
    ("max_tree_depth", 2.5, r"max_tree_depth must be an integer in \[1, 30\] .*; got 2\.5"),
    ("num_draws", 0, r"num_draws must be an integer >= 1; got 0"),
    ("rhat_threshold", 0.99, r"rhat_threshold must be a finite number > 1 .*; got 0\.99"),
    ("min_ess", -1.0, r"min_ess must be a finite number > 0; got -1\.0"),
    ("on_convergence", "ignore", r"on_convergence must be 'warn' or 'raise'; got 'ignore'"),
    ("init", "net", r"init must be 'map' or a MAP Fit of the same data; got 'net'"),
    ("dense_mass", "yes", r"dense_mass must be True or False; got 'yes'"),
])
def test_nuts_bad_options_fail_at_fit_time(xy, no_training, option, value, message):
    with pytest.raises(ValueError, match=r"method 'nuts': " + message):
        fit(_est(), xy, method="nuts", **{option: value}, **SMALL)


def test_nuts_raise_on_convergence_needs_two_chains_and_map_options_are_checked(xy, no_training):
    with pytest.raises(ValueError, match=r"on_convergence='raise' needs num_chains >= 2 .*got num_chains=1"):
        fit(_est(), xy, method="nuts", num_chains=1, on_convergence="raise", **SMALL)
    with pytest.raises(TypeError, match=r"method 'nuts': map_options: unknown option 'num_epoch' \(did you mean "
                                        r"'num_epochs'\?\); the options are .*learning_rate.*num_epochs"):
        fit(_est(), xy, method="nuts", map_options={"num_epoch": 5}, **SMALL)
    with pytest.raises(ValueError, match=r"method 'nuts': map_options: num_epochs must be an integer >= 1; got 0"):
        fit(_est(), xy, method="nuts", map_options={"num_epochs": 0}, **SMALL)
    with pytest.raises(TypeError, match=r"map_options must be a dict"):
        fit(_est(), xy, method="laplace", map_options=5, **SMALL)


@pytest.mark.parametrize("method", ["bbb", "mc_dropout", "laplace", "nuts"])
@pytest.mark.parametrize("value", [0, -1, 2.5])
def test_num_draws_is_checked_at_fit_time_for_every_method(xy, no_training, method, value):
    with pytest.raises(ValueError, match=rf"method '{method}': num_draws must be an integer >= 1.*; got {value}"):
        fit(_est(), xy, method=method, num_draws=value, **SMALL)


@pytest.mark.parametrize("value", [0, -2, 1.5])
def test_ensemble_num_members_must_be_a_positive_integer(xy, no_training, value):
    with pytest.raises(ValueError, match=rf"method 'ensemble': num_members must be an integer >= 1 .*; got {value}"):
        fit(_est(), xy, method="ensemble", num_members=value, **SMALL)


def test_ensemble_and_mc_dropout_name_an_unknown_option(xy, no_training):
    with pytest.raises(TypeError, match=r"method 'ensemble': unknown option 'num_draws' \(an ensemble's draws "
                                        r"are its members: set num_members\)"):
        fit(_est(), xy, method="ensemble", num_draws=10, **SMALL)
    with pytest.raises(TypeError, match=r"method 'mc_dropout': unknown option 'learning_rat' \(did you mean "
                                        r"'learning_rate'\?\)"):
        fit(_est(), xy, method="mc_dropout", learning_rat=1e-3, **SMALL)


@pytest.mark.parametrize("method, options, message", [
    ("bbb", {"num_particles": 0}, r"method 'bbb': num_particles must be an integer >= 1; got 0"),
    ("bbb", {"eval_particles": 1.5}, r"method 'bbb': eval_particles must be an integer >= 1; got 1\.5"),
    ("bbb", {"init_scale": float("inf")}, r"method 'bbb': init_scale must be a finite number > 0 .*; got inf"),
    ("bbb", {"init": "mpa"}, r"method 'bbb': init must be 'net', 'map' or a MAP Fit .*; got 'mpa'"),
    ("laplace", {"init": "net"}, r"method 'laplace': init must be 'map' or a MAP Fit .*; got 'net'"),
    ("laplace", {"eigenvalue_floor": 0.0}, r"method 'laplace': eigenvalue_floor must be a finite number in \(0, 1\)"),
    ("laplace", {"max_params": 0}, r"method 'laplace': max_params must be an integer >= 1; got 0"),
    ("ensemble", {"learning_rate": float("inf")}, r"learning_rate must be a finite number > 0 .*; got inf"),
    ("ensemble", {"final_lr_fraction": 2.0}, r"final_lr_fraction must be a finite number in \[0, 1\] .*; got 2\.0"),
    ("mc_dropout", {"weight_decay": -1e-4}, r"weight_decay must be a finite number >= 0 .*; got -0\.0001"),
    ("mc_dropout", {"clip_norm": 0.0}, r"clip_norm must be a finite number > 0 or None; got 0\.0"),
    ("mc_dropout", {"warmup_steps": -3}, r"warmup_steps must be an integer >= 0 or None; got -3"),
])
def test_other_bad_method_options_fail_at_fit_time(xy, no_training, method, options, message):
    with pytest.raises(ValueError, match=message):
        fit(_est(), xy, method=method, **options, **SMALL)


# ------------------------------------------------------------------------------------ early stopping facts
def test_ensemble_that_runs_every_epoch_did_not_stop_early(xy):
    """Patience running out on the last planned epoch stops nothing: stopped_early means fewer epochs ran."""
    f = fit(_est(), xy, method="ensemble", num_members=2, num_epochs=4, patience=3, min_delta=10.0,
            batch_size=256, progress_bar=False)
    assert f.info["epochs_run"] == 4 and f.info["stopped_early"] is False
    g = fit(_est(), xy, method="ensemble", num_members=2, num_epochs=6, patience=2, min_delta=10.0,
            batch_size=256, progress_bar=False)
    assert g.info["epochs_run"] == 3 and g.info["stopped_early"] is True


def test_internal_epoch_driver_reports_stopped_early_only_when_epochs_were_left(xy):
    """The driver the Bayesian methods run their own epochs with (bbb init="map", the internal MAP fit)."""
    from numpyro_clustermass.inference import TrainingData
    from numpyro_clustermass.inference._bayes import drive_epochs

    x = jnp.asarray((xy[0] - xy[0].mean(0)) / xy[0].std(0), jnp.float32)
    y = jnp.asarray((xy[1] - xy[1].mean()) / xy[1].std(), jnp.float32)
    data = TrainingData(x[:500], y[:500], x[500:], y[500:])
    plan = TrainingPlan(num_data=500, batch_size=250, steps_per_epoch=2, num_epochs=4, num_features=2)
    model = ncm.inference.standardize_model(_est().model)
    impl = get_method("map")(model, plan)
    _, hist, info = drive_epochs(model, impl, plan, jax.random.key(0), data, 3, 10.0, False, "test")
    assert info["epochs_run"] == 4 and info["stopped_early"] is False
    _, hist, info = drive_epochs(model, impl, plan, jax.random.key(0), data, 2, 10.0, False, "test")
    assert info["epochs_run"] == 3 and info["stopped_early"] is True


# ------------------------------------------------------------------------------------ NUTS that may be wrong says so
def _linear_est():
    return ModelEstimator(_linear_model, feature_names=("a", "b"))


LINEAR_NUTS = dict(validation_fraction=0.2, num_epochs=5, batch_size=64, progress_bar=False)


def test_nuts_divergent_unmoving_chains_raise_with_state_and_info():
    """No warm-up: NUTS keeps its initial unit step, 25 times the posterior width, so every transition diverges
    and the chains never leave their start (R-hat NaN, every draw divergent)."""
    from numpyro_clustermass.diagnostics import ConvergenceError

    x, y = _linear_data()
    with pytest.raises(ConvergenceError, match=r"R-hat nan is above the threshold 1\.05 \(the draws do not vary.*"
                                               r"40 divergent transitions of 40 draws \(100\.0%\).*"
                                               r"raise target_accept_prob \(now 0\.8\) toward 0\.95") as exc:
        fit(_linear_est(), (x, y), method="nuts", mass_matrix="adapt", num_warmup=0, num_samples=20,
            on_convergence="raise", **LINEAR_NUTS)
    err = exc.value
    assert err.info["num_divergent"] == 40 and err.info["converged"] is False
    assert err.state.samples["w"].shape == (2, 20, 2)  # the draws are kept
    assert len(err.problems) == 3
    assert err.fit is not None and err.fit.method == "nuts"  # fit() hands back the unconverged fit too
    assert err.fit.state.samples["w"].shape == (2, 20, 2)


def test_nuts_unconverged_chains_warn_with_rhat_and_ess():
    """Five warm-up steps of one leapfrog step each, from an untrained start: the chains are still drifting."""
    from numpyro_clustermass.diagnostics import ConvergenceWarning

    x, y = _linear_data()
    with pytest.warns(ConvergenceWarning) as rec:
        f = fit(_linear_est(), (x, y), method="nuts", mass_matrix="adapt", num_warmup=5, num_samples=20,
                max_tree_depth=1, map_options={"num_epochs": 1, "learning_rate": 1e-6}, **LINEAR_NUTS)
    (w,) = [r for r in rec if issubclass(r.category, ConvergenceWarning)]
    fs = f.info["function_space"]
    assert fs["max_rhat"] > 1.1 and fs["min_ess_bulk"] < 50 and not f.info["converged"]
    msg = str(w.message)
    assert f"function-space R-hat {fs['max_rhat']:.3f} is above the threshold 1.05 (the chains disagree)" in msg
    assert f"minimum bulk ESS {fs['min_ess_bulk']:.0f} is below 200" in msg
    assert "bayesian_layers='last'" not in msg  # only the last layer is sampled already (the default)
    assert "run longer (num_warmup=5, num_samples=20 per chain now)" in msg and "on_convergence='raise'" in msg
    assert w.filename == __file__  # points at the caller's fit(...) line
    assert f.info["convergence_problems"] and f.info["min_ess"] == 200


def test_nuts_one_chain_warns_that_convergence_was_not_checked():
    from numpyro_clustermass.diagnostics import ConvergenceWarning

    x, y = _linear_data()
    with pytest.warns(ConvergenceWarning, match=r"convergence was not checked: R-hat needs at least 2 chains "
                                                r"\(num_chains=1\).*use num_chains >= 2"):
        fit(_linear_est(), (x, y), method="nuts", num_chains=1, num_warmup=50, num_samples=50, **LINEAR_NUTS)


def test_nuts_converged_run_gives_no_warning():
    import warnings

    from numpyro_clustermass.diagnostics import ConvergenceWarning

    x, y = _linear_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ConvergenceWarning)
        f = fit(_linear_est(), (x, y), method="nuts", num_warmup=100, num_samples=300, on_convergence="raise",
                **LINEAR_NUTS)
    assert f.info["converged"] and f.info["num_divergent"] == 0 and f.info["convergence_problems"] == []
    assert f.info["function_space"]["min_ess_bulk"] >= 200


# ------------------------------------------------------------------------------------ the collapse check
@pytest.mark.parametrize("informative", [True, False])
def test_bbb_collapse_check_leaves_out_the_kl_term(informative):
    """BBB's held-out loss is the negative ELBO per datum, likelihood plus KL(q || p) / num_data: fit's "learned next
    to nothing" check compares the likelihood part with the Gaussian ignoring the features, so a small data set
    (a large KL per datum) gives no false warning, while features of pure noise still warn."""
    rng = np.random.default_rng(0)
    y = rng.uniform(13.5, 15.0, 600)
    signal = y + 0.1 * rng.normal(size=600) if informative else rng.normal(size=600)
    x = np.stack([signal, rng.normal(size=600)], 1)
    est = MDN(2, (16, 16), feature_names=("a", "b"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        f = fit(est, (x, y), method="bbb", num_epochs=30, batch_size=64, progress_bar=False, seed=0)
    collapse = [w for w in caught if issubclass(w.category, ncm.FitWarning) and "learned next to" in str(w.message)]
    prior = f._method.prior_loss(f.state)
    # Measured (seed 0): KL / num_data 3.17 (informative) and 3.16 (noise) nats per cluster, more than the Gaussian
    # baseline's whole loss (1.35); without it the loss is 0.50 for informative features and 1.348 for noise.
    assert prior > 1.0
    assert f.info.best_loss > f.info.baseline_loss  # the ELBO alone would have warned in both cases
    assert bool(collapse) == (not informative), [str(w.message) for w in collapse]
    if not informative:
        assert f"with its prior term {prior:.4f}" in str(collapse[0].message)
