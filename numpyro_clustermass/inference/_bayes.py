"""Shared plumbing of the Bayesian methods ("bbb", "mc_dropout", "nuts", "laplace", "ensemble").

Private: the Bayesian twin of a model with early prior validation, the internal MAP fit that NUTS, Laplace
and BBB start from (run through the method registry and the package's epoch driver), and pytree helpers.
"""

from __future__ import annotations

from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers

from numpyro_clustermass.bnn import (
    NET_NAME,
    bayesian_twin,
    head_only_twin,
    is_package_model,
    latent_site_names,
    param_shapes,
    resolve_weight_prior,
)
from numpyro_clustermass.inference.epochs import EarlyStopping, run_epochs
from numpyro_clustermass.inference.protocol import IterativeMethod, TrainingData, TrainingPlan, build_method
from numpyro_clustermass.inference.svi import MapStartOptions


# ---------------------------------------------------------------------------------------------- option checks
def check_init(method: str, init, allowed: tuple[str, ...] = ("map",)) -> None:
    """``init`` is one of the ``allowed`` strings or a :class:`Fit` (a MAP fit to start from); a ValueError
    naming them otherwise.

    Examples
    --------
    >>> check_init("bbb", "mpa", ("net", "map"))
    Traceback (most recent call last):
    ...
    ValueError: method 'bbb': init must be 'net', 'map' or a MAP Fit of the same data; got 'mpa'
    """
    from numpyro_clustermass.inference.fitting import Fit

    if isinstance(init, Fit) or (isinstance(init, str) and init in allowed):
        return
    names = ", ".join(repr(a) for a in allowed)
    raise ValueError(f"method {method!r}: init must be {names} or a MAP Fit of the same data; got {init!r}")


def check_bayesian_layers(bayesian_layers):
    """``bayesian_layers`` with a list made a tuple (hashable, as a frozen options field should be); the value
    itself is checked against the network when the method is built."""
    return tuple(bayesian_layers) if isinstance(bayesian_layers, list) else bayesian_layers


def bayesian_model(model: Callable, weight_prior, bayesian_layers, default_layers: str,
                   num_features: int) -> tuple[Callable, bool]:
    """The model to sample: the Bayesian twin of a package model, or a user's model as it is.

    The prior is validated here, before any training, against the network built for ``num_features``
    inputs. Returns ``(model, is_twin)``.
    """
    if is_package_model(model):
        layers = default_layers if bayesian_layers is None else bayesian_layers
        twin = bayesian_twin(model, weight_prior, layers)
        resolve_weight_prior(param_shapes(twin.keywords["net"], num_features), weight_prior, layers)
        return twin, True
    if weight_prior is not None or bayesian_layers is not None:
        bayesian_twin(model, weight_prior, bayesian_layers)  # raises the explanatory TypeError
    return model, False


def require_latents(model: Callable, x, y, method: str) -> list[str]:
    """The model's latent sample sites; an error if it has none (nothing to be Bayesian about)."""
    names = latent_site_names(model, x, y)
    if not names:
        raise ValueError(
            f"method {method!r}: the model has no latent sample sites, so there is nothing to infer. Use one of "
            f"the package's estimators (MSE, MDN: their weights get a prior), or give your model priors "
            f"(numpyro.sample sites or random_flax_module; note that random_flax_module silently ignores a prior "
            f"dict key that matches no parameter)"
        )
    return names


def flatten_tree(tree, prefix: str = "") -> dict[str, Any]:
    """``{dotted path: leaf}`` of a nested dict of arrays (ParamShape leaves are skipped)."""
    out = {}
    for k, v in tree.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            out.update(flatten_tree(v, path))
        elif hasattr(v, "shape") and not type(v).__name__ == "ParamShape":
            out[path] = v
    return out


def net_site_values(params: Mapping, sites, name: str = NET_NAME) -> dict[str, jax.Array]:
    """Values of the Bayesian weight sites ``"nn/<path>"`` read from point params (``params["nn$params"]``)."""
    flat = flatten_tree(params.get(f"{name}$params", {}))
    out = {}
    for s in sites:
        if s.startswith(name + "/") and s[len(name) + 1:] in flat:
            out[s] = flat[s[len(name) + 1:]]
        elif s in params:
            out[s] = params[s]
    return out


def initial_params(model: Callable, x, y, rng_key) -> dict:
    """Param and mutable site values of one seeded trace of ``model`` (e.g. the flax initialisation)."""
    tr = handlers.trace(handlers.seed(model, rng_key)).get_trace(x, y)
    return {k: s["value"] for k, s in tr.items() if s["type"] in ("param", "mutable")}


