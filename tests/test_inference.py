"""Tests for numpyro_clustermass.inference: fit(), the map method, the registry, errors, the lecture's bias."""

import json
import math
import os

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest

from numpyro_clustermass.catalog import CatalogError
from numpyro_clustermass.estimators import MDN, MSE
from numpyro_clustermass.inference import (
    Fit,
    FitDivergedError,
    FitInterrupted,
    FitWarning,
    InferenceMethod,
    IterativeMethod,
    OneShotMethod,
    RunResult,
    TrainingPlan,
    available_methods,
    clear_cache,
    fit,
    get_method,
    register_method,
    standardize_model,
)
from numpyro_clustermass.posterior import MassPosterior

NAMES = ("a", "b", "c")


def _synthetic(n=3000, seed=0, noise=0.15):
    """Masses from a steep power law, features = noisy functions of log M (plus a halo id per 3 rows)."""
    rng = np.random.default_rng(seed)
    y = 13.5 - np.log10(rng.uniform(1e-3, 1.0, n)) / 1.7  # dN/dlogM ~ M^-1.7, like a mass function
    y = np.minimum(y, 15.3)
    x = np.stack([y + noise * rng.normal(size=n), np.sin(2 * y) + noise * rng.normal(size=n),
                  rng.normal(size=n)], axis=1)
    return x, y, np.arange(n) // 3


SMALL_MDN = MDN(num_components=3, hidden=(32, 32), feature_names=NAMES)
SMALL_MSE = MSE(hidden=(32, 32), feature_names=NAMES)


@pytest.fixture(scope="module")
def small_fit():
    x, y, g = _synthetic()
    clear_cache()  # compiled functions are shared between fits of one configuration: start cold
    return fit(SMALL_MDN, (x, y, g), num_epochs=8, batch_size=256, progress_bar=False, seed=3), (x, y, g)


def test_fit_records_everything_and_traces_once(small_fit):
    f, (x, y, g) = small_fit
    assert isinstance(f, Fit) and f.method == "map" and f.seed == 3 and f.estimator is SMALL_MDN
    # the epoch function and the evaluation are each compiled once for the whole fit (8 epochs)
    assert f.info["traces"] == {"epoch": 1, "evaluate": 1}
    assert f.info["epochs_run"] == 8 and len(f.history["train_loss"]) == len(f.history["val_loss"]) == 8
    assert f.history["val_loss"][-1] < f.history["val_loss"][0]
    # grouped validation split: about 10% of halos, never a halo on both sides
    assert f.info["n_val"] + f.info["n_train"] == len(y) and abs(f.info["n_val"] - 300) <= 3
    np.testing.assert_array_equal(f.training_log_mass, y)
    assert f.x_scaler.mean.shape == (3,) and np.ndim(f.y_scaler.mean) == 0
    assert "nn$params" in f.params and f.config["batch_size"] == 256
    assert f.grid.size == 512 and f.grid[0] < y.min() and f.grid[-1] > y.max()


def test_posterior_of_a_point_fit(small_fit):
    f, (x, y, _) = small_fit
    post = f.posterior(x[:700], chunk_size=256)  # chunked, with a padded last chunk
    assert isinstance(post, MassPosterior) and len(post) == 700
    np.testing.assert_allclose(np.exp(np.asarray(post.log_density, np.float64)).sum(-1) * post.dx, 1.0, atol=1e-4)
    np.testing.assert_array_equal(post.epistemic_variance, 0.0)
    assert np.all(post.aleatoric_variance > 0)
    np.testing.assert_array_equal(post.training_log_mass, y)
    # the grid mean agrees with the mixture mean of the head (MAP: one draw, no dropout)
    big = f.posterior(x[:700])
    np.testing.assert_allclose(post.mean(), big.mean(), atol=1e-5)
    assert np.sqrt(np.mean((post.mean() - y[:700]) ** 2)) < 0.2
    # the grid variance is the head's analytic mixture variance, except where the grid truncates a tail
    ratio = post.variance() / post.aleatoric_variance
    assert np.all(ratio < 1.0 + 1e-3) and np.median(ratio) > 0.995


