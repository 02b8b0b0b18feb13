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

The network is registered under the name ``"nn"`` (:data:`NET_NAME`). A deterministic model registers it with
:func:`numpyro.contrib.module.flax_module`: its parameters live in the param site ``"nn$params"``. Given
``weight_prior=`` or ``bayesian_layers=`` the same model is its own *Bayesian twin*: the net is registered with
:func:`numpyro.contrib.module.random_flax_module`, the chosen weights become latent ``sample`` sites named
``"nn/<flax path>"`` (``"nn/head.locs.kernel"``) with that prior (validated by
:mod:`numpyro_clustermass.weight_priors`: a key that matches no parameter is an error, not a silent no-op), and the
other weights stay point ``param`` s. ``weight_prior=None, bayesian_layers=None`` (the default) is the
deterministic model; either one given makes the model Bayesian (the other then defaults to
:data:`~numpyro_clustermass.weight_priors.DEFAULT_WEIGHT_PRIOR` and ``"all"``). Adding an estimator or a head
is one model here: its Bayesian twin, MC dropout and every inference method follow from these keywords.

Examples
--------
>>> import jax, jax.numpy as jnp
>>> from numpyro import handlers
>>> from numpyro_clustermass.models import mdn_model
>>> from numpyro_clustermass.nets import MDNNet
>>> x = jnp.zeros((6, 14)); y = jnp.zeros(6)
>>> tr = handlers.trace(handlers.seed(mdn_model, 0)).get_trace(x, y, net=MDNNet(3, hidden=(8,)))
>>> tr["obs"]["fn"].batch_shape, sorted(k for k in tr if k.startswith("nn"))
((6,), ['nn$params'])
>>> tr = handlers.trace(handlers.seed(mdn_model, 0)).get_trace(x, y, net=MDNNet(3, hidden=(8,)),
...                                                           bayesian_layers="last")
>>> sorted(k for k in tr if k.startswith("nn"))  # the head's weights are latent, the trunk's a param
['nn$params', 'nn/head.locs.bias', 'nn/head.locs.kernel', 'nn/head.logits.bias', 'nn/head.logits.kernel', 'nn/head.scales.bias', 'nn/head.scales.kernel']
"""

from __future__ import annotations

import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.contrib.module import flax_module, random_flax_module

from numpyro_clustermass.nets import FlowNet, MDNNet, RegressionNet
from numpyro_clustermass.weight_priors import DEFAULT_WEIGHT_PRIOR, param_shapes, resolve_weight_prior

__all__ = [
    "regression_model",
    "mdn_model",
    "flow_model",
    "apply_net",
    "is_bayesian",
    "likelihood_scale",
    "OBS_SITE",
    "DATA_PLATE",
    "NET_NAME",
]

#: Name of the likelihood sample site in every model of this package.
OBS_SITE = "obs"
#: Name of the data plate.
DATA_PLATE = "data"
#: Name the models give their network: the prefix of its param site (``"nn$params"``) and of the sample sites of
#: its Bayesian weights (``"nn/head.locs.kernel"``).
NET_NAME = "nn"


def likelihood_scale(num_data, batch_size: int):
    """The factor ``num_data / batch_size`` that turns a minibatch log-likelihood into a full-data one."""
    if num_data is None:
        return 1.0
    return num_data / batch_size


def is_bayesian(weight_prior=None, bayesian_layers=None) -> bool:
    """Whether a model given these keywords is a Bayesian twin (either one given) or deterministic (neither)."""
    return weight_prior is not None or bayesian_layers is not None


def apply_net(name: str, net, x, deterministic: bool = False, weight_prior=None, bayesian_layers=None):
    """Register ``net`` and apply it to ``x``, handling the dropout rng.

    With ``weight_prior`` and ``bayesian_layers`` both None the net is a ``flax_module`` (point weights);
    otherwise a ``random_flax_module`` whose ``bayesian_layers`` (default ``"all"``) have the validated prior
    ``weight_prior`` (default :data:`~numpyro_clustermass.weight_priors.DEFAULT_WEIGHT_PRIOR`).

    Dropout draws its mask from ``numpyro.prng_key()``, so a model whose net has dropout must run under a
    seed handler (SVI, ``Predictive`` and :meth:`Fit.posterior` all provide one).
    """
    has_dropout = float(getattr(net, "dropout_rate", 0.0) or 0.0) > 0.0
    input_shape = (1, x.shape[-1])
    apply_rng = ["dropout"] if has_dropout else None
    if is_bayesian(weight_prior, bayesian_layers):
        prior = resolve_weight_prior(
            param_shapes(net, x.shape[-1]),
            DEFAULT_WEIGHT_PRIOR if weight_prior is None else weight_prior,
            "all" if bayesian_layers is None else bayesian_layers,
        )
        module = random_flax_module(name, net, prior, input_shape=input_shape, apply_rng=apply_rng)
    else:
        module = flax_module(name, net, input_shape=input_shape, apply_rng=apply_rng)
    if has_dropout and not deterministic:
        key = numpyro.prng_key()
        if key is None:
            raise RuntimeError(
                "this model's network has dropout and needs a random key: run it under "
                "numpyro.handlers.seed, or pass deterministic=True"
            )
        return module(x, deterministic=False, rngs={"dropout": key})
    return module(x, deterministic=True)


def regression_model(x, y=None, num_data=None, deterministic: bool = False, *, net=None, weight_prior=None,
                     bayesian_layers=None):
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
    weight_prior : Distribution, dict or callable, optional
        A prior on the net's weights (:mod:`numpyro_clustermass.weight_priors`); given (or ``bayesian_layers``
        given), the model is Bayesian: ``y ~ Normal(f_w(x), sigma)``, ``w ~ weight_prior``, with ``sigma``
        still a point parameter (optimised by ``"bbb"``, fixed at its MAP value by ``"nuts"`` and
        ``"laplace"``). The prior is counted once while the likelihood is scaled by ``num_data / batch``.
    bayesian_layers : "all", "last", str or sequence of str, optional
        Which weights are Bayesian (default ``"all"`` when ``weight_prior`` is given).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro import handlers
    >>> tr = handlers.trace(handlers.seed(regression_model, 0)).get_trace(jnp.ones((4, 3)), jnp.zeros(4))
    >>> type(tr["obs"]["fn"]).__name__, float(tr["sigma"]["value"])
    ('Normal', 1.0)
    >>> from numpyro_clustermass.nets import RegressionNet
    >>> tr = handlers.trace(handlers.seed(regression_model, 0)).get_trace(
    ...     jnp.ones((4, 3)), jnp.zeros(4), net=RegressionNet(hidden=(4,)), bayesian_layers="last")
    >>> [k for k in tr if k.startswith("nn/")]
    ['nn/head.Dense_0.bias', 'nn/head.Dense_0.kernel']
    """
    net = RegressionNet() if net is None else net
    mu = apply_net(NET_NAME, net, x, deterministic, weight_prior, bayesian_layers)
    sigma = numpyro.param("sigma", jnp.ones(()), constraint=dist.constraints.positive)
    with numpyro.plate(DATA_PLATE, x.shape[0]), handlers.scale(scale=likelihood_scale(num_data, x.shape[0])):
        numpyro.sample(OBS_SITE, dist.Normal(mu, sigma), obs=y)


