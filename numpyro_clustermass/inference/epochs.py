"""The epoch driver: iterative methods trained by whole jit-compiled epochs, and the cache of compiled methods.

An iterative method (``init``/``step``/``evaluate``, :mod:`~numpyro_clustermass.inference.protocol`) is trained
by :func:`epoch_loop`: each epoch is one jit-compiled ``lax.scan`` of ``step`` over device-side shuffled
minibatches followed by the loss on the validation set, with one result fetched per epoch; around it, early
stopping (:class:`EarlyStopping`), divergence and explosion checks, Ctrl-C handling, checkpoints and a tqdm bar.
:func:`run_epochs` is the entry point for methods that train an inner model of their own (the MAP start of BBB,
NUTS, Laplace); :func:`~numpyro_clustermass.inference.fit` uses :func:`compiled_method` and :func:`epoch_loop`.

Examples
--------
>>> import jax, numpy as np
>>> from numpyro_clustermass.estimators import MSE
>>> from numpyro_clustermass.inference import TrainingData, TrainingPlan, get_method, standardize_model
>>> from numpyro_clustermass.inference.epochs import EarlyStopping, run_epochs
>>> rng = np.random.default_rng(0)
>>> x = rng.normal(size=(512, 2)).astype("float32"); y = (x[:, 0] + 0.1 * rng.normal(size=512)).astype("float32")
>>> plan = TrainingPlan(num_data=512, batch_size=128, steps_per_epoch=4, num_epochs=3, num_features=2)
>>> model = standardize_model(MSE(hidden=(8,), feature_names=("a", "b")).model)
>>> state, history, info = run_epochs(model, get_method("map")(model, plan), plan, jax.random.key(0),
...                                   TrainingData(x, y, None, None), EarlyStopping(patience=None))
>>> info["epochs_run"], history["train_loss"].shape
(3, (3,))
"""

from __future__ import annotations

import functools
import math
import signal
import threading
import time
from dataclasses import dataclass
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_clustermass.inference import sharding
from numpyro_clustermass.inference.svi import plateau_policy, with_lr_scale
from numpyro_clustermass.inference.protocol import (
    FitDivergedError,
    FitInterrupted,
    InferenceMethod,
    IterativeMethod,
    TrainingData,
    TrainingPlan,
    build_method,
    standardize_model,
)

__all__ = [
    "EarlyStopping",
    "run_epochs",
    "epoch_loop",
    "CompiledMethod",
    "compiled_method",
    "clear_cache",
    "gaussian_baseline_loss",
    "DIVERGENCE_FACTOR",
]

#: A loss this many times max(1, |reference|) above the reference (the initial loss, or a Gaussian that
#: ignores the features if that is larger) is an explosion, even when it stays finite.
DIVERGENCE_FACTOR = 1e3


@dataclass(frozen=True)
class EarlyStopping:
    """Early stopping on the validation loss: stop after ``patience`` epochs without an improvement of the
    per-datum loss larger than ``min_delta``; the best state is kept. ``patience=None``: never stop early."""

    patience: int | None = 20
    min_delta: float = 1e-4


def run_epochs(model: Callable, impl: IterativeMethod, plan: TrainingPlan, rng_key, data: TrainingData,
               early_stopping: EarlyStopping = EarlyStopping(), *, progress_bar: bool = False, desc: str = "epochs",
               divergence_factor: float | None = DIVERGENCE_FACTOR):
    """Train an iterative method (``init``/``step``/``evaluate``) by whole epochs, as :func:`fit` does: each
    epoch one jit-compiled ``lax.scan`` over device-side shuffled minibatches, early stopping on the
    validation loss, divergence and explosion checks, Ctrl-C handling, a tqdm bar.

    For methods that train an inner model of their own (a MAP start for BBB or NUTS).

    Returns
    -------
    (state, history, info)
        The best state (by validation loss; the last one without validation data), ``train_loss``/
        ``val_loss``/``epoch_time`` per epoch, and run facts (``epochs_run``, ``best_epoch``, ...).
    """
    if not isinstance(impl, IterativeMethod):
        raise TypeError(f"run_epochs trains an IterativeMethod (init/step/evaluate); got a {type(impl).__name__}")
    k_init, k_epochs = jax.random.split(rng_key)
    compiled = CompiledMethod(model, impl, plan)
    return epoch_loop(compiled, k_init, k_epochs, data, early_stopping,
                      lambda state, history, info: (state, history, info), progress_bar=progress_bar, desc=desc,
                      divergence_factor=divergence_factor)


