"""The ``"mc_dropout"`` method: Monte Carlo dropout (Gal & Ghahramani 2016).

A network with dropout after each hidden layer of the trunk is trained like ``"map"`` (dropout active, one mask
per step); at prediction, dropout stays on and *each posterior draw gets its own dropout mask*, drawn from the
key that :meth:`Fit.posterior` gives that draw through ``numpyro.prng_key()``
(``flax_module(..., apply_rng=["dropout"])`` called with ``rngs={"dropout": numpyro.prng_key()}``). The
predictive density is the equal-weight mixture of the head's densities over the masks, which Gal & Ghahramani
show to be a variational approximation of a Bayesian net's predictive with a Bernoulli variational family.

The dropout rate is the estimator's (``MDN(dropout_rate=0.1)``), or the ``dropout_rate=`` option of this method,
which overrides it; with a rate of 0 every draw is the same network and the epistemic variance is exactly 0.

Example
-------
>>> import numpy as np
>>> from numpyro_clustermass.estimators import MDN
>>> from numpyro_clustermass.inference import fit
>>> rng = np.random.default_rng(0)
>>> y = rng.uniform(13.5, 15.0, 800); x = y[:, None] + 0.1 * rng.normal(size=(800, 3))
>>> f = fit(MDN(2, (16,), feature_names=("a", "b", "c")), (x, y), method="mc_dropout", dropout_rate=0.2,
...         num_epochs=50, batch_size=128, progress_bar=False)
>>> bool((f.posterior(x[:20], num_draws=50).epistemic_variance > 0).all())
True

References
----------
Gal, Y., Ghahramani, Z. (2016). Dropout as a Bayesian approximation: representing model uncertainty in deep
learning. ICML, arXiv:1506.02142.
Srivastava, N. et al. (2014). Dropout: a simple way to prevent neural networks from overfitting. JMLR 15.
"""

from __future__ import annotations

from typing import Callable

from numpyro_clustermass.bnn import is_package_model, with_dropout
from numpyro_clustermass.inference._bayes import check_int, check_map_passthrough, tile
from numpyro_clustermass.inference.protocol import IterativeMethod, TrainingPlan, get_method, register_method

__all__ = ["mc_dropout_method", "DEFAULT_DROPOUT_RATE", "DEFAULT_NUM_DRAWS"]

#: Dropout rate used when neither the estimator nor the ``dropout_rate`` option sets one.
DEFAULT_DROPOUT_RATE = 0.1
#: Default number of dropout masks (draws) per posterior.
DEFAULT_NUM_DRAWS = 100


def mc_dropout_method(
    model: Callable,
    plan: TrainingPlan,
    *,
    dropout_rate: float | None = None,
    num_draws: int = DEFAULT_NUM_DRAWS,
    **map_options,
) -> IterativeMethod:
    """Build the ``"mc_dropout"`` method.

    Parameters
    ----------
    model : callable
        The estimator's model. For the package's models the trunk's dropout rate is set here; a user's model
        must already call its net with a dropout key (see :func:`numpyro_clustermass.models.apply_net`).
    plan : TrainingPlan
    dropout_rate : float, optional
        Dropout probability after each hidden layer, in [0, 1). Default: the estimator's rate, or
        :data:`DEFAULT_DROPOUT_RATE` if that is 0.
    num_draws : int
        Default number of dropout masks per posterior (>= 1).
    **map_options
        Training options of the ``"map"`` method (``learning_rate``, ``schedule``, ``weight_decay``, ...).
        Gal & Ghahramani's prior length-scale corresponds to a weight decay.
    """
    num_draws = check_int("mc_dropout", "num_draws", num_draws, 1, hint=" (dropout masks per posterior)")
    check_map_passthrough("mc_dropout", map_options)
    if is_package_model(model):
        current = float(model.keywords["net"].dropout_rate)
        rate = (current if current > 0 else DEFAULT_DROPOUT_RATE) if dropout_rate is None else dropout_rate
        model = with_dropout(model, rate)
    elif dropout_rate is not None:
        with_dropout(model, dropout_rate)  # raises the explanatory TypeError
    base = get_method("map")(model, plan, **map_options)

    def sample(rng_key, state, num):
        # the same weights for every draw; Fit.posterior gives each draw its own key, hence its own mask
        return tile(base.get_params(state), int(num))

    return base._replace(sample=sample, predict_kwargs={"deterministic": False}, num_draws=int(num_draws),
                         name="mc_dropout", model=model)


register_method("mc_dropout", mc_dropout_method)
