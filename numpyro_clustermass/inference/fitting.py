"""Fitting: :func:`fit`, the :class:`Fit` it returns, and :func:`load` for a saved one.

:func:`fit` only orchestrates: it validates and standardises the data (scalers fitted on the training side),
splits off a validation set by ``halo_id``, builds the registered method
(:mod:`~numpyro_clustermass.inference.protocol`) and trains it: an iterative method by whole epochs in the epoch
driver (:mod:`~numpyro_clustermass.inference.epochs`: one jit-compiled ``lax.scan`` per epoch over device-side
shuffled batches, early stopping on the validation loss, a tqdm bar, a divergence check), a method that runs once
(NUTS, Laplace) by its ``run``. :meth:`Fit.posterior` turns the method's draws into a
:class:`~numpyro_clustermass.posterior.MassPosterior`; :meth:`Fit.save` and :func:`load` write and read a fit file
(:mod:`~numpyro_clustermass.inference.fitfile`).

Examples
--------
>>> import numpy as np
>>> from numpyro_clustermass.estimators import MDN
>>> from numpyro_clustermass.inference import fit
>>> rng = np.random.default_rng(0)
>>> y = rng.uniform(13.5, 15.0, 2000); x = y[:, None] + 0.1 * rng.normal(size=(2000, 3))
>>> f = fit(MDN(num_components=2, hidden=(16,), feature_names=("a", "b", "c")), (x, y),
...         num_epochs=5, batch_size=256, progress_bar=False)
>>> post = f.posterior(x[:10])
>>> post.quantiles([0.16, 0.84]).shape
(2, 10)
"""

from __future__ import annotations

import concurrent.futures
import math
import os
import pathlib
import sys
import threading
import time
import warnings
from dataclasses import dataclass, field, fields
from types import MappingProxyType
from typing import Any, Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
from numpyro import handlers

from numpyro_clustermass import diagnostics
from numpyro_clustermass.catalog import FEATURE_NAMES, Catalog, CatalogError, StandardScaler, validate_features
from numpyro_clustermass.estimators import Estimator, as_estimator
from numpyro_clustermass.grid import DEFAULT_GRID_SIZE, check_grid, default_grid, normalise_log_density, spacing
from numpyro_clustermass.inference import fitfile, sharding
from numpyro_clustermass.inference.epochs import DIVERGENCE_FACTOR, EarlyStopping, compiled_method, epoch_loop
from numpyro_clustermass.inference.fitfile import FitFileError
from numpyro_clustermass.inference.options import options_dict
from numpyro_clustermass.inference.protocol import (
    CovariateShiftWarning,
    FitWarning,
    InferenceMethod,
    OneShotMethod,
    TrainingData,
    TrainingPlan,
    available_methods,
    build_method,
    make_options,
    standardize_model,
)
from numpyro_clustermass.posterior import (
    HostRows,
    MassPosterior,
    bucket_size,
    join_density_chunks,
    mixture_on_grid,
)
from numpyro_clustermass.shift import FeatureReference

__all__ = ["Fit", "FitInfo", "fit", "load", "POSTERIOR_CHUNK_SIZE", "MIN_IMPROVEMENT", "EDGE_FRACTION",
           "SHIFT_WARNING_P"]

#: Default number of clusters per compiled call when building a posterior.
POSTERIOR_CHUNK_SIZE = 4096
#: A fit whose best held-out loss is not this much (nats per cluster) below that of a Gaussian that ignores
#: the features has learned nothing worth using: it gets a :class:`FitWarning`.
MIN_IMPROVEMENT = 0.05
#: Fraction of the grid at each end where a posterior's peak counts as "on the edge" (beyond the grid).
EDGE_FRACTION = 0.02
#: ``fit.posterior`` warns (:class:`CovariateShiftWarning`) when the p-value of as many clusters beyond the
#: out-of-distribution threshold (Fisher's exact test against the held-out training rows) is below this.
SHIFT_WARNING_P = 0.01


# ---------------------------------------------------------------------------------------------- heads
def _unwrap(fn):
    while isinstance(fn, (dist.ExpandedDistribution, dist.MaskedDistribution)):
        fn = fn.base_dist
    return fn


def _mixture_params(fn, batch_shape):
    """(logits, locs, scales) of shape (c, K) if ``fn`` is a Normal or a Normal mixture, else None."""
    fn = _unwrap(fn)
    if isinstance(fn, dist.Normal):
        loc = jnp.broadcast_to(fn.loc, batch_shape)[:, None]
        scale = jnp.broadcast_to(fn.scale, batch_shape)[:, None]
        return jnp.zeros_like(loc), loc, scale
    if isinstance(fn, dist.MixtureSameFamily):
        comp = _unwrap(fn.component_distribution)
        mix = fn.mixing_distribution
        if isinstance(comp, dist.Normal):
            if isinstance(mix, dist.CategoricalLogits):
                logits = mix.logits
            elif isinstance(mix, dist.CategoricalProbs):
                logits = jnp.log(mix.probs)
            else:
                return None
            shape = batch_shape + (fn.mixture_size,)
            return (jnp.broadcast_to(logits, shape), jnp.broadcast_to(comp.loc, shape),
                    jnp.broadcast_to(comp.scale, shape))
    return None