def test_same_seed_same_fit_bitwise_and_a_repeated_configuration_is_not_retraced():
    x, y, g = _synthetic(n=1200)
    kw = dict(num_epochs=2, batch_size=128, progress_bar=False)
    f1 = fit(SMALL_MSE, (x, y, g), seed=5, **kw)
    f2 = fit(SMALL_MSE, (x, y, g), seed=5, **kw)
    assert f2.info["traces"] == {"epoch": 0, "evaluate": 0}
    f3 = fit(SMALL_MSE, (x, y, g), seed=6, **kw)
    assert f3.info["traces"] == {"epoch": 0, "evaluate": 0}
    assert not np.array_equal(f3.params["sigma"], f1.params["sigma"])
    for a, b in zip(jax.tree.leaves(f1.params), jax.tree.leaves(f2.params)):
        np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(f1.posterior(x[:50]).log_density, f2.posterior(x[:50]).log_density)


def test_early_stopping_keeps_the_best_state():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 3))
    y = 14.0 + 0.3 * rng.normal(size=1500)  # no signal: the validation loss stops improving at once
    with pytest.warns(FitWarning, match="learned next to nothing"):  # ...and the fit says so
        f = fit(MSE(hidden=(64, 64), feature_names=NAMES), (x, y), num_epochs=200, batch_size=64, patience=3,
                learning_rate=3e-3, schedule="constant", progress_bar=False)
    assert f.info["stopped_early"] and f.info["epochs_run"] < 200
    assert f.info["epochs_run"] >= f.info["best_epoch"] + 4
    assert f.info["best_val_loss"] == pytest.approx(np.min(f.history["val_loss"]), abs=1e-4)
    # the kept parameters are those of the best epoch: re-evaluating them gives the best validation loss
    assert f.info["best_val_loss"] < f.history["val_loss"][-1]


def _plateau_fit(method="map", resume=None, **kw):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(1500, 3))
    y = 14.0 + 0.3 * rng.normal(size=1500)  # no signal: the validation loss stops improving within epochs
    with pytest.warns(FitWarning, match="learned next to nothing"):
        return fit(MSE(hidden=(64, 64), feature_names=NAMES), (x, y), method=method, num_epochs=200, batch_size=64,
                   patience=None, learning_rate=3e-3, schedule="plateau", plateau_patience=2, plateau_factor=0.5,
                   plateau_reductions=2, progress_bar=False, resume=resume, **kw)


def test_plateau_schedule_lowers_the_learning_rate_from_the_best_state_then_stops(tmp_path):
    from numpyro_clustermass.inference import load
    from numpyro_clustermass.inference.svi import plateau_policy

    f = _plateau_fit()
    cut = f.info["lr_reduced_after_epochs"]
    # two reductions, each plateau_patience (2) epochs or more after the last improvement; the third plateau ends it
    assert len(cut) == 2 and f.info["stopped_early"] and f.info["epochs_run"] < 200
    assert f.info["epochs_run"] - 1 >= cut[-1] + 2 and cut[1] >= cut[0] + 2
    # the kept state is the best one, with the multiplier it was trained at: 0.5 per reduction before it
    before = sum(c < f.info["best_epoch"] for c in cut)
    policy = plateau_policy(f.state)
    assert policy["lr_scale"] == pytest.approx(0.5 ** before) and policy["reductions_done"] == before
    assert (policy["factor"], policy["patience"], policy["reductions"]) == (0.5, 2, 2)
    assert f.info["traces"]["epoch"] <= 1  # a new multiplier is a new value, not a recompilation
    # saved and loaded, the state keeps its multiplier; resuming follows the policy the state carries: only the
    # reductions not yet done are left
    f.save(tmp_path / "plateau.fit")
    f = load(tmp_path / "plateau.fit")
    assert plateau_policy(f.state) == policy
    g = _plateau_fit(resume=f)
    assert len(g.info["lr_reduced_after_epochs"]) == 2 - before and g.info["stopped_early"]


