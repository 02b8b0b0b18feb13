"""Estimator specifications: a NumPyro model function plus the hyper-parameters it was built with.

An estimator is what :func:`numpyro_clustermass.inference.fit` trains. It holds nothing learned; it only says
which model function to use (``estimator.model``, a callable ``model(x, y=None, num_data=None,
deterministic=False)``, see :mod:`numpyro_clustermass.models`), which features it reads, and how to describe
itself (``estimator.config()``, used to save and rebuild a fit).

* :class:`MSE` -- the lecture's first attempt, an MLP regressor (trained as a Gaussian likelihood; its MAP is
  the least-squares fit and the fitted scale is the residual scatter).
* :class:`MDN` -- the lecture's second attempt, a Mixture Density Network.
* :class:`Flow` -- the lecture's bonus, a conditional normalizing flow (rational-quadratic splines on the
  training mass range, on TensorFlow Probability): its density has hard edges, which a mixture cannot have.
* :class:`ModelEstimator` -- any user model function following the same convention.

Examples
--------
>>> import numpyro_clustermass.estimators as est
>>> mdn = est.MDN(num_components=16, hidden=(128, 128, 64))
>>> mdn.name, mdn.config()["num_components"]
('mdn', 16)
>>> callable(mdn.model)
True
"""

from __future__ import annotations

import functools
from dataclasses import asdict, dataclass, field, replace
from typing import Any, Callable, Sequence

from numpyro_clustermass.catalog import FEATURE_NAMES
import numpy as np

from numpyro_clustermass.models import OBS_SITE, flow_model, mdn_model, regression_model
from numpyro_clustermass.nets import DEFAULT_HIDDEN, MIN_SCALE, FlowNet, MDNNet, RegressionNet, check_init

__all__ = ["Estimator", "MSE", "MDN", "Flow", "FlowBoundsError", "ModelEstimator", "as_estimator"]


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


