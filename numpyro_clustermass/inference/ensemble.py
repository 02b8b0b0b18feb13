"""The ``"ensemble"`` method: deep ensembles (Lakshminarayanan et al. 2017).

``K`` MAP fits of the same network from different random initialisations, trained together as *one* program:
the ``"map"`` method's ``init``/``step``/``evaluate`` are ``jax.vmap`` -ed over a leading member axis, so the
package's epoch driver runs all members in the same jit-compiled ``lax.scan`` (the members see the same
minibatches; they differ by their initial weights, which Lakshminarayanan et al. found to be the main source of
diversity). The predictive is the equal-weight mixture of the members' densities, so its epistemic variance is
the variance of the members' means. Early stopping watches the members' mean validation loss.

``fit.params`` and every draw carry the member axis first; ``fit.posterior`` always mixes all ``K`` members
(``num_draws`` is ignored).

Examples
--------
>>> import numpy as np
>>> from numpyro_clustermass.estimators import MDN
>>> from numpyro_clustermass.inference import fit
>>> rng = np.random.default_rng(0)
>>> y = rng.uniform(13.5, 15.0, 600); x = y[:, None] + 0.1 * rng.normal(size=(600, 3))
>>> f = fit(MDN(2, (8,), feature_names=("a", "b", "c")), (x, y), method="ensemble", num_members=4,
...         num_epochs=50, batch_size=128, progress_bar=False)
>>> post = f.posterior(x[:10])
>>> post.meta["num_draws"], bool((post.epistemic_variance > 0).all())
(4, True)

References
----------
Lakshminarayanan, B., Pritzel, A., Blundell, C. (2017). Simple and scalable predictive uncertainty estimation
using deep ensembles. NeurIPS, arXiv:1612.01474.
"""

from __future__ import annotations

import dataclasses
from typing import Callable, ClassVar

import jax
import jax.numpy as jnp

from numpyro_clustermass.inference.options import check_int
from numpyro_clustermass.inference.protocol import IterativeMethod, TrainingPlan, build_method, register_method
from numpyro_clustermass.inference.svi import MapOptions

__all__ = ["ensemble_method", "EnsembleOptions", "DEFAULT_NUM_MEMBERS"]

#: Default ensemble size (Lakshminarayanan et al. 2017 use 5).
DEFAULT_NUM_MEMBERS = 5


@dataclasses.dataclass(frozen=True, kw_only=True)
class EnsembleOptions(MapOptions):
    """Options of the ``"ensemble"`` method: the ensemble size and the ``"map"`` method's options
    (:class:`~numpyro_clustermass.inference.svi.MapOptions`), shared by all members.

    Attributes
    ----------
    num_members : int, default 5 (:data:`DEFAULT_NUM_MEMBERS`)
        Ensemble size K, >= 1 (>= 2 for an epistemic variance). An ensemble has no ``num_draws``: its draws are
        its members.
    learning_rate, schedule, warmup_steps, final_lr_fraction, b1, b2, weight_decay, clip_norm, optimizer, guide :
        As in :class:`~numpyro_clustermass.inference.svi.MapOptions`.

    Examples
    --------
    >>> EnsembleOptions(num_members=3).num_members
    3
    >>> EnsembleOptions.from_dict({"num_draws": 10})
    Traceback (most recent call last):
    ...
    numpyro_clustermass.inference.options.UnknownOptionError: method 'ensemble': unknown option 'num_draws' (an
    ensemble's draws are its members: set num_members); the options are ...
    """

    method_name: ClassVar[str] = "ensemble"
    hints: ClassVar[dict] = {
        "num_draws": "an ensemble's draws are its members: set num_members",
        "num_samples": "an ensemble's draws are its members: set num_members",
    }

    num_members: int = DEFAULT_NUM_MEMBERS

    def __post_init__(self):
        super().__post_init__()
        object.__setattr__(self, "num_members", check_int(
            self.method_name, "num_members", self.num_members, 1,
            hint=" (the ensemble size; 2 or more for an epistemic variance)"))


def ensemble_method(model: Callable, plan: TrainingPlan, options: EnsembleOptions | None = None,
                    **kwargs) -> IterativeMethod:
    """Build the ``"ensemble"`` method: ``num_members`` vmapped ``"map"`` fits.

    Parameters
    ----------
    model : callable
    plan : TrainingPlan
    options : EnsembleOptions, optional
        Default ``EnsembleOptions()``.
    **kwargs
        Instead of ``options``: its fields, converted with :class:`EnsembleOptions`.
    """
    opts = EnsembleOptions.coerce(options, kwargs)
    k = opts.num_members
    base = build_method("map", model, plan, opts.to_map_options())

    def init(rng_key, x, y):
        return jax.vmap(lambda key: base.init(key, x, y))(jax.random.split(rng_key, k))

    def step(state, x, y):
        state, losses = jax.vmap(lambda s: base.step(s, x, y))(state)
        return state, jnp.mean(losses)

    def evaluate(state, x, y):
        return jnp.mean(jax.vmap(lambda s: base.evaluate(s, x, y))(state))

    def get_params(state):
        return jax.vmap(base.get_params)(state)

    def sample(rng_key, state, num):
        # the draws of an ensemble are its members, mixed with equal weights
        return get_params(state)

    return IterativeMethod(
        init=init, step=step, evaluate=evaluate, get_params=get_params, sample=sample,
        predict_kwargs=dict(base.predict_kwargs), num_draws=k, name="ensemble", model=None,
    )


register_method("ensemble", ensemble_method, options=EnsembleOptions)