# ---------------------------------------------------------------------------------------------- data
def _as_xy(data, feature_names, where: str):
    """Return float64 ``x`` (n, d), ``y`` (n,) or None, groups or None; with clear errors."""
    groups = None
    if isinstance(data, Catalog):
        names = tuple(feature_names) if feature_names is not None else FEATURE_NAMES
        missing = [n for n in names if n not in ("LogNgal", "Logsigv") and n not in data]
        if missing:
            hint = ("; add the survey-context columns with numpyro_clustermass.features.survey_context(catalog, "
                    "survey=...)" if any(str(n).startswith("ctx_") for n in missing) else "")
            raise CatalogError(
                f"{where}: catalogue of {len(data)} rows lacks feature columns {missing}; the model uses "
                f"{list(names)}{hint}"
            )
        x = data.features(names)
        y = data.log_mass if ("M200c" in data or "log_mass" in data) else None
        if "halo_id" in data:
            groups = np.asarray(data["halo_id"])
        return x, y, groups, names
    if isinstance(data, tuple | list) and len(data) in (2, 3):
        x = np.asarray(data[0], dtype=np.float64)
        y = None if data[1] is None else np.asarray(data[1], dtype=np.float64)
        groups = None if len(data) == 2 or data[2] is None else np.asarray(data[2])
    else:
        x, y = np.asarray(data, dtype=np.float64), None
    names = tuple(feature_names) if feature_names is not None else None
    if x.ndim != 2:
        raise CatalogError(f"{where}: features must be a 2-D array (clusters, features); got shape {x.shape}")
    if names is not None and x.shape[1] != len(names):
        raise CatalogError(
            f"{where}: expected {len(names)} features per cluster ({', '.join(names)}), got {x.shape[1]} "
            f"(array of shape {x.shape}); pass the same feature columns the model uses"
        )
    validate_features(x, names)
    if y is not None:
        if y.shape != (x.shape[0],):
            raise CatalogError(f"{where}: log-masses must have shape ({x.shape[0]},) to match the features; "
                               f"got {y.shape}")
        bad = ~np.isfinite(y)
        if bad.any():
            raise CatalogError(f"{where}: {int(bad.sum())} of {y.size} log-masses are NaN or infinite "
                               f"(first rows: {np.flatnonzero(bad)[:5].tolist()}); remove those rows")
    if groups is not None and groups.shape != (x.shape[0],):
        raise CatalogError(f"{where}: groups must have shape ({x.shape[0]},); got {groups.shape}")
    return x, y, groups, names


def _validation_split(n: int, fraction: float, groups, seed: int) -> np.ndarray:
    """Boolean mask of validation rows, grouped by ``groups`` (halo_id) when given."""
    if fraction <= 0:
        return np.zeros(n, dtype=bool)
    if not fraction < 1:
        raise ValueError(f"validation_fraction must be in [0, 1); got {fraction}")
    rng = np.random.default_rng([seed, 0x5A11D])
    if groups is not None:
        uniq, inverse = np.unique(groups, return_inverse=True)
        is_val_group = rng.permutation(uniq.size) < round(fraction * uniq.size)
        return is_val_group[inverse]
    return rng.permutation(n) < round(fraction * n)


def _interval_bounds(support):
    """``(low, high)`` of an interval support given by Python numbers, else None."""
    lo, hi = getattr(support, "lower_bound", None), getattr(support, "upper_bound", None)
    if not all(isinstance(v, (int, float, np.floating)) and math.isfinite(v) for v in (lo, hi)) or hi <= lo:
        return None
    return float(lo), float(hi)


def support_edge_cells(fn, log_density, z, dz):
    """Grid log-densities with the cells that straddle the edges of ``fn``'s support given their mean density.

    ``log_density`` (c, G) is ``fn``'s log density at the cell centres ``z`` (G,) (spacing ``dz``, in ``fn``'s
    units); the posterior treats the density as constant on cells (:mod:`numpyro_clustermass.posterior`). A cell
    whose centre lies outside ``fn``'s interval support but that overlaps it holds mass, and its centre's
    density, zero, would give a truth just inside the edge zero density. Such a cell gets the log of its mean
    density, ``fn``'s mass in it / ``dz`` (from ``fn.cdf``), as :func:`~numpyro_clustermass.priors.evaluate_on_cells`
    does for priors. A distribution without an interval support given by numbers, or without a ``cdf``, is
    returned as it was.
    """
    bounds = _interval_bounds(getattr(fn, "support", None))
    if bounds is None or not callable(getattr(fn, "cdf", None)):
        return log_density
    lo, hi = bounds
    c = log_density.shape[0]
    i_lo = jnp.clip(jnp.searchsorted(z, lo) - 1, 0, z.shape[0] - 1)  # the last centre below lo
    i_hi = jnp.clip(jnp.searchsorted(z, hi, side="right"), 0, z.shape[0] - 1)  # the first centre above hi
    try:
        upper = jnp.minimum(z[i_lo] + dz / 2, hi)
        mass_lo = fn.cdf(jnp.full((c,), upper, log_density.dtype))
        lower = jnp.maximum(z[i_hi] - dz / 2, lo)
        mass_hi = 1.0 - fn.cdf(jnp.full((c,), lower, log_density.dtype))
    except NotImplementedError:
        return log_density
    log_dz = jnp.log(dz)
    for i, mass, inside in ((i_lo, mass_lo, (z[i_lo] < lo) & (z[i_lo] + dz / 2 > lo)),
                            (i_hi, mass_hi, (z[i_hi] > hi) & (z[i_hi] - dz / 2 < hi))):
        cell = log_density[:, i]
        fixed = jnp.where(mass > 0, jnp.log(jnp.maximum(mass, 1e-38)) - log_dz, -jnp.inf)
        log_density = log_density.at[:, i].set(jnp.where(inside & ~jnp.isfinite(cell), fixed, cell))
    return log_density