class CompiledMethod:
    """A method built for one (estimator, method, options, plan) with its jit-compiled epoch and evaluation.

    Kept in a small LRU cache (:func:`compiled_method`) so that repeated fits of the same configuration
    (ensembles, benchmarks, tests) compile once; every fit still traces its epoch function at most once.

    Attributes
    ----------
    model : callable
        The standardised model the method was built for.
    impl : InferenceMethod
    plan : TrainingPlan
    traces : dict
        How often ``epoch`` and ``evaluate`` were traced (compiled) so far.
    predict_cache : dict
        Compiled posterior functions, shared by the fits of this entry.
    epoch : callable or None
        ``epoch(state, base_key, index, x, y, x_check, y_check, mesh=None) -> (state, train loss, check loss)``,
        jit-compiled (``mesh``, static: a data-parallel mesh of :mod:`~numpyro_clustermass.inference.sharding`);
        None for a :class:`~numpyro_clustermass.inference.protocol.OneShotMethod`.
    initial_loss : callable or None
        The jit-compiled ``evaluate``, for the loss of the initial state (None for a one-shot method).
    """

    def __init__(self, model, impl: InferenceMethod, plan: TrainingPlan):
        self.model, self.impl, self.plan = model, impl, plan
        self.traces = {"epoch": 0, "evaluate": 0}
        self.predict_cache: dict = {}  # compiled posterior functions, shared by the fits of this entry
        n, bsz, steps = plan.num_data, plan.batch_size, plan.steps_per_epoch

        def evaluate(state, x, y, guard_only):
            self.traces["evaluate"] += 1
            fn = impl.check if guard_only and impl.check is not None else impl.evaluate
            return fn(state, x, y)

        def epoch(state, base_key, index, x, y, x_check, y_check, mesh=None, guard_only=False):
            """One epoch of steps over shuffled minibatches, then the loss of the new state on the check set
            (validation data, or one training batch), all in one compiled call with one result to fetch.
            ``mesh`` (static): data parallel, each minibatch split over its devices (:mod:`.sharding`).
            ``guard_only`` (static): the check set is a training batch whose loss only guards against divergence;
            the method's ``check`` computes it where it has one (a cheaper estimate), else ``evaluate``."""
            self.traces["epoch"] += 1  # runs at trace time only
            rng_key = jax.random.fold_in(base_key, index)
            perm = jax.random.permutation(rng_key, n)[: steps * bsz]
            xb = jnp.take(x, perm, axis=0).reshape(steps, bsz, x.shape[-1])
            yb = jnp.take(y, perm, axis=0).reshape(steps, bsz)
            xb, yb = sharding.shard_batches((xb, yb), mesh)  # no-ops without a mesh
            x_check, y_check = sharding.shard_rows(x_check, mesh), sharding.shard_rows(y_check, mesh)

            def body(s, batch):
                s, loss = impl.step(s, *batch)
                return sharding.constrain_replicated(s, mesh), loss

            state, losses = jax.lax.scan(body, state, (xb, yb))
            return state, jnp.mean(losses) / n, evaluate(state, x_check, y_check, guard_only)

        iterative = isinstance(impl, IterativeMethod)
        self.epoch = jax.jit(epoch, static_argnames=("mesh", "guard_only")) if iterative else None
        # the initial loss, the reference of the explosion check (not counted in ``traces``: one call a fit)
        self.initial_loss = jax.jit(impl.evaluate) if iterative else None


class _LRU:
    def __init__(self, size: int):
        self.size, self.data = size, {}

    def get(self, key):
        if key in self.data:
            self.data[key] = self.data.pop(key)
            return self.data[key]
        return None

    def put(self, key, value):
        self.data[key] = value
        while len(self.data) > self.size:
            self.data.pop(next(iter(self.data)))

    def clear(self):
        self.data.clear()


_COMPILED = _LRU(8)


def clear_cache() -> None:
    """Forget the compiled training functions kept for repeated fits of the same configuration."""
    _COMPILED.clear()


def _cache_key(est, method, options, plan):
    try:  # options: a frozen options dataclass, or a dict for a method registered without an options class
        opts = tuple(sorted(options.items())) if isinstance(options, Mapping) else options
        key = (est, method, opts, plan)
        hash(key)
        return key
    except TypeError:
        return None