def test_plateau_multiplier_scales_the_update_and_an_own_optimizer_replaces_it():
    import optax
    from numpyro_clustermass.inference.svi import make_optimizer, make_schedule, plateau_policy, with_lr_scale

    opt = make_optimizer(make_schedule(1e-2, 100, "plateau", warmup_steps=0), plateau=(3, 0.25, 3))
    params = {"w": jnp.ones(3)}
    grads = {"w": jnp.array([1.0, -2.0, 0.5])}
    state = opt.init(params)
    full, _ = opt.update(grads, state, params)
    low, _ = opt.update(grads, with_lr_scale(state, 0.25), params)
    np.testing.assert_allclose(low["w"], 0.25 * full["w"], rtol=1e-6)
    np.testing.assert_allclose(full["w"], -1e-2 * np.sign(grads["w"]), rtol=1e-4)  # Adam's first step: lr x sign
    # optimizer=... replaces the optimiser the options build, the default "plateau" schedule's multiplier with it
    x, y, g = _synthetic(n=600)
    f = fit(SMALL_MSE, (x, y, g), num_epochs=2, optimizer=optax.adam(1e-3), progress_bar=False)
    assert f.options.schedule == "plateau" and plateau_policy(f.state) is None
    assert f.info.lr_reduced_after_epochs is None


def test_bbb_follows_the_plateau_schedule():
    f = _plateau_fit(method="bbb")
    assert len(f.info["lr_reduced_after_epochs"]) == 2 and f.info["stopped_early"]


def test_wrong_feature_count_and_nan_inputs_are_clear_errors(small_fit):
    f, (x, y, _) = small_fit
    with pytest.raises(CatalogError, match="expected 3 features per cluster .*got 2"):
        fit(SMALL_MDN, (x[:, :2], y), num_epochs=1, progress_bar=False)
    with pytest.raises(CatalogError, match="expected 3 features per cluster .*got 4"):
        f.posterior(np.concatenate([x[:5], x[:5, :1]], axis=1))
    bad = x.copy()
    bad[[3, 9], 1] = np.nan
    with pytest.raises(CatalogError, match=r"non-finite .*'b' \(2 rows\)"):
        fit(SMALL_MDN, (bad, y), num_epochs=1, progress_bar=False)
    with pytest.raises(CatalogError, match=r"non-finite .*'b' \(2 rows\)"):
        f.posterior(bad[:20])
    ybad = y.copy()
    ybad[7] = np.inf
    with pytest.raises(CatalogError, match="1 of 3000 log-masses are NaN or infinite"):
        fit(SMALL_MDN, (x, ybad), num_epochs=1, progress_bar=False)


def test_unknown_method_lists_the_registered_ones():
    with pytest.raises(ValueError, match=r"unknown inference method 'hmc'; registered methods are \[.*'map'"):
        fit(SMALL_MDN, _synthetic(200)[:2], method="hmc", progress_bar=False)
    assert "map" in available_methods() and callable(get_method("map"))


def _diverging_model(x, y=None, num_data=None):
    # the scale 5 - w crosses zero when Adam (constant lr 3) pushes w up toward the data's scale of 1
    w = numpyro.param("w", jnp.zeros(()))
    with numpyro.plate("data", x.shape[0]), numpyro.handlers.scale(scale=1.0 if num_data is None else num_data / x.shape[0]):
        numpyro.sample("obs", dist.Normal(0.0, 5.0 - w), obs=y)


def test_non_finite_loss_stops_with_an_error_and_keeps_the_last_finite_state():
    x, y, _ = _synthetic(400)
    with pytest.raises(FitDivergedError, match="non-finite .* loss .*diverged") as err:
        fit(_diverging_model, (x, y), num_epochs=20, batch_size=400, validation_fraction=0.0, patience=None,
            learning_rate=3.0, schedule="constant", progress_bar=False)
    kept = err.value.fit
    assert isinstance(kept, Fit)
    w = float(kept.params["w"])
    assert math.isfinite(w) and w < 5.0  # the last state whose loss was finite
    assert kept.info["diverged_at_epoch"] >= 1 and np.isfinite(kept.history["train_loss"][:-1]).all()


