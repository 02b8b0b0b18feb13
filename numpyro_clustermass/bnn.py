"""Bayesian neural networks: Bayesian twins of the package's models, weight priors and their validation.

A *Bayesian twin* is the same NumPyro model with the network registered by
:func:`numpyro.contrib.module.random_flax_module` instead of ``flax_module``: the chosen weights become latent
``sample`` sites (named ``"nn/<flax path>"``, e.g. ``"nn/head.locs.kernel"``) with a prior, the other weights
stay point ``param`` s. The inference methods ``"bbb"``, ``"nuts"`` and ``"laplace"`` build the twin of the
estimator's model themselves, so a user asks for a Bayesian net through :func:`~numpyro_clustermass.fit`
keywords and never writes method-specific code::

    fit(MDN(3, (16, 16)), train, method="nuts", weight_prior=dist.Normal(0, 1), bayesian_layers="last")

Weight priors (``weight_prior=``)
    * one NumPyro distribution, used for every Bayesian parameter (scalar, or with a shape that broadcasts to
      each parameter's shape);
    * a dict keyed by parameter path (``"head.locs.kernel"``) or by a module path that is a prefix of
      parameter paths (``"head"``, ``"trunk.Dense_1"``); the longest matching key wins and the key ``"*"``
      is the default for Bayesian parameters no other key matches;
    * a callable ``(path, shape) -> Distribution``.

    Every key must match at least one parameter, and only Bayesian ones: ``random_flax_module`` silently
    ignores a key that matches nothing, leaving a net with no random weights (DESIGN.md, "Known traps"), so
    here that is an error. So are a prior whose shape does not broadcast to its parameter and a value that is
    not a NumPyro distribution.

Bayesian layers (``bayesian_layers=``)
    ``"all"``; ``"last"`` (the parameters of the last top-level module: the ``head`` of the package's nets, a
    last-layer BNN); or a path prefix / sequence of prefixes (``("head", "trunk.Dense_1")``).

Example
-------
>>> import jax, jax.numpy as jnp, numpyro.distributions as dist
>>> from numpyro import handlers
>>> from numpyro_clustermass.estimators import MDN
>>> twin = bayesian_twin(MDN(3, (8,)).model, dist.Normal(0, 1), bayesian_layers="last")
>>> tr = handlers.trace(handlers.seed(twin, 0)).get_trace(jnp.ones((5, 4)), jnp.zeros(5))
>>> sorted(k for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"])
['nn/head.locs.bias', 'nn/head.locs.kernel', 'nn/head.logits.bias', 'nn/head.logits.kernel', 'nn/head.scales.bias', 'nn/head.scales.kernel']
>>> resolve_weight_prior(param_shapes(MDN(3, (8,)).net, 4), {"head.loc": dist.Normal(0, 1)})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
numpyro_clustermass.bnn.WeightPriorError: weight_prior key 'head.loc' matches no parameter of the network; ...

References
----------
Blundell, C., Cornebise, J., Kavukcuoglu, K., Wierstra, D. (2015). Weight uncertainty in neural networks. ICML.
Neal, R. M. (1996). Bayesian Learning for Neural Networks. Springer.
"""

from __future__ import annotations

import functools
from typing import Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.contrib.module import random_flax_module

from numpyro_clustermass.models import (
    DATA_PLATE,
    OBS_SITE,
    likelihood_scale,
    mdn_model,
    regression_model,
)
import flax.linen as nn

from numpyro_clustermass.nets import MLP, MDNNet, MixtureHead, PointHead, RegressionNet

__all__ = [
    "DEFAULT_WEIGHT_PRIOR",
    "WeightPriorError",
    "param_shapes",
    "select_layers",
    "resolve_weight_prior",
    "apply_bayesian_net",
    "bayesian_regression_model",
    "bayesian_mdn_model",
    "bayesian_twin",
    "with_dropout",
    "latent_site_names",
    "is_package_model",
    "head_only_twin",
]

#: The default weight prior: a standard normal on every Bayesian weight (the data and targets are standardised).
DEFAULT_WEIGHT_PRIOR = dist.Normal(0.0, 1.0)
#: The prefix of the sample sites of Bayesian weights (the name the models give the network).
NET_NAME = "nn"


