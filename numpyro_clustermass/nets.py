"""Flax (linen) networks: an MLP trunk and the heads the estimators put on it.

The lecture's trunk is ``Dense(128) relu -> Dense(128) relu -> Dense(64) tanh``; on top of it sit either a
point head (one number: the standardised log-mass for the MSE regressor) or a Gaussian-mixture head (the
Mixture Density Network of Bishop 1994: mixture logits, component means and scales). Every module takes an
optional dropout rate; dropout is active only when the module is called with ``deterministic=False`` and a
``"dropout"`` rng, which is how :func:`numpyro.contrib.module.flax_module` is used for MC dropout
(``apply_rng=["dropout"]``, ``rngs={"dropout": numpyro.prng_key()}``).

These are plain flax modules with no NumPyro in them; :mod:`numpyro_clustermass.models` wraps them.

Examples
--------
>>> import jax, jax.numpy as jnp
>>> from numpyro_clustermass.nets import MDNNet
>>> net = MDNNet(num_components=4, hidden=(32, 32))
>>> variables = net.init(jax.random.key(0), jnp.ones((1, 14)))
>>> logits, locs, scales = net.apply(variables, jnp.zeros((5, 14)))
>>> logits.shape, locs.shape, bool((scales > 1e-3).all())
((5, 4), (5, 4), True)
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from numpyro_clustermass._random import bernoulli

__all__ = [
    "DEFAULT_HIDDEN",
    "DEFAULT_ACTIVATIONS",
    "MIN_SCALE",
    "MLP",
    "Dropout",
    "PointHead",
    "MixtureHead",
    "RegressionNet",
    "MDNNet",
    "FlowHead",
    "FlowNet",
    "get_activation",
    "INITS",
    "check_init",
]

#: The lecture's trunk widths.
DEFAULT_HIDDEN = (128, 128, 64)
#: The lecture's trunk activations (relu, relu, then tanh on the last hidden layer).
DEFAULT_ACTIVATIONS = ("relu", "relu", "tanh")
#: Floor added to the softplus of the mixture scales, as in the lecture (keeps the likelihood bounded).
MIN_SCALE = 1e-3

_ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "relu": nn.relu,
    "tanh": jnp.tanh,
    "gelu": nn.gelu,
    "silu": nn.silu,
    "swish": nn.silu,
    "elu": nn.elu,
    "softplus": nn.softplus,
    "sigmoid": nn.sigmoid,
    "leaky_relu": nn.leaky_relu,
    "identity": lambda x: x,
}


def get_activation(name: str | Callable) -> Callable[[jax.Array], jax.Array]:
    """Return the activation function for ``name`` (a callable is returned unchanged).

    Examples
    --------
    >>> get_activation("tanh")(0.0)
    Array(0., dtype=float32, weak_type=True)
    """
    if callable(name):
        return name
    try:
        return _ACTIVATIONS[name]
    except KeyError:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(_ACTIVATIONS)}") from None


#: Weight initialisations: ``"flax"`` (Flax's defaults: LeCun-normal kernels, zero biases; the lecture's, and the
#: default) and ``"equal_mixture"`` (PyTorch's defaults in the trunk, U(+-1/sqrt(fan_in)) kernels and biases, as
#: in sbi; a mixture head that starts as an equal-weight mixture of unit-width components, as sbi's MDN does).
#: The second gives the MDN a higher held-out log score on every training seed but a larger seed-to-seed spread
#: of the reweighted mode above 10^14.7 (docs/headline.md).
INITS = ("flax", "equal_mixture")
# PyTorch's Linear default, kaiming_uniform(a=sqrt(5)): U(+-1/sqrt(fan_in)) = variance_scaling(1/3, fan_in, uniform)
_TORCH_KERNEL = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")
# the head's logit and scale weights start this small, so the mixture starts out the same for every input
_SMALL_INIT_STD = 1e-4


def _torch_bias(fan_in: int):
    bound = 1.0 / float(fan_in) ** 0.5
    return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound, bound)


def check_init(weight_init: str) -> str:
    """``weight_init`` if it is one of :data:`INITS`, else ValueError naming them."""
    if weight_init not in INITS:
        raise ValueError(f"unknown weight_init {weight_init!r}; choose one of {list(INITS)}")
    return weight_init


def default_activations(n_layers: int) -> tuple[str, ...]:
    """The lecture's pattern for any depth: relu everywhere, tanh on the last hidden layer."""
    if n_layers == 0:
        return ()
    return ("relu",) * (n_layers - 1) + ("tanh",)