def test_user_model_function_and_kwargs_it_lacks():
    # a user model without num_data / deterministic: fit scales it and drops what it does not accept
    def my_model(x, y=None):
        net = numpyro.contrib.module.flax_module(
            "nn", __import__("numpyro_clustermass.nets", fromlist=["x"]).RegressionNet(hidden=(16,)),
            input_shape=(1, x.shape[-1]))
        mu = net(x)
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("obs", dist.Normal(mu, 0.5), obs=y)

    x, y, _ = _synthetic(1000)
    f = fit(my_model, (x, y), num_epochs=3, batch_size=128, progress_bar=False)
    assert f.estimator.name == "my_model" and f.feature_names is None
    post = f.posterior(x[:10])
    np.testing.assert_allclose(post.aleatoric_variance, (0.5 * f.y_scaler.scale) ** 2, rtol=1e-5)


def test_a_new_method_is_one_registration(small_fit):
    """A method that opts out of the epoch driver (like NUTS or Laplace will) plugs in without touching fit."""
    f0, (x, y, g) = small_fit

    def frozen_factory(model, plan, params=None):
        def run(rng_key, data, plan_, progress_bar):
            return RunResult(state=params, history={"loss": [0.0]}, info={"ran": True, "n": int(data.x_train.shape[0])})

        return OneShotMethod(run=run, get_params=lambda s: s,
                             sample=lambda k, s, n: jax.tree.map(lambda a: jnp.stack([a] * n), s),
                             predict_kwargs={"deterministic": True}, num_draws=4, name="frozen")

    register_method("frozen_test", frozen_factory, overwrite=True)
    f = fit(SMALL_MDN, (x, y, g), method="frozen_test", params=f0.params, progress_bar=False, seed=3)
    assert f.info["ran"] and f.method == "frozen_test"
    post = f.posterior(x[:20])  # 4 identical draws: zero epistemic variance, same density as the MAP fit
    np.testing.assert_allclose(post.epistemic_variance, 0.0, atol=1e-6)
    np.testing.assert_allclose(post.mean(), f0.posterior(x[:20]).mean(), atol=1e-4)
    with pytest.raises(ValueError, match="already registered"):
        register_method("map", frozen_factory)


def test_without_validation_data_the_epoch_guard_uses_the_methods_check():
    """A method's ``check`` replaces ``evaluate`` after each epoch only when there is no validation data (then the
    loss of a training batch just guards against divergence): a check that says NaN stops that fit alone."""
    def nan_check_factory(model, plan):
        return get_method("map")(model, plan)._replace(check=lambda state, x, y: jnp.float32(jnp.nan))

    register_method("nan_check_test", nan_check_factory, overwrite=True)
    x, y, g = _synthetic(600)
    kw = dict(method="nan_check_test", num_epochs=2, batch_size=128, progress_bar=False)
    f = fit(SMALL_MDN, (x, y, g), validation_fraction=0.2, **kw)  # evaluate on the validation set: finite
    assert np.all(np.isfinite(f.history["val_loss"])) and f.info["epochs_run"] == 2
    with pytest.raises(FitDivergedError, match=r"non-finite validation loss \(nan\) in epoch 0"):
        fit(SMALL_MDN, (x, y, g), validation_fraction=0.0, **kw)


def test_bbb_checks_a_training_batch_with_its_step_particles_not_its_eval_particles():
    """BBB's held-out ELBO averages ``eval_particles`` weight draws; its divergence guard without validation data
    (``check``) draws ``num_particles``, as a training step does: the same loss as ``evaluate`` with
    ``eval_particles=num_particles``."""
    x, y, _ = _synthetic(256)
    x, y = jnp.asarray(x[:, :3]), jnp.asarray(y)
    plan = TrainingPlan(num_data=256, batch_size=64, steps_per_epoch=4, num_epochs=1, num_features=3)
    model = standardize_model(SMALL_MSE.model)
    m8, m1 = (get_method("bbb")(model, plan, eval_particles=k) for k in (8, 1))
    state = m8.init(jax.random.key(0), x[:64], y[:64])
    check, one, eight = (float(f(state, x, y)) for f in (m8.check, m1.evaluate, m8.evaluate))
    assert check == one and abs(eight - one) > 1e-6 * abs(one), (check, one, eight)


