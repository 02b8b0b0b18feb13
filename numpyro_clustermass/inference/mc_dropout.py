"""The ``"mc_dropout"`` method: Monte Carlo dropout (Gal & Ghahramani 2016).

A network with dropout after each hidden layer of the trunk is trained like ``"map"`` (dropout active, one mask
per step); at prediction, dropout stays on and *each posterior draw gets its own dropout mask*, drawn from the
key that :meth:`Fit.posterior` gives that draw through ``numpyro.prng_key()``
(``flax_module(..., apply_rng=["dropout"])`` called with ``rngs={"dropout": numpyro.prng_key()}``). The
predictive density is the equal-weight mixture of the head's densities over the masks, which Gal & Ghahramani
show to be a variational approximation of a Bayesian net's predictive with a Bernoulli variational family.

The dropout rate is the estimator's (``MDN(dropout_rate=0.1)``), or the ``dropout_rate=`` option of this method,
which overrides it; with a rate of 0 every draw is the same network and the epistemic variance is exactly 0.

Examples
--------
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

import dataclasses
from typing import Callable, ClassVar

from numpyro_clustermass.bnn import is_package_model, with_dropout
from numpyro_clustermass.inference._bayes import tile
from numpyro_clustermass.inference.options import check_float, check_int
from numpyro_clustermass.inference.protocol import IterativeMethod, TrainingPlan, build_method, register_method
from numpyro_clustermass.inference.svi import MapOptions

__all__ = ["mc_dropout_method", "MCDropoutOptions", "DEFAULT_DROPOUT_RATE", "DEFAULT_NUM_DRAWS"]

#: Dropout rate used when neither the estimator nor the ``dropout_rate`` option sets one.
DEFAULT_DROPOUT_RATE = 0.1
#: Default number of dropout masks (draws) per posterior.
DEFAULT_NUM_DRAWS = 100


@dataclasses.dataclass(frozen=True, kw_only=True)
class MCDropoutOptions(MapOptions):
    """Options of the ``"mc_dropout"`` method: the dropout rate, the number of masks, and the training options of
    the ``"map"`` method (:class:`~numpyro_clustermass.inference.svi.MapOptions`), with which the net is trained.

    Attributes
    ----------
    dropout_rate : float or None, default None
        Dropout probability after each hidden layer, in [0, 1). None: the estimator's rate, or
        :data:`DEFAULT_DROPOUT_RATE` if that is 0.
    num_draws : int, default 100 (:data:`DEFAULT_NUM_DRAWS`)
        Default number of dropout masks per posterior, >= 1.
    learning_rate, schedule, warmup_steps, final_lr_fraction, b1, b2, weight_decay, clip_norm, optimizer, guide :
        As in :class:`~numpyro_clustermass.inference.svi.MapOptions`. Gal & Ghahramani's prior length-scale
        corresponds to a weight decay.

    Examples
    --------
    >>> MCDropoutOptions(dropout_rate=0.2, weight_decay=1e-4).to_dict()
    {'weight_decay': 0.0001, 'dropout_rate': 0.2}
    """

    method_name: ClassVar[str] = "mc_dropout"

    dropout_rate: float | None = None
    num_draws: int = DEFAULT_NUM_DRAWS

    def __post_init__(self):
        super().__post_init__()
        m = self.method_name
        object.__setattr__(self, "num_draws", check_int(m, "num_draws", self.num_draws, 1,
                                                        hint=" (dropout masks per posterior)"))
        if self.dropout_rate is not None:
            object.__setattr__(self, "dropout_rate", check_float(m, "dropout_rate", self.dropout_rate, 0, 1,
                                                                 high_open=True))


def mc_dropout_method(model: Callable, plan: TrainingPlan, options: MCDropoutOptions | None = None,
                      **kwargs) -> IterativeMethod:
    """Build the ``"mc_dropout"`` method.

    Parameters
    ----------
    model : callable
        The estimator's model. For the package's models the trunk's dropout rate is set here; a user's model
        must already call its net with a dropout key (see :func:`numpyro_clustermass.models.apply_net`).
    plan : TrainingPlan
    options : MCDropoutOptions, optional
        Default ``MCDropoutOptions()``.
    **kwargs
        Instead of ``options``: its fields, converted with :class:`MCDropoutOptions`.
    """
    opts = MCDropoutOptions.coerce(options, kwargs)
    dropout_rate = opts.dropout_rate
    if is_package_model(model):
        current = float(model.keywords["net"].dropout_rate)
        rate = (current if current > 0 else DEFAULT_DROPOUT_RATE) if dropout_rate is None else dropout_rate
        model = with_dropout(model, rate)
    elif dropout_rate is not None:
        with_dropout(model, dropout_rate)  # raises the explanatory TypeError
    base = build_method("map", model, plan, opts.to_map_options())

    def sample(rng_key, state, num):
        # the same weights for every draw; Fit.posterior gives each draw its own key, hence its own mask
        return tile(base.get_params(state), int(num))

    return base._replace(sample=sample, predict_kwargs={"deterministic": False}, num_draws=opts.num_draws,
                         name="mc_dropout", model=model)


register_method("mc_dropout", mc_dropout_method, options=MCDropoutOptions)
