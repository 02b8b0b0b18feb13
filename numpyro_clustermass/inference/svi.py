"""The ``"map"`` method: stochastic variational inference with a point-mass guide (MAP / maximum likelihood).

The network weights registered by ``flax_module`` are NumPyro ``param`` sites, so SVI optimises them
directly (the guide is empty); if the model has latent sample sites (a prior on the noise scale, say), they
get an :class:`~numpyro.infer.autoguide.AutoDelta` point mass, which makes the fit a MAP estimate. The optimiser is
Optax Adam with a learning-rate schedule, wrapped for NumPyro with ``optax_to_numpyro``.

One ``step`` is one ``SVI.update`` on a minibatch with the likelihood scaled by ``num_data / batch``, so the
loss is the full-data objective; :func:`~numpyro_clustermass.inference.fit` runs whole epochs of steps inside
one jit-compiled ``lax.scan``, which matches a hand-written Flax + Optax loop in throughput
(``benchmarks/bench_train_throughput.py``).

Example
-------
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
import functools
import math
from typing import Callable

import jax
import jax.numpy as jnp
import optax
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer import SVI, Trace_ELBO
from numpyro.infer.autoguide import AutoDelta, AutoGuide
from numpyro.optim import optax_to_numpyro

from numpyro_clustermass.inference.protocol import IterativeMethod, TrainingPlan, register_method

__all__ = ["map_method", "make_schedule", "make_optimizer", "latent_sites", "latent_structure", "prepare_svi"]


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
    schedule : {"cosine", "exponential", "constant"} or callable
        ``cosine``: linear warm-up from 10% of the peak, then cosine decay to ``final_lr_fraction`` of it;
        ``exponential``: warm-up, then exponential decay to that fraction at ``num_steps``; a callable
        ``step -> lr`` (any Optax schedule) is used as is.
    warmup_steps : int, optional
        Default: 1% of the steps, at most 500.
    final_lr_fraction : float

    >>> s = make_schedule(1e-3, 1000)
    >>> [round(float(s(i)), 6) for i in (0, 10, 500, 1000)]  # warm-up over 10 steps, cosine to 1%
    [0.0001, 0.001, 0.000513, 1e-05]
    """
    if callable(schedule):
        return schedule
    lr = _finite("learning_rate", learning_rate, "a finite number > 0 (default 1e-3)", lambda v: v > 0)
    _finite("final_lr_fraction", final_lr_fraction, "a finite number in [0, 1] (default 0.01)",
            lambda v: 0 <= v <= 1)
    num_steps = max(int(num_steps), 1)
    if warmup_steps is None:
        warmup_steps = min(500, num_steps // 100)
    elif isinstance(warmup_steps, bool) or not (isinstance(warmup_steps, (int, float)) and warmup_steps >= 0
                                                 and float(warmup_steps).is_integer()):
        raise ValueError(f"warmup_steps must be an integer >= 0 or None; got {warmup_steps!r}")
    warmup_steps = int(min(max(warmup_steps, 0), num_steps - 1))
    if schedule == "constant":
        return optax.constant_schedule(lr)
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
    raise ValueError(f"unknown schedule {schedule!r}; use 'cosine', 'exponential', 'constant' or a callable")


def _finite(name: str, value, allowed: str, ok: Callable[[float], bool]) -> float:
    """``value`` as a float, or a ValueError naming the option, the value and the allowed range."""
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if isinstance(value, bool) or not (math.isfinite(v) and ok(v)):
        raise ValueError(f"{name} must be {allowed}; got {value!r}")
    return v


def make_optimizer(schedule: Callable, b1: float = 0.9, b2: float = 0.999, weight_decay: float = 0.0,
                   clip_norm: float | None = None) -> optax.GradientTransformation:
    """Adam (AdamW if ``weight_decay > 0``), optionally after global-norm clipping.

    >>> make_optimizer(optax.constant_schedule(1e-3), clip_norm=0.0)
    Traceback (most recent call last):
    ...
    ValueError: clip_norm must be a finite number > 0 or None; got 0.0
    """
    _finite("b1", b1, "a finite number in [0, 1) (default 0.9)", lambda v: 0 <= v < 1)
    _finite("b2", b2, "a finite number in [0, 1) (default 0.999)", lambda v: 0 <= v < 1)
    _finite("weight_decay", weight_decay, "a finite number >= 0 (default 0)", lambda v: v >= 0)
    if clip_norm is not None:
        _finite("clip_norm", clip_norm, "a finite number > 0 or None", lambda v: v > 0)
    opt = optax.adamw(schedule, b1=b1, b2=b2, weight_decay=weight_decay) if weight_decay else optax.adam(
        schedule, b1=b1, b2=b2)
    if clip_norm is not None:
        opt = optax.chain(optax.clip_by_global_norm(float(clip_norm)), opt)
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


def map_method(
    model: Callable,
    plan: TrainingPlan,
    *,
    learning_rate: float = 1e-3,
    schedule: str | Callable = "cosine",
    warmup_steps: int | None = None,
    final_lr_fraction: float = 0.01,
    b1: float = 0.9,
    b2: float = 0.999,
    weight_decay: float = 0.0,
    clip_norm: float | None = None,
    optimizer: optax.GradientTransformation | None = None,
    guide: Callable | None = None,
) -> IterativeMethod:
    """Build the ``"map"`` method: SVI, point-mass guide, Optax Adam with a schedule.

    Parameters
    ----------
    model : callable
        ``model(x, y=None, num_data=None, deterministic=False)``.
    plan : TrainingPlan
    learning_rate, schedule, warmup_steps, final_lr_fraction
        See :func:`make_schedule` (default: cosine decay from 1e-3 over the planned steps).
    b1, b2, weight_decay, clip_norm
        See :func:`make_optimizer`.
    optimizer : optax.GradientTransformation, optional
        Replaces the default optimiser entirely.
    guide : callable, optional
        Default :class:`~numpyro.infer.autoguide.AutoDelta` of the model (when it has latent sites). An autoguide
        not yet set up is set up here on zeros of one batch's shape (only its structure is used), and every
        ``init`` starts from a copy of it as given, so that its initial values come from ``init``'s key and data.
    """
    if optimizer is None:
        sched = make_schedule(learning_rate, plan.num_steps, schedule, warmup_steps, final_lr_fraction)
        optimizer = make_optimizer(sched, b1, b2, weight_decay, clip_norm)
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
    svi = prepare_svi(SVI(model, guide, optim, Trace_ELBO()), plan, num_data=num_data)
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


register_method("map", map_method)
