"""Estimator specifications: a NumPyro model function plus the hyper-parameters it was built with.

An estimator is what :func:`numpyro_clustermass.inference.fit` trains. It holds nothing learned; it only says
which model function to use (``estimator.model``, a callable ``model(x, y=None, num_data=None,
deterministic=False)``, see :mod:`numpyro_clustermass.models`), which features it reads, and how to describe
itself (``estimator.config()``, used to save and rebuild a fit).

* :class:`MSE` -- the lecture's first attempt, an MLP regressor (trained as a Gaussian likelihood; its MAP is
  the least-squares fit and the fitted scale is the residual scatter).
* :class:`MDN` -- the lecture's second attempt, a Mixture Density Network.
* :class:`ModelEstimator` -- any user model function following the same convention.

Example
-------
>>> import numpyro_clustermass.estimators as est
>>> mdn = est.MDN(num_components=16, hidden=(128, 128, 64))
>>> mdn.name, mdn.config()["num_components"]
('mdn', 16)
>>> callable(mdn.model)
True
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field
from typing import Any, Callable, Sequence

from numpyro_clustermass.catalog import FEATURE_NAMES
from numpyro_clustermass.models import OBS_SITE, mdn_model, regression_model
from numpyro_clustermass.nets import DEFAULT_HIDDEN, MIN_SCALE, MDNNet, RegressionNet, check_init

__all__ = ["Estimator", "MSE", "MDN", "ModelEstimator", "as_estimator"]


class Estimator:
    """Base class: subclasses provide ``model`` and ``name``; ``feature_names`` selects the catalogue columns."""

    name: str = "estimator"
    feature_names: tuple[str, ...] = FEATURE_NAMES
    obs_site: str = OBS_SITE
    #: True when the likelihood is a density over the (standardised) log-mass given the features, so that
    #: its loss can be compared with a Gaussian that ignores the features (``fit`` warns when it is no
    #: better); False for forward models of the observables given the mass (the M-sigma relation).
    likelihood_over_mass: bool = True

    @property
    def model(self) -> Callable:  # pragma: no cover - abstract
        raise NotImplementedError

    def config(self) -> dict[str, Any]:
        """JSON-able description (kind + hyper-parameters)."""
        return {"kind": type(self).__name__}

    def posterior_prior(self, grid):
        """The mass prior this estimator's posteriors are conditioned on, or None for the training set's
        implicit prior (what a network trained on a catalogue learns; see ``MassPosterior.prior``)."""
        return None


def _check_hidden(hidden: Sequence[int]) -> tuple[int, ...]:
    hidden = tuple(int(h) for h in hidden)
    if not hidden or any(h <= 0 for h in hidden):
        raise ValueError(f"hidden must be a non-empty sequence of positive widths; got {hidden}")
    return hidden


def _check_dropout(rate: float) -> float:
    rate = float(rate)
    if not 0.0 <= rate < 1.0:
        raise ValueError(f"dropout_rate must be in [0, 1); got {rate}")
    return rate


@dataclass(frozen=True)
class MSE(Estimator):
    """The lecture's MSE regressor: MLP trunk, point head, Gaussian likelihood with a fitted scatter.

    Parameters
    ----------
    hidden : sequence of int
        Trunk widths (default ``(128, 128, 64)``).
    activations : sequence of str, optional
        One per hidden layer (default relu, relu, tanh).
    dropout_rate : float
        Dropout after each hidden layer (0: none).
    feature_names : tuple of str
        Catalogue feature columns (default the lecture's 14).

    Example
    -------
    >>> MSE().net.hidden
    (128, 128, 64)
    """

    hidden: tuple[int, ...] = DEFAULT_HIDDEN
    activations: tuple[str, ...] | None = None
    dropout_rate: float = 0.0
    feature_names: tuple[str, ...] = FEATURE_NAMES
    name: str = field(default="mse", init=False)

    def __post_init__(self):
        object.__setattr__(self, "hidden", _check_hidden(self.hidden))
        object.__setattr__(self, "dropout_rate", _check_dropout(self.dropout_rate))
        if self.activations is not None:
            object.__setattr__(self, "activations", tuple(self.activations))
        object.__setattr__(self, "feature_names", tuple(self.feature_names))

    @property
    def net(self) -> RegressionNet:
        return RegressionNet(hidden=self.hidden, activations=self.activations, dropout_rate=self.dropout_rate)

    @property
    def model(self) -> Callable:
        return functools.partial(regression_model, net=self.net)

    def config(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = "MSE"
        return d


@dataclass(frozen=True)
class MDN(Estimator):
    """The lecture's Mixture Density Network: MLP trunk and a Gaussian-mixture head.

    Parameters
    ----------
    num_components : int
        Number of Gaussian components (default 16, as in the lecture).
    hidden, activations, dropout_rate, feature_names
        As for :class:`MSE`.
    min_scale : float
        Floor added to the softplus scales (standardised target units; default 1e-3 as in the lecture).
    weight_init : {"flax", "equal_mixture"}
        Weight initialisation: Flax's defaults (the lecture's; default), or PyTorch-style trunk weights and a
        head that starts as an equal-weight mixture of unit-width components, as sbi's MDN does: a higher
        held-out log score, a larger seed-to-seed spread of the reweighted mode at the high-mass end
        (:data:`numpyro_clustermass.nets.INITS`; ``python3 benchmarks/vs_sbi.py --ours-init equal_mixture``
        measures the held-out log score of both).

    Example
    -------
    >>> MDN(num_components=4).net.num_components
    4
    """

    num_components: int = 16
    hidden: tuple[int, ...] = DEFAULT_HIDDEN
    activations: tuple[str, ...] | None = None
    dropout_rate: float = 0.0
    min_scale: float = MIN_SCALE
    feature_names: tuple[str, ...] = FEATURE_NAMES
    weight_init: str = "flax"
    name: str = field(default="mdn", init=False)

    def __post_init__(self):
        if int(self.num_components) < 1:
            raise ValueError(f"num_components must be >= 1; got {self.num_components}")
        object.__setattr__(self, "num_components", int(self.num_components))
        object.__setattr__(self, "hidden", _check_hidden(self.hidden))
        object.__setattr__(self, "dropout_rate", _check_dropout(self.dropout_rate))
        if self.activations is not None:
            object.__setattr__(self, "activations", tuple(self.activations))
        object.__setattr__(self, "feature_names", tuple(self.feature_names))
        if not self.min_scale > 0:
            raise ValueError(f"min_scale must be > 0; got {self.min_scale}")
        check_init(self.weight_init)

    @property
    def net(self) -> MDNNet:
        return MDNNet(
            num_components=self.num_components,
            hidden=self.hidden,
            activations=self.activations,
            dropout_rate=self.dropout_rate,
            min_scale=self.min_scale,
            weight_init=self.weight_init,
        )

    @property
    def model(self) -> Callable:
        return functools.partial(mdn_model, net=self.net)

    def config(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = "MDN"
        return d


@dataclass(frozen=True)
class ModelEstimator(Estimator):
    """Wrap a user's NumPyro model function ``model(x, y=None, ...)``.

    The model should name its likelihood site ``obs_site`` (default ``"obs"``) with batch shape
    ``(batch,)``. ``feature_names=None`` reads the lecture's 14 features from a catalogue and accepts
    arrays of any width (the width seen at fit time is then required at prediction time). If the model
    accepts ``num_data``, minibatches are scaled by ``num_data / batch`` inside it (priors counted once);
    otherwise :func:`fit` scales the whole model, which is the same for models without priors.

    Example
    -------
    >>> from numpyro_clustermass.models import mdn_model
    >>> ModelEstimator(mdn_model).name
    'mdn_model'
    """

    model_fn: Callable = None
    feature_names: tuple[str, ...] | None = None
    obs_site: str = OBS_SITE
    name: str = ""

    def __post_init__(self):
        if not callable(self.model_fn):
            raise TypeError(f"ModelEstimator needs a callable model function; got {self.model_fn!r}")
        if not self.name:
            object.__setattr__(self, "name", getattr(self.model_fn, "__name__", "model"))

    @property
    def model(self) -> Callable:
        return self.model_fn

    def config(self) -> dict[str, Any]:
        return {"kind": "ModelEstimator", "name": self.name, "model": repr(self.model_fn),
                "obs_site": self.obs_site}


def as_estimator(obj) -> Estimator:
    """Return ``obj`` if it is an :class:`Estimator`, wrap a callable model function, else raise TypeError."""
    if isinstance(obj, Estimator):
        return obj
    if callable(obj):
        return ModelEstimator(obj)
    raise TypeError(
        f"expected an estimator (numpyro_clustermass.MSE(), MDN(), ...) or a NumPyro model function; got {obj!r}"
    )
