"""Weight priors of Bayesian networks: which weights are Bayesian, their priors, and the validation of both.

The package's models (:mod:`numpyro_clustermass.models`) take ``weight_prior=`` and ``bayesian_layers=``; this
module turns those into the ``{parameter path: distribution}`` dict that
:func:`numpyro.contrib.module.random_flax_module` needs, and refuses what would silently do nothing.

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

Examples
--------
>>> import numpyro.distributions as dist
>>> from numpyro_clustermass.nets import MDNNet
>>> shapes = param_shapes(MDNNet(3, (8,)), 4)
>>> sorted(resolve_weight_prior(shapes, dist.Normal(0, 1), bayesian_layers="head.locs"))
['head.locs.bias', 'head.locs.kernel']
>>> resolve_weight_prior(shapes, {"head.loc": dist.Normal(0, 1)})  # doctest: +ELLIPSIS
Traceback (most recent call last):
...
numpyro_clustermass.weight_priors.WeightPriorError: weight_prior key 'head.loc' matches no parameter of the network; ...
"""

from __future__ import annotations

from typing import Mapping, Sequence

import jax
import jax.numpy as jnp
import numpyro.distributions as dist

from numpyro_clustermass.flows import from_tfp, is_tfp_distribution

__all__ = [
    "DEFAULT_WEIGHT_PRIOR",
    "WeightPriorError",
    "param_shapes",
    "select_layers",
    "resolve_weight_prior",
]

#: The default weight prior: a standard normal on every Bayesian weight (the data and targets are standardised).
DEFAULT_WEIGHT_PRIOR = dist.Normal(0.0, 1.0)


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

    Examples
    --------
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
    # The init is traced, not run (eval_shape: no computation, nothing compiled; an eager init compiled each of
    # its operations on its own, 2.4 s in a fresh process). The shapes are read inside the trace, where the
    # params dicts are still in the call order that "last" relies on (eval_shape's output dicts are sorted).
    found: list = []

    def init_shapes():
        rng = jax.random.key(0)
        variables = net.init({"params": rng, "dropout": rng}, jnp.ones((1, int(input_dim))))
        found.append(_flatten(variables["params"]) if "params" in variables else None)
        return 0

    jax.eval_shape(init_shapes)
    if found[0] is None:
        raise WeightPriorError(f"the network {type(net).__name__} has no parameters to put a prior on")
    shapes = dict(found[0])
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

    Examples
    --------
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
    if is_tfp_distribution(d):  # a TFP (JAX substrate) distribution as a NumPyro one
        d = from_tfp(d)
    if not isinstance(d, dist.Distribution):
        raise WeightPriorError(
            f"the weight prior for {path!r} (from {source}) is {d!r} of type {type(d).__name__}, not a NumPyro "
            f"distribution (nor a TFP one); use e.g. numpyro.distributions.Normal(0, 1)"
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

    Examples
    --------
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
    if is_tfp_distribution(weight_prior):
        weight_prior = from_tfp(weight_prior)
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