class WeightPriorError(ValueError):
    """A weight prior or a ``bayesian_layers`` choice that does not fit the network."""


# ---------------------------------------------------------------------------------------------- parameter tree
def _flatten(tree, prefix=""):
    """(path, shape) pairs in the tree's insertion (call) order; paths joined with dots like random_flax_module."""
    out = []
    for k, v in tree.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.extend(_flatten(v, path))
        else:
            out.append((path, tuple(v.shape)))
    return out


_SHAPES_CACHE: dict = {}


def param_shapes(net, input_dim: int) -> dict[str, tuple[int, ...]]:
    """Parameter paths and shapes of a flax linen module for inputs with ``input_dim`` features.

    In the module's call order (one eager initialisation, cached per module and input size).

    >>> from numpyro_clustermass.nets import RegressionNet
    >>> param_shapes(RegressionNet(hidden=(4,)), 3)
    {'trunk.Dense_0.kernel': (3, 4), 'trunk.Dense_0.bias': (4,), 'head.Dense_0.kernel': (4, 1), 'head.Dense_0.bias': (1,)}
    """
    try:
        key = (net, int(input_dim))
        hash(key)
    except TypeError:
        key = None
    if key is not None and key in _SHAPES_CACHE:
        return dict(_SHAPES_CACHE[key])
    # an eager init (not eval_shape, whose output dicts are sorted) keeps the call order that "last" relies on
    with jax.ensure_compile_time_eval():
        rng = jax.random.key(0)
        variables = net.init({"params": rng, "dropout": rng}, jnp.ones((1, int(input_dim))))
    if "params" not in variables:
        raise WeightPriorError(f"the network {type(net).__name__} has no parameters to put a prior on")
    shapes = dict(_flatten(variables["params"]))
    if key is not None:
        _SHAPES_CACHE[key] = shapes
    return dict(shapes)


def _norm_key(key) -> str:
    if not isinstance(key, str) or not key:
        raise WeightPriorError(f"weight_prior and bayesian_layers keys must be non-empty strings; got {key!r}")
    return key.replace("/", ".").strip(".")


def _matches(prefix: str, path: str) -> bool:
    return path == prefix or path.startswith(prefix + ".")


def select_layers(paths: Sequence[str], bayesian_layers="all") -> list[str]:
    """The parameter paths made Bayesian by ``bayesian_layers`` (see the module docstring).

    >>> paths = ["trunk.Dense_0.kernel", "trunk.Dense_0.bias", "head.Dense_0.kernel", "head.Dense_0.bias"]
    >>> select_layers(paths, "last")
    ['head.Dense_0.kernel', 'head.Dense_0.bias']
    >>> select_layers(paths, ["trunk.Dense_0.bias"])
    ['trunk.Dense_0.bias']
    """
    paths = list(paths)
    if bayesian_layers is None or bayesian_layers == "all":
        return paths
    if bayesian_layers == "last":
        last = paths[-1].split(".")[0]
        return [p for p in paths if _matches(last, p)]
    prefixes = [bayesian_layers] if isinstance(bayesian_layers, str) else list(bayesian_layers)
    if not prefixes:
        raise WeightPriorError("bayesian_layers is empty: name at least one layer, or use 'all' or 'last'")
    chosen = set()
    for pre in prefixes:
        pre_n = _norm_key(pre)
        hit = [p for p in paths if _matches(pre_n, p)]
        if not hit:
            raise WeightPriorError(
                f"bayesian_layers entry {pre!r} matches no parameter of the network; parameter paths are "
                f"{paths} (or use 'all' or 'last')"
            )
        chosen.update(hit)
    return [p for p in paths if p in chosen]


