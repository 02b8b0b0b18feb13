"""The ``"map"`` method: stochastic variational inference with a point-mass guide (MAP / maximum likelihood).

The network weights registered by ``flax_module`` are NumPyro ``param`` sites, so SVI optimises them
directly (the guide is empty); if the model has latent sample sites (a prior on the noise scale, say), they
get an :class:`~numpyro.infer.autoguide.AutoDelta` point mass, which makes the fit a MAP estimate. The optimiser is
Optax Adam with a learning-rate schedule, wrapped for NumPyro with ``optax_to_numpyro``.

One ``step`` is one ``SVI.update`` on a minibatch with the likelihood scaled by ``num_data / batch``, so the
loss is the full-data objective; :func:`~numpyro_clustermass.inference.fit` runs whole epochs of steps inside
one jit-compiled ``lax.scan``, which matches a hand-written Flax + Optax loop in throughput
(``benchmarks/bench_train_throughput.py``).

Examples
--------
>>> import numpy as np
>>> from numpyro_clustermass.estimators import MSE
>>> from numpyro_clustermass.inference import fit
>>> rng = np.random.default_rng(0)
>>> y = rng.uniform(13.5, 15.0, 1000); x = np.stack([y, y**2], 1) + 0.05 * rng.normal(size=(1000, 2))
>>> f = fit(MSE(hidden=(16,), feature_names=("a", "b")), (x, y), method="map", num_epochs=20,
...         batch_size=128, learning_rate=3e-3, progress_bar=False)
>>> bool(f.history["val_loss"][-1] < f.history["val_loss"][0])
True
"""

from __future__ import annotations

import copy
import dataclasses
import functools
import math
import warnings
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import optax
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta, AutoGuide
from numpyro.infer.util import compute_log_probs
from numpyro.util import _validate_model, check_model_guide_match
from numpyro.optim import optax_to_numpyro

from numpyro_clustermass.inference.options import MethodOptions, check_float, check_int
from numpyro_clustermass.inference.protocol import IterativeMethod, TrainingPlan, register_method

__all__ = ["map_method", "MapOptions", "MapStartOptions", "make_schedule", "make_optimizer", "check_schedule_options",
           "check_plateau_options", "plateau_of", "plateau_policy", "with_lr_scale", "PLATEAU_OPTIONS",
           "check_optimizer_options", "SCHEDULES", "latent_sites", "latent_structure", "prepare_svi",
           "SiteOrderedTraceELBO"]