def test_a_method_is_one_of_two_kinds_and_a_factory_returning_anything_else_is_refused():
    """BlackJAX-style protocol: a method trained by epochs or one that runs once, never a tuple with None slots."""
    plan = TrainingPlan(num_data=256, batch_size=64, steps_per_epoch=4, num_epochs=1, num_features=3)
    assert isinstance(get_method("map")(standardize_model(SMALL_MSE.model), plan), IterativeMethod)
    assert IterativeMethod._fields[:3] == ("init", "step", "evaluate") and "run" not in IterativeMethod._fields
    assert OneShotMethod._fields[0] == "run" and "step" not in OneShotMethod._fields
    assert isinstance(OneShotMethod(run=None, get_params=None, sample=None), InferenceMethod)  # the union

    def dict_factory(model, plan):
        return {"init": None, "step": None}

    register_method("dict_method_test", dict_factory, overwrite=True)
    x, y, g = _synthetic(300)
    with pytest.raises(TypeError, match=r"factory of inference method 'dict_method_test' returned a builtins\.dict; "
                                        r"a method factory must return an IterativeMethod .* or a OneShotMethod"):
        fit(SMALL_MDN, (x, y, g), method="dict_method_test", progress_bar=False)


# ---------------------------------------------------------------------------------------------- the lecture
@pytest.fixture(scope="module")
def mock_fits():
    from numpyro_clustermass.simulate import mock_catalog

    cat = mock_catalog(volume=0.05, mass_sampling="natural", seed=11)
    train, test = cat.split(test_fraction=0.25, seed=2)
    kw = dict(num_epochs=40, progress_bar=False, seed=0)
    return fit(MSE(), train, **kw), fit(MDN(), train, **kw), test


def _binned_bias(pred, truth, n_bins=5):
    edges = np.quantile(truth, np.linspace(0, 1, n_bins + 1))
    idx = np.clip(np.searchsorted(edges, truth, side="right") - 1, 0, n_bins - 1)
    return np.array([np.mean(pred[idx == b] - truth[idx == b]) for b in range(n_bins)])


def test_mdn_log_score_beats_mse_and_both_are_biased_toward_the_centre(mock_fits):
    mse, mdn, test = mock_fits
    y = test.log_mass
    post_mse, post_mdn = mse.posterior(test), mdn.posterior(test)
    score_mse, score_mdn = np.mean(post_mse.log_prob(y)), np.mean(post_mdn.log_prob(y))
    assert score_mdn > score_mse + 0.1, (score_mdn, score_mse)
    for post in (post_mse, post_mdn):
        bias = _binned_bias(post.mean(), y)
        assert bias[0] > 0.02 and bias[-1] < -0.02, bias  # the lecture's pull toward the centre


def test_validation_split_is_grouped_by_halo():
    from numpyro_clustermass.inference.fitting import _validation_split

    groups = np.repeat(np.arange(500), 3)
    is_val = _validation_split(groups.size, 0.2, groups, seed=4)
    assert abs(is_val.mean() - 0.2) < 0.01
    val_halos, train_halos = set(groups[is_val]), set(groups[~is_val])
    assert val_halos and not (val_halos & train_halos)