def _check_distribution(d, path: str, shape: tuple[int, ...], source: str) -> dist.Distribution:
    if not isinstance(d, dist.Distribution):
        raise WeightPriorError(
            f"the weight prior for {path!r} (from {source}) is {d!r} of type {type(d).__name__}, not a NumPyro "
            f"distribution; use e.g. numpyro.distributions.Normal(0, 1)"
        )
    ev = tuple(d.event_shape)
    bs = tuple(d.batch_shape)
    ok = len(ev) <= len(shape) and (not ev or tuple(shape[len(shape) - len(ev):]) == ev)
    if ok:
        pbatch = tuple(shape[: len(shape) - len(ev)])
        ok = len(bs) <= len(pbatch) and all(b in (1, p) for b, p in zip(bs[::-1], pbatch[::-1]))
    if not ok:
        raise WeightPriorError(
            f"the weight prior for {path!r} (from {source}) has batch shape {bs} and event shape {ev}, which do "
            f"not broadcast to the parameter's shape {shape}; use a scalar prior or one of shape {shape}"
        )
    return d


def resolve_weight_prior(shapes: Mapping[str, tuple[int, ...]], weight_prior=None,
                         bayesian_layers="all") -> dict[str, dist.Distribution]:
    """Validate a weight prior against a network and return ``{parameter path: distribution}``.

    Parameters
    ----------
    shapes : dict
        ``{path: shape}`` of the network's parameters (:func:`param_shapes`).
    weight_prior : Distribution, dict or callable, optional
        See the module docstring; default :data:`DEFAULT_WEIGHT_PRIOR`.
    bayesian_layers : "all", "last", str or sequence of str
        Which parameters are Bayesian.

    Returns
    -------
    dict
        One validated distribution per Bayesian parameter, in the network's order; the dict
        ``random_flax_module`` needs (every key matches a parameter).

    Raises
    ------
    WeightPriorError
        A key (of ``weight_prior`` or ``bayesian_layers``) that matches no parameter, a dict key that matches
        only non-Bayesian parameters, a Bayesian parameter that no key covers, a prior that is not a
        distribution or whose shape does not broadcast to its parameter.

    >>> import numpyro.distributions as dist
    >>> shapes = {"trunk.Dense_0.kernel": (3, 4), "trunk.Dense_0.bias": (4,), "head.Dense_0.kernel": (4, 1)}
    >>> pri = resolve_weight_prior(shapes, {"*": dist.Normal(0, 1), "head": dist.Laplace(0, 0.1)})
    >>> {k: type(v).__name__ for k, v in pri.items()}
    {'trunk.Dense_0.kernel': 'Normal', 'trunk.Dense_0.bias': 'Normal', 'head.Dense_0.kernel': 'Laplace'}
    """
    paths = list(shapes)
    bayes = select_layers(paths, bayesian_layers)
    if not bayes:
        raise WeightPriorError(f"bayesian_layers={bayesian_layers!r} selects no parameter; paths are {paths}")
    weight_prior = DEFAULT_WEIGHT_PRIOR if weight_prior is None else weight_prior
    out = {}
    if isinstance(weight_prior, dist.Distribution):
        for p in bayes:
            out[p] = _check_distribution(weight_prior, p, shapes[p], "weight_prior")
        return out
    if isinstance(weight_prior, Mapping):
        keys = {}
        default = None
        for k, d in weight_prior.items():
            if k == "*":
                default = d
                continue
            kn = _norm_key(k)
            hit = [p for p in paths if _matches(kn, p)]
            if not hit:
                raise WeightPriorError(
                    f"weight_prior key {k!r} matches no parameter of the network; parameter paths are {paths} "
                    f"(keys may also be module prefixes such as 'head' or 'trunk.Dense_0', or '*' for a default)"
                )
            if not any(p in bayes for p in hit):
                raise WeightPriorError(
                    f"weight_prior key {k!r} matches only parameters outside bayesian_layers={bayesian_layers!r} "
                    f"({hit}); it would have no effect. Make those layers Bayesian or drop the key"
                )
            keys[kn] = (k, d)
        for p in bayes:
            best = max((kn for kn in keys if _matches(kn, p)), key=len, default=None)
            if best is not None:
                k, d = keys[best]
                out[p] = _check_distribution(d, p, shapes[p], f"weight_prior[{k!r}]")
            elif default is not None:
                out[p] = _check_distribution(default, p, shapes[p], "weight_prior['*']")
            else:
                raise WeightPriorError(
                    f"no weight prior for the Bayesian parameter {p!r}: add a key for it (or a prefix of it), a "
                    f"default key '*', or leave it out of bayesian_layers"
                )
        return out
    if callable(weight_prior):
        for p in bayes:
            out[p] = _check_distribution(weight_prior(p, shapes[p]), p, shapes[p], "the weight_prior callable")
        return out
    raise WeightPriorError(
        f"weight_prior must be a NumPyro distribution, a dict of them keyed by parameter path, or a callable "
        f"(path, shape) -> distribution; got {weight_prior!r} of type {type(weight_prior).__name__}"
    )