class SiteOrderedTraceELBO(Trace_ELBO):
    """NumPyro's :class:`~numpyro.infer.Trace_ELBO` with the sites' terms taken in the order the sites ran.

    ``Trace_ELBO`` (NumPyro 0.18-0.22) forms the sites' ``log p - log q`` terms, and adds them up, in the order
    of a Python ``set`` of their names. That order changes with the string hash seed of the Python process, so a
    model with two or more sites (latent sites next to the likelihood) traces to a differently ordered program in
    each process, and the training epoch and the held-out evaluation missed JAX's persistent compilation cache in
    every new process: the first MAP fit of ``MassObservableRelation`` in a second process took 3.8-4.3 s, 1.5-1.6 s
    of it compiling, against 2.6-3.2 s and 0.5-0.6 s with the change (``benchmarks/cold_fit.py --model relation``,
    two rounds; docs/benchmarks.md). Here the terms are formed and added in the order the sites ran (the model's,
    then any guide-only sites): one program in every process. The estimator is ``Trace_ELBO``'s; a
    ``multi_sample_guide`` or ``sum_sites=False`` goes to ``Trace_ELBO`` itself.

    Examples
    --------
    >>> import jax, numpyro, numpyro.distributions as dist
    >>> def model():
    ...     numpyro.sample("b", dist.Normal(0.0, 1.0), obs=0.5)
    ...     numpyro.sample("a", dist.Normal(0.0, 1.0), obs=1.0)
    >>> loss = SiteOrderedTraceELBO().loss(jax.random.key(0), {}, model, lambda: None)
    >>> round(float(loss), 4)  # log(2 pi) + (0.25 + 1) / 2
    2.4629
    """

    def loss_with_mutable_state(self, rng_key, param_map, model, guide, *args, **kwargs):
        if self.multi_sample_guide or not self.sum_sites:
            return super().loss_with_mutable_state(rng_key, param_map, model, guide, *args, **kwargs)

        def single_particle_elbo(key):
            params = dict(param_map)
            model_seed, guide_seed = jax.random.split(key)
            guide_lp, guide_trace = compute_log_probs(handlers.seed(guide, guide_seed), args, kwargs, param_map)
            mutable = {name: site["value"] for name, site in guide_trace.items() if site["type"] == "mutable"}
            params.update(mutable)
            model_lp, model_trace = compute_log_probs(
                handlers.replay(handlers.seed(model, model_seed), guide_trace), args, kwargs, params)
            check_model_guide_match(model_trace, guide_trace)
            _validate_model(model_trace, plate_warning="loose")
            mutable.update({name: site["value"] for name, site in model_trace.items() if site["type"] == "mutable"})
            names = [*model_lp, *(name for name in guide_lp if name not in model_lp)]
            zero = jnp.array(0.0)
            elbo = sum((model_lp.get(name, zero) - guide_lp.get(name, zero) for name in names), start=zero)
            if mutable and self.num_particles > 1:
                warnings.warn("mutable state is currently ignored when num_particles > 1.", stacklevel=2)
            return elbo, (mutable or None) if self.num_particles == 1 else None

        if self.num_particles == 1:
            elbo, mutable_state = single_particle_elbo(rng_key)
            return {"loss": -elbo, "mutable_state": mutable_state}
        elbos, mutable_state = self.vectorize_particles_fn(single_particle_elbo,
                                                           jax.random.split(rng_key, self.num_particles))
        return {"loss": -jnp.mean(elbos), "mutable_state": mutable_state}


