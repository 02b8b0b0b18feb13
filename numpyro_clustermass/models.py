"""NumPyro models: the lecture's estimators as pure model functions ``model(x, y=None, ...)``.

Every model here follows one convention, which :func:`numpyro_clustermass.inference.fit` relies on and which
a user's own model function may follow too:

``model(x, y=None, num_data=None, deterministic=False)``
    ``x`` is a ``(batch, n_features)`` array of standardised features, ``y`` the ``(batch,)`` standardised
    log-masses (``None`` to predict). The likelihood is the sample site ``"obs"`` inside
    ``numpyro.plate("data", batch)``. When ``num_data`` is given, the likelihood is scaled by
    ``num_data / batch`` (``numpyro.handlers.scale``), so that the loss of a minibatch is an unbiased
    estimate of the full-data objective while priors (Bayesian variants) are counted once. This is the
    cheap equivalent of ``plate(..., subsample_size=batch)``, which draws indices with a Fisher-Yates scan and
    halves the training throughput (DESIGN.md). ``deterministic=True`` switches dropout off (MAP
    prediction); with ``deterministic=False`` and a net that has dropout, each call draws a mask from
    ``numpyro.prng_key()`` (training and MC dropout).

The network is registered with :func:`numpyro.contrib.module.flax_module` under the name ``"nn"``; its
parameters live in the param site ``"nn$params"``.

Example
-------
>>> import jax, jax.numpy as jnp
>>> from numpyro import handlers
>>> from numpyro_clustermass.models import mdn_model
>>> from numpyro_clustermass.nets import MDNNet
>>> x = jnp.zeros((6, 14)); y = jnp.zeros(6)
>>> tr = handlers.trace(handlers.seed(mdn_model, 0)).get_trace(x, y, net=MDNNet(3, hidden=(8,)))
>>> tr["obs"]["fn"].batch_shape, sorted(k for k in tr if k.startswith("nn"))
((6,), ['nn$params'])
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.contrib.module import flax_module

from numpyro_clustermass.nets import MDNNet, RegressionNet

__all__ = ["regression_model", "mdn_model", "apply_net", "likelihood_scale", "OBS_SITE", "DATA_PLATE"]

#: Name of the likelihood sample site in every model of this package.
OBS_SITE = "obs"
#: Name of the data plate.
DATA_PLATE = "data"


def likelihood_scale(num_data, batch_size: int):
    """The factor ``num_data / batch_size`` that turns a minibatch log-likelihood into a full-data one."""
    if num_data is None:
        return 1.0
    return num_data / batch_size


def apply_net(name: str, net, x, deterministic: bool = False):
    """Register ``net`` with ``flax_module`` and apply it to ``x``, handling the dropout rng.

    Dropout draws its mask from ``numpyro.prng_key()``, so a model whose net has dropout must run under a
    seed handler (SVI, ``Predictive`` and :meth:`Fit.posterior` all provide one).
    """
    has_dropout = float(getattr(net, "dropout_rate", 0.0) or 0.0) > 0.0
    module = flax_module(
        name, net, input_shape=(1, x.shape[-1]), apply_rng=["dropout"] if has_dropout else None
    )
    if has_dropout and not deterministic:
        key = numpyro.prng_key()
        if key is None:
            raise RuntimeError(
                "this model's network has dropout and needs a random key: run it under "
                "numpyro.handlers.seed, or pass deterministic=True"
            )
        return module(x, deterministic=False, rngs={"dropout": key})
    return module(x, deterministic=True)


def regression_model(x, y=None, num_data=None, deterministic: bool = False, *, net=None):
    """The lecture's MSE regressor as a Gaussian likelihood with a fitted residual scatter.

    ``y ~ Normal(f(x), sigma)`` with ``f`` the point network and ``sigma`` a positive parameter (site
    ``"sigma"``, in standardised target units). The MAP estimate of ``f`` is the least-squares fit (the
    lecture's MSE loss); ``sigma`` becomes the residual scatter, which makes the regressor a predictive
    density that can be scored and compared with the MDN.

    Parameters
    ----------
    x : array, shape (batch, n_features)
    y : array, shape (batch,), optional
    num_data : int, optional
        Size of the full training set; scales the likelihood by ``num_data / batch``.
    deterministic : bool
        Switch dropout off.
    net : flax.linen.Module, optional
        A module mapping ``x`` to shape ``(batch,)``; default :class:`~numpyro_clustermass.nets.RegressionNet`.

    Example
    -------
    >>> import jax.numpy as jnp
    >>> from numpyro import handlers
    >>> tr = handlers.trace(handlers.seed(regression_model, 0)).get_trace(jnp.ones((4, 3)), jnp.zeros(4))
    >>> type(tr["obs"]["fn"]).__name__, float(tr["sigma"]["value"])
    ('Normal', 1.0)
    """
    net = RegressionNet() if net is None else net
    mu = apply_net("nn", net, x, deterministic=deterministic)
    sigma = numpyro.param("sigma", jnp.ones(()), constraint=dist.constraints.positive)
    with numpyro.plate(DATA_PLATE, x.shape[0]), handlers.scale(scale=likelihood_scale(num_data, x.shape[0])):
        numpyro.sample(OBS_SITE, dist.Normal(mu, sigma), obs=y)


def mdn_model(x, y=None, num_data=None, deterministic: bool = False, *, net=None):
    """The lecture's Mixture Density Network: ``y ~ sum_k w_k(x) Normal(mu_k(x), s_k(x))``.

    Parameters are as in :func:`regression_model`; ``net`` maps ``x`` to ``(logits, locs, scales)``, default
    :class:`~numpyro_clustermass.nets.MDNNet` with 16 components.

    Example
    -------
    >>> import jax.numpy as jnp
    >>> from numpyro import handlers
    >>> from numpyro_clustermass.nets import MDNNet
    >>> tr = handlers.trace(handlers.seed(mdn_model, 0)).get_trace(jnp.ones((4, 3)), net=MDNNet(5, (8,)))
    >>> tr["obs"]["fn"].mixture_size, tr["obs"]["value"].shape
    (5, (4,))
    """
    net = MDNNet() if net is None else net
    logits, locs, scales = apply_net("nn", net, x, deterministic=deterministic)
    mixture = dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(locs, scales))
    with numpyro.plate(DATA_PLATE, x.shape[0]), handlers.scale(scale=likelihood_scale(num_data, x.shape[0])):
        numpyro.sample(OBS_SITE, mixture, obs=y)
