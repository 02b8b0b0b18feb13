"""The inference protocol: what a method is, how it is registered, and what :func:`fit` hands it.

A *method* ("map", "bbb", "mc_dropout", "nuts", "laplace", ...) is a NamedTuple of pure functions in the style of
Optax's ``GradientTransformation`` and BlackJAX's algorithms, of one of two kinds (:data:`InferenceMethod` is
their union).

An :class:`IterativeMethod` ("map", "mc_dropout", "ensemble", "bbb") is trained by
:func:`~numpyro_clustermass.inference.fit` in whole epochs (:mod:`~numpyro_clustermass.inference.epochs`)::

    init(rng_key, x_batch, y_batch) -> state
    step(state, x_batch, y_batch) -> (state, loss)          # loss: full-data objective of the minibatch
    evaluate(state, x, y) -> loss per datum                  # held-out loss for early stopping
    check(state, x, y) -> loss per datum                     # optional: the divergence guard without validation
    get_params(state) -> dict of site values                 # constrained params (+ mutable state)
    sample(rng_key, state, num_draws) -> draws               # dict of site values, leading axis S

A :class:`OneShotMethod` ("nuts", "laplace", "bbb" with ``init="map"``) does its whole inference in one call and
the epoch driver is skipped::

    run(rng_key, data: TrainingData, plan, progress_bar) -> RunResult(state, history, info)
    get_params(state), sample(rng_key, state, num_draws)     # as above

A method is built by a *factory* ``factory(model, plan, options) -> IterativeMethod | OneShotMethod`` that
closes the pure functions over the model and the :class:`TrainingPlan` (data size, batch size, steps); its
``options`` are an instance of the method's options class, a frozen, validated dataclass
(:mod:`~numpyro_clustermass.inference.options`: ``MapOptions``, ``BBBOptions``, ...).
Factories are registered by name with their options class, :func:`register_method`;
:func:`~numpyro_clustermass.inference.fit` builds them with :func:`build_method` (which converts keyword options
with the class and refuses anything but the two kinds), so adding a method is one new file that calls
``register_method``. Everything a method
needs later lives in its state pytree or in the factory's closure, never in a mutable closure filled by
``init`` or ``run``: a saved fit rebuilds its method from the factory and puts the saved state back.

This module also holds :func:`standardize_model` (the model signature methods can rely on) and the errors and
warnings of fitting (:class:`FitDivergedError`, :class:`FitInterrupted`, :class:`FitWarning`).

Examples
--------
>>> from numpyro_clustermass.inference.protocol import IterativeMethod, TrainingPlan, available_methods, build_method
>>> "map" in available_methods()
True
>>> from numpyro_clustermass.estimators import MSE
>>> plan = TrainingPlan(num_data=1000, batch_size=100, steps_per_epoch=10, num_epochs=5, num_features=1)
>>> method = build_method("map", MSE(hidden=(4,), feature_names=("a",)).model, plan)
>>> isinstance(method, IterativeMethod), method.name
(True, 'map')
>>> plan.num_steps
50
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Mapping, NamedTuple, Union

import jax
from numpyro import handlers

from numpyro_clustermass.inference.options import MethodOptions

__all__ = [
    "TrainingPlan",
    "TrainingData",
    "RunResult",
    "IterativeMethod",
    "OneShotMethod",
    "InferenceMethod",
    "register_method",
    "get_method",
    "options_class",
    "make_options",
    "build_method",
    "available_methods",
    "standardize_model",
    "FitDivergedError",
    "FitInterrupted",
    "FitWarning",
]


# ---------------------------------------------------------------------------------------------- protocol
class TrainingPlan(NamedTuple):
    """What a method factory needs to know about the training run.

    Attributes
    ----------
    num_data : int
        Number of training examples (the likelihood of a minibatch is scaled by ``num_data / batch_size``).
    batch_size : int
    steps_per_epoch : int
    num_epochs : int
        Maximum number of epochs (early stopping may end sooner).
    num_features : int
    """

    num_data: int
    batch_size: int
    steps_per_epoch: int
    num_epochs: int
    num_features: int

    @property
    def num_steps(self) -> int:
        return self.steps_per_epoch * self.num_epochs


class TrainingData(NamedTuple):
    """Standardised float32 device arrays handed to a method's ``run``."""

    x_train: jax.Array
    y_train: jax.Array
    x_val: jax.Array | None
    y_val: jax.Array | None