def make_schedule(
    learning_rate: float,
    num_steps: int,
    schedule: str | Callable = "cosine",
    warmup_steps: int | None = None,
    final_lr_fraction: float = 0.01,
) -> Callable:
    """An Optax learning-rate schedule.

    Parameters
    ----------
    learning_rate : float
        Peak learning rate.
    num_steps : int
        Total number of optimisation steps (epochs x steps per epoch).
    schedule : {"cosine", "exponential", "constant", "plateau"} or callable
        ``cosine``: linear warm-up from 10% of the peak, then cosine decay to ``final_lr_fraction`` of it;
        ``exponential``: warm-up, then exponential decay to that fraction at ``num_steps``; ``plateau``: warm-up,
        then the peak, which the epoch loop lowers when the validation loss stops improving (the optimiser
        :func:`make_optimizer` builds with ``plateau=...`` carries the multiplier); a callable ``step -> lr``
        (any Optax schedule) is used as is.
    warmup_steps : int, optional
        Default: 1% of the steps, at most 500.
    final_lr_fraction : float

    Examples
    --------
    >>> s = make_schedule(1e-3, 1000)
    >>> [round(float(s(i)), 6) for i in (0, 10, 500, 1000)]  # warm-up over 10 steps, cosine to 1%
    [0.0001, 0.001, 0.000513, 1e-05]
    """
    if callable(schedule):
        return schedule
    lr, schedule, warmup_steps, final_lr_fraction = check_schedule_options(
        None, learning_rate, schedule, warmup_steps, final_lr_fraction)
    num_steps = max(int(num_steps), 1)
    if warmup_steps is None:
        warmup_steps = min(500, num_steps // 100)
    warmup_steps = int(min(max(warmup_steps, 0), num_steps - 1))
    if schedule == "constant":
        return optax.constant_schedule(lr)
    if schedule == "plateau":
        if warmup_steps == 0:
            return optax.constant_schedule(lr)
        return optax.join_schedules([optax.linear_schedule(0.1 * lr, lr, warmup_steps), optax.constant_schedule(lr)],
                                    [warmup_steps])
    if schedule == "cosine":
        if warmup_steps == 0:
            return optax.cosine_decay_schedule(lr, num_steps, alpha=final_lr_fraction)
        return optax.warmup_cosine_decay_schedule(
            init_value=0.1 * lr, peak_value=lr, warmup_steps=warmup_steps, decay_steps=num_steps,
            end_value=lr * final_lr_fraction,
        )
    if schedule == "exponential":
        decay = optax.exponential_decay(lr, transition_steps=max(num_steps - warmup_steps, 1),
                                        decay_rate=final_lr_fraction)
        if warmup_steps == 0:
            return decay
        warm = optax.linear_schedule(0.1 * lr, lr, warmup_steps)
        return optax.join_schedules([warm, decay], [warmup_steps])
    raise AssertionError(schedule)  # check_schedule_options refuses any other schedule


#: The schedules :func:`make_schedule` builds by name.
SCHEDULES = ("cosine", "exponential", "constant", "plateau")


def check_schedule_options(method: str | None, learning_rate, schedule, warmup_steps, final_lr_fraction) -> tuple:
    """The learning-rate schedule's options checked (a ValueError naming the option, the value and the allowed
    range; ``method`` names the method in the message, None leaves it out) and normalised:
    ``(learning_rate, schedule, warmup_steps, final_lr_fraction)``.

    Examples
    --------
    >>> check_schedule_options("map", 1e-3, "cosine", -3, 0.01)
    Traceback (most recent call last):
    ...
    ValueError: method 'map': warmup_steps must be an integer >= 0 or None; got -3
    """
    lr = check_float(method, "learning_rate", learning_rate, 0, low_open=True, hint=" (default 1e-3)")
    fraction = check_float(method, "final_lr_fraction", final_lr_fraction, 0, 1, hint=" (default 0.01)")
    if warmup_steps is not None:
        warmup_steps = check_int(method, "warmup_steps", warmup_steps, 0, hint=" or None")
    if not callable(schedule) and not (isinstance(schedule, str) and schedule in SCHEDULES):
        raise ValueError(f"{'' if method is None else f'method {method!r}: '}unknown schedule {schedule!r}; use "
                         f"'cosine', 'exponential', 'constant', 'plateau' or a callable")
    return lr, schedule, warmup_steps, fraction


#: The ``"plateau"`` schedule's option fields (of :class:`MapOptions` and ``BBBOptions``), in policy order.
PLATEAU_OPTIONS = ("plateau_patience", "plateau_factor", "plateau_reductions")


def plateau_of(options) -> tuple | None:
    """``(plateau_patience, plateau_factor, plateau_reductions)`` of method options whose ``schedule`` is
    ``"plateau"`` (the ``plateau=`` of :func:`make_optimizer`), else None.

    Examples
    --------
    >>> plateau_of(MapOptions(plateau_factor=0.5)), plateau_of(MapOptions(schedule="cosine"))
    ((3, 0.5, 3), None)
    """
    if options.schedule != "plateau":
        return None
    return tuple(getattr(options, name) for name in PLATEAU_OPTIONS)


def check_plateau_options(method: str | None, patience, factor, reductions) -> tuple:
    """The ``"plateau"`` schedule's options checked and normalised, as :func:`check_schedule_options`:
    ``(plateau_patience, plateau_factor, plateau_reductions)``.

    Examples
    --------
    >>> check_plateau_options("map", 3, 1.5, 3)
    Traceback (most recent call last):
    ...
    ValueError: method 'map': plateau_factor must be a finite number in (0, 1) (default 0.25); got 1.5
    """
    patience = check_int(method, "plateau_patience", patience, 1, hint=" (default 3)")
    factor = check_float(method, "plateau_factor", factor, 0, 1, low_open=True, high_open=True, hint=" (default 0.25)")
    reductions = check_int(method, "plateau_reductions", reductions, 0, hint=" (default 3)")
    return patience, factor, reductions


def _plateau_scale(lr_scale, factor, patience, reductions):
    """The learning-rate multiplier of the ``"plateau"`` schedule, an Optax transformation whose
    hyperparameters live in the optimiser state (``optax.inject_hyperparams``): the epoch loop lowers
    ``lr_scale`` by ``factor`` after ``patience`` epochs without a validation improvement, at most ``reductions``
    times. The policy is kept in the state with the multiplier, so that a saved and resumed fit follows it."""
    del factor, patience, reductions  # read by the epoch loop (plateau_policy), not by the update
    return optax.scale(lr_scale)


def _is_plateau_node(n) -> bool:
    """Whether ``n`` is the optimiser-state node of :func:`_plateau_scale`."""
    return isinstance(n, optax.InjectStatefulHyperparamsState) and "reductions" in n.hyperparams


def plateau_policy(state) -> dict | None:
    """The ``"plateau"`` schedule's policy and current multiplier in a method's state (any pytree holding the
    optimiser state :func:`make_optimizer` built with ``plateau=...``), or None when the state has none.

    Returns ``{"lr_scale", "factor", "patience", "reductions", "reductions_done"}`` (floats and ints; an
    ensemble's members share them).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> opt = make_optimizer(make_schedule(1e-3, 100, "plateau"), plateau=(3, 0.25, 2))
    >>> state = opt.init({"w": jnp.zeros(2)})
    >>> plateau_policy(state)["patience"], plateau_policy(with_lr_scale(state, 0.25))["reductions_done"]
    (3, 1)
    """
    nodes = [n for n in jax.tree_util.tree_leaves(state, is_leaf=_is_plateau_node) if _is_plateau_node(n)]
    if not nodes:
        return None
    h = {k: jnp.ravel(jnp.asarray(v))[0] for k, v in nodes[0].hyperparams.items()}
    scale, factor = float(h["lr_scale"]), float(h["factor"])
    done = int(round(math.log(scale) / math.log(factor))) if scale < 1 else 0
    return {"lr_scale": scale, "factor": factor, "patience": int(h["patience"]), "reductions": int(h["reductions"]),
            "reductions_done": done}


def with_lr_scale(state, lr_scale: float):
    """``state`` with the ``"plateau"`` schedule's learning-rate multiplier set to ``lr_scale`` (same shapes,
    dtypes and shardings: the epoch's compiled function takes it without recompiling)."""
    def set_scale(n):
        if not _is_plateau_node(n):
            return n
        old = n.hyperparams["lr_scale"]
        return n._replace(hyperparams={**n.hyperparams, "lr_scale": old * 0 + jnp.asarray(lr_scale, old.dtype)})

    return jax.tree_util.tree_map(set_scale, state, is_leaf=_is_plateau_node)


def check_optimizer_options(method: str | None, b1, b2, weight_decay, clip_norm) -> tuple:
    """Adam's options checked and normalised, as :func:`check_schedule_options`: ``(b1, b2, weight_decay,
    clip_norm)``."""
    b1 = check_float(method, "b1", b1, 0, 1, high_open=True, hint=" (default 0.9)")
    b2 = check_float(method, "b2", b2, 0, 1, high_open=True, hint=" (default 0.999)")
    weight_decay = check_float(method, "weight_decay", weight_decay, 0, hint=" (default 0)")
    if clip_norm is not None:
        clip_norm = check_float(method, "clip_norm", clip_norm, 0, low_open=True, hint=" or None")
    return b1, b2, weight_decay, clip_norm


def make_optimizer(schedule: Callable, b1: float = 0.9, b2: float = 0.999, weight_decay: float = 0.0,
                   clip_norm: float | None = None, plateau: tuple | None = None) -> optax.GradientTransformation:
    """Adam (AdamW if ``weight_decay > 0``), optionally after global-norm clipping.

    ``plateau=(patience, factor, reductions)`` (the ``"plateau"`` schedule, :func:`check_plateau_options`) adds
    the learning-rate multiplier the epoch loop lowers on a validation plateau (:func:`plateau_policy`).

    Examples
    --------
    >>> make_optimizer(optax.constant_schedule(1e-3), clip_norm=0.0)
    Traceback (most recent call last):
    ...
    ValueError: clip_norm must be a finite number > 0 or None; got 0.0
    """
    b1, b2, weight_decay, clip_norm = check_optimizer_options(None, b1, b2, weight_decay, clip_norm)
    opt = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay) if weight_decay else optax.adam(
        schedule, b1=b1, b2=b2)
    if clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(float(clip_norm)), opt)
    if plateau is not None:
        patience, factor, reductions = check_plateau_options(None, *plateau)
        opt = optax.chain(opt, optax.inject_hyperparams(_plateau_scale)(
            lr_scale=1.0, factor=factor, patience=patience, reductions=reductions))
    return opt