class Dropout(nn.Module):
    """``flax.linen.Dropout`` with the same masks, drawn faster on CPU.

    Named ``Dropout`` so that its module path, and so its key from the ``"dropout"`` rng stream, is flax's; the
    mask is ``jax.random.bernoulli``'s, drawn by :func:`numpyro_clustermass._random.bernoulli`. MC dropout draws
    a mask over every hidden unit of every row at each step (164k draws on the lecture net at batch 512), and
    JAX's rolled CPU hash made that most of the difference between its step and MAP's.

    Examples
    --------
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> x = jnp.ones((4, 8)); rngs = {"dropout": jax.random.key(0)}
    >>> ours = Dropout(0.25).apply({}, x, deterministic=False, rngs=rngs)
    >>> bool((ours == nn.Dropout(0.25).apply({}, x, deterministic=False, rngs=rngs)).all())
    True
    """

    rate: float

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        if not 0.0 <= self.rate <= 1.0:
            raise ValueError(f"Dropout rate must be in [0, 1] (the probability of dropping a unit); got {self.rate}")
        if self.rate == 0.0 or deterministic:
            return x
        if self.rate == 1.0:
            return jnp.zeros_like(x)
        keep = 1.0 - self.rate
        mask = bernoulli(self.make_rng("dropout"), keep, x.shape)
        return jax.lax.select(mask, x / keep, jnp.zeros_like(x))


class MLP(nn.Module):
    """Fully connected trunk: ``Dense -> activation -> (dropout)`` for each hidden width.

    Attributes
    ----------
    hidden : sequence of int
        Widths of the hidden layers (default the lecture's ``(128, 128, 64)``).
    activations : sequence of str or callable, optional
        One per layer; default relu on all but the last hidden layer, tanh on the last.
    dropout_rate : float
        Dropout probability after each hidden layer; 0 disables dropout.
    """

    hidden: Sequence[int] = DEFAULT_HIDDEN
    activations: Sequence[str | Callable] | None = None
    dropout_rate: float = 0.0
    weight_init: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        acts = self.activations if self.activations is not None else default_activations(len(self.hidden))
        if len(acts) != len(self.hidden):
            raise ValueError(
                f"got {len(acts)} activations for {len(self.hidden)} hidden layers; give one per layer"
            )
        for width, act in zip(self.hidden, acts):
            if check_init(self.weight_init) == "flax":
                x = nn.Dense(int(width))(x)
            else:
                x = nn.Dense(int(width), kernel_init=_TORCH_KERNEL, bias_init=_torch_bias(x.shape[-1]))(x)
            x = get_activation(act)(x)
            if self.dropout_rate > 0:
                x = Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
        return x


class PointHead(nn.Module):
    """A linear layer to one output per example; returns shape ``(batch,)``."""

    @nn.compact
    def __call__(self, h: jax.Array) -> jax.Array:
        return nn.Dense(1)(h)[..., 0]


class MixtureHead(nn.Module):
    """Gaussian-mixture head: returns ``(logits, locs, scales)``, each of shape ``(batch, num_components)``.

    ``scales = softplus(raw) + min_scale`` as in the lecture. With ``weight_init="equal_mixture"`` the logit and scale
    layers start with weights of order 1e-4, zero logits and raw scales at softplus^-1(1 - min_scale): every
    input starts with an equal-weight mixture of unit-width components (sbi's MDN starts this way).
    """

    num_components: int = 16
    min_scale: float = MIN_SCALE
    weight_init: str = "flax"

    @nn.compact
    def __call__(self, h: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array]:
        k = int(self.num_components)
        if check_init(self.weight_init) == "flax":
            logits = nn.Dense(k, name="logits")(h)
            locs = nn.Dense(k, name="locs")(h)
            scales = nn.softplus(nn.Dense(k, name="scales")(h)) + self.min_scale
            return logits, locs, scales
        small = nn.initializers.normal(_SMALL_INIT_STD)
        unit = math.log(math.expm1(1.0 - float(self.min_scale)))  # softplus(unit) + min_scale == 1
        logits = nn.Dense(k, kernel_init=small, bias_init=nn.initializers.zeros, name="logits")(h)
        locs = nn.Dense(k, kernel_init=_TORCH_KERNEL, bias_init=_torch_bias(h.shape[-1]), name="locs")(h)
        raw = nn.Dense(k, kernel_init=small, bias_init=nn.initializers.constant(unit), name="scales")(h)
        return logits, locs, nn.softplus(raw) + self.min_scale