def test_progress_bar_shows_the_losses_and_no_validation_means_no_early_stop(capsys):
    x, y, _ = _synthetic(600)
    f = fit(SMALL_MSE, (x, y), num_epochs=3, batch_size=128, validation_fraction=0.0, patience=1,
            learning_rate=1e-6, schedule="cosine", progress_bar=True)
    err = capsys.readouterr().err
    assert "loss=" in err and "val=" in err and "lr=" not in err  # a schedule without a multiplier shows none
    assert f.info["epochs_run"] == 3 and not f.info["stopped_early"] and f.info["n_val"] == 0
    # the plateau schedule shows its multiplier; without validation data its plateaus (of the training loss)
    # lower the rate but never end training: 12 epochs at a rate too small to improve, 1 + 3 plateaus of 2
    f = fit(SMALL_MSE, (x, y), num_epochs=12, batch_size=128, validation_fraction=0.0, learning_rate=1e-9,
            schedule="plateau", plateau_patience=2, progress_bar=True)
    err = capsys.readouterr().err
    assert "lr=x1" in err and "lr=x0.25" in err
    assert f.info["epochs_run"] == 12 and not f.info["stopped_early"]
    assert len(f.info["lr_reduced_after_epochs"]) == 3


@pytest.mark.slow
def test_lecture_results_on_tens_of_thousands_of_mocks():
    """The issue's criterion at full size: ~68k natural-mode mocks, split by halo, default fits (~1 min)."""
    from numpyro_clustermass.simulate import mock_catalog

    cat = mock_catalog(volume=0.25, mass_sampling="natural", seed=0)
    train, test = cat.split(test_fraction=0.2, seed=1)
    mse, mdn = fit(MSE(), train, progress_bar=False), fit(MDN(), train, progress_bar=False)
    y = test.log_mass
    post_mse, post_mdn = mse.posterior(test), mdn.posterior(test)
    # measured: MDN 0.81, MSE 0.69 nats per cluster
    assert np.mean(post_mdn.log_prob(y)) > np.mean(post_mse.log_prob(y)) + 0.05
    for post in (post_mse, post_mdn):
        bias = _binned_bias(post.mean(), y)
        assert bias[0] > 0.05 and bias[-1] < -0.03, bias  # measured: +0.11 / -0.06 (MDN), +0.12 / -0.07 (MSE)


# ---------------------------------------------------------------------------------------------- never silently wrong
@pytest.mark.parametrize("est, lr", [(SMALL_MDN, 1e6), (SMALL_MSE, 10.0)])
def test_a_finite_loss_explosion_stops_with_an_error(est, lr):
    x, y, g = _synthetic(n=1500)
    # the loss runs to 1e11-1e15 without a NaN; such fits used to come back as a normal Fit
    with pytest.raises(FitDivergedError, match=r"exploding \(above .* divergence_factor 1000") as err:
        fit(est, (x, y, g), num_epochs=5, batch_size=256, progress_bar=False, learning_rate=lr)
    f = err.value.fit
    assert f.info["diverged_at_epoch"] == 0 and math.isfinite(f.info["initial_loss"])
    assert np.all(np.isfinite(np.asarray(jax.tree.leaves(f.params)[0])))
    with pytest.raises(ValueError, match="divergence_factor must be a positive number or None"):
        fit(SMALL_MDN, (x, y, g), divergence_factor=0.0)


def test_a_collapsed_fit_warns_with_numbers():
    x, y, g = _synthetic(n=1500)
    # lr 0.3 on MSE: no explosion, but the net collapses to nearly one mass for every cluster.
    # Measured: best validation loss 1.98 against 1.25 for a Gaussian ignoring the features; prediction
    # spread 0.085 dex against 0.26 in the data.
    with pytest.warns(FitWarning, match=r"best validation loss, .* is not 0.05 below .*ignoring the features"):
        f = fit(SMALL_MSE, (x, y, g), num_epochs=4, batch_size=256, progress_bar=False, learning_rate=0.3)
    assert np.std(f.predict(x[:200])) < 0.5 * np.std(y)