def _check_density_trunk(est) -> None:
    """Validate and normalise (in place, on a frozen dataclass) the trunk fields a density estimator (MDN, Flow)
    shares: ``hidden``, ``dropout_rate``, ``activations``, ``feature_names`` and ``min_scale``."""
    object.__setattr__(est, "hidden", _check_hidden(est.hidden))
    object.__setattr__(est, "dropout_rate", _check_dropout(est.dropout_rate))
    if est.activations is not None:
        object.__setattr__(est, "activations", tuple(est.activations))
    object.__setattr__(est, "feature_names", tuple(est.feature_names))
    if not est.min_scale > 0:
        raise ValueError(f"min_scale must be > 0; got {est.min_scale}")


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

    Examples
    --------
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
    weight_init : {"equal_mixture", "flax"}
        Weight initialisation (:data:`numpyro_clustermass.nets.INITS`): PyTorch-style trunk weights and a head
        that starts as an equal-weight mixture of unit-width components, as sbi's MDN does (default); or Flax's
        defaults (the lecture's). With the default ``"plateau"`` schedule of ``fit`` the first gives the higher
        held-out log score (0.849 against sbi's 0.844 over five seeds,
        ``python3 benchmarks/headline_seeds.py``; docs/headline.md).

    Examples
    --------
    >>> MDN(num_components=4).net.num_components
    4
    """

    num_components: int = 16
    hidden: tuple[int, ...] = DEFAULT_HIDDEN
    activations: tuple[str, ...] | None = None
    dropout_rate: float = 0.0
    min_scale: float = MIN_SCALE
    feature_names: tuple[str, ...] = FEATURE_NAMES
    weight_init: str = "equal_mixture"
    name: str = field(default="mdn", init=False)

    def __post_init__(self):
        if int(self.num_components) < 1:
            raise ValueError(f"num_components must be >= 1; got {self.num_components}")
        object.__setattr__(self, "num_components", int(self.num_components))
        _check_density_trunk(self)
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


class FlowBoundsError(ValueError):
    """Training masses outside a :class:`Flow`'s ``bounds`` (the flow gives them zero density)."""


@dataclass(frozen=True)
class Flow(Estimator):
    """A conditional normalizing flow over log10 M given the features: MLP trunk and a spline-flow head.

    The density is ``num_layers`` rational-quadratic splines of ``num_bins`` bins (TFP's
    ``RationalQuadraticSpline``) over a truncated-normal base, all on the interval ``bounds``, with every
    parameter a function of the features through the same Flax trunk as the :class:`MDN`
    (:func:`numpyro_clustermass.models.flow_model`). The density is zero outside ``bounds`` and can have hard
    edges there: trained on a catalogue whose masses stop at 13.5 and 15.3, it can put a finite, non-vanishing
    density just inside those edges, which a Gaussian mixture cannot. Needs TensorFlow Probability
    (``tfp-nightly``, a dependency), imported on first use.

    Parameters
    ----------
    num_bins : int
        Bins of each spline (default 16).
    num_layers : int
        Number of stacked splines (default 1).
    hidden, activations, dropout_rate, feature_names, min_scale
        As for :class:`MDN` (``min_scale`` floors the base's scale).
    bounds : (float, float), optional
        The support of the masses in log10 M: give the prior's support when it is known (a mock's generating
        range, 13.5 and 15.3), since a test mass outside the interval has zero density. Default: the training
        catalogue's mass range. :func:`~numpyro_clustermass.fit` fills it in (the fit's estimator holds the
        numbers) and converts ``bounds`` widened by ``margin`` with the training scaler into the model's
        standardised units (``z_bounds``); a training mass outside explicit bounds is an error
        (:class:`FlowBoundsError`).
    margin : float
        Widening of ``bounds`` into the flow's interval, dex (default 1e-4: the edge where the masses stop, a
        few hundred float32 steps out, so that a training mass on the bound stays inside the interval when the
        spline is inverted in float32; at 0 a fit whose bounds are its data's range diverged). A wider margin
        puts density where no mass can be: 0.01 dex cost 0.012-0.015 in held-out mean log score on
        natural-mode mocks, whose masses pile up at their lower edge (docs/flow.md). On the posterior grid the
        cell that straddles an edge gets the flow's mass in it (:meth:`Fit.posterior`), so a truth just inside
        the edge keeps a finite density however the edge falls between grid points.
    z_bounds : (float, float), optional
        The interval in standardised units; set by ``fit`` (:meth:`bind`), never by hand.
    weight_init : {"equal_mixture", "flax"}
        The trunk's initialisation, named as for :class:`MDN`: ``"equal_mixture"`` (default) starts the trunk
        with PyTorch's defaults, ``"flax"`` with Flax's. The spline head starts as its base alone either way (its
        layers start with weights of order 1e-4), the flow's equal start. PyTorch's start gave 0.013-0.016 higher
        held-out mean log score (docs/flow.md).

    Examples
    --------
    >>> f = Flow(num_bins=8, hidden=(16,))
    >>> f.name, f.config()["num_bins"], f.z_bounds is None
    ('flow', 8, True)
    >>> import numpy as np
    >>> from numpyro_clustermass.catalog import StandardScaler
    >>> scaler = StandardScaler(mean=np.array(14.0), scale=np.array(0.5))
    >>> b = f.bind(scaler, np.array([13.5, 15.0]))
    >>> b.bounds, [round(v, 4) for v in b.z_bounds]  # z_bounds: bounds widened by margin, standardised
    ((13.5, 15.0), [-1.0002, 2.0002])
    >>> [round(v, 3) for v in Flow(margin=0.01).bind(scaler, np.array([13.5, 15.0])).z_bounds]
    [-1.02, 2.02]
    """

    num_bins: int = 16
    num_layers: int = 1
    hidden: tuple[int, ...] = DEFAULT_HIDDEN
    activations: tuple[str, ...] | None = None
    dropout_rate: float = 0.0
    min_scale: float = MIN_SCALE
    bounds: tuple[float, float] | None = None
    margin: float = 1e-4
    feature_names: tuple[str, ...] = FEATURE_NAMES
    z_bounds: tuple[float, float] | None = None
    weight_init: str = "equal_mixture"
    name: str = field(default="flow", init=False)

    def __post_init__(self):
        if int(self.num_bins) < 2 or int(self.num_layers) < 1:
            raise ValueError(f"num_bins must be >= 2 and num_layers >= 1; got {self.num_bins}, {self.num_layers}")
        object.__setattr__(self, "num_bins", int(self.num_bins))
        object.__setattr__(self, "num_layers", int(self.num_layers))
        _check_density_trunk(self)
        if not (np.isfinite(self.margin) and self.margin >= 0):
            raise ValueError(f"margin must be a finite number >= 0 (dex); got {self.margin}")
        check_init(self.weight_init)
        for name in ("bounds", "z_bounds"):
            b = getattr(self, name)
            if b is not None:
                b = tuple(float(v) for v in b)
                if len(b) != 2 or not (np.isfinite(b).all() and b[1] > b[0]):
                    raise ValueError(f"{name} must be two finite numbers (low, high) with high > low; got {b}")
                object.__setattr__(self, name, b)

    def bind(self, y_scaler, log_mass) -> "Flow":
        """This flow with ``bounds`` resolved from the training masses ``log_mass`` (when not given) and
        ``z_bounds`` converted with the fit's target scaler ``y_scaler``; what :func:`fit` trains."""
        y = np.asarray(log_mass, dtype=np.float64).ravel()
        if self.bounds is None:
            bounds = (float(y.min()), float(y.max()))
        else:
            bounds = self.bounds
            out = (y < bounds[0]) | (y > bounds[1])
            if out.any():
                raise FlowBoundsError(
                    f"{int(out.sum())} of {y.size} training masses lie outside the flow's bounds "
                    f"[{bounds[0]}, {bounds[1]}] (log10 M; range of the data [{y.min():.4f}, {y.max():.4f}]): the "
                    f"flow gives them zero density. Widen bounds=, cut the catalogue, or leave bounds=None"
                )
        interval = np.array([bounds[0] - self.margin, bounds[1] + self.margin], dtype=np.float64)
        z = np.asarray(y_scaler.transform(interval), dtype=np.float64).ravel()
        return replace(self, bounds=bounds, z_bounds=(float(z[0]), float(z[1])))

    @property
    def net(self) -> FlowNet:
        return FlowNet(num_bins=self.num_bins, num_layers=self.num_layers, hidden=self.hidden,
                       activations=self.activations, dropout_rate=self.dropout_rate, min_scale=self.min_scale,
                       weight_init=self.weight_init)

    @property
    def model(self) -> Callable:
        low, high = (None, None) if self.z_bounds is None else self.z_bounds
        return functools.partial(flow_model, net=self.net, low=low, high=high)

    def config(self) -> dict[str, Any]:
        d = asdict(self)
        d["kind"] = "Flow"
        return d


@dataclass(frozen=True)
class ModelEstimator(Estimator):
    """Wrap a user's NumPyro model function ``model(x, y=None, ...)``.

    The model should name its likelihood site ``obs_site`` (default ``"obs"``) with batch shape
    ``(batch,)``. ``feature_names=None`` reads the lecture's 14 features from a catalogue and accepts
    arrays of any width (the width seen at fit time is then required at prediction time). If the model
    accepts ``num_data``, minibatches are scaled by ``num_data / batch`` inside it (priors counted once);
    otherwise :func:`fit` scales the whole model, which is the same for models without priors.

    Examples
    --------
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