# ---------------------------------------------------------------------------------------------- FitInfo
@dataclass(frozen=True, eq=False)
class FitInfo(Mapping):
    """Run facts of a :class:`Fit` (``fit.info``): named fields for what every fit reports, and ``extras`` for what
    one method reports (NUTS's ``function_space``, ``converged`` and ``num_divergent``, Laplace's
    ``num_latent``, the MAP start's ``map_epochs_run``, ...).

    It is also a read-only mapping over all of them, as ``fit.info`` was a dict before: ``info["epochs_run"]``,
    ``info.get("converged")``, ``"num_divergent" in info``, ``dict(info)``. Its keys are the named fields (all of
    them, None where a fact does not apply, e.g. ``epochs_run`` of a NUTS fit) followed by the keys of ``extras``;
    a fit file stores that dict, and loading a file that lacks a named field gives its default.

    Attributes
    ----------
    n_rows : int or None
        Rows of the data given to :func:`fit`.
    n_train, n_val : int or None
        Rows of the training and validation splits.
    steps_per_epoch : int or None
        Optimisation steps per epoch (minibatches).
    epochs_run : int or None
        Epochs trained (None for a method that runs once without epochs: NUTS, Laplace).
    best_epoch : int or None
        Epoch of the kept state (the best validation loss; the last epoch without validation data).
    stopped_early : bool or None
        True when early stopping ended training with epochs left.
    lr_reduced_after_epochs : list of int or None
        The epochs after which the ``"plateau"`` schedule lowered the learning rate (None for another schedule).
    best_loss : float or None
        Best per-datum loss (validation, or training without validation data) at the end of training.
    best_val_loss : float or None
        Best per-datum validation loss (None without validation data).
    initial_loss : float or None
        Per-datum loss of the initial state on the check set (the reference of the explosion check).
    baseline_loss : float or None
        Per-datum loss of a Gaussian ignoring the features (:data:`MIN_IMPROVEMENT` is measured from it).
    traces : dict or None
        How often the epoch and evaluation functions were traced (compiled) during this fit.
    diverged_at_epoch : int or None
        The epoch whose loss was non-finite or exploded (a fit carried by :class:`FitDivergedError`).
    interrupted : bool
        The fit was interrupted (Ctrl-C; a fit carried by :class:`FitInterrupted`).
    checkpoint : bool
        The fit is a checkpoint saved during training.
    time_s : float or None
        Wall time of :func:`fit` until the fit was made, in seconds.
    extras : mapping
        Method-specific facts by name (read-only).

    Examples
    --------
    >>> info = FitInfo.from_dict({"epochs_run": 3, "best_val_loss": 0.5, "num_divergent": 0})
    >>> info.epochs_run, info["best_val_loss"], info.extras["num_divergent"], info.get("num_divergent")
    (3, 0.5, 0, 0)
    >>> "num_divergent" in info, "converged" in info
    (True, False)
    """

    n_rows: int | None = None
    n_train: int | None = None
    n_val: int | None = None
    steps_per_epoch: int | None = None
    epochs_run: int | None = None
    best_epoch: int | None = None
    stopped_early: bool | None = None
    lr_reduced_after_epochs: list | None = None
    best_loss: float | None = None
    best_val_loss: float | None = None
    initial_loss: float | None = None
    baseline_loss: float | None = None
    traces: dict | None = None
    diverged_at_epoch: int | None = None
    interrupted: bool = False
    checkpoint: bool = False
    time_s: float | None = None
    extras: Mapping = field(default_factory=dict)

    def __post_init__(self):
        named = self.field_names()
        clash = [k for k in self.extras if k in named or k == "extras"]
        if clash:
            raise ValueError(f"FitInfo: extras {clash} are named fields; give them as fields")
        object.__setattr__(self, "extras", MappingProxyType(dict(self.extras)))

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """The named fields (every key of the mapping that is not an extra)."""
        return tuple(f.name for f in fields(cls) if f.name != "extras")

    @classmethod
    def from_dict(cls, values: Mapping | None = None) -> "FitInfo":
        """``{name: value}`` as a FitInfo: the named fields from their keys, every other key into ``extras``."""
        values = dict(values or {})
        named = cls.field_names()
        return cls(**{k: v for k, v in values.items() if k in named},
                   extras={k: v for k, v in values.items() if k not in named})

    def __getitem__(self, key):
        if key in self.field_names():
            return getattr(self, key)
        return self.extras[key]

    def __iter__(self):
        yield from self.field_names()
        yield from self.extras

    def __len__(self) -> int:
        return len(self.field_names()) + len(self.extras)

    def __repr__(self) -> str:
        shown = ", ".join(f"{k}={getattr(self, k)!r}" for k in self.field_names() if getattr(self, k) is not None)
        return f"FitInfo({shown}, extras={dict(self.extras)!r})"

    def __reduce__(self):
        # the read-only view of extras cannot be pickled: rebuild from the plain dict (copy.deepcopy and pickle)
        return (type(self).from_dict, (dict(self),))