class RunResult(NamedTuple):
    """What a method's ``run`` returns: its final state and a history of scalars per iteration/epoch."""

    state: Any
    history: dict
    info: dict


class IterativeMethod(NamedTuple):
    """A method trained by epochs: pure functions closed over one model (see the module docstring).

    Attributes
    ----------
    init : callable
        ``init(rng_key, x_batch, y_batch) -> state``.
    step : callable
        ``step(state, x_batch, y_batch) -> (state, loss)``, the loss being the full-data objective of the batch.
    evaluate : callable
        ``evaluate(state, x, y) -> loss per datum`` (the held-out loss of early stopping).
    get_params : callable
        ``get_params(state) -> {site: value}``: the point values (constrained params, mutable state).
    sample : callable
        ``sample(rng_key, state, num_draws) -> {site: values}`` with a leading draw axis.
    predict_kwargs : dict
        Keyword arguments for the model at prediction time (``{"deterministic": True}`` switches dropout
        off for point fits; MC dropout leaves it on).
    num_draws : int
        Default number of predictive draws for :meth:`Fit.posterior` (1 for point fits).
    name : str
    model : callable, optional
        The model :meth:`Fit.posterior` substitutes the draws into, when it is not the estimator's model (a
        Bayesian twin, a net with dropout added); default None: the estimator's model.
    prior_loss : callable, optional
        ``prior_loss(state) -> float``: the part of ``evaluate``'s per-datum loss that is not the likelihood of the
        data (Bayes by Backprop: KL(q || p) / num_data). :func:`fit` subtracts it before comparing the held-out loss
        with that of a Gaussian ignoring the features; None: ``evaluate`` is the likelihood alone.
    check : callable, optional
        ``check(state, x, y) -> loss per datum``, computed instead of ``evaluate`` after each epoch when a fit has
        no validation data: then the loss of the new state on one training batch only guards against divergence
        (is it finite, is it exploding) and is not recorded, so a cheaper estimate will do (Bayes by Backprop: the
        ELBO of ``num_particles`` weight draws, not ``eval_particles``). None: ``evaluate``.
    """

    init: Callable
    step: Callable
    evaluate: Callable
    get_params: Callable
    sample: Callable
    predict_kwargs: dict = {}
    num_draws: int = 1
    name: str = ""
    model: Callable | None = None
    prior_loss: Callable | None = None
    check: Callable | None = None


class OneShotMethod(NamedTuple):
    """A method that runs once instead of by epochs (MCMC, a Laplace approximation): pure functions closed over
    one model (see the module docstring).

    Attributes
    ----------
    run : callable
        ``run(rng_key, data: TrainingData, plan: TrainingPlan, progress_bar: bool) -> RunResult``.
    get_params : callable
        ``get_params(state) -> {site: value}``: the point values (e.g. posterior means and the fixed params).
    sample : callable
        ``sample(rng_key, state, num_draws) -> {site: values}`` with a leading draw axis.
    predict_kwargs : dict
        Keyword arguments for the model at prediction time (``{"deterministic": True}`` switches dropout
        off for point fits; MC dropout leaves it on).
    num_draws : int
        Default number of predictive draws for :meth:`Fit.posterior` (1 for point fits).
    name : str
    model : callable, optional
        The model :meth:`Fit.posterior` substitutes the draws into, when it is not the estimator's model (a
        Bayesian twin, a net with dropout added); default None: the estimator's model.
    """

    run: Callable
    get_params: Callable
    sample: Callable
    predict_kwargs: dict = {}
    num_draws: int = 1
    name: str = ""
    model: Callable | None = None