def copy_tree(tree):
    """A structural copy (new dicts, same leaves): ``random_flax_module`` mutates the params dict it is given."""
    return jax.tree.map(lambda a: a, tree)


def tile(tree, n: int):
    """Stack ``n`` copies of every leaf on a new leading axis."""
    return jax.tree.map(lambda a: jnp.broadcast_to(a, (n,) + jnp.shape(a)), tree)


def point_params(params: Mapping, latent: Mapping | None = None) -> dict:
    """Params without the guide's own parameters (``*_auto_loc`` etc.): what the model's param sites take."""
    return {k: v for k, v in params.items()
            if "_auto_" not in k and not k.startswith("bbb$") and k not in (latent or {})}


def map_params_from(init, model: Callable, plan: TrainingPlan, data: TrainingData, rng_key, progress_bar: bool,
                    map_options: MapStartOptions | None, method: str) -> tuple[dict, dict]:
    """MAP params to start from: from a given :class:`Fit`, or by running the ``"map"`` method now.

    Returns ``(params, info)``; ``params`` are the constrained param and latent values of the MAP fit.
    """
    from numpyro_clustermass.inference.fitting import Fit

    if isinstance(init, Fit):
        if init.info.n_train != plan.num_data or init.num_features != plan.num_features:
            raise ValueError(
                f"method {method!r}: the MAP fit given as init was trained on {init.info.n_train} rows with "
                f"{init.num_features} features, this fit has {plan.num_data} rows with {plan.num_features}; fit "
                f"it on the same catalogue with the same seed and validation_fraction"
            )
        params = dict(init.params)
        if init.method == "ensemble":
            params = jax.tree.map(lambda a: a[0], params)
        return params, {"map_source": f"given fit ({init.method})"}
    return run_map(model, plan, data, rng_key, progress_bar, map_options or MapStartOptions())


def run_map(model: Callable, plan: TrainingPlan, data: TrainingData, rng_key, progress_bar: bool,
            map_options: MapStartOptions) -> tuple[dict, dict]:
    """Train ``model`` with the registered ``"map"`` method and the package's epoch driver.

    ``map_options`` (:class:`~numpyro_clustermass.inference.svi.MapStartOptions`) set ``num_epochs`` (default the
    plan's), ``patience`` (20), ``min_delta`` (1e-4) and the ``"map"`` method's options (``learning_rate``, ...).
    """
    opts = map_options
    num_epochs = plan.num_epochs if opts.num_epochs is None else opts.num_epochs
    map_plan = plan._replace(num_epochs=num_epochs)
    impl = build_method("map", model, map_plan, opts.to_map_options())
    state, history, extra = drive_epochs(model, impl, map_plan, rng_key, data, opts.patience, opts.min_delta,
                                         progress_bar, "map (init)")
    info = {"map_epochs_run": extra["epochs_run"], "map_best_val_loss": extra["best_val_loss"],
            "map_source": "map method"}
    if len(history["val_loss"]):
        info["map_final_val_loss"] = float(np.asarray(history["val_loss"])[-1])
    return impl.get_params(state), info


def drive_epochs(model: Callable, impl: IterativeMethod, plan: TrainingPlan, rng_key, data: TrainingData,
                 patience, min_delta: float, progress_bar: bool, desc: str):
    """Run ``impl``'s init/step/evaluate in the package's epoch driver (jit-compiled ``lax.scan`` epochs, early
    stopping, divergence check). Returns ``(state, history, info)``."""
    return run_epochs(model, impl, plan, rng_key, data, EarlyStopping(patience, min_delta),
                      progress_bar=progress_bar, desc=desc)


def fixed_trunk_problem(twin, fixed, x, num_features):
    """``(model, fixed params, inputs)`` to sample: the head alone on precomputed trunk features when only the head
    is Bayesian and the trunk is held at the MAP (same posterior, one trunk pass instead of one per gradient)."""
    ho = head_only_twin(twin, num_features)
    params = fixed.get("nn$params")
    if ho is None or not isinstance(params, dict) or "trunk" not in params or "head" not in params:
        return twin, fixed, x, False
    trunk_fn, head_twin = ho
    feats = jax.jit(trunk_fn)(params["trunk"], x)
    return head_twin, {**fixed, "nn$params": {"head": params["head"]}}, feats, True


def substitute_params(model: Callable, params: Mapping) -> Callable:
    """``model`` with its ``param`` (and ``mutable``) sites fixed at ``params`` (fresh dict copies per call)."""

    def fn(site):
        if site["type"] in ("param", "mutable") and site["name"] in params:
            return copy_tree(params[site["name"]])
        return None

    return handlers.substitute(model, substitute_fn=fn)
