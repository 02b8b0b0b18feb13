"""Bayesian twins: the package's models with a prior on their network's weights, and related transformations.

A *Bayesian twin* is the same NumPyro model given ``weight_prior=`` and/or ``bayesian_layers=``
(:mod:`numpyro_clustermass.models`): its network is registered by
:func:`numpyro.contrib.module.random_flax_module` instead of ``flax_module``, the chosen weights become latent
``sample`` sites (named ``"nn/<flax path>"``, e.g. ``"nn/head.locs.kernel"``) with a prior, the other weights
stay point ``param`` s. The inference methods ``"bbb"``, ``"nuts"`` and ``"laplace"`` build the twin of the
estimator's model themselves (:func:`bayesian_twin`), so a user asks for a Bayesian net through
:func:`~numpyro_clustermass.fit` keywords and never writes method-specific code::

    fit(MDN(3, (16, 16)), train, method="nuts", weight_prior=dist.Normal(0, 1), bayesian_layers="last")

The weight priors and their validation live in :mod:`numpyro_clustermass.weight_priors` (re-exported here).

Examples
--------
>>> import jax, jax.numpy as jnp, numpyro.distributions as dist
>>> from numpyro import handlers
>>> from numpyro_clustermass.estimators import MDN
>>> twin = bayesian_twin(MDN(3, (8,)).model, dist.Normal(0, 1), bayesian_layers="last")
>>> twin.func is MDN(3, (8,)).model.func  # the same model function, with the keywords set
True
>>> tr = handlers.trace(handlers.seed(twin, 0)).get_trace(jnp.ones((5, 4)), jnp.zeros(5))
>>> sorted(k for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"])
['nn/head.locs.bias', 'nn/head.locs.kernel', 'nn/head.logits.bias', 'nn/head.logits.kernel', 'nn/head.scales.bias', 'nn/head.scales.kernel']

References
----------
Blundell, C., Cornebise, J., Kavukcuoglu, K., Wierstra, D. (2015). Weight uncertainty in neural networks. ICML.
Neal, R. M. (1996). Bayesian Learning for Neural Networks. Springer.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
from numpyro import handlers

from numpyro_clustermass.models import NET_NAME, flow_model, is_bayesian, mdn_model, regression_model
from numpyro_clustermass.nets import MLP, FlowHead, FlowNet, MDNNet, MixtureHead, PointHead, RegressionNet
from numpyro_clustermass.weight_priors import (
    DEFAULT_WEIGHT_PRIOR,
    WeightPriorError,
    param_shapes,
    resolve_weight_prior,
    select_layers,
)

__all__ = [
    "DEFAULT_WEIGHT_PRIOR",
    "NET_NAME",
    "PACKAGE_MODELS",
    "WeightPriorError",
    "param_shapes",
    "select_layers",
    "resolve_weight_prior",
    "bayesian_twin",
    "deterministic_model",
    "with_dropout",
    "latent_site_names",
    "is_package_model",
    "head_only_twin",
]

#: The package's model functions: each one is deterministic or, given the weight-prior keywords, its own twin.
PACKAGE_MODELS = (regression_model, mdn_model, flow_model)
_BAYESIAN_KEYWORDS = ("weight_prior", "bayesian_layers")


def is_package_model(model) -> bool:
    """Whether ``model`` is ``functools.partial`` of one of the package's models (deterministic or a twin)."""
    return isinstance(model, functools.partial) and model.func in PACKAGE_MODELS


def bayesian_twin(model: Callable, weight_prior=None, bayesian_layers="all") -> Callable:
    """The Bayesian twin of a package model (``MSE().model``, ``MDN().model``).

    Parameters
    ----------
    model : callable
        ``functools.partial(regression_model | mdn_model, net=...)`` as the estimators build it (or an
        already Bayesian one, whose prior is then replaced).
    weight_prior, bayesian_layers
        See :mod:`numpyro_clustermass.weight_priors` (default: standard normal on every weight).

    Returns
    -------
    callable
        The same model function with the keywords set: ``functools.partial(regression_model | mdn_model,
        net=..., weight_prior=..., bayesian_layers=...)``.

    Raises
    ------
    TypeError
        ``model`` is not one of the package's models; write the priors into your own model instead (e.g. with
        ``random_flax_module``) and leave ``weight_prior`` out.
    """
    if not is_package_model(model):
        raise TypeError(
            f"weight_prior / bayesian_layers apply to the package's MSE and MDN models and its Flow; got the model "
            f"{getattr(model, '__name__', model)!r}. Put the priors in your own model (e.g. random_flax_module, "
            f"or numpyro.sample sites) and do not pass weight_prior or bayesian_layers"
        )
    kw = {k: v for k, v in model.keywords.items() if k not in _BAYESIAN_KEYWORDS}
    layers = "all" if bayesian_layers is None else bayesian_layers  # never None: the keywords make it Bayesian
    return functools.partial(model.func, *model.args, **kw, weight_prior=weight_prior, bayesian_layers=layers)