def _no_latent_guide(*args, **kwargs):
    """The guide of a model whose only free quantities are params (a flax_module net, a fitted scale)."""


def latent_sites(model: Callable, plan: TrainingPlan) -> list[str]:
    """Names of the model's unobserved sample sites, found by tracing it on abstract inputs (no compute)."""
    found: list[str] = []

    def probe(x, y):
        tr = handlers.trace(handlers.seed(model, 0)).get_trace(x, y, num_data=plan.num_data)
        found.extend(k for k, v in tr.items() if v["type"] == "sample" and not v["is_observed"])
        return 0

    x = jax.ShapeDtypeStruct((plan.batch_size, plan.num_features), jnp.float32)
    y = jax.ShapeDtypeStruct((plan.batch_size,), jnp.float32)
    jax.eval_shape(probe, x, y)
    return found


def latent_structure(model: Callable, num_rows: int, num_features: int, **model_kwargs) -> tuple[dict, dict]:
    """Shapes and constraining transforms of the model's latent sample sites, from a trace on abstract inputs.

    ``model(x, y, **model_kwargs)`` is traced with ``x`` of shape ``(num_rows, num_features)`` (float32) without
    computing anything. A method builds from this, once, in its factory, what it needs to read a state (the
    flattening of the latents, their transforms), so that a state made by another instance of the method (a
    saved fit) can be sampled without ``init`` or ``run`` having been called on this one. A transform whose
    parameters would be traced values (a support built with ``jnp`` inside the model) is taken from a trace on
    zeros instead.

    Returns
    -------
    shapes : dict
        ``{site: jax.ShapeDtypeStruct}`` of the constrained values, in trace order.
    transforms : dict
        ``{site: biject_to(support)}``.

    Examples
    --------
    >>> import numpyro, numpyro.distributions as dist
    >>> def model(x, y=None):
    ...     s = numpyro.sample("s", dist.HalfNormal(1.0))
    ...     numpyro.sample("obs", dist.Normal(0.0, s).expand([x.shape[0]]), obs=y)
    >>> shapes, transforms = latent_structure(model, 10, 2)
    >>> shapes["s"].shape, type(transforms["s"]).__name__
    ((), 'ExpTransform')
    """
    transforms: dict = {}

    def probe(x, y):
        tr = handlers.trace(handlers.seed(model, jax.random.key(0))).get_trace(x, y, **model_kwargs)
        latent = {k: s for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"]}
        transforms.clear()
        transforms.update({k: biject_to(s["fn"].support) for k, s in latent.items()})
        return {k: s["value"] for k, s in latent.items()}

    x = jax.ShapeDtypeStruct((int(num_rows), int(num_features)), jnp.float32)
    y = jax.ShapeDtypeStruct((int(num_rows),), jnp.float32)
    shapes = jax.eval_shape(probe, x, y)
    if any(isinstance(leaf, jax.core.Tracer) for leaf in jax.tree.leaves(transforms)):
        probe(jnp.zeros(x.shape, x.dtype), jnp.zeros(y.shape, y.dtype))
    order = list(transforms)  # trace order (eval_shape returns the dict with its keys sorted)
    return {k: shapes[k] for k in order}, {k: transforms[k] for k in order}


def prepare_svi(svi: SVI, plan: TrainingPlan, **model_kwargs) -> SVI:
    """Make ``svi`` able to step, evaluate and read any state of its configuration, without ``svi.init``.

    NumPyro's :class:`~numpyro.infer.SVI` keeps the constraining transforms of its params (``svi.constrain_fn``,
    used by ``update`` and ``get_params``) from ``SVI.init``, and an autoguide sets itself up (its sites,
    supports and the functions behind ``median``/``sample_posterior``) on its first call. Both are done here,
    from the plan alone: an autoguide that is not set up is run once on zeros of one batch's shape, and
    ``SVI.init`` is traced on abstract inputs (nothing is computed). A method's factory calls this, so that a
    state made by another instance of the method (a loaded fit) works with this one. Returns ``svi``.

    Only the *structure* comes from the zeros: a state's values (the initial autoguide locations included) come
    from the method's ``init``, which therefore initialises with a fresh autoguide.
    """
    x = jnp.zeros((plan.batch_size, plan.num_features), jnp.float32)
    y = jnp.zeros((plan.batch_size,), jnp.float32)
    if isinstance(svi.guide, AutoGuide) and svi.guide.prototype_trace is None:
        handlers.trace(handlers.seed(svi.guide, 0)).get_trace(x, y, **model_kwargs)
    jax.eval_shape(lambda key, x, y: svi.init(key, x, y, **model_kwargs), jax.random.key(0),
                   jax.ShapeDtypeStruct(x.shape, x.dtype), jax.ShapeDtypeStruct(y.shape, y.dtype))
    return svi


@dataclasses.dataclass(frozen=True, kw_only=True)
class MapOptions(MethodOptions):
    """Options of the ``"map"`` method: Optax Adam (AdamW with ``weight_decay``) with a learning-rate schedule.

    Every field is checked when the options are made (a ValueError naming the option, the allowed range and the
    value). ``fit(est, data, method="map", learning_rate=3e-4)`` is ``fit(est, data, method="map",
    options=MapOptions(learning_rate=3e-4))``.

    Attributes
    ----------
    learning_rate : float, default 1e-3
        Peak learning rate, > 0.
    schedule : {"plateau", "cosine", "exponential", "constant"} or callable, default "plateau"
        See :func:`make_schedule`. ``"plateau"``: after a linear warm-up the rate stays at its peak until the
        validation loss stops improving, then is lowered (the three ``plateau_*`` options); with it the reweighted
        high-mass headline agrees across training seeds to 0.001-0.003 dex (docs/headline.md). ``"cosine"``
        (the default of fit files saved before the plateau schedule, and of ``"bbb"``): cosine decay after a
        linear warm-up; exponential decay; constant; or any Optax schedule ``step -> lr``.
    warmup_steps : int or None, default None
        Steps of linear warm-up from 10% of the peak, >= 0; None: 1% of the planned steps, at most 500.
    final_lr_fraction : float, default 0.01
        Learning rate at the last planned step as a fraction of the peak, in [0, 1] (``"cosine"`` and
        ``"exponential"``).
    plateau_patience, plateau_factor, plateau_reductions : int, float, int, default 3, 0.25 and 3
        With ``schedule="plateau"``: after ``plateau_patience`` (>= 1) epochs without a validation improvement
        larger than ``fit``'s ``min_delta``, training goes on from the best state so far with the learning rate
        times ``plateau_factor`` (in (0, 1)); after ``plateau_reductions`` (>= 0) reductions the next plateau ends
        training. The kept state is then one of a decayed learning rate, whenever early stopping would stop.
    b1, b2 : float, default 0.9 and 0.999
        Adam's moment decay rates, in [0, 1).
    weight_decay : float, default 0
        Decoupled weight decay (AdamW) when > 0.
    clip_norm : float or None, default None
        Clip gradients to this global norm (> 0) before the update.
    optimizer : optax.GradientTransformation or None, default None
        Replaces the optimiser the options above build (which are then unused: no plateau reductions either).
    guide : callable or None, default None
        The guide of the model's latent sample sites; None: an
        :class:`~numpyro.infer.autoguide.AutoDelta` (point mass) when the model has any.

    Examples
    --------
    >>> MapOptions(learning_rate=3e-4, schedule="constant").to_dict()
    {'learning_rate': 0.0003, 'schedule': 'constant'}
    >>> MapOptions(b1=1.0)
    Traceback (most recent call last):
    ...
    ValueError: method 'map': b1 must be a finite number in [0, 1) (default 0.9); got 1.0
    """

    method_name: ClassVar[str] = "map"

    learning_rate: float = 1e-3
    schedule: str | Callable = "plateau"
    warmup_steps: int | None = None
    final_lr_fraction: float = 0.01
    plateau_patience: int = 3
    plateau_factor: float = 0.25
    plateau_reductions: int = 3
    b1: float = 0.9
    b2: float = 0.999
    weight_decay: float = 0.0
    clip_norm: float | None = None
    optimizer: Any = None
    guide: Callable | None = None

    def __post_init__(self):
        m = self.method_name
        lr, schedule, warmup, fraction = check_schedule_options(m, self.learning_rate, self.schedule,
                                                                self.warmup_steps, self.final_lr_fraction)
        b1, b2, weight_decay, clip_norm = check_optimizer_options(m, self.b1, self.b2, self.weight_decay,
                                                                  self.clip_norm)
        plateau = check_plateau_options(m, self.plateau_patience, self.plateau_factor, self.plateau_reductions)
        if self.optimizer is not None and not (hasattr(self.optimizer, "init") and hasattr(self.optimizer, "update")):
            raise ValueError(f"method {m!r}: optimizer must be an optax.GradientTransformation or None; got "
                             f"{self.optimizer!r}")
        if self.guide is not None and not callable(self.guide):
            raise ValueError(f"method {m!r}: guide must be a callable (a NumPyro guide) or None; got {self.guide!r}")
        for name, value in (("learning_rate", lr), ("warmup_steps", warmup), ("final_lr_fraction", fraction),
                            ("b1", b1), ("b2", b2), ("weight_decay", weight_decay), ("clip_norm", clip_norm),
                            *zip(PLATEAU_OPTIONS, plateau)):
            object.__setattr__(self, name, value)

    def to_map_options(self) -> "MapOptions":
        """The :class:`MapOptions` fields of these options (of a subclass: ``MCDropoutOptions``, ...), as a
        :class:`MapOptions` for the ``"map"`` method."""
        if type(self) is MapOptions:
            return self
        return MapOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(MapOptions)})


