"""Standard normal noise equal bit for bit to ``jax.random.normal``, drawn about twice as fast on CPU.

Bayes by Backprop draws a fresh ``Normal(0, 1)`` for every weight at every step (29.8k numbers on the lecture's
net), and on CPU that noise, not the network, is what separated its step from a MAP step. JAX's CPU lowering of
its Threefry-2x32 hash is a rolled loop of five iterations, each of which writes its state to memory and reads
it back (the GPU lowering is unrolled); written out as plain ``lax`` operations, the hash's 20 rounds compile into
one loop over the counts, 5x faster on this machine (``python3 benchmarks/bbb_noise_floor.py``).

One trap makes the unrolled hash slower, not faster, if it is left to XLA: the noise feeds many consumers (every
layer's weights, forward and backward), and XLA fuses the cheap-looking elementwise producer into each of them,
so that the hash runs once per consumer (16 times on the lecture net; ``lax.optimization_barrier`` is removed on
CPU before fusion). Drawing the noise inside a ``lax.scan`` over two halves keeps it one materialised array:
XLA does not fuse across a loop of more than one iteration.

:func:`normal` falls back to ``jax.random.normal`` itself wherever the two would not be the same numbers (a key
of another PRNG implementation, ``jax_threefry_partitionable`` off, ``jax_enable_x64`` on, more than 2**32 numbers)
and on other backends than CPU, whose lowering of the hash is already unrolled.

Examples
--------
>>> import jax
>>> key = jax.random.key(0)
>>> bool((normal(key, (3, 1000)) == jax.random.normal(key, (3, 1000))).all())
True
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["normal", "bernoulli", "threefry2x32"]

#: Rotation constants of Threefry-2x32 (Salmon et al. 2011, Table 4), alternating between groups of 4 rounds.
_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
#: The key-schedule parity constant of Threefry-2x32.
_PARITY = np.uint32(0x1BD11BDA)
#: Halves: the smallest number of loop iterations that XLA keeps as a loop (see the module docstring).
_CHUNKS = 2


def threefry2x32(k1, k2, x1, x2):
    """The Threefry-2x32 hash, 20 rounds (Salmon et al. 2011), written out: JAX's ``threefry2x32`` bit for bit.

    ``k1, k2`` are the key's two ``uint32`` words, ``x1, x2`` the counts (``uint32`` arrays of one shape);
    returns the two hashed words.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from jax.extend.random import threefry_2x32
    >>> k = jnp.array([1, 2], jnp.uint32); x = jnp.arange(8, dtype=jnp.uint32)
    >>> a, b = threefry2x32(k[0], k[1], x[:4], x[4:])
    >>> bool((jnp.concatenate([a, b]) == threefry_2x32(k, x)).all())
    True

    References
    ----------
    Salmon, J. K., Moraes, M. A., Dror, R. O., Shaw, D. E. (2011). Parallel random numbers: as easy as 1, 2, 3.
    SC '11, doi:10.1145/2063384.2063405.
    """
    ks = (k1, k2, k1 ^ k2 ^ _PARITY)
    x1, x2 = x1 + ks[0], x2 + ks[1]
    for i in range(5):
        for r in _ROTATIONS[i % 2]:
            x1 = x1 + x2
            x2 = ((x2 << np.uint32(r)) | (x2 >> np.uint32(32 - r))) ^ x1
        x1 = x1 + ks[(i + 1) % 3]
        x2 = x2 + ks[(i + 2) % 3] + np.uint32(i + 1)
    return x1, x2


def _threefry_words(key):
    """The key's two ``uint32`` words where ``jax.random.normal`` would hash them with partitionable Threefry,
    else None."""
    if not getattr(jax.config, "jax_threefry_partitionable", True):  # a JAX without the flag is partitionable
        return None
    if not hasattr(key, "dtype"):  # not a key: JAX's own draw raises its error
        return None
    if jnp.issubdtype(key.dtype, jax.dtypes.prng_key):
        if key.shape != () or str(jax.random.key_impl(key)) != "threefry2x32":
            return None
        key = jax.random.key_data(key)
    elif key.shape != (2,) or key.dtype != jnp.uint32 or str(jax.config.jax_default_prng_impl) != "threefry2x32":
        return None
    return key[0], key[1]


def _unit_uniform(bits):
    """``jax.random.uniform``'s float32 in ``[0, 1)`` from 32 random bits: 23 of them as the mantissa of a number
    in ``[1, 2)``, minus one."""
    one = np.float32(1.0)
    return jax.lax.bitcast_convert_type((bits >> np.uint32(9)) | one.view(np.uint32), jnp.float32) - one


def _normal_from_bits(bits):
    """``jax.random.normal``'s float32 transformation of 32 random bits: a uniform in ``(-1, 1)``, then
    ``sqrt(2) erfinv``."""
    lo = np.nextafter(np.float32(-1.0), np.float32(0.0))
    u = jnp.maximum(lo, _unit_uniform(bits) * (np.float32(1.0) - lo) + lo)
    return np.float32(np.sqrt(2)) * jax.lax.erf_inv(u)


def _draw(key, shape, from_bits, fallback):
    """``from_bits`` of the 32 random bits ``jax.random.bits(key, shape)`` would give, computed inside a loop over
    two halves; ``fallback()`` where that is not the same or not faster (see the module docstring)."""
    shape = tuple(int(s) for s in shape)
    size = math.prod(shape)
    words = _threefry_words(key)
    if (words is None or jax.config.jax_enable_x64 or jax.default_backend() != "cpu" or size < _CHUNKS
            or size >= 2**32):  # with x64 on, JAX draws float64 uniforms and normals
        return fallback()
    k1, k2 = words
    half = -(-size // _CHUNKS)

    def draw(_, start):
        counts = jax.lax.iota(jnp.uint32, half) + start
        b1, b2 = threefry2x32(k1, k2, jnp.zeros_like(counts), counts)
        return None, from_bits(b1 ^ b2)

    _, out = jax.lax.scan(draw, None, jnp.arange(_CHUNKS, dtype=jnp.uint32) * np.uint32(half))
    return out.reshape(-1)[:size].reshape(shape)


def normal(key, shape) -> jax.Array:
    """``jax.random.normal(key, shape)`` (float32), the same numbers, drawn faster on CPU.

    Parameters
    ----------
    key : jax.Array
        A typed key (``jax.random.key``) or a raw ``uint32[2]`` one (``jax.random.PRNGKey``).
    shape : tuple of int

    Returns
    -------
    jax.Array
        float32 array of ``shape``.
    """
    return _draw(key, shape, _normal_from_bits, lambda: jax.random.normal(key, shape))


def bernoulli(key, p: float, shape) -> jax.Array:
    """``jax.random.bernoulli(key, p, shape)`` for a Python float ``p``, the same draws, faster on CPU.

    Examples
    --------
    >>> import jax
    >>> key = jax.random.key(1)
    >>> bool((bernoulli(key, 0.9, (64, 128)) == jax.random.bernoulli(key, 0.9, (64, 128))).all())
    True
    """
    p32 = np.float32(p)

    def from_bits(bits):  # jax.random.uniform's [0, 1) float32 (its max with minval 0 kept), compared with p
        return jnp.maximum(np.float32(0.0), _unit_uniform(bits)) < p32

    return _draw(key, shape, from_bits, lambda: jax.random.bernoulli(key, p, shape))