def deterministic_model(twin: Callable) -> Callable:
    """The deterministic model of a Bayesian twin: the same model and net without the weight-prior keywords
    (``flax_module`` instead of ``random_flax_module``; the inverse of :func:`bayesian_twin`).

    Examples
    --------
    >>> from numpyro_clustermass.estimators import MDN
    >>> m = MDN(2, (8,)).model
    >>> deterministic_model(bayesian_twin(m)).func is m.func
    True
    """
    kw = {k: v for k, v in twin.keywords.items() if k not in _BAYESIAN_KEYWORDS}
    return functools.partial(twin.func, *twin.args, **kw)


def with_dropout(model: Callable, dropout_rate: float) -> Callable:
    """A package model whose network has the given dropout rate after each hidden layer.

    Examples
    --------
    >>> from numpyro_clustermass.estimators import MDN
    >>> with_dropout(MDN(2, (8,)).model, 0.2).keywords["net"].dropout_rate
    0.2
    """
    rate = float(dropout_rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1); got {dropout_rate}")
    net = model.keywords.get("net") if isinstance(model, functools.partial) else None
    if net is None or not hasattr(net, "dropout_rate"):
        raise TypeError(
            f"cannot set dropout_rate on the model {getattr(model, '__name__', model)!r}: it is not one of the "
            f"package's models. Build your model's network with dropout (nets.MLP(dropout_rate=...)) and do not "
            f"pass dropout_rate"
        )
    return functools.partial(model.func, *model.args, **{**model.keywords, "net": net.clone(dropout_rate=rate)})


def latent_site_names(model: Callable, x, y) -> list[str]:
    """Names of the latent (unobserved) sample sites of ``model(x, y)``, in trace order.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> from numpyro_clustermass.estimators import MSE
    >>> latent_site_names(MSE(hidden=(4,)).model, jnp.ones((3, 2)), jnp.zeros(3))
    []
    """
    tr = handlers.trace(handlers.seed(model, jax.random.key(0))).get_trace(x, y)
    return [k for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"]]


class _HeadNet(nn.Module):
    """A package net's head alone, registered under the same name ("head") so its parameter paths match."""

    head: nn.Module

    @nn.compact
    def __call__(self, h, deterministic: bool = True):
        return self.head(h)


def head_only_twin(twin: Callable, num_features: int):
    """For a twin whose Bayesian weights are exactly its head, ``(trunk_fn, head_twin)``, else ``None``.

    ``trunk_fn(trunk_params, x)`` computes the trunk's features and ``head_twin`` is the same Bayesian model on
    those features, with the same sample-site names (``"nn/head.locs.kernel"``, ...). With the trunk held fixed
    (NUTS or Laplace on a last-layer BNN) the features are computed once instead of at every gradient.
    """
    if not (is_package_model(twin) and is_bayesian(twin.keywords.get("weight_prior"),
                                                   twin.keywords.get("bayesian_layers"))):
        return None
    net = twin.keywords.get("net")
    if isinstance(net, MDNNet):
        head = MixtureHead(net.num_components, net.min_scale, net.weight_init)
    elif isinstance(net, RegressionNet):
        head = PointHead()
    elif isinstance(net, FlowNet):
        head = FlowHead(net.num_bins, net.num_layers, net.min_scale)
    else:
        return None
    kw = twin.keywords
    shapes = param_shapes(net, num_features)
    prior = resolve_weight_prior(shapes, kw.get("weight_prior"), kw.get("bayesian_layers", "all"))
    if set(prior) != {p for p in shapes if p.startswith("head.")}:
        return None
    trunk = MLP(net.hidden, net.activations, 0.0, getattr(net, "weight_init", "flax"))

    def trunk_fn(trunk_params, x):
        return trunk.apply({"params": trunk_params}, x, deterministic=True)

    head_twin = functools.partial(twin.func, *twin.args, **{**kw, "net": _HeadNet(head), "bayesian_layers": "all"})
    return trunk_fn, head_twin
