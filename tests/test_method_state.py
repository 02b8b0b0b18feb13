"""A method's state is all it needs: a second instance of a method reads, steps and samples the first one's state.

Loading a saved fit rebuilds its method with the factory (``factory(model, plan, **options)``, fresh closures,
``init``/``run`` never called) and puts the saved state back. So for every method, ``get_params``, ``sample`` (and
``step``/``evaluate`` for the iterative ones) of instance 2 must give bitwise what instance 1 gives on instance 1's
state: nothing they need may live in a closure filled by ``init`` or ``run`` (DESIGN.md, "The one inference
interface"), including NumPyro's own: ``SVI.constrain_fn`` and an autoguide's setup are made in the factory.
"""

import warnings

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import pytest
from numpyro import handlers

from numpyro_clustermass.estimators import MDN, ModelEstimator
from numpyro_clustermass.inference import (
    IterativeMethod,
    OneShotMethod,
    TrainingData,
    TrainingPlan,
    get_method,
    standardize_model,
)
from numpyro_clustermass.inference.svi import latent_structure

N, BSZ, FEATURES = 256, 64, 2


def _scaled_linear_model(x, y=None, num_data=None, deterministic=False):
    """A user's model with latent sites, one of them constrained (HalfNormal: an ExpTransform)."""
    w = numpyro.sample("w", dist.Normal(0, 1).expand([x.shape[-1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0, 1))
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    with numpyro.plate("data", x.shape[0]), handlers.scale(scale=1.0 if num_data is None else num_data / x.shape[0]):
        numpyro.sample("obs", dist.Normal(x @ w + b, s), obs=y)


ESTIMATORS = {
    "mdn": lambda: MDN(num_components=2, hidden=(8,), feature_names=("a", "b")),
    "user": lambda: ModelEstimator(_scaled_linear_model, feature_names=("a", "b")),
}


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(0)
    y = rng.uniform(-1.5, 1.5, N)
    x = np.stack([y + 0.2 * rng.normal(size=N), rng.normal(size=N)], 1)
    return jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)


PLAN = TrainingPlan(num_data=N, batch_size=BSZ, steps_per_epoch=N // BSZ, num_epochs=2, num_features=FEATURES)


def _two_instances(method, estimator, options, plan=PLAN):
    model = standardize_model(ESTIMATORS[estimator]().model)
    factory = get_method(method)
    return factory(model, plan, **options), factory(model, plan, **options)


def _assert_trees_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
        if jnp.issubdtype(u.dtype, jax.dtypes.prng_key):
            u, v = jax.random.key_data(u), jax.random.key_data(v)
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v))


ITERATIVE = [
    ("map", "mdn", {}),
    ("map", "user", {}),  # AutoDelta
    ("mc_dropout", "mdn", {}),
    ("ensemble", "mdn", {"num_members": 2}),
    ("bbb", "mdn", {}),  # MeanFieldGuide
    ("bbb", "user", {}),  # AutoNormal
]


@pytest.mark.parametrize("method, estimator, options", ITERATIVE, ids=[f"{m}-{e}" for m, e, _ in ITERATIVE])
def test_iterative_method_state_works_with_another_instance(data, method, estimator, options):
    x, y = data
    first, second = _two_instances(method, estimator, options)
    assert isinstance(first, IterativeMethod)
    state = first.init(jax.random.key(0), x[:BSZ], y[:BSZ])
    step1 = jax.jit(first.step)
    for i in range(2):
        state, _ = step1(state, x[i * BSZ:(i + 1) * BSZ], y[i * BSZ:(i + 1) * BSZ])
    # instance 2 never ran init: it must read, sample, evaluate and step instance 1's state all the same
    _assert_trees_equal(second.get_params(state), first.get_params(state))
    key = jax.random.key(1)
    _assert_trees_equal(second.sample(key, state, 3), first.sample(key, state, 3))
    _assert_trees_equal(jax.jit(second.evaluate)(state, x, y), jax.jit(first.evaluate)(state, x, y))
    _assert_trees_equal(jax.jit(second.step)(state, x[:BSZ], y[:BSZ]), step1(state, x[:BSZ], y[:BSZ]))


ONE_SHOT = [
    ("laplace", "mdn", {"map_options": {"num_epochs": 1}, "refine_mode": False}),
    ("laplace", "user", {"map_options": {"num_epochs": 1}}),
    ("nuts", "mdn", {"map_options": {"num_epochs": 1}, "num_chains": 1, "num_warmup": 5, "num_samples": 6,
                     "max_tree_depth": 3}),
    ("bbb", "mdn", {"init": "map", "map_options": {"num_epochs": 1}}),  # trains its MAP start, then BBB: one run
]


@pytest.mark.parametrize("method, estimator, options", ONE_SHOT, ids=[f"{m}-{e}" for m, e, _ in ONE_SHOT])
def test_one_shot_method_state_works_with_another_instance(data, method, estimator, options):
    x, y = data
    train = TrainingData(x[:-BSZ], y[:-BSZ], x[-BSZ:], y[-BSZ:])
    plan = PLAN._replace(num_data=N - BSZ, steps_per_epoch=(N - BSZ) // BSZ)
    first, second = _two_instances(method, estimator, options, plan)
    assert isinstance(first, OneShotMethod)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # one short chain: a ConvergenceWarning, beside the point here
        state = first.run(jax.random.key(0), train, plan, False).state
    _assert_trees_equal(second.get_params(state), first.get_params(state))
    key = jax.random.key(1)
    _assert_trees_equal(second.sample(key, state, 4), first.sample(key, state, 4))


def test_latent_structure_gives_transforms_usable_outside_the_trace():
    """A support built with jnp inside the model would carry traced bounds out of the abstract trace: the
    transforms are then taken from a trace on zeros, so sample/get_params can apply them to a loaded state."""

    def model(x, y=None):
        a = numpyro.sample("a", dist.Uniform(jnp.zeros(2), 3.0).to_event(1))
        s = numpyro.sample("s", dist.HalfNormal(1.0))
        with numpyro.plate("data", x.shape[0]):
            numpyro.sample("obs", dist.Normal(x @ a, s), obs=y)

    shapes, transforms = latent_structure(model, 5, 2)
    assert list(shapes) == ["a", "s"]  # trace order
    assert shapes["a"].shape == (2,) and shapes["s"].shape == ()
    np.testing.assert_allclose(transforms["a"](jnp.zeros(2)), [1.5, 1.5])  # the middle of (0, 3)
    np.testing.assert_allclose(transforms["s"](jnp.zeros(())), 1.0)