#: What a method factory returns: an :class:`IterativeMethod` (trained by epochs) or a :class:`OneShotMethod`
#: (runs once). A ``typing.Union`` for annotations and ``isinstance`` checks; build one of the two NamedTuples.
InferenceMethod = Union[IterativeMethod, OneShotMethod]


class _Entry(NamedTuple):
    factory: Callable[..., InferenceMethod]
    options: type[MethodOptions] | None


_REGISTRY: dict[str, _Entry] = {}


def register_method(name: str, factory: Callable[..., InferenceMethod], overwrite: bool = False, *,
                    options: type[MethodOptions] | None = None) -> None:
    """Register ``factory`` under ``name``, with its options class ``options``.

    With an options class (a :class:`~numpyro_clustermass.inference.options.MethodOptions` dataclass), the factory
    is called as ``factory(model, plan, options_instance)`` and keyword options given to :func:`fit` or
    :func:`build_method` are converted with the class first (an unknown name is an error listing the accepted
    ones). Without one, it is called as ``factory(model, plan, **options)``, the options unchecked here.

    Examples
    --------
    >>> "map" in available_methods()
    True
    """
    if not isinstance(name, str) or not name:
        raise ValueError("a method name must be a non-empty string")
    if options is not None and not (isinstance(options, type) and issubclass(options, MethodOptions)):
        raise TypeError(f"options of method {name!r} must be a MethodOptions dataclass (from "
                        f"numpyro_clustermass.inference.options) or None; got {options!r}")
    entry = _Entry(factory, options)
    if name in _REGISTRY and not overwrite and _REGISTRY[name] != entry:
        raise ValueError(f"an inference method named {name!r} is already registered; pass overwrite=True")
    _REGISTRY[name] = entry


def available_methods() -> list[str]:
    """Names of the registered inference methods."""
    return sorted(_REGISTRY)


def _entry(name: str) -> _Entry:
    try:
        return _REGISTRY[name]
    except (KeyError, TypeError):
        raise ValueError(
            f"unknown inference method {name!r}; registered methods are {available_methods()}"
        ) from None


def get_method(name: str) -> Callable[..., InferenceMethod]:
    """The factory registered under ``name``; unknown names raise a ValueError listing the registered ones."""
    return _entry(name).factory


def options_class(name: str) -> type[MethodOptions] | None:
    """The options class of the method registered under ``name`` (None for a method registered without one).

    Examples
    --------
    >>> options_class("map").__name__
    'MapOptions'
    """
    return _entry(name).options


def make_options(name: str, options=None, **kwargs):
    """The options of method ``name``: an instance of its options class made from ``options`` (an instance, or a
    dict of its fields) or from keyword arguments, never both. For a method registered without an options class,
    a plain dict.

    Raises
    ------
    UnknownOptionError
        A name that is not an option of the method (the message lists them and suggests the closest); a
        ValueError (and a TypeError).
    ValueError
        A value out of range (the message names the method, the option, the range and the value).
    TypeError
        ``options`` and keyword arguments together, or options of another method.

    Examples
    --------
    >>> make_options("nuts", num_chains=4).num_chains
    4
    >>> make_options("nuts", num_chain=4)
    Traceback (most recent call last):
    ...
    numpyro_clustermass.inference.options.UnknownOptionError: method 'nuts': unknown option 'num_chain' (did you
    mean 'num_chains'?); the options are ...
    """
    cls = options_class(name)
    if cls is not None:
        return cls.coerce(options, kwargs)
    if options is not None and kwargs:
        raise TypeError(f"method {name!r}: give the options either as options= or as keyword arguments, not both")
    if options is None:
        return dict(kwargs)
    if not isinstance(options, Mapping):
        raise TypeError(f"method {name!r} was registered without an options class: give its options as a dict or "
                        f"keyword arguments; got a {type(options).__name__}")
    return dict(options)


