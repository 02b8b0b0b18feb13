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
    is_package_model,
    latent_site_names,
    param_shapes,
    resolve_weight_prior,
)
from numpyro_clustermass.inference import base as _base
from numpyro_clustermass.inference.base import InferenceMethod, TrainingData, TrainingPlan, get_method


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


def det_model_of(twin: Callable) -> Callable:
    """The deterministic model of a Bayesian twin (same net, ``flax_module`` instead of ``random_flax_module``)."""
    import functools

    from numpyro_clustermass.bnn import _TWINS

    inverse = {v: k for k, v in _TWINS.items()}
    kw = {k: v for k, v in twin.keywords.items() if k not in ("weight_prior", "bayesian_layers")}
    return functools.partial(inverse[twin.func], *twin.args, **kw)


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
                    map_options: Mapping | None, method: str) -> tuple[dict, dict]:
    """MAP params to start from: from a given :class:`Fit`, or by running the ``"map"`` method now.

    Returns ``(params, info)``; ``params`` are the constrained param and latent values of the MAP fit.
    """
    from numpyro_clustermass.inference.base import Fit

    if isinstance(init, Fit):
        if init.info.get("n_train") != plan.num_data or init.num_features != plan.num_features:
            raise ValueError(
                f"method {method!r}: the MAP fit given as init was trained on {init.info.get('n_train')} rows with "
                f"{init.num_features} features, this fit has {plan.num_data} rows with {plan.num_features}; fit "
                f"it on the same catalogue with the same seed and validation_fraction"
            )
        params = dict(init.params)
        if init.method == "ensemble":
            params = jax.tree.map(lambda a: a[0], params)
        return params, {"map_source": f"given fit ({init.method})"}
    return run_map(model, plan, data, rng_key, progress_bar, map_options or {})


def run_map(model: Callable, plan: TrainingPlan, data: TrainingData, rng_key, progress_bar: bool,
            map_options: Mapping) -> tuple[dict, dict]:
    """Train ``model`` with the registered ``"map"`` method and the package's epoch driver.

    ``map_options`` may set ``num_epochs``, ``patience`` (default 20), ``min_delta`` (1e-4) and any option of
    the ``"map"`` factory (``learning_rate``, ...).
    """
    opts = dict(map_options)
    num_epochs = int(opts.pop("num_epochs", plan.num_epochs))
    patience = opts.pop("patience", 20)
    min_delta = float(opts.pop("min_delta", 1e-4))
    map_plan = plan._replace(num_epochs=num_epochs)
    impl = get_method("map")(model, map_plan, **opts)
    state, history, extra = drive_epochs(model, impl, map_plan, rng_key, data, patience, min_delta, progress_bar,
                                         "map (init)")
    info = {"map_epochs_run": extra["epochs_run"], "map_best_val_loss": extra["best_val_loss"],
            "map_source": "map method"}
    if len(history["val_loss"]):
        info["map_final_val_loss"] = float(np.asarray(history["val_loss"])[-1])
    return impl.get_params(state), info


def drive_epochs(model: Callable, impl: InferenceMethod, plan: TrainingPlan, rng_key, data: TrainingData,
                 patience, min_delta: float, progress_bar: bool, desc: str):
    """Run ``impl``'s init/step/evaluate in the package's epoch driver (jit-compiled ``lax.scan`` epochs, early
    stopping, divergence check). Returns ``(state, history, info)``."""
    k_init, k_epochs = jax.random.split(rng_key)
    compiled = _base._Compiled(model, impl, plan)
    return _base._epoch_driver(
        compiled, plan, k_init, k_epochs, data.x_train, data.y_train, data.x_val, data.y_val, patience,
        min_delta, progress_bar, lambda s, h, e: (s, h, e), desc,
    )


def substitute_params(model: Callable, params: Mapping) -> Callable:
    """``model`` with its ``param`` (and ``mutable``) sites fixed at ``params`` (fresh dict copies per call)."""

    def fn(site):
        if site["type"] in ("param", "mutable") and site["name"] in params:
            return copy_tree(params[site["name"]])
        return None

    return handlers.substitute(model, substitute_fn=fn)