# ---------------------------------------------------------------------------------------------- Fit
@dataclass
class Fit:
    """A trained estimator: what every inference method returns.

    Attributes
    ----------
    estimator : Estimator
    method : str
        Registered method name.
    config : dict
        The training settings and method options used (JSON-able).
    seed : int
    params : dict
        Constrained parameter values (and mutable state, e.g. batch statistics) by site name; the values
        to substitute into the model for a point prediction.
    state : object
        The method's final state (e.g. ``SVIState``), needed to draw from a Bayesian method's posterior.
    x_scaler, y_scaler : StandardScaler
        Feature and target standardisation, fitted on the training side only.
    training_log_mass : np.ndarray
        log10 M of the training catalogue (the implicit prior of the fit).
    history : dict of np.ndarray
        ``train_loss`` and ``val_loss`` per epoch (per datum), ``epoch_time`` (s).
    grid : np.ndarray
        Default log10 M grid of posteriors.
    info : FitInfo
        Run facts: sizes, epochs run, best epoch, early stop, number of traces of the epoch function, time as
        named fields, and the method's own facts in ``info.extras``; also a read-only mapping (``info["epochs_run"]``).
    feature_names : tuple of str or None
    method_options : dict
        The options the method was built with, as a JSON-able dict: those that differ from the defaults of the
        method's options class (``fit.options`` is the options object).
    plan : TrainingPlan
        Sizes the method was built for; with ``method`` and ``method_options`` it rebuilds the method on load.
    feature_reference : FeatureReference or None
        What the fit keeps of its standardised training features for shift detection
        (:mod:`numpyro_clustermass.shift`): it gives :attr:`MassPosterior.ood_score` and the reference sample of
        :func:`numpyro_clustermass.diagnostics.covariate_shift`. None for a fit file saved before it existed.
    """

    estimator: Estimator
    method: str
    config: dict
    seed: int
    params: dict
    state: Any
    x_scaler: StandardScaler
    y_scaler: StandardScaler
    training_log_mass: np.ndarray
    history: dict
    grid: np.ndarray
    info: FitInfo
    feature_names: tuple | None
    num_features: int
    method_options: dict = field(default_factory=dict)
    plan: TrainingPlan | None = None
    feature_reference: FeatureReference | None = None
    _method: InferenceMethod = field(repr=False, default=None)
    _model: Callable = field(repr=False, default=None)
    _cache: dict = field(repr=False, default_factory=dict)

    def __post_init__(self):
        if not isinstance(self.info, FitInfo):  # a dict of run facts, as before FitInfo
            self.info = FitInfo.from_dict(self.info)

    def __repr__(self) -> str:
        return (f"Fit({self.estimator.name!r}, method={self.method!r}, epochs={self.info.epochs_run}, "
                f"best val loss={self.info.best_val_loss})")

    @property
    def options(self):
        """The method options as the method's options object (``MapOptions``, ``BBBOptions``, ...; a dict for a
        method registered without an options class), made from :attr:`method_options`."""
        return make_options(self.method, self.method_options)

    @property
    def mutable_state(self) -> dict | None:
        """Mutable network state (e.g. batch-norm statistics) of the fit, if any; also merged into ``params``."""
        return getattr(self.state, "mutable_state", None)

    # ------------------------------------------------------------------ prediction
    def features(self, data) -> np.ndarray:
        """Validated, standardised float32 features of ``data`` (Catalog, array, or (x, y) tuple)."""
        return np.asarray(self.x_scaler.transform(self._raw_features(data)), dtype=np.float32)

    def _raw_features(self, data) -> np.ndarray:
        """Validated features of ``data`` as given (float64, not standardised), with the fit's width checked."""
        x, _, _, _ = _as_xy(data, self.feature_names, "posterior")
        if x.shape[1] != self.num_features:
            raise CatalogError(
                f"posterior: expected {self.num_features} features per cluster (as in training), got {x.shape[1]}"
            )
        return x

    def _chunk_fn(self, num_draws: int, keep_draws: bool):
        obs_site = self.estimator.obs_site
        predict_kwargs = dict(self._method.predict_kwargs)
        key = ("posterior", num_draws, keep_draws, obs_site, tuple(sorted(predict_kwargs.items())))
        if key in self._cache:
            return self._cache[key]
        model = self._model

        def one_draw(draw, rng_key, x, grid, y_mean, y_scale):
            c = x.shape[0]
            conditioned = handlers.condition(model, data={obs_site: jnp.zeros(c, x.dtype)})
            seeded = handlers.seed(handlers.substitute(conditioned, data=draw), rng_key)
            tr = handlers.trace(seeded).get_trace(x, None, **predict_kwargs)
            if obs_site not in tr:
                raise KeyError(f"the model has no sample site {obs_site!r}; name its likelihood {obs_site!r}")
            fn = tr[obs_site]["fn"]
            mix = _mixture_params(fn, (c,))
            if mix is not None:
                logits, locs, scales = mix
                return ("mixture", logits, locs * y_scale + y_mean, scales * y_scale)
            z = (grid - y_mean) / y_scale
            ld = jax.vmap(fn.log_prob)(jnp.broadcast_to(z[:, None], (grid.shape[0], c))).T
            ld = support_edge_cells(fn, ld, z, spacing(grid) / y_scale) - jnp.log(y_scale)
            try:
                mean, var = fn.mean * y_scale + y_mean, fn.variance * y_scale**2
            except NotImplementedError:
                dx = spacing(grid)
                p = jnp.exp(normalise_log_density(ld, dx)) * dx
                mean = jnp.sum(p * grid, -1)
                var = jnp.sum(p * (grid - mean[:, None]) ** 2, -1)
            return ("grid", ld, jnp.broadcast_to(mean, (c,)), jnp.broadcast_to(var, (c,)))

        kind_box = {}

        def chunk(draws, keys, x, grid, y_mean, y_scale):
            def heads(args):
                draw, rng_key = args
                kind, *arrays = one_draw(draw, rng_key, x, grid, y_mean, y_scale)
                kind_box["kind"] = kind
                return tuple(arrays)

            a, b, c = jax.lax.map(heads, (draws, keys))  # one compiled body for any number of draws
            if kind_box["kind"] == "mixture":
                return mixture_on_grid(grid, a, b, c, keep_draws=keep_draws)
            dx = spacing(grid)
            per_draw = normalise_log_density(a, dx)
            ld = normalise_log_density(jax.nn.logsumexp(per_draw, axis=0), dx)
            epi = jnp.var(b, axis=0) if num_draws > 1 else jnp.zeros_like(b[0])
            return ld, jnp.mean(c, axis=0), epi, (per_draw if keep_draws else None)

        fn = jax.jit(chunk)
        self._cache[key] = fn
        return fn

    def posterior(
        self,
        data,
        num_draws: int | None = None,
        seed: int | None = None,
        grid=None,
        keep_draws: bool = False,
        chunk_size: int = POSTERIOR_CHUNK_SIZE,
    ) -> MassPosterior:
        """Per-cluster predictive densities of log10 M for ``data`` (Catalog, feature array or (x, y)).

        Parameters
        ----------
        data : Catalog, array (n, n_features) or tuple
        num_draws : int, optional
            Predictive draws (weight samples, dropout masks); default the method's (1 for point fits).
        seed : int, optional
            Seed of the draws (default the fit's seed).
        grid : array, optional
            Uniform log10 M grid; default ``fit.grid`` (the training range with a margin, 512 points).
        keep_draws : bool
            Keep per-draw densities in ``MassPosterior.draws_log_density``.
        chunk_size : int
            Clusters per compiled call.

        Returns
        -------
        MassPosterior
            With ``ood_score``, the out-of-distribution score of each cluster's features
            (:meth:`~numpyro_clustermass.shift.FeatureReference.score`; None for a fit without a feature
            reference).

        Warns
        -----
        CovariateShiftWarning
            More clusters score beyond the fit's calibrated threshold (``fit.feature_reference.threshold``, a 0.1%
            false-alarm rate per cluster on held-out training rows) than that rate explains (Fisher's exact test
            against the held-out rows, p below :data:`SHIFT_WARNING_P`); the message gives the count.
        FitWarning
            The grid cuts off the training masses, or posteriors peak on its edges.
        """
        # standardised (and scored for shift) a chunk at a time below: a standardised copy of the whole catalogue
        # would make the memory beyond the result grow with the catalogue
        x = self._raw_features(data)
        ref = self.feature_reference
        ood = None if ref is None else np.empty(x.shape[0])
        grid = self.grid if grid is None else check_grid(grid, min_points=3)
        if num_draws is None:
            num_draws = self._method.num_draws
        elif isinstance(num_draws, (bool, np.bool_)) or not float(num_draws).is_integer() or num_draws < 1:
            raise ValueError(f"num_draws must be an integer >= 1 (predictive draws); got {num_draws!r}")
        num_draws = int(num_draws)
        key = jax.random.key(self.seed if seed is None else seed)
        k_draws, k_pred = jax.random.split(key)
        draws = self._method.sample(k_draws, self.state, num_draws)
        num_draws = int(jax.tree.leaves(draws)[0].shape[0])
        keys = jax.random.split(k_pred, num_draws)
        fn = self._chunk_fn(num_draws, keep_draws)
        n = x.shape[0]
        grid32 = jnp.asarray(grid, jnp.float32)
        y_mean = jnp.asarray(np.asarray(self.y_scaler.mean).reshape(()), jnp.float32)
        y_scale = jnp.asarray(np.asarray(self.y_scaler.scale).reshape(()), jnp.float32)
        # every chunk has ``size`` rows (the last one padded with its last row): one compiled program per
        # bucket of catalogue sizes, not per size (a dropout mask of a row does not depend on the padding)
        size = bucket_size(max(n, 1), chunk_size)
        # each chunk's densities go into one preallocated array as it is computed (RowsBuffer), so the memory
        # beyond the result is a chunk's, not a second copy of the catalogue's densities
        edge = max(1, int(round(EDGE_FRACTION * grid.size)))
        piled = HostRows(n)  # whether each posterior peaks in the grid's outer EDGE_FRACTION (a byte a cluster)

        def chunks():
            for start in range(0, n, size):
                stop = min(start + size, n)
                xc = self.x_scaler.transform(x[start:stop])
                if ood is not None:
                    ood[start:stop] = ref.score(xc)
                if stop - start < size:
                    xc = np.concatenate([xc, np.repeat(xc[-1:], size - (stop - start), axis=0)])
                out = fn(draws, keys, jnp.asarray(xc, jnp.float32), grid32, y_mean, y_scale)
                peak = jnp.argmax(out[0], axis=-1)  # per chunk: compiled per bucket, not per size
                piled.put((peak < edge) | (peak >= grid.size - edge), start, stop)
                yield start, stop, out

        if n:
            log_density, ale, epi, draws_ld = join_density_chunks(chunks(), n, keep_draws)
        else:
            log_density, ale, epi, draws_ld = jnp.zeros((0, grid.size)), np.zeros(0), np.zeros(0), None
        if ood is not None:
            self._check_shift(ood)
        self._check_grid_use(grid, piled.result() if n else np.zeros(0, bool))
        return MassPosterior(
            grid,
            log_density,
            ale,
            epi,
            training_log_mass=self.training_log_mass,
            draws_log_density=draws_ld,
            meta={"estimator": self.estimator.name, "method": self.method, "num_draws": num_draws,
                  "feature_names": None if self.feature_names is None else list(self.feature_names)},
            source_prior=getattr(self.estimator, "posterior_prior", lambda g: None)(grid),
            ood_score=ood,
        )

    def _check_shift(self, ood: np.ndarray) -> None:
        """Warn (:class:`CovariateShiftWarning`) when more clusters lie beyond the calibrated threshold than its
        false-alarm rate explains."""
        ref = self.feature_reference
        count, expected, p = ref.excess(ood)
        if count and p < SHIFT_WARNING_P:
            rows = np.flatnonzero(ood > ref.threshold)
            warnings.warn(
                f"{count} of {ood.size} clusters have features outside the training distribution (ood_score > "
                f"{ref.threshold:.2f}, the {1 - ref.alpha:.1%} contour of held-out training rows; about "
                f"{expected:.1f} expected in distribution; first rows: {rows[:5].tolist()}): the network "
                f"extrapolates there and their masses and intervals are not calibrated. See post.ood_score and "
                f"numpyro_clustermass.diagnostics.covariate_shift(fit, catalog).",
                CovariateShiftWarning, stacklevel=3,
            )

    def _check_grid_use(self, grid: np.ndarray, piled: np.ndarray) -> None:
        """Warn (:class:`FitWarning`) when the grid cuts off the training masses or posteriors peak on its edges
        (``piled``: whether each posterior's maximum lies in the grid's outer :data:`EDGE_FRACTION`)."""
        lo, hi = float(np.min(self.training_log_mass)), float(np.max(self.training_log_mass))
        tol = 0.5 * float(grid[1] - grid[0]) if grid.size > 1 else 0.0
        if grid[0] > lo + tol or grid[-1] < hi - tol:
            warnings.warn(
                f"the posterior grid [{grid[0]:.3f}, {grid[-1]:.3f}] does not cover the training masses "
                f"[{lo:.3f}, {hi:.3f}]: densities are cut off at the grid's edge, and a mode or quantile there "
                f"means 'beyond the grid', not a mass. Use the default grid or widen it.",
                FitWarning, stacklevel=3,
            )
        n = int(piled.shape[0])
        if n and piled.any():
            warnings.warn(
                f"{int(piled.sum())} of {n} posteriors peak in the outer {EDGE_FRACTION:.0%} of the grid "
                f"[{grid[0]:.3f}, {grid[-1]:.3f}] (first rows: {np.flatnonzero(piled)[:5].tolist()}): those "
                f"clusters lie outside the grid or the training range, or the fit diverged; their modes and "
                f"intervals are the grid's edge, not masses.",
                FitWarning, stacklevel=3,
            )

    def predict(self, data) -> np.ndarray:
        """Posterior mean of log10 M per cluster (shorthand for ``fit.posterior(data).mean()``)."""
        return self.posterior(data).mean()

    # ------------------------------------------------------------------ persistence
    def to_arviz(self, catalog, num_draws: int | None = None, seed: int | None = None):
        """The fit as an ArviZ object (posterior, posterior_predictive, pointwise log_likelihood,
        observed_data, constant_data, sample_stats) for ``az.summary``, ``az.loo``, ``az.compare`` and
        ArviZ's plots; see :func:`numpyro_clustermass.diagnostics.fit_to_arviz`.

        Examples
        --------
        >>> import arviz as az                                          # doctest: +SKIP
        >>> az.loo(fit.to_arviz(test))                                  # doctest: +SKIP
        """
        return diagnostics.fit_to_arviz(self, catalog, num_draws=num_draws, seed=seed)

    def save(self, path) -> "pathlib.Path":
        """Write the fit to one file (a ZIP of ``.npy`` arrays and a JSON manifest with checksums; no
        pickle), atomically; :func:`load` reads it back. See :mod:`numpyro_clustermass.inference.fitfile`.

        Raises :class:`FitFileError` when a method option or the estimator is a Python object rather than a
        value (a Distribution as weight prior, a custom optimizer).
        """
        return fitfile.save_fit(self, path)