def gaussian_baseline_loss(y_std) -> float:
    """Per-datum negative log likelihood of standardised targets under N(0, 1): a model ignoring the features."""
    y = np.asarray(jax.device_get(y_std), dtype=np.float64)
    return float(0.5 * math.log(2 * math.pi) + 0.5 * np.mean(y**2))


def compiled_method(estimator, method: str, options, plan: TrainingPlan) -> CompiledMethod:
    """The registered ``method`` built for ``estimator``'s model and ``plan`` with ``options`` (an instance of the
    method's options class, or a dict for a method registered without one), with its compiled epoch: from the
    cache when this configuration was built before (and is hashable), else built and cached.

    Fits of one configuration share the entry's method and compiled functions; everything that depends on a fit
    is in its state (:mod:`~numpyro_clustermass.inference.protocol`), so sharing them is safe.
    """
    key = _cache_key(estimator, method, options, plan)
    compiled = _COMPILED.get(key) if key is not None else None
    if compiled is None:
        model = standardize_model(estimator.model)
        impl = build_method(method, model, plan, options)
        compiled = CompiledMethod(model, impl, plan)
        if key is not None:
            _COMPILED.put(key, compiled)
    return compiled


class _CtrlCBetweenEpochs:
    """Ctrl-C during training stops it between two epochs, not wherever Python happens to be.

    Python raises the ``KeyboardInterrupt`` of a SIGINT at the next bytecode, and one raised inside a ``__del__``
    (a ``zipfile.ZipFile`` collected during a checkpoint, say) is printed as "Exception ignored" and lost:
    training then ran on, once for 120 s in CI until the test killed it. While installed, the first Ctrl-C is
    only recorded and :meth:`check` raises it at the next epoch boundary (an epoch is one compiled call, which a
    SIGINT does not interrupt either); a second Ctrl-C raises at once. Installed only on the main thread over
    Python's default handler, so a handler of the caller's own (a notebook kernel's, a server's) is left alone.
    """

    def __init__(self):
        self.pending = False
        self._installed = (threading.current_thread() is threading.main_thread()
                           and signal.getsignal(signal.SIGINT) is signal.default_int_handler)
        if self._installed:
            signal.signal(signal.SIGINT, self._record)

    def _record(self, signum, frame):
        if self.pending:
            raise KeyboardInterrupt
        self.pending = True

    def check(self):
        if self.pending:
            self.pending = False
            raise KeyboardInterrupt

    def restore(self):
        if self._installed:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            self._installed = False