def mdn_model(x, y=None, num_data=None, deterministic: bool = False, *, net=None, weight_prior=None,
              bayesian_layers=None):
    """The lecture's Mixture Density Network: ``y ~ sum_k w_k(x) Normal(mu_k(x), s_k(x))``.

    Parameters are as in :func:`regression_model`; ``net`` maps ``x`` to ``(logits, locs, scales)``, default
    :class:`~numpyro_clustermass.nets.MDNNet` with 16 components. With ``weight_prior`` or ``bayesian_layers``
    the network's weights (all, or the ``bayesian_layers``) are latent with that prior.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro import handlers
    >>> from numpyro_clustermass.nets import MDNNet
    >>> tr = handlers.trace(handlers.seed(mdn_model, 0)).get_trace(jnp.ones((4, 3)), net=MDNNet(5, (8,)))
    >>> tr["obs"]["fn"].mixture_size, tr["obs"]["value"].shape
    (5, (4,))
    >>> tr = handlers.trace(handlers.seed(mdn_model, 0)).get_trace(jnp.ones((4, 3)), net=MDNNet(2, (4,)),
    ...                                                           weight_prior=dist.Normal(0, 1))
    >>> sum(k.startswith("nn/") for k in tr)
    8
    """
    net = MDNNet() if net is None else net
    logits, locs, scales = apply_net(NET_NAME, net, x, deterministic, weight_prior, bayesian_layers)
    mixture = dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(locs, scales))
    with numpyro.plate(DATA_PLATE, x.shape[0]), handlers.scale(scale=likelihood_scale(num_data, x.shape[0])):
        numpyro.sample(OBS_SITE, mixture, obs=y)


def flow_model(x, y=None, num_data=None, deterministic: bool = False, *, net=None, low=None, high=None,
               weight_prior=None, bayesian_layers=None):
    """A conditional normalizing flow: ``y ~ Spline_x(TruncatedNormal(loc(x), scale(x); low, high))``.

    The density of the standardised log-mass is zero outside ``[low, high]`` and has hard edges there
    (:func:`numpyro_clustermass.flows.spline_flow`; needs TensorFlow Probability, imported on first use).
    Parameters are as in :func:`regression_model`; ``net`` maps ``x`` to the flow's parameters, default
    :class:`~numpyro_clustermass.nets.FlowNet`.

    Parameters
    ----------
    low, high : float
        The interval in *standardised* units (the units of ``y``). The :class:`~numpyro_clustermass.Flow`
        estimator holds it in log10 M and :func:`~numpyro_clustermass.fit` converts it with the training
        scaler, so a user of the estimator never gives these.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro import handlers
    >>> from numpyro_clustermass.nets import FlowNet
    >>> tr = handlers.trace(handlers.seed(flow_model, 0)).get_trace(
    ...     jnp.ones((4, 3)), jnp.zeros(4), net=FlowNet(4, hidden=(8,)), low=-2.0, high=2.0)
    >>> type(tr["obs"]["fn"]).__name__, tr["obs"]["fn"].batch_shape
    ('TFPDistribution', (4,))
    """
    from numpyro_clustermass.flows import spline_flow  # TFP is imported only by the flow

    if low is None or high is None:
        raise ValueError(
            "flow_model needs its interval low=, high= in standardised log-mass units; the Flow estimator gets it "
            "from fit (Flow(bounds=...) in log10 M, converted with the training scaler)"
        )
    net = FlowNet() if net is None else net
    params = apply_net(NET_NAME, net, x, deterministic, weight_prior, bayesian_layers)
    flow = spline_flow(*params, low=low, high=high)
    with numpyro.plate(DATA_PLATE, x.shape[0]), handlers.scale(scale=likelihood_scale(num_data, x.shape[0])):
        numpyro.sample(OBS_SITE, flow, obs=y)
