"""Tests of numpyro_clustermass.bnn and .weight_priors: Bayesian twins (the package's models given weight-prior
keywords), weight priors, their validation, bayesian_layers."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.contrib.module import random_flax_module

from numpyro_clustermass.bnn import (
    WeightPriorError,
    bayesian_twin,
    deterministic_model,
    head_only_twin,
    latent_site_names,
    param_shapes,
    resolve_weight_prior,
    select_layers,
    with_dropout,
)
from numpyro_clustermass.estimators import MDN, MSE
from numpyro_clustermass.models import mdn_model, regression_model
from numpyro_clustermass.nets import MDNNet, RegressionNet

X = jnp.ones((5, 4))
Y = jnp.zeros(5)
MDN_SHAPES = param_shapes(MDNNet(3, (8, 8)), 4)


def _trace(model, *args, **kwargs):
    return handlers.trace(handlers.seed(model, 0)).get_trace(*args, **kwargs)


def _latents(tr):
    return [k for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]


def test_param_shapes_in_call_order():
    assert list(MDN_SHAPES) == [
        "trunk.Dense_0.kernel", "trunk.Dense_0.bias", "trunk.Dense_1.kernel", "trunk.Dense_1.bias",
        "head.logits.kernel", "head.logits.bias", "head.locs.kernel", "head.locs.bias",
        "head.scales.kernel", "head.scales.bias",
    ]
    assert MDN_SHAPES["trunk.Dense_0.kernel"] == (4, 8)
    assert MDN_SHAPES["head.locs.kernel"] == (8, 3)


@pytest.mark.parametrize(
    "layers, expected",
    [
        ("all", 10),
        (None, 10),
        ("last", 6),
        ("head", 6),
        ("head.locs", 2),
        (["trunk.Dense_1", "head/locs"], 4),  # "/" separators are accepted
    ],
)
def test_select_layers(layers, expected):
    chosen = select_layers(list(MDN_SHAPES), layers)
    assert len(chosen) == expected
    if layers == "last":
        assert all(p.startswith("head.") for p in chosen)


def test_select_layers_unknown_is_error():
    with pytest.raises(WeightPriorError, match="matches no parameter"):
        select_layers(list(MDN_SHAPES), ["trunk.Dense_7"])
    with pytest.raises(WeightPriorError, match="empty"):
        select_layers(list(MDN_SHAPES), [])


def test_single_distribution_prior_covers_bayesian_layers():
    pri = resolve_weight_prior(MDN_SHAPES, dist.Normal(0, 0.5), "last")
    assert list(pri) == [p for p in MDN_SHAPES if p.startswith("head.")]
    assert all(float(d.scale) == 0.5 for d in pri.values())


def test_dict_prior_longest_key_wins_and_default():
    pri = resolve_weight_prior(
        MDN_SHAPES, {"*": dist.Normal(0, 1), "head": dist.Normal(0, 2), "head.locs.bias": dist.Laplace(0, 3)}
    )
    assert type(pri["head.locs.bias"]).__name__ == "Laplace"
    assert float(pri["head.locs.kernel"].scale) == 2.0
    assert float(pri["trunk.Dense_0.kernel"].scale) == 1.0


def test_callable_prior_gets_path_and_shape():
    seen = {}

    def prior(path, shape):
        seen[path] = shape
        return dist.Normal(0.0, 1.0 / np.sqrt(shape[0]))

    pri = resolve_weight_prior(MDN_SHAPES, prior, "all")
    assert seen == MDN_SHAPES
    assert float(pri["trunk.Dense_0.kernel"].scale) == pytest.approx(0.5)


def test_prior_with_full_shape_is_accepted():
    pri = resolve_weight_prior(MDN_SHAPES, {"head.locs.kernel": dist.Normal(jnp.zeros((8, 3)), 1.0)},
                               "head.locs.kernel")
    assert pri["head.locs.kernel"].batch_shape == (8, 3)


# ------------------------------------------------------------------------------------ the trap and bad priors
def test_trap_random_flax_module_silently_ignores_unmatched_key():
    """The trap itself (DESIGN.md): plain random_flax_module with a misspelled key has no random weights."""

    def model(x):
        net = random_flax_module("nn", MDNNet(2, (4,)), {"head.loc.kernel": dist.Normal(0, 1)}, input_shape=(1, 4))
        net(x)

    assert _latents(_trace(model, X)) == []


def test_misspelled_key_is_an_error_naming_the_paths():
    with pytest.raises(WeightPriorError, match=r"'head\.loc\.kernel' matches no parameter.*head\.locs\.kernel"):
        resolve_weight_prior(MDN_SHAPES, {"head.loc.kernel": dist.Normal(0, 1)})
    # and through the model: the twin never samples "nothing" silently
    twin = bayesian_twin(MDN(3, (8, 8)).model, {"head.loc.kernel": dist.Normal(0, 1)})
    with pytest.raises(WeightPriorError, match="matches no parameter"):
        _trace(twin, X, Y)


def test_key_outside_bayesian_layers_is_an_error():
    with pytest.raises(WeightPriorError, match="outside bayesian_layers"):
        resolve_weight_prior(MDN_SHAPES, {"trunk.Dense_0.kernel": dist.Normal(0, 1)}, "last")


def test_uncovered_bayesian_parameter_is_an_error():
    with pytest.raises(WeightPriorError, match="no weight prior for the Bayesian parameter 'head.locs.bias'"):
        resolve_weight_prior(MDN_SHAPES, {"head.locs.kernel": dist.Normal(0, 1)}, "head.locs")


@pytest.mark.parametrize("bad", [dist.Normal(jnp.zeros(5), 1.0), dist.Normal(jnp.zeros((2, 8, 3)), 1.0),
                                 dist.MultivariateNormal(jnp.zeros(5), jnp.eye(5))])
def test_wrong_shape_prior_is_an_error(bad):
    with pytest.raises(WeightPriorError, match=r"do not broadcast to the parameter's shape \(8, 3\)"):
        resolve_weight_prior(MDN_SHAPES, {"head.locs.kernel": bad, "*": dist.Normal(0, 1)}, "head.locs.kernel")


@pytest.mark.parametrize("bad", [1.0, "normal", jnp.zeros(3)])
def test_non_distribution_prior_is_an_error(bad):
    with pytest.raises(WeightPriorError, match="weight_prior must be a NumPyro distribution"):
        resolve_weight_prior(MDN_SHAPES, bad)
    with pytest.raises(WeightPriorError, match="not a NumPyro distribution"):
        resolve_weight_prior(MDN_SHAPES, {"head": bad, "*": dist.Normal(0, 1)}, "all")
    with pytest.raises(WeightPriorError, match="not a NumPyro distribution"):
        resolve_weight_prior(MDN_SHAPES, lambda path, shape: bad)


def test_scipy_like_object_is_not_a_distribution():
    from scipy import stats

    with pytest.raises(WeightPriorError, match="not a NumPyro distribution"):
        resolve_weight_prior(MDN_SHAPES, {"*": stats.norm(0, 1)})


# ------------------------------------------------------------------------------------ twins
def test_twin_is_the_same_model_given_weight_prior_keywords():
    """A Bayesian twin is a parameter of the model, not a parallel model: the twin that the methods build and the
    model called with the keywords directly have the same sites and the same log density."""
    est = MDN(3, (8, 8))
    twin = bayesian_twin(est.model, dist.Normal(0, 0.5), "last")
    assert twin.func is mdn_model
    direct = functools.partial(mdn_model, net=est.net, weight_prior=dist.Normal(0, 0.5), bayesian_layers="last")
    tr_twin, tr_direct = _trace(twin, X, Y), _trace(direct, X, Y)
    assert _latents(tr_twin) == _latents(tr_direct)
    for k in _latents(tr_twin):
        np.testing.assert_array_equal(tr_twin[k]["value"], tr_direct[k]["value"])
    np.testing.assert_array_equal(tr_twin["obs"]["fn"].log_prob(Y), tr_direct["obs"]["fn"].log_prob(Y))
    # and the deterministic model is the same function without them: no latent weights
    det = deterministic_model(twin)
    assert det.func is mdn_model and "weight_prior" not in det.keywords and "bayesian_layers" not in det.keywords
    assert _latents(_trace(det, X, Y)) == []


def test_bayesian_layers_alone_makes_the_model_bayesian_with_the_default_prior():
    tr = _trace(functools.partial(regression_model, net=RegressionNet(hidden=(4,)), bayesian_layers="last"), X, Y)
    site = tr["nn/head.Dense_0.kernel"]
    base = site["fn"].base_dist.base_dist
    assert float(base.loc) == 0.0 and float(base.scale) == 1.0
    tr = _trace(functools.partial(mdn_model, net=MDNNet(2, (4,)), weight_prior=dist.Normal(0, 1)), X, Y)
    assert len(_latents(tr)) == 8  # weight_prior alone: every weight ("all")


def test_misspelled_key_given_to_the_model_directly_is_an_error():
    model = functools.partial(mdn_model, net=MDNNet(2, (4,)), weight_prior={"head.loc": dist.Normal(0, 1)})
    with pytest.raises(WeightPriorError, match="'head.loc' matches no parameter"):
        _trace(model, X, Y)


def test_head_only_twin_of_a_last_layer_twin():
    twin = bayesian_twin(MDN(2, (4,)).model, dist.Normal(0, 1), "last")
    trunk_fn, head_twin = head_only_twin(twin, 4)
    assert head_twin.func is mdn_model
    tr_head = _trace(head_twin, jnp.ones((5, 4)), Y)
    assert sorted(_latents(tr_head)) == sorted(_latents(_trace(twin, X, Y)))
    assert head_only_twin(bayesian_twin(MDN(2, (4,)).model), 4) is None  # the trunk is Bayesian too
    assert head_only_twin(MDN(2, (4,)).model, 4) is None  # deterministic: no twin


def test_mdn_twin_all_and_last():
    est = MDN(3, (8, 8))
    tr_all = _trace(bayesian_twin(est.model, dist.Normal(0, 1), "all"), X, Y)
    assert sorted(_latents(tr_all)) == sorted("nn/" + p for p in MDN_SHAPES)
    tr_last = _trace(bayesian_twin(est.model, dist.Normal(0, 1), "last"), X, Y)
    assert sorted(_latents(tr_last)) == sorted("nn/" + p for p in MDN_SHAPES if p.startswith("head."))
    assert tr_last["obs"]["fn"].mixture_size == 3
    # the trunk stays a point parameter, registered under the same param site as the deterministic model
    assert "nn$params" in tr_last


def test_mse_twin_has_sigma_param_and_gaussian_likelihood():
    twin = bayesian_twin(MSE(hidden=(8,)).model, dist.Normal(0, 1), "last")
    tr = _trace(twin, X, Y)
    assert sorted(_latents(tr)) == ["nn/head.Dense_0.bias", "nn/head.Dense_0.kernel"]
    assert tr["sigma"]["type"] == "param"
    assert isinstance(tr["obs"]["fn"], dist.Normal)


def test_twin_prior_is_what_was_asked_and_weights_are_used():
    twin = bayesian_twin(MDN(2, (4,)).model, dist.Normal(0, 0.01), "last")
    tr = _trace(twin, X, Y)
    site = tr["nn/head.locs.kernel"]
    assert float(site["fn"].base_dist.base_dist.scale) == 0.01
    # substituting the weights changes the output: the sampled weights are the ones the net uses
    locs = {k: jnp.zeros_like(tr[k]["value"]) for k in _latents(tr)}
    tr0 = handlers.trace(handlers.seed(handlers.substitute(twin, locs), 0)).get_trace(X, Y)
    np.testing.assert_allclose(tr0["obs"]["fn"].component_distribution.loc, 0.0, atol=0)


def test_likelihood_scaled_prior_counted_once():
    twin = bayesian_twin(MDN(2, (4,)).model, dist.Normal(0, 1), "last")
    tr = _trace(twin, X, Y, num_data=50)
    assert tr["obs"]["scale"] == pytest.approx(10.0)
    assert tr["nn/head.locs.kernel"]["scale"] is None


def test_twin_of_a_twin_replaces_the_prior():
    t1 = bayesian_twin(MDN(2, (4,)).model, dist.Normal(0, 1), "all")
    t2 = bayesian_twin(t1, dist.Normal(0, 3), "last")
    assert t2.func is mdn_model and t2.keywords["bayesian_layers"] == "last"
    assert float(t2.keywords["weight_prior"].scale) == 3.0


def test_twin_of_user_model_is_a_clear_error():
    def my_model(x, y=None):
        numpyro.sample("obs", dist.Normal(0, 1), obs=y)

    with pytest.raises(TypeError, match="apply to the package's MSE and MDN models"):
        bayesian_twin(my_model, dist.Normal(0, 1))


def test_with_dropout_sets_rate_and_rejects_bad_rates():
    m = with_dropout(MDN(2, (4,)).model, 0.3)
    assert m.func is mdn_model and m.keywords["net"].dropout_rate == 0.3
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        with_dropout(MDN(2, (4,)).model, 1.0)
    with pytest.raises(TypeError, match="not one of the package's models"):
        with_dropout(lambda x, y=None: None, 0.1)


def test_bayesian_dropout_masks_differ_between_seeds():
    model = functools.partial(regression_model, net=RegressionNet(hidden=(32,), dropout_rate=0.5),
                              bayesian_layers="last")
    weights = _trace(model, X, Y)
    fixed = {k: weights[k]["value"] for k in _latents(weights)}
    fixed["nn$params"] = weights["nn$params"]["value"]

    def mean_at(seed):
        tr = handlers.trace(handlers.seed(handlers.substitute(model, fixed), seed)).get_trace(X, Y)
        return np.asarray(tr["obs"]["fn"].loc)

    assert not np.allclose(mean_at(1), mean_at(2))
    np.testing.assert_array_equal(mean_at(3), mean_at(3))


def test_latent_site_names_of_deterministic_model_is_empty():
    assert latent_site_names(MDN(2, (4,)).model, X, Y) == []
    assert len(latent_site_names(bayesian_twin(MDN(2, (4,)).model), X, Y)) == 8


def test_jit_traced_twin_matches_eager():
    twin = bayesian_twin(MDN(2, (4,)).model, dist.Normal(0, 1), "last")

    def logp(key):
        tr = handlers.trace(handlers.seed(twin, key)).get_trace(X, Y)
        return tr["obs"]["fn"].log_prob(Y).sum()

    np.testing.assert_allclose(jax.jit(logp)(jax.random.key(3)), logp(jax.random.key(3)), rtol=1e-5)