def load(path, model: Callable | None = None) -> Fit:
    """Load a fit written by :meth:`Fit.save`: the estimator from its config, the method from its factory
    with the saved options and plan, and the method state, so that ``posterior`` gives bitwise what the
    saved fit gave on the same machine.

    Parameters
    ----------
    path : str or Path
    model : callable, optional
        The model function of a fit trained with a user model (:class:`ModelEstimator`).

    Raises
    ------
    FitFileError
        Not a fit file, truncated, corrupted (a checksum does not match), another format version, or a
        state the installed method does not accept.
    FileNotFoundError, IsADirectoryError

    Examples
    --------
    >>> import numpyro_clustermass as ncm
    >>> f = ncm.load("mdn.ncm")                                   # doctest: +SKIP
    >>> post = f.posterior(catalog)                               # doctest: +SKIP
    """
    manifest, array = fitfile.read_fit_file(path)
    est = fitfile.estimator_from_config(manifest["estimator"], model)
    method = manifest["method"]
    if method not in available_methods():
        raise FitFileError(f"{str(path)!r} was trained with the method {method!r}, which is not registered here "
                           f"(registered: {', '.join(available_methods())}); import the module that registers it")
    plan = TrainingPlan(**manifest["plan"])
    model_fn = standardize_model(est.model)
    try:
        options = make_options(method, fitfile.saved_options(method, manifest["method_options"]))
    except (TypeError, ValueError) as exc:
        raise FitFileError(f"{str(path)!r}: the saved options of method {method!r} do not fit the method as "
                           f"installed ({exc})") from None
    impl = build_method(method, model_fn, plan, options)
    state = fitfile.decode_state(manifest["state"], array)
    try:
        params = impl.get_params(state)
    except Exception as exc:  # noqa: BLE001 - a state that does not fit the method is a problem of the file
        raise FitFileError(f"{str(path)!r}: the saved state does not fit the {method!r} method as installed "
                           f"({type(exc).__name__}: {exc})") from None
    names = manifest["feature_names"]
    reference = fitfile.feature_reference(manifest, array)
    if reference is None:
        warnings.warn(f"{str(path)!r} was saved before fits kept a summary of their training features: its "
                      f"posteriors have no ood_score and diagnostics.covariate_shift cannot test it; refit to get "
                      f"shift detection", FitWarning, stacklevel=2)
    return Fit(
        estimator=est, method=method, config=manifest["config"], seed=int(manifest["seed"]), params=params,
        state=state,
        x_scaler=StandardScaler(mean=array("x_scaler_mean"), scale=array("x_scaler_scale")),
        y_scaler=StandardScaler(mean=array("y_scaler_mean"), scale=array("y_scaler_scale")),
        training_log_mass=array("training_log_mass"),
        history={k: array(f"history_{k}") for k in manifest["history_keys"]},
        grid=array("grid"), info=FitInfo.from_dict(manifest["info"]),
        feature_names=None if names is None else tuple(names), num_features=int(manifest["num_features"]),
        method_options=options_dict(options), plan=plan, feature_reference=reference,
        _method=impl, _model=model_fn if impl.model is None else impl.model, _cache={},
    )


