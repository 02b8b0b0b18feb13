"""Tests for numpyro_clustermass.nets: shapes, the lecture's defaults, the mixture head, dropout."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from numpyro_clustermass.nets import (
    MIN_SCALE,
    MLP,
    MDNNet,
    RegressionNet,
    default_activations,
    get_activation,
)


def _kernel_shapes(variables):
    flat = jax.tree_util.tree_flatten_with_path(variables["params"])[0]
    return {jax.tree_util.keystr(path): leaf.shape for path, leaf in flat if "kernel" in jax.tree_util.keystr(path)}


def test_default_trunk_is_the_lecture_one():
    net = MDNNet()
    v = net.init(jax.random.key(0), jnp.ones((1, 14)))
    shapes = _kernel_shapes(v)
    trunk = sorted((k, s) for k, s in shapes.items() if "trunk" in k)
    assert [s for _, s in trunk] == [(14, 128), (128, 128), (128, 64)]
    head = {k.split("'")[-4]: s for k, s in shapes.items() if "head" in k}
    assert head == {"logits": (64, 16), "locs": (64, 16), "scales": (64, 16)}
    assert default_activations(3) == ("relu", "relu", "tanh")


def test_last_hidden_layer_is_tanh_bounded():
    # the lecture's trunk ends in tanh: features fed to the head are in [-1, 1] whatever the input
    mlp = MLP()
    v = mlp.init(jax.random.key(1), jnp.ones((1, 14)))
    h = mlp.apply(v, 100.0 * jax.random.normal(jax.random.key(2), (50, 14)))
    assert h.shape == (50, 64)
    assert float(jnp.abs(h).max()) <= 1.0


def test_mixture_head_outputs():
    net = MDNNet(num_components=5, hidden=(16, 16))
    v = net.init(jax.random.key(0), jnp.ones((1, 3)))
    x = 10.0 * jax.random.normal(jax.random.key(3), (200, 3))
    logits, locs, scales = net.apply(v, x)
    assert logits.shape == locs.shape == scales.shape == (200, 5)
    assert bool(jnp.all(scales >= MIN_SCALE)) and bool(jnp.all(jnp.isfinite(scales)))


def test_regression_net_shape():
    net = RegressionNet(hidden=(8, 4))
    v = net.init(jax.random.key(0), jnp.ones((1, 14)))
    assert net.apply(v, jnp.ones((7, 14))).shape == (7,)


def test_dropout_masks_differ_by_key_and_are_off_when_deterministic():
    net = MDNNet(num_components=3, hidden=(64, 64), dropout_rate=0.3)
    v = net.init(jax.random.key(0), jnp.ones((1, 4)))
    x = jnp.ones((10, 4))
    a = net.apply(v, x, deterministic=False, rngs={"dropout": jax.random.key(1)})[1]
    b = net.apply(v, x, deterministic=False, rngs={"dropout": jax.random.key(2)})[1]
    a2 = net.apply(v, x, deterministic=False, rngs={"dropout": jax.random.key(1)})[1]
    d1 = net.apply(v, x)[1]
    d2 = net.apply(v, x, deterministic=True)[1]
    assert not np.allclose(a, b)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(d1, d2)


def test_bad_activation_names_and_counts():
    with pytest.raises(ValueError, match="unknown activation 'nope'"):
        get_activation("nope")
    net = MLP(hidden=(4, 4), activations=("relu",))
    with pytest.raises(ValueError, match="1 activations for 2 hidden layers"):
        net.init(jax.random.key(0), jnp.ones((1, 3)))


def test_equal_mixture_init_starts_every_input_at_an_equal_mixture_of_unit_widths():
    """weight_init="equal_mixture" (sbi's MDN start): zero-ish logits and unit scales for any input;
    PyTorch-style U(+-1/sqrt(fan_in)) trunk weights; "flax" (the lecture's) starts elsewhere. The estimator's
    default is "equal_mixture"; the bare network module keeps Flax's."""
    import numpyro_clustermass as ncm

    assert ncm.MDN().weight_init == "equal_mixture" and ncm.nets.MDNNet().weight_init == "flax"
    import jax
    import jax.numpy as jnp
    import numpy as np
    import pytest

    from numpyro_clustermass.nets import MDNNet

    x = jax.random.normal(jax.random.key(1), (64, 14)) * 3.0
    net = MDNNet(num_components=5, hidden=(32, 16), weight_init="equal_mixture")
    v = net.init(jax.random.key(0), x[:1])
    logits, locs, scales = net.apply(v, x)
    assert float(jnp.abs(logits).max()) < 1e-2
    np.testing.assert_allclose(np.asarray(scales), 1.0, atol=1e-2)
    assert float(jnp.std(locs)) > 0.05  # the component means still differ
    k0 = v["params"]["trunk"]["Dense_0"]["kernel"]
    assert float(jnp.abs(k0).max()) <= 1 / np.sqrt(14) + 1e-6
    assert float(jnp.abs(v["params"]["trunk"]["Dense_0"]["bias"]).max()) > 0  # biases are drawn, not zero
    flax_default = MDNNet(num_components=5, hidden=(32, 16), weight_init="flax")
    logits_f, _, scales_f = flax_default.apply(flax_default.init(jax.random.key(0), x[:1]), x)
    assert float(jnp.abs(logits_f).max()) > 0.1 and float(jnp.abs(scales_f - 1).max()) > 0.05  # not the same start
    with pytest.raises(ValueError, match=r"unknown weight_init 'torch'; choose one of \['flax', 'equal_mixture'\]"):
        MDNNet(weight_init="torch").init(jax.random.key(0), x[:1])


def test_mdn_estimator_carries_its_init_through_a_fit_file(tmp_path):
    import numpy as np

    import numpyro_clustermass as ncm

    rng = np.random.default_rng(0)
    y = rng.uniform(13.5, 15.0, 400)
    x = np.stack([y + 0.2 * rng.normal(size=400), rng.normal(size=400)], 1)
    est = ncm.MDN(2, (8,), feature_names=("a", "b"), weight_init="equal_mixture")
    f = ncm.fit(est, (x, y), num_epochs=2, batch_size=128, progress_bar=False)
    g = ncm.load(f.save(tmp_path / "f.ncm"))
    assert g.estimator == est and g.estimator.config()["weight_init"] == "equal_mixture"
    assert np.array_equal(np.asarray(g.posterior(x[:5]).log_density), np.asarray(f.posterior(x[:5]).log_density))