def epoch_loop(compiled: CompiledMethod, k_init, k_epochs, data: TrainingData, early_stopping: EarlyStopping,
               make_result: Callable, *, progress_bar: bool = False, desc: str = "epochs",
               divergence_factor: float | None = DIVERGENCE_FACTOR, checkpoint=None, checkpoint_every: int = 10,
               resume=None):
    """Train ``compiled``'s :class:`~numpyro_clustermass.inference.protocol.IterativeMethod` by whole epochs: the loop behind :func:`run_epochs` and
    :func:`~numpyro_clustermass.inference.fit`.

    Each epoch is one call of ``compiled.epoch`` (a jit-compiled ``lax.scan`` over device-side shuffled
    minibatches, then the loss on the check set); around it: early stopping on the validation loss (the best
    state is kept), divergence and explosion checks (:class:`FitDivergedError`), Ctrl-C handling
    (:class:`FitInterrupted`), checkpoints and a tqdm bar.

    Parameters
    ----------
    compiled : CompiledMethod
        The method and its compiled epoch (its ``plan`` sets the batch size and the number of epochs).
    k_init, k_epochs : PRNG keys
        The key of ``init`` and the base key of the epochs' shuffling (folded with the epoch number).
    data : TrainingData
        Standardised device arrays; without validation data, one training batch is the check set.
    early_stopping : EarlyStopping
    make_result : callable
        ``make_result(state, history, info)`` builds what is returned (and raised with
        :class:`FitDivergedError`/:class:`FitInterrupted` as ``error.fit``); with ``checkpoint`` it must have a
        ``save(path)`` method (a :class:`~numpyro_clustermass.inference.Fit`).
    progress_bar : bool
    desc : str
        Label of the progress bar.
    divergence_factor : float or None
        See :func:`~numpyro_clustermass.inference.fit`.
    checkpoint, checkpoint_every
        Save ``make_result(...)`` of the best state so far to ``checkpoint`` every ``checkpoint_every`` epochs,
        at the end and when interrupted.
    resume : object, optional
        A result to continue (its ``state`` and ``history``): the loss history and the epoch count go on.
    """
    if not isinstance(compiled.impl, IterativeMethod):
        raise TypeError(f"epoch_loop trains an IterativeMethod (init/step/evaluate); got a "
                        f"{type(compiled.impl).__name__}")
    plan = compiled.plan
    x_train, y_train, x_val, y_val = data
    patience, min_delta = early_stopping.patience, early_stopping.min_delta
    make_fit = make_result
    from tqdm.auto import tqdm

    impl = compiled.impl
    bsz = plan.batch_size
    traces_before = dict(compiled.traces)

    def traces():
        return {k: v - traces_before[k] for k, v in compiled.traces.items()}

    # data placed on a data-parallel mesh (fit's devices=, inference/sharding.py): the state is replicated on it
    # and every minibatch split over it
    mesh = sharding.data_mesh_of(x_train)
    sharding.check_batch_size(bsz, mesh, x_train.shape[0])
    x0, y0 = x_train[:bsz], y_train[:bsz]
    if mesh is not None:  # init (op by op for some methods) on the default device, then its state replicated
        x0, y0 = jnp.asarray(np.asarray(x0)), jnp.asarray(np.asarray(y0))
    state = impl.init(k_init, x0, y0) if resume is None else resume.state
    state = sharding.replicate(state, mesh)
    has_val = x_val is not None
    x_check, y_check = (x_val, y_val) if has_val else (x_train[:bsz], y_train[:bsz])
    # without validation data the check batch's loss only guards against divergence: the method's cheaper check
    epoch_jit = functools.partial(compiled.epoch, guard_only=not has_val,
                                  **({} if mesh is None else {"mesh": mesh}))
    history = {"train_loss": [], "val_loss": [], "epoch_time": []}
    start = 0
    if resume is not None:  # continue the loss history and the epoch count (which seeds the shuffling)
        history = {k: [float(v) for v in np.asarray(resume.history.get(k, []))] for k in history}
        start = min(len(v) for v in history.values())
        history = {k: v[:start] for k, v in history.items()}
    best = (math.inf, state, -1)
    wait = 0
    plateau = plateau_policy(state)  # the "plateau" schedule's policy, or None
    reductions = []  # epochs after which the plateau schedule lowered the rate
    stopped_early = False
    baseline = gaussian_baseline_loss(y_check)
    initial = float(compiled.initial_loss(state, x_check, y_check)) if compiled.initial_loss else math.nan
    ref = max(initial, baseline) if math.isfinite(initial) else baseline
    limit = math.inf if divergence_factor is None else ref + divergence_factor * max(1.0, abs(ref))

    def hist():
        return {k: np.asarray(v, dtype=np.float64) for k, v in history.items()}

    def save_checkpoint(extra):
        if checkpoint is not None:
            done = len(history["train_loss"])
            kept = best[1] if has_val and best[2] >= 0 else state
            make_fit(kept, hist(), dict(epochs_run=done, best_epoch=best[2] if has_val else done - 1,
                                        stopped_early=False, best_val_loss=best[0] if has_val else None,
                                        traces=traces(), initial_loss=initial, **extra)).save(checkpoint)

    bar = tqdm(range(start, start + plan.num_epochs), desc=desc, unit="epoch", disable=not progress_bar,
               leave=False)
    ep = start
    ctrl_c = _CtrlCBetweenEpochs()
    try:
        for ep in bar:
            ctrl_c.check()
            t0 = time.perf_counter()
            # the loss of the new state is evaluated on the validation set, or on one training batch without
            # one, so that the state we keep is always one whose loss was seen to be finite
            new_state, train_loss, val_loss = epoch_jit(state, k_epochs, ep, x_train, y_train, x_check, y_check)
            train_loss, val_loss = (float(v) for v in jax.device_get((train_loss, val_loss)))
            history["epoch_time"].append(time.perf_counter() - t0)
            history["train_loss"].append(train_loss)
            history["val_loss"].append(val_loss if has_val else math.nan)
            finite = math.isfinite(train_loss) and math.isfinite(val_loss)
            if not finite or max(train_loss, val_loss) > limit:
                what = "training" if not math.isfinite(train_loss) or train_loss > limit else "validation"
                bad = train_loss if what == "training" else val_loss
                kept = "the initial parameters" if ep == 0 else f"the parameters after epoch {ep - 1}"
                err_fit = make_fit(state, hist(), dict(epochs_run=ep, best_epoch=ep - 1, diverged_at_epoch=ep,
                                                       stopped_early=False, traces=traces(),
                                                       best_val_loss=best[0] if has_val else None,
                                                       initial_loss=initial))
                how = ("non-finite" if not finite else
                       f"exploding (above {limit:.4g} = {ref:.4g} + divergence_factor {divergence_factor:g} x "
                       f"max(1, |{ref:.4g}|), the initial loss per datum)")
                raise FitDivergedError(
                    f"{how} {what} loss ({bad:.4g}) in epoch {ep}: training stopped (diverged). The last "
                    f"acceptable state, {kept}, is kept in error.fit. Lower the learning rate, clip gradients "
                    f"(clip_norm=...) or check the inputs.",
                    fit=err_fit,
                )
            state = new_state
            if not has_val:
                val_loss = train_loss
            bar.set_postfix(loss=f"{train_loss:.4f}", val=f"{val_loss:.4f}" if has_val else "-",
                            **({} if plateau is None else {"lr": f"x{plateau['lr_scale']:g}"}))
            if val_loss < best[0] - min_delta:
                best, wait = (val_loss, state, ep), 0
            else:
                wait += 1
                if val_loss < best[0]:
                    best = (val_loss, state, ep)
                if has_val and patience is not None and wait >= patience:
                    stopped_early = ep < start + plan.num_epochs - 1  # patience ran out with epochs left
                    break
            if plateau is not None and wait >= plateau["patience"]:  # wait: epochs since min_delta was beaten
                # the "plateau" schedule: go on from the best state with a lower learning rate, or stop; without
                # validation data the training loss decides and training runs for num_epochs, as without it
                if plateau["reductions_done"] < plateau["reductions"]:
                    plateau["reductions_done"] += 1
                    plateau["lr_scale"] *= plateau["factor"]
                    state = with_lr_scale(best[1], plateau["lr_scale"])
                    wait = 0  # the plateau clock (and early stopping's patience) start afresh at the lower rate
                    reductions.append(ep)
                elif has_val:
                    stopped_early = ep < start + plan.num_epochs - 1
                    break
            if (ep + 1 - start) % checkpoint_every == 0:
                save_checkpoint({"checkpoint": True})
        ctrl_c.check()  # a Ctrl-C during the last epoch still stops: the caller's next step is not run
    except KeyboardInterrupt as exc:
        if isinstance(exc, FitInterrupted):
            raise
        epochs_run = min(len(v) for v in history.values())  # an epoch counts once all its entries are in
        history = {k: v[:epochs_run] for k, v in history.items()}
        final_state = best[1] if has_val and best[2] >= 0 else state
        kept = (f"the best state (epoch {best[2]}, validation loss {best[0]:.4f})" if has_val and best[2] >= 0
                else ("the initial parameters" if epochs_run == 0 else f"the state after epoch {epochs_run - 1}"))
        err_fit = make_fit(final_state, hist(), dict(
            epochs_run=epochs_run, best_epoch=best[2] if has_val else epochs_run - 1, stopped_early=False,
            interrupted=True, best_val_loss=best[0] if has_val else None, traces=traces(), initial_loss=initial))
        saved = ""
        if checkpoint is not None:
            err_fit.save(checkpoint)
            saved = f" and saved to {str(checkpoint)!r}"
        at = f"in epoch {ep}" if epochs_run <= ep else f"after its last epoch ({ep})"
        raise FitInterrupted(
            f"training interrupted {at} after {epochs_run} complete epochs; {kept} is kept in "
            f"error.fit (in a notebook: sys.last_value.fit){saved}", fit=err_fit, checkpoint=checkpoint) from None
    finally:
        ctrl_c.restore()
        bar.close()
    epochs_run = len(history["train_loss"])
    final_state = best[1] if has_val else state
    result = make_fit(final_state, hist(), dict(
        epochs_run=epochs_run, best_epoch=best[2] if has_val else epochs_run - 1, stopped_early=stopped_early,
        best_val_loss=best[0] if has_val else None, traces=traces(), initial_loss=initial,
        baseline_loss=baseline, best_loss=best[0] if has_val else history["train_loss"][-1],
        **({} if plateau is None else {"lr_reduced_after_epochs": reductions}),
    ))
    if checkpoint is not None:
        result.save(checkpoint)
    return result