# ---------------------------------------------------------------------------------------------- fit
def _jsonable(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, (int, float, str, bool)) or v is None:
            out[k] = v
        elif isinstance(v, (tuple, list)) and all(isinstance(e, (int, float, str, bool)) for e in v):
            out[k] = list(v)
        else:
            out[k] = repr(v)
    return out


def _at_low_priority(fn):
    """``fn`` run with its thread at the lowest CPU priority (``nice`` 19), so that a side job started beside the
    training uses the cores XLA leaves idle instead of slowing its epochs. Linux only, where ``setpriority`` on a
    thread id changes that thread alone (elsewhere the id would be read as a process id); other systems, or a
    refusal, run ``fn`` at the usual priority."""

    def run(*args, **kwargs):
        if sys.platform.startswith("linux"):
            try:
                os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
            except OSError:  # not allowed: run at the usual priority
                pass
        return fn(*args, **kwargs)

    return run


def fit(
    estimator,
    data,
    method: str = "map",
    seed: int = 0,
    *,
    options=None,
    num_epochs: int = 150,
    batch_size: int = 512,
    validation_fraction: float = 0.1,
    patience: int | None = 20,
    min_delta: float = 1e-4,
    progress_bar: bool = True,
    grid=None,
    grid_size: int = DEFAULT_GRID_SIZE,
    divergence_factor: float | None = DIVERGENCE_FACTOR,
    checkpoint=None,
    checkpoint_every: int = 10,
    resume: Fit | None = None,
    devices=None,
    **method_options,
) -> Fit:
    """Train ``estimator`` on ``data`` with the inference ``method``; return a :class:`Fit`.

    Parameters
    ----------
    estimator : Estimator or callable
        :class:`~numpyro_clustermass.estimators.MSE`, :class:`~numpyro_clustermass.estimators.MDN`, or a NumPyro
        model function ``model(x, y=None, ...)`` with likelihood site ``"obs"``.
    data : Catalog or tuple
        A catalogue (features from ``estimator.feature_names``, target ``log_mass``, grouped validation split
        by ``halo_id``), or ``(x, y)`` / ``(x, y, groups)`` arrays.
    method : str
        A registered method name (see :func:`available_methods`; ``"map"`` is SVI with point parameters).
    seed : int
        Seeds the validation split, initialisation, shuffling and posterior draws.
    options : MethodOptions or dict, optional
        The method's options as its options object (``MapOptions``, ``BBBOptions``, ``NUTSOptions``, ...; see
        :func:`~numpyro_clustermass.inference.options_class`) or a dict of its fields. Default: the method's
        defaults, or ``**method_options``; giving both is a TypeError.
    num_epochs : int
        Maximum number of epochs.
    batch_size : int
        Minibatch size (capped at the number of training rows).
    validation_fraction : float
        Fraction of halos held out for early stopping (0: none, train for ``num_epochs``).
    patience : int or None
        Stop after this many epochs without a validation improvement larger than ``min_delta``; the best
        state is kept. None: never stop early (the best state is still kept).
    min_delta : float
        Smallest improvement of the per-datum validation loss that counts.
    progress_bar : bool
        Show a tqdm bar with the losses.
    grid, grid_size
        Default grid of posteriors (default: training range with a margin, ``grid_size`` points).
    divergence_factor : float or None
        A per-datum loss above ``ref + divergence_factor * max(1, |ref|)``, with ``ref`` the initial loss
        (or that of a Gaussian ignoring the features, if larger), stops training with
        :class:`FitDivergedError` although it is finite (a learning rate far too high drives an MDN's loss
        to 1e15 without a NaN). None: only non-finite losses count.
    checkpoint : str or Path, optional
        A file the fit at its best state so far is saved to (:meth:`Fit.save`) every ``checkpoint_every``
        epochs, at the end, and when training is interrupted (Ctrl-C). Methods that run once (NUTS,
        Laplace) save their result at the end.
    checkpoint_every : int
        Epochs between checkpoints.
    resume : Fit, optional
        Continue training from this fit's state (e.g. ``load(checkpoint)``) with its scalers, for up to
        ``num_epochs`` more epochs; the estimator, method and options must be the same, and the data the
        same catalogue (the validation split is drawn from ``seed`` as before). The loss history continues
        the resumed fit's. The result is not bitwise that of an uninterrupted run: the best state and the
        early-stopping counter start afresh, and the shuffling continues from the resumed epoch count.
    devices : None, int, "all" or sequence of jax.Device
        Data-parallel training with JAX's sharding (:mod:`~numpyro_clustermass.inference.sharding`): the data
        and the method's state (parameters, optimiser state) are replicated on these devices and every minibatch
        is split over them along the batch axis; XLA sums the gradients across devices. None (default): JAX's
        default device, nothing sharded. An int ``n``: the first ``n`` of ``jax.devices()``; ``"all"``: every
        device (of every process, after ``jax.distributed.initialize()``); or a list of devices. The batch size
        (capped at the training rows) must be divisible by the number of devices. The same seed gives the same
        batches and the single-device loss curve up to the order of floating-point sums. ``"nuts"`` runs its
        chains spread evenly over these devices (``num_chains`` a multiple of their number; one chain per device
        when equal), its MAP start data-parallel; the MAP start of ``"laplace"`` and ``"bbb"`` (``init="map"``)
        is data-parallel too. See docs/scaling.md.
    **method_options
        The method's options as keyword arguments, converted with its options class (for ``"map"``:
        ``learning_rate``, ``schedule``, ``warmup_steps``, ... of :class:`~numpyro_clustermass.inference.MapOptions`):
        ``fit(est, data, method="bbb", init_scale=0.02)`` is ``fit(est, data, method="bbb",
        options=BBBOptions(init_scale=0.02))``.

    Returns
    -------
    Fit

    Raises
    ------
    CatalogError
        Wrong feature count, NaN or infinite inputs.
    ValueError
        Unknown method (the message lists the registered ones), an unknown option name (an
        :class:`~numpyro_clustermass.inference.UnknownOptionError` listing the accepted ones), or bad settings
        (a batch size not divisible by the number of ``devices``, more devices than JAX sees).
    TypeError
        ``options`` and keyword options together, or the options object of another method.
    FitDivergedError
        A non-finite or exploding loss; ``error.fit`` holds the fit at the last acceptable state.
    FitInterrupted
        Ctrl-C during training (a ``KeyboardInterrupt``), raised at the end of the running epoch (a second
        Ctrl-C raises at once); ``error.fit`` holds the fit at the best state so far, also saved to
        ``checkpoint`` when one is given (``error.checkpoint`` is then its path).

    Warns
    -----
    FitWarning
        The best held-out loss is not :data:`MIN_IMPROVEMENT` below that of a Gaussian ignoring the features
        (e.g. an MSE net collapsed to one mass for every cluster).
    """
    t_start = time.perf_counter()
    est = as_estimator(estimator)
    # an unknown method and the method's options are checked before the data is read
    opts = make_options(method, options, **method_options)
    method_options = options_dict(opts)
    mesh = sharding.data_mesh(devices)  # None: one device, nothing sharded
    x, y, groups, names = _as_xy(data, est.feature_names, "fit")
    if y is None:
        raise CatalogError("fit: the training data has no target log-masses (M200c or log_mass)")
    n = x.shape[0]
    if n < 2:
        raise CatalogError(f"fit: need at least 2 training rows; got {n}")
    if int(batch_size) < 1 or int(num_epochs) < 1:
        raise ValueError(f"batch_size and num_epochs must be >= 1; got {batch_size}, {num_epochs}")
    if divergence_factor is not None and not (math.isfinite(divergence_factor) and divergence_factor > 0):
        raise ValueError(f"divergence_factor must be a positive number or None; got {divergence_factor}")
    if isinstance(checkpoint_every, bool) or not isinstance(checkpoint_every, (int, np.integer)) or checkpoint_every < 1:
        raise ValueError(f"checkpoint_every must be an integer >= 1 (epochs); got {checkpoint_every!r}")
    if checkpoint is not None:
        checkpoint = pathlib.Path(checkpoint)
        if checkpoint.is_dir() or not checkpoint.parent.is_dir():
            raise FileNotFoundError(f"checkpoint={str(checkpoint)!r}: give a file name in a folder that exists")
    if resume is not None:
        if hasattr(est, "bind"):  # the resumed fit's estimator was bound with its own scaler
            est = est.bind(resume.y_scaler, y)
        _check_resume(resume, est, method, opts)

    is_val = _validation_split(n, float(validation_fraction), groups, seed)
    if is_val.all() or (~is_val).sum() < 2:
        raise ValueError(f"validation_fraction={validation_fraction} leaves no training rows")
    x_tr, y_tr = x[~is_val], y[~is_val]
    if resume is None:
        x_scaler, y_scaler = StandardScaler.fit(x_tr, names), StandardScaler.fit(y_tr)
    else:  # the resumed state expects the inputs standardised as when it was trained
        x_scaler, y_scaler = resume.x_scaler, resume.y_scaler
    if resume is None and hasattr(est, "bind"):
        # an estimator whose model depends on the target's units (Flow: its interval) is bound to the scaler
        est = est.bind(y_scaler, y)
    xs_train = x_scaler.transform(x_tr)
    has_val = bool(is_val.any())
    xs_val = x_scaler.transform(x[is_val]) if has_val else None
    # the shift-detection reference is built in a thread beside the training (NumPy's sorts and interpolations
    # release the GIL), so that it adds next to nothing to fit()'s time outside the epochs, and at the lowest
    # priority, so that it takes the cores the first epoch leaves idle rather than slowing it; make_fit waits for it
    # (a pool per call, not one per process: a process forked after an import would inherit a dead worker)
    pool = concurrent.futures.ThreadPoolExecutor(max_workers=1, thread_name_prefix="numpyro_clustermass")
    reference = pool.submit(_at_low_priority(FeatureReference.build), xs_train, xs_val,
                            None if groups is None else groups[~is_val], seed=seed, feature_names=names)
    pool.shutdown(wait=False)  # the build runs to its end; the thread exits after it
    x_train = jnp.asarray(xs_train, jnp.float32)
    y_train = jnp.asarray(y_scaler.transform(y_tr), jnp.float32)
    x_val = jnp.asarray(xs_val, jnp.float32) if has_val else None
    y_val = jnp.asarray(y_scaler.transform(y[is_val]), jnp.float32) if has_val else None

    n_train = int(x_train.shape[0])
    bsz = min(int(batch_size), n_train)
    sharding.check_batch_size(bsz, mesh, n_train)
    x_train, y_train, x_val, y_val = sharding.replicate((x_train, y_train, x_val, y_val), mesh)
    steps = n_train // bsz
    plan = TrainingPlan(num_data=n_train, batch_size=bsz, steps_per_epoch=steps, num_epochs=int(num_epochs),
                        num_features=int(x.shape[1]))
    compiled = compiled_method(est, method, opts, plan)
    model, impl = compiled.model, compiled.impl
    key = jax.random.key(seed)
    k_init, k_epochs = jax.random.split(key)

    settings = dict(num_epochs=int(num_epochs), batch_size=bsz, validation_fraction=float(validation_fraction),
                    patience=patience, min_delta=float(min_delta))
    # a method option named like a training setting (bbb's own patience) is in fit.method_options
    config = _jsonable({**settings, **{k: v for k, v in method_options.items() if k not in settings}})
    info = dict(n_rows=n, n_train=n_train, n_val=int(is_val.sum()), steps_per_epoch=steps)
    if mesh is not None:
        info["data_parallel_devices"] = int(mesh.devices.size)

    def make_fit(state, history, extra):
        return Fit(
            estimator=est, method=method, config=config, seed=int(seed),
            params=impl.get_params(state), state=state, x_scaler=x_scaler, y_scaler=y_scaler,
            training_log_mass=np.asarray(y), history=history,
            grid=default_grid(y, grid_size) if grid is None else check_grid(grid, min_points=3),
            info=FitInfo.from_dict({**info, **extra, "time_s": time.perf_counter() - t_start}),
            feature_names=names, num_features=int(x.shape[1]), method_options=dict(method_options), plan=plan,
            feature_reference=reference.result(), _method=impl,
            _model=model if impl.model is None else impl.model,
            _cache=compiled.predict_cache,
        )

    if isinstance(impl, OneShotMethod):
        from numpyro_clustermass.diagnostics import ConvergenceError

        if resume is not None:
            raise ValueError(f"resume= applies to methods trained by epochs; {method!r} runs once")

        try:
            res = impl.run(k_init, TrainingData(x_train, y_train, x_val, y_val), plan, progress_bar)
        except ConvergenceError as err:
            if err.fit is None and err.state is not None:  # hand back everything that was computed
                err.fit = make_fit(err.state, {}, dict(err.info or {}))
            raise
        history = {k: np.asarray(v) for k, v in res.history.items()}
        result = make_fit(res.state, history, dict(res.info))
        if checkpoint is not None:  # a one-shot method has no epochs to checkpoint: its result is saved
            result.save(checkpoint)
        return result

    result = epoch_loop(compiled, k_init, k_epochs, TrainingData(x_train, y_train, x_val, y_val),
                        EarlyStopping(patience, min_delta), make_fit, progress_bar=progress_bar,
                        desc=f"{method} {est.name}", divergence_factor=divergence_factor, checkpoint=checkpoint,
                        checkpoint_every=int(checkpoint_every), resume=resume)
    info = result.info
    # the held-out loss of a Bayesian method includes its prior term (BBB: KL / num_data), the Gaussian's does not
    checked = getattr(est, "likelihood_over_mass", True)
    prior = float(impl.prior_loss(result.state)) if checked and impl.prior_loss is not None else 0.0
    best = info.best_loss - prior
    if checked and best > info.baseline_loss - MIN_IMPROVEMENT:
        worse = "; training made it worse" if info.best_loss > info.initial_loss else ""
        of_which = f" ({info.best_loss:.4f} with its prior term {prior:.4f})" if prior else ""
        warnings.warn(
            f"the fit's best {'validation' if info.n_val else 'training'} loss, {best:.4f} per "
            f"cluster{of_which}, is not {MIN_IMPROVEMENT} below {info.baseline_loss:.4f}, that of a Gaussian ignoring the "
            f"features (initial loss {info.initial_loss:.4f}{worse}): the network has learned next to nothing "
            f"(a collapsed or untrained fit gives every cluster about the same mass). Lower the learning rate, "
            f"train longer, or check the features.",
            FitWarning, stacklevel=2,
        )
    return result


def _check_resume(resume, est, method, options) -> None:
    """``resume`` must be a fit of the same estimator, method and options (its state is continued)."""
    if not isinstance(resume, Fit):
        raise TypeError(f"resume must be a Fit (e.g. numpyro_clustermass.load(checkpoint)); got {type(resume).__name__}")
    if resume.state is None or resume.plan is None:
        raise ValueError("resume: this fit has no method state to continue from")
    mismatches = []
    if resume.estimator.config() != est.config():
        mismatches.append(f"estimator {resume.estimator.config()} vs {est.config()}")
    if resume.method != method:
        mismatches.append(f"method {resume.method!r} vs {method!r}")
    elif not _same_options(resume.options, options):
        mismatches.append(f"method options {resume.method_options} vs {options_dict(options)}")
    if mismatches:
        raise ValueError("resume: the fit to continue differs from this call: " + "; ".join(mismatches))


def _same_options(a, b) -> bool:
    """Two options of one method are the same (as objects; as the JSON of a fit file when ``==`` cannot tell)."""
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an option whose == is not a bool (an array)
        try:
            return fitfile.jsonable_options(a) == fitfile.jsonable_options(b)
        except FitFileError:
            return False
