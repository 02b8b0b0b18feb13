"""The fast standard normal noise of Bayes by Backprop (``numpyro_clustermass._random``) and the guide's split.

``_random.normal`` must be ``jax.random.normal`` bit for bit, or BBB's fits would change with it; the guide's
custom-gradient split of its flat vectors must give the gradient of plain slicing.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from numpyro_clustermass import _random
from numpyro_clustermass.inference.bbb import MeanFieldGuide


def test_the_written_out_threefry_is_jaxs_hash():
    k = jnp.array([0x12345678, 0x9ABCDEF0], jnp.uint32)
    x = jax.random.bits(jax.random.key(5), (2, 501), jnp.uint32)
    a, b = jax.jit(_random.threefry2x32)(k[0], k[1], x[0], x[1])
    np.testing.assert_array_equal(np.concatenate([a, b]), threefry_2x32(k, x.reshape(-1)))


@pytest.mark.parametrize("shape", [(1,), (2,), (3,), (29_808,), (7, 11), (4, 665)])
def test_normal_is_jax_random_normal_bit_for_bit(shape):
    draw = jax.jit(_random.normal, static_argnums=1)
    for seed in (0, 1, 123_456):
        for key in (jax.random.key(seed), jax.random.PRNGKey(seed)):
            np.testing.assert_array_equal(draw(key, shape), jax.random.normal(key, shape))


def test_normal_falls_back_to_jax_for_other_key_implementations():
    key = jax.random.key(3, impl="rbg")
    assert _random._threefry_words(key) is None
    np.testing.assert_array_equal(_random.normal(key, (100,)), jax.random.normal(key, (100,)))


def test_normal_keeps_the_noise_one_array_under_jit():
    # the reason for the two-halves loop: without it XLA copies the hash into every consumer of the noise
    def f(key):
        eps = _random.normal(key, (1000,))
        return jnp.sin(eps[:500]).sum() + jnp.cos(eps[500:]).sum() + (eps * 2).sum()

    hlo = jax.jit(f).lower(jax.random.key(0)).compile().as_text()
    if jax.default_backend() == "cpu":
        # one copy of the hash: 20 rounds, 2 xors of the key schedule and the final xor of its two words
        assert hlo.count(" xor(") == 23


def test_the_guides_split_has_the_gradient_of_plain_slices():
    g = MeanFieldGuide({"a": (2, 3), "b": (4,), "c": ()})
    flat = jax.random.normal(jax.random.key(0), (g.size,))
    weights = {k: jax.random.normal(jax.random.key(i + 1), v) for i, (k, v) in enumerate(g.shapes.items())}

    def loss(split, f):
        parts = split(f)
        return sum(jnp.sum(jnp.sin(parts[k]) * w) for k, w in weights.items())

    def plain(f):
        return {k: f[b:e].reshape(shp) for k, b, e, shp in g.layout}

    np.testing.assert_allclose(jax.grad(lambda f: loss(g._split, f))(flat),
                               jax.grad(lambda f: loss(plain, f))(flat), rtol=1e-6)
    batched = jnp.stack([flat, 2 * flat])  # a leading axis, as sample_posterior's draws have
    assert g._split(batched)["a"].shape == (2, 2, 3)
    np.testing.assert_array_equal(g._split(batched)["b"][1], 2 * flat[6:10])


@pytest.mark.parametrize("p", [0.9, 0.5, 0.1])
def test_bernoulli_is_jax_random_bernoulli_bit_for_bit(p):
    for seed in (0, 7):
        key = jax.random.key(seed)
        for shape in ((512, 128), (3,), (5, 7)):
            np.testing.assert_array_equal(jax.jit(lambda k: _random.bernoulli(k, p, shape))(key),
                                          jax.random.bernoulli(key, p, shape))


def test_the_nets_dropout_gives_flaxs_masks_inside_the_trunk(monkeypatch):
    import flax.linen as nn

    from numpyro_clustermass import nets

    mlp = nets.MLP(hidden=(16, 8), dropout_rate=0.3)
    x = jax.random.normal(jax.random.key(0), (32, 5))
    params = mlp.init(jax.random.key(1), x)
    rngs = {"dropout": jax.random.key(2)}
    ours = mlp.apply(params, x, deterministic=False, rngs=rngs)
    monkeypatch.setattr(nets, "Dropout", nn.Dropout)  # the same trunk with flax's own layer
    np.testing.assert_array_equal(ours, mlp.apply(params, x, deterministic=False, rngs=rngs))
    assert (ours == 0).any()


def test_with_x64_on_the_draws_are_still_jaxs():
    with jax.enable_x64(True):
        key = jax.random.key(4)
        a, b = _random.normal(key, (300,)), jax.random.normal(key, (300,))
        assert a.dtype == b.dtype == jnp.float64
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(_random.bernoulli(key, 0.8, (40, 30)), jax.random.bernoulli(key, 0.8, (40, 30)))


def test_bad_input_gets_a_clear_error():
    from numpyro_clustermass import nets

    x = jnp.ones((2, 3))
    with pytest.raises(ValueError, match=r"Dropout rate must be in \[0, 1\].*got 1.5"):
        nets.Dropout(1.5).apply({}, x, deterministic=False, rngs={"dropout": jax.random.key(0)})
    with pytest.raises(TypeError, match="invalid PRNG key"):  # JAX's own message, not an AttributeError of ours
        _random.normal(3, (4,))