@dataclasses.dataclass(frozen=True, kw_only=True)
class MapStartOptions(MapOptions):
    """Options of the MAP fit that another method trains first to start from (``map_options`` of ``"nuts"``,
    ``"laplace"`` and ``"bbb"`` with ``init="map"``): the ``"map"`` method's options (:class:`MapOptions`) and the
    epochs and early stopping of that fit.

    Attributes
    ----------
    num_epochs : int or None, default None
        Maximum epochs of the MAP fit, >= 1; None: the ``num_epochs`` given to ``fit``.
    patience : int or None, default 20
        Early stopping of the MAP fit on the validation loss, >= 0; None: never stop early.
    min_delta : float, default 1e-4
        Smallest improvement of the per-datum validation loss that counts, >= 0.
    learning_rate, schedule, ... :
        As in :class:`MapOptions`.

    Examples
    --------
    >>> MapStartOptions(num_epochs=50, learning_rate=1e-2).to_dict()
    {'learning_rate': 0.01, 'num_epochs': 50}
    """

    num_epochs: int | None = None
    patience: int | None = 20
    min_delta: float = 1e-4

    def __post_init__(self):
        super().__post_init__()
        m = self.method_name
        if self.num_epochs is not None:
            object.__setattr__(self, "num_epochs", check_int(m, "num_epochs", self.num_epochs, 1))
        if self.patience is not None:
            object.__setattr__(self, "patience", check_int(m, "patience", self.patience, 0))
        object.__setattr__(self, "min_delta", check_float(m, "min_delta", self.min_delta, 0))