def build_method(name: str, model: Callable, plan: TrainingPlan, options=None, **kwargs) -> InferenceMethod:
    """Build the method registered under ``name`` for ``model`` and ``plan``, with its options given as an
    instance of its options class, a dict, or keyword arguments (see :func:`make_options`).

    The result is checked to be an :class:`IterativeMethod` or a :class:`OneShotMethod` (a TypeError otherwise).
    """
    factory = get_method(name)
    opts = make_options(name, options, **kwargs)
    method = factory(model, plan, opts) if isinstance(opts, MethodOptions) else factory(model, plan, **opts)
    if not isinstance(method, (IterativeMethod, OneShotMethod)):
        raise TypeError(
            f"the factory of inference method {name!r} returned a {type(method).__module__}."
            f"{type(method).__qualname__}; a method factory must return an IterativeMethod (init/step/evaluate, "
            f"trained by epochs) or a OneShotMethod (run, runs once), from numpyro_clustermass.inference"
        )
    return method


# ---------------------------------------------------------------------------------------------- models
def _accepted_kwargs(fn) -> tuple[set[str], bool]:
    try:
        sig = inspect.signature(fn)
    except (TypeError, ValueError):
        return set(), True
    names = {p.name for p in sig.parameters.values() if p.kind in (p.KEYWORD_ONLY, p.POSITIONAL_OR_KEYWORD)}
    var_kw = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    return names, var_kw


def standardize_model(model: Callable) -> Callable:
    """Give any model function the package's signature ``model(x, y=None, num_data=None, **kwargs)``.

    Keyword arguments the model does not accept are dropped; if it does not accept ``num_data``, the whole
    model is scaled by ``num_data / batch`` (the same objective for a model without priors).
    """
    names, var_kw = _accepted_kwargs(model)
    if var_kw or {"num_data", "deterministic"} <= names:
        return model

    def wrapped(x, y=None, num_data=None, **kwargs):
        kw = {k: v for k, v in kwargs.items() if k in names}
        if "num_data" in names:
            return model(x, y, num_data=num_data, **kw)
        if num_data is None:
            return model(x, y, **kw)
        with handlers.scale(scale=num_data / x.shape[0]):
            return model(x, y, **kw)

    wrapped.__name__ = getattr(model, "__name__", "model")
    return wrapped


# ---------------------------------------------------------------------------------------------- errors
class FitDivergedError(FloatingPointError):
    """Training diverged: a non-finite loss, or one that exploded past ``divergence_factor`` times the
    initial loss. ``error.fit`` holds a :class:`Fit` with the last state whose loss was acceptable."""

    def __init__(self, message: str, fit: Any = None):
        super().__init__(message)
        self.fit = fit


class FitInterrupted(KeyboardInterrupt):
    """Training was interrupted (Ctrl-C). ``error.fit`` holds a :class:`Fit` with the best state so far.

    It is a ``KeyboardInterrupt``, so a script still stops; in a notebook, recover the fit with
    ``import sys; f = sys.last_value.fit``, or catch it::

        try:
            f = ncm.fit(est, train)
        except ncm.FitInterrupted as stop:
            f = stop.fit
    """

    def __init__(self, message: str, fit: Any = None, checkpoint=None):
        super().__init__(message)
        self.fit = fit
        #: The file the interrupted fit was saved to (``fit(..., checkpoint=...)``), or None.
        self.checkpoint = checkpoint


class FitWarning(UserWarning):
    """A fit or posterior that returned but may be wrong: no better than ignoring the features, a grid
    that does not cover the training masses, posteriors piled on the grid's edge."""



class CovariateShiftWarning(FitWarning):
    """Clusters whose features lie outside the training distribution (``MassPosterior.ood_score`` beyond the
    fit's calibrated threshold), more of them than the threshold's false-alarm rate explains: the network
    extrapolates there, and its masses and intervals are not calibrated."""