def test_ctrl_c_hands_back_the_best_state(small_fit, monkeypatch):
    from numpyro_clustermass.inference import epochs

    x, y, g = small_fit[1]
    fit(SMALL_MDN, (x, y, g), num_epochs=8, batch_size=256, progress_bar=False, seed=3)  # same configuration
    (entry,) = [c for c in epochs._COMPILED.data.values() if c.model is not None and c.plan.num_epochs == 8
                and c.plan.batch_size == 256 and c.impl.name == "map"][-1:]
    real = entry.epoch
    calls = []

    def interrupted_in_epoch_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(entry, "epoch", interrupted_in_epoch_4)
    with pytest.raises(FitInterrupted, match=r"interrupted in epoch 3 after 3 complete epochs; the best state") as err:
        fit(SMALL_MDN, (x, y, g), num_epochs=8, batch_size=256, progress_bar=False, seed=3)
    assert isinstance(err.value, KeyboardInterrupt)
    f = err.value.fit
    assert f.info["interrupted"] and f.info["epochs_run"] == 3 and len(f.history["val_loss"]) == 3
    assert f.info["best_val_loss"] == pytest.approx(np.min(f.history["val_loss"]))
    assert f.posterior(x[:5]).mean().shape == (5,)


def test_ctrl_c_inside_a_finalizer_still_stops_training(small_fit, monkeypatch):
    """A SIGINT whose KeyboardInterrupt Python raises inside a ``__del__`` (a ZipFile collected during a
    checkpoint) is printed as "Exception ignored" and lost: training ran on (CI killed `train` after 120 s).
    Training records the first Ctrl-C and stops at the next epoch boundary."""
    import signal
    import threading

    from numpyro_clustermass.inference import epochs

    assert threading.current_thread() is threading.main_thread()  # pytest and its xdist workers run tests there
    x, y, g = small_fit[1]
    kw = dict(num_epochs=8, batch_size=256, progress_bar=False, seed=3)
    fit(SMALL_MDN, (x, y, g), **kw)
    (entry,) = [c for c in epochs._COMPILED.data.values() if c.model is not None and c.plan.num_epochs == 8
                and c.plan.batch_size == 256 and c.impl.name == "map"][-1:]
    real, calls = entry.epoch, []

    class SignalsWhenCollected:
        def __del__(self):
            os.kill(os.getpid(), signal.SIGINT)
            sum(range(1000))  # the handler runs at a bytecode of this frame: its exception is "ignored"

    def sigint_in_a_finalizer_in_epoch_4(*args, **kwargs):
        calls.append(1)
        if len(calls) == 4:
            SignalsWhenCollected()
        return real(*args, **kwargs)

    monkeypatch.setattr(entry, "epoch", sigint_in_a_finalizer_in_epoch_4)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(FitInterrupted, match=r"interrupted in epoch 4 after 4 complete epochs") as err:
            fit(SMALL_MDN, (x, y, g), **kw)
        assert signal.getsignal(signal.SIGINT) is signal.default_int_handler  # the handler is put back
    finally:
        signal.signal(signal.SIGINT, previous)
    assert len(calls) == 4 and err.value.fit.info["epochs_run"] == 4


@pytest.mark.parametrize("num_draws", [0, -1, 1.5, True])
def test_posterior_num_draws_must_be_a_positive_integer(small_fit, num_draws):
    with pytest.raises(ValueError, match=r"num_draws must be an integer >= 1"):
        small_fit[0].posterior(small_fit[1][0][:5], num_draws=num_draws)


def test_posterior_warns_on_a_grid_that_cuts_off_the_training_masses(small_fit):
    f, (x, y, _) = small_fit
    with pytest.warns(FitWarning) as record:
        post = f.posterior(x[:300], grid=np.linspace(14.0, 14.5, 101))
    messages = [str(w.message) for w in record]
    assert any("grid [14.000, 14.500] does not cover the training masses [13.500" in m for m in messages), messages
    peak = np.rint((post.mode() - 14.0) / 0.005)  # the grid point of each maximum (the parabola moves < half a step)
    n_edge = int(np.sum((peak < 2) | (peak >= 99)))  # the outer 2% of 101 points: two on each side
    assert n_edge > 100  # modes on the grid's edge: the reason to warn
    assert any(f"{n_edge} of 300 posteriors peak in the outer 2% of the grid" in m for m in messages), messages
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", FitWarning)
        f.posterior(x[:300])  # the default grid: no warning