# ---------------------------------------------------------------------------------------------- models
def apply_bayesian_net(name: str, net, x, weight_prior=None, bayesian_layers="all", deterministic: bool = False):
    """Register ``net`` with ``random_flax_module`` (validated prior) and apply it to ``x``.

    The Bayesian counterpart of :func:`numpyro_clustermass.models.apply_net`, with the same dropout handling
    (a mask from ``numpyro.prng_key()`` per call unless ``deterministic``).
    """
    prior = resolve_weight_prior(param_shapes(net, x.shape[-1]), weight_prior, bayesian_layers)
    has_dropout = float(getattr(net, "dropout_rate", 0.0) or 0.0) > 0.0
    module = random_flax_module(name, net, prior, input_shape=(1, x.shape[-1]),
                                apply_rng=["dropout"] if has_dropout else None)
    if has_dropout and not deterministic:
        key = numpyro.prng_key()
        if key is None:
            raise RuntimeError("this model's network has dropout and needs a random key: run it under "
                               "numpyro.handlers.seed, or pass deterministic=True")
        return module(x, deterministic=False, rngs={"dropout": key})
    return module(x, deterministic=True)


def bayesian_regression_model(x, y=None, num_data=None, deterministic: bool = False, *, net=None,
                              weight_prior=None, bayesian_layers="all"):
    """Bayesian twin of :func:`~numpyro_clustermass.models.regression_model`: a prior on the net's weights.

    ``y ~ Normal(f_w(x), sigma)``, ``w ~ weight_prior``; ``sigma`` stays a point parameter (optimised by
    ``"bbb"``, fixed at its MAP value by ``"nuts"`` and ``"laplace"``). The likelihood is scaled by
    ``num_data / batch`` and the prior counted once, so a minibatch ELBO is unbiased for the full-data one.

    >>> import jax.numpy as jnp
    >>> from numpyro import handlers
    >>> from numpyro_clustermass.nets import RegressionNet
    >>> tr = handlers.trace(handlers.seed(bayesian_regression_model, 0)).get_trace(
    ...     jnp.ones((4, 3)), jnp.zeros(4), net=RegressionNet(hidden=(4,)), bayesian_layers="last")
    >>> [k for k in tr if k.startswith("nn/")]
    ['nn/head.Dense_0.bias', 'nn/head.Dense_0.kernel']
    """
    net = RegressionNet() if net is None else net
    mu = apply_bayesian_net(NET_NAME, net, x, weight_prior, bayesian_layers, deterministic)
    sigma = numpyro.param("sigma", jnp.ones(()), constraint=dist.constraints.positive)
    with numpyro.plate(DATA_PLATE, x.shape[0]), handlers.scale(scale=likelihood_scale(num_data, x.shape[0])):
        numpyro.sample(OBS_SITE, dist.Normal(mu, sigma), obs=y)


def bayesian_mdn_model(x, y=None, num_data=None, deterministic: bool = False, *, net=None,
                       weight_prior=None, bayesian_layers="all"):
    """Bayesian twin of :func:`~numpyro_clustermass.models.mdn_model`: a Mixture Density Network whose
    weights (all, or the ``bayesian_layers``) have the prior ``weight_prior``.

    >>> import jax.numpy as jnp
    >>> from numpyro import handlers
    >>> from numpyro_clustermass.nets import MDNNet
    >>> tr = handlers.trace(handlers.seed(bayesian_mdn_model, 0)).get_trace(jnp.ones((4, 3)), net=MDNNet(2, (4,)))
    >>> sum(k.startswith("nn/") for k in tr), tr["obs"]["value"].shape
    (8, (4,))
    """
    net = MDNNet() if net is None else net
    logits, locs, scales = apply_bayesian_net(NET_NAME, net, x, weight_prior, bayesian_layers, deterministic)
    mixture = dist.MixtureSameFamily(dist.Categorical(logits=logits), dist.Normal(locs, scales))
    with numpyro.plate(DATA_PLATE, x.shape[0]), handlers.scale(scale=likelihood_scale(num_data, x.shape[0])):
        numpyro.sample(OBS_SITE, mixture, obs=y)