def map_method(model: Callable, plan: TrainingPlan, options: MapOptions | None = None, **kwargs) -> IterativeMethod:
    """Build the ``"map"`` method: SVI, point-mass guide, Optax Adam with a schedule.

    An autoguide given as ``guide`` that is not yet set up is set up here on zeros of one batch's shape (only its
    structure is used), and every ``init`` starts from a copy of it as given, so that its initial values come
    from ``init``'s key and data.

    Parameters
    ----------
    model : callable
        ``model(x, y=None, num_data=None, deterministic=False)``.
    plan : TrainingPlan
    options : MapOptions, optional
        The method's options (default ``MapOptions()``: Adam at 1e-3, lowered on validation plateaus).
    **kwargs
        Instead of ``options``: its fields (``learning_rate=3e-4``, ...), converted with :class:`MapOptions`.
    """
    opts = MapOptions.coerce(options, kwargs)
    optimizer, guide = opts.optimizer, opts.guide
    if optimizer is None:
        sched = make_schedule(opts.learning_rate, plan.num_steps, opts.schedule, opts.warmup_steps,
                              opts.final_lr_fraction)
        optimizer = make_optimizer(sched, opts.b1, opts.b2, opts.weight_decay, opts.clip_norm, plateau=plateau_of(opts))
    num_data = plan.num_data
    optim = optax_to_numpyro(optimizer)
    fresh_guide = None  # makes the guide that init starts from, for an autoguide
    if guide is None:
        if latent_sites(model, plan):
            guide = AutoDelta(model)
            fresh_guide = functools.partial(AutoDelta, model)
        else:
            guide = _no_latent_guide
    elif isinstance(guide, AutoGuide) and guide.prototype_trace is None:
        template = copy.deepcopy(guide)
        fresh_guide = functools.partial(copy.deepcopy, template)
    # Everything step/evaluate/get_params/sample use is built here, so that they work on a state made by another
    # instance of this method (a saved fit): the guide is set up and svi's param transforms are found from the plan.
    svi = prepare_svi(SVI(model, guide, optim, SiteOrderedTraceELBO()), plan, num_data=num_data)
    # init changes nothing of that: it runs its own SVI. An autoguide takes its initial values from its first call
    # (seeded by SVI.init's key), so init starts a fresh one, as NumPyro would, with Python side effects: eagerly.
    # Without latent sites the guide is empty and SVI.init is pure: one compiled call instead of running the
    # network's initialisation op by op (3-4 s against 10-15 s on two CPU cores).
    if guide is _no_latent_guide:
        svi_init = jax.jit(SVI(model, guide, optim, svi.loss).init, static_argnames="num_data")
    elif fresh_guide is None:  # the user's own guide, stateless or already set up
        svi_init = SVI(model, guide, optim, svi.loss).init

    def init(rng_key, x, y):
        if fresh_guide is not None:
            return SVI(model, fresh_guide(), optim, svi.loss).init(rng_key, x, y, num_data=num_data)
        return svi_init(rng_key, x, y, num_data=num_data)

    def step(state, x, y):
        return svi.update(state, x, y, num_data=num_data)

    def evaluate(state, x, y):
        # SVI.evaluate leaves out the mutable state (batch statistics), which flax_module(mutable=...) needs
        params = {**svi.get_params(state), **(state.mutable_state or {})}
        _, key = jax.random.split(state.rng_key)
        return svi.loss.loss(key, params, svi.model, svi.guide, x, y, deterministic=True) / x.shape[0]

    def get_params(state):
        params = svi.get_params(state)
        latent = guide.median(params) if isinstance(guide, AutoDelta) else {}
        return {**params, **latent, **(state.mutable_state or {})}

    def sample(rng_key, state, num_draws):
        # a point fit: one "draw", whatever num_draws asks for
        return jax.tree.map(lambda a: a[None], get_params(state))

    return IterativeMethod(
        init=init, step=step, evaluate=evaluate, get_params=get_params, sample=sample,
        predict_kwargs={"deterministic": True}, num_draws=1, name="map",
    )


register_method("map", map_method, options=MapOptions)