def _four_site_model(x, y=None, num_data=None, deterministic=False):
    """Latent sites next to the likelihood: what NumPyro's Trace_ELBO orders by a set of names."""
    a = numpyro.sample("alpha", dist.Normal(0.0, 1.0))
    b = numpyro.sample("beta", dist.Normal(0.0, 1.0))
    c = numpyro.sample("gamma", dist.Normal(0.0, 1.0))
    s = numpyro.sample("sigma", dist.HalfNormal(1.0))
    with numpyro.plate("data", num_data or x.shape[0], subsample_size=x.shape[0]):
        numpyro.sample("obs", dist.Normal(a + b * x[:, 0] + c * x[:, 1], s), obs=y)


@pytest.mark.parametrize("num_particles", [1, 3])
def test_site_ordered_elbo_is_numpyros_trace_elbo(num_particles):
    from numpyro.infer import Trace_ELBO
    from numpyro.infer.autoguide import AutoNormal

    from numpyro_clustermass.inference.svi import SiteOrderedTraceELBO

    x = jax.random.normal(jax.random.key(1), (32, 2))
    y = 0.3 + x[:, 0] - 0.5 * x[:, 1]
    guide = AutoNormal(_four_site_model)
    svi = numpyro.infer.SVI(_four_site_model, guide, numpyro.optim.Adam(1e-3), Trace_ELBO())
    params = svi.get_params(svi.init(jax.random.key(2), x, y, num_data=100))
    values = []
    for elbo in (Trace_ELBO(num_particles=num_particles), SiteOrderedTraceELBO(num_particles=num_particles)):
        loss = lambda p: elbo.loss(jax.random.key(3), p, _four_site_model, guide, x, y, num_data=100)  # noqa: E731
        values.append(jax.value_and_grad(loss)(params))
    (l0, g0), (l1, g1) = values
    # the same draws, summed in another order: measured equal (0.0) for loss and gradients at 1 and 3 particles;
    # the tolerances leave room for float32 rounding where the orders differ
    np.testing.assert_allclose(float(l1), float(l0), rtol=1e-6)
    for k in g0:
        np.testing.assert_allclose(np.asarray(g1[k]), np.asarray(g0[k]), rtol=1e-5, atol=1e-6)


def test_map_of_a_model_with_latent_sites_compiles_one_program_whatever_the_hash_seed():
    """NumPyro's Trace_ELBO orders its terms by a set of site names, which follows the process's string hash seed:
    every new process compiled a new epoch program (a persistent-cache miss); the map method's ELBO does not."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    code = textwrap.dedent("""
        import hashlib, json, jax, jax.numpy as jnp
        from numpyro_clustermass.inference.protocol import TrainingPlan, build_method
        from tests.test_inference import _four_site_model
        plan = TrainingPlan(num_data=64, batch_size=16, steps_per_epoch=4, num_epochs=2, num_features=2)
        method = build_method("map", _four_site_model, plan)
        x, y = jnp.ones((16, 2)), jnp.ones(16)
        state = method.init(jax.random.key(0), x, y)
        texts = [jax.jit(method.step).lower(state, x, y).as_text(), jax.jit(method.evaluate).lower(state, x, y).as_text()]
        print(json.dumps({"names": list({"alpha", "beta", "gamma", "sigma", "obs"}),
                          "programs": [hashlib.sha256(t.encode()).hexdigest() for t in texts]}))
    """)
    root = str(Path(__file__).resolve().parents[1])
    out = []
    for seed in ("1", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed, "JAX_PLATFORMS": "cpu",
               "PYTHONPATH": root + os.pathsep + os.environ.get("PYTHONPATH", "")}
        res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300,
                             cwd=root)
        assert res.returncode == 0, res.stderr[-3000:]
        out.append(json.loads(res.stdout.strip().splitlines()[-1]))
    assert out[0]["names"] != out[1]["names"]  # the two processes order a set of the site names differently
    assert out[0]["programs"] == out[1]["programs"]