_TWINS = {regression_model: bayesian_regression_model, mdn_model: bayesian_mdn_model}
_BAYESIAN = {bayesian_regression_model, bayesian_mdn_model}


def is_package_model(model) -> bool:
    """Whether ``model`` is ``functools.partial`` of one of the package's (deterministic or Bayesian) models."""
    return isinstance(model, functools.partial) and (model.func in _TWINS or model.func in _BAYESIAN)


def bayesian_twin(model: Callable, weight_prior=None, bayesian_layers="all") -> Callable:
    """The Bayesian twin of a package model (``MSE().model``, ``MDN().model``).

    Parameters
    ----------
    model : callable
        ``functools.partial(regression_model | mdn_model, net=...)`` as the estimators build it (or an
        already Bayesian one, whose prior is then replaced).
    weight_prior, bayesian_layers
        See the module docstring (default: standard normal on every weight).

    Returns
    -------
    callable
        ``functools.partial(bayesian_regression_model | bayesian_mdn_model, net=..., weight_prior=...,
        bayesian_layers=...)``.

    Raises
    ------
    TypeError
        ``model`` is not one of the package's models; write the priors into your own model instead (e.g. with
        ``random_flax_module``) and leave ``weight_prior`` out.
    """
    if not is_package_model(model):
        raise TypeError(
            f"weight_prior / bayesian_layers apply to the package's MSE and MDN models; got the model "
            f"{getattr(model, '__name__', model)!r}. Put the priors in your own model (e.g. random_flax_module, "
            f"or numpyro.sample sites) and do not pass weight_prior or bayesian_layers"
        )
    func = _TWINS.get(model.func, model.func)
    kw = {k: v for k, v in model.keywords.items() if k not in ("weight_prior", "bayesian_layers")}
    return functools.partial(func, *model.args, **kw, weight_prior=weight_prior, bayesian_layers=bayesian_layers)


def deterministic_model(twin: Callable) -> Callable:
    """The deterministic model of a Bayesian twin: the same net, ``flax_module`` instead of
    ``random_flax_module`` (the inverse of :func:`bayesian_twin`).

    >>> from numpyro_clustermass.estimators import MDN
    >>> m = MDN(2, (8,)).model
    >>> deterministic_model(bayesian_twin(m)).func is m.func
    True
    """
    inverse = {v: k for k, v in _TWINS.items()}
    kw = {k: v for k, v in twin.keywords.items() if k not in ("weight_prior", "bayesian_layers")}
    return functools.partial(inverse[twin.func], *twin.args, **kw)


def with_dropout(model: Callable, dropout_rate: float) -> Callable:
    """A package model whose network has the given dropout rate after each hidden layer.

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
    if not (isinstance(twin, functools.partial) and twin.func in _BAYESIAN):
        return None
    net = twin.keywords.get("net")
    if isinstance(net, MDNNet):
        head = MixtureHead(net.num_components, net.min_scale, net.weight_init)
    elif isinstance(net, RegressionNet):
        head = PointHead()
    else:
        return None
    kw = twin.keywords
    shapes = param_shapes(net, num_features)
    prior = resolve_weight_prior(shapes, kw.get("weight_prior"), kw.get("bayesian_layers", "all"))
    if set(prior) != {p for p in shapes if p.startswith("head.")}:
        return None
    trunk = MLP(net.hidden, net.activations, 0.0, net.weight_init)

    def trunk_fn(trunk_params, x):
        return trunk.apply({"params": trunk_params}, x, deterministic=True)

    head_twin = functools.partial(twin.func, *twin.args, **{**kw, "net": _HeadNet(head), "bayesian_layers": "all"})
    return trunk_fn, head_twin