class RegressionNet(nn.Module):
    """Trunk plus point head: the lecture's MSE regressor. Output shape ``(batch,)``.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> net = RegressionNet(hidden=(8,))
    >>> v = net.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> net.apply(v, jnp.ones((4, 3))).shape
    (4,)
    """

    hidden: Sequence[int] = DEFAULT_HIDDEN
    activations: Sequence[str | Callable] | None = None
    dropout_rate: float = 0.0

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True) -> jax.Array:
        h = MLP(self.hidden, self.activations, self.dropout_rate, name="trunk")(x, deterministic=deterministic)
        return PointHead(name="head")(h)


class MDNNet(nn.Module):
    """Trunk plus Gaussian-mixture head: the lecture's Mixture Density Network.

    Returns ``(logits, locs, scales)`` of shape ``(batch, num_components)`` each.
    """

    num_components: int = 16
    hidden: Sequence[int] = DEFAULT_HIDDEN
    activations: Sequence[str | Callable] | None = None
    dropout_rate: float = 0.0
    min_scale: float = MIN_SCALE
    weight_init: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True):
        h = MLP(self.hidden, self.activations, self.dropout_rate, self.weight_init, name="trunk")(
            x, deterministic=deterministic)
        return MixtureHead(self.num_components, self.min_scale, self.weight_init, name="head")(h)



class FlowHead(nn.Module):
    """Conditional spline-flow head: the parameters of :func:`numpyro_clustermass.flows.spline_flow`.

    Returns ``(loc, scale, widths, heights, slopes)`` of shapes ``(batch,)``, ``(batch,)``,
    ``(batch, num_layers, num_bins)`` twice and ``(batch, num_layers, num_bins - 1)``: the location and scale of
    the truncated-normal base (``scale = softplus(raw) + min_scale``) and each spline's unnormalised bin widths,
    heights and interior knot slopes. The spline layers start with weights of order 1e-4 and zero biases
    (equal bins; knot slopes near 1), so every input starts near the base alone.
    """

    num_bins: int = 16
    num_layers: int = 1
    min_scale: float = MIN_SCALE

    @nn.compact
    def __call__(self, h: jax.Array):
        k, n = int(self.num_bins), int(self.num_layers)
        batch = h.shape[:-1]
        small = nn.initializers.normal(_SMALL_INIT_STD)
        loc = nn.Dense(1, name="loc")(h)[..., 0]
        unit = math.log(math.expm1(1.0 - float(self.min_scale)))  # softplus(unit) + min_scale == 1
        scale = nn.softplus(nn.Dense(1, bias_init=nn.initializers.constant(unit), name="scale")(h)[..., 0])
        widths = nn.Dense(n * k, kernel_init=small, name="widths")(h).reshape(batch + (n, k))
        heights = nn.Dense(n * k, kernel_init=small, name="heights")(h).reshape(batch + (n, k))
        slope_one = math.log(math.expm1(1.0 - 1e-3))
        slopes = nn.Dense(n * (k - 1), kernel_init=small, bias_init=nn.initializers.constant(slope_one),
                          name="slopes")(h).reshape(batch + (n, k - 1))
        return loc, scale + self.min_scale, widths, heights, slopes


class FlowNet(nn.Module):
    """Trunk plus conditional spline-flow head (:class:`FlowHead`), the network of the Flow estimator.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> net = FlowNet(num_bins=4, num_layers=2, hidden=(8,))
    >>> v = net.init(jax.random.key(0), jnp.ones((1, 3)))
    >>> [a.shape for a in net.apply(v, jnp.ones((5, 3)))]
    [(5,), (5,), (5, 2, 4), (5, 2, 4), (5, 2, 3)]
    """

    num_bins: int = 16
    num_layers: int = 1
    hidden: Sequence[int] = DEFAULT_HIDDEN
    activations: Sequence[str | Callable] | None = None
    dropout_rate: float = 0.0
    min_scale: float = MIN_SCALE
    weight_init: str = "flax"

    @nn.compact
    def __call__(self, x: jax.Array, deterministic: bool = True):
        h = MLP(self.hidden, self.activations, self.dropout_rate, self.weight_init, name="trunk")(
            x, deterministic=deterministic)
        return FlowHead(self.num_bins, self.num_layers, self.min_scale, name="head")(h)
