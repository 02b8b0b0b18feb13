"""The ``"nuts"`` method: Hamiltonian Monte Carlo with the No-U-Turn Sampler over a model's latent sites.

NUTS (Hoffman & Gelman 2014) samples every latent sample site of the model it is given: the Bayesian weights
of the estimator's twin (:mod:`numpyro_clustermass.bnn`; by default only the last layer, with the trunk fixed at a
MAP fit), or the few scalar latents of a plain NumPyro model (a Bayesian M-sigma power law). It is the exact
baseline that the approximate methods are compared with.

What the method does, in order:

1. Train the model with the registered ``"map"`` method (or take a given MAP :class:`Fit`, ``init=fit``).
2. Fix the model's ``param`` sites (the trunk of a last-layer BNN, the MSE scatter) at their MAP values.
   From the MAP values of the latent sites, find the posterior mode and its Laplace approximation; use its
   covariance as NUTS's (dense) inverse mass matrix and start each chain at its own draw from it. Without this
   preconditioning the head weights of a well-trained MDN are so correlated (the trunk's features are nearly
   collinear) that NUTS needs hundreds of leapfrog steps per draw. When only the head is Bayesian, the
   trunk's features are computed once and the head alone is sampled (same posterior, same site names).
   Steps per draw, time, R-hat and ESS of both metrics are measured by
   ``python3 benchmarks/bench_bayesian_methods.py`` (figures belong to its output, not to this docstring). The
   step count stays high because a well-trained MDN's posterior is far from Gaussian (Hessian eigenvalues
   over 4 decades, a few divergences); ``num_warmup``/``num_samples`` trade time for ESS.
3. Run NUTS on the *full* training set (no minibatch scale), chains ``"vectorized"`` on one device or
   ``"parallel"`` across devices (``chain_method="auto"`` picks).
4. Judge convergence in *function space*: split R-hat and bulk/tail ESS of every held-out cluster's predictive
   mean (the validation split), with :func:`numpyro_clustermass.diagnostics.function_space_convergence`. In
   weight space, R-hat of a neural net never reaches 1 because of its symmetries (permuting hidden units,
   flipping signs), while the functions it samples can be well mixed (DESIGN.md, "Known traps"); the weight-space
   figure is reported too, for comparison.

``fit.info`` holds ``function_space`` (``max_rhat``, ``min_ess_bulk``, ``min_ess_tail``, ...), ``converged``
(max R-hat below ``rhat_threshold``), ``weight_space_max_rhat``, ``num_divergent``, ``convergence_problems`` and the
sampler's timing; ``fit.history`` the sampler's statistics per draw (:data:`SAMPLE_STATS`: divergences, leapfrog
steps, energy, step size), which :func:`numpyro_clustermass.diagnostics.fit_to_arviz` puts in ``sample_stats``.

A run that may be wrong says so: a function-space R-hat at or above ``rhat_threshold``, any divergent transition,
or a minimum bulk ESS below ``min_ess`` (default 100 per chain, Vehtari et al. 2021) issues a
:class:`~numpyro_clustermass.diagnostics.ConvergenceWarning` with the numbers and the fix; with
``on_convergence="raise"`` it is a :class:`~numpyro_clustermass.diagnostics.ConvergenceError` that keeps the draws
(``error.state``) and the diagnostics (``error.info``). Every option is checked when ``fit`` is called, before any
training or compilation.

Examples
--------
>>> import numpy as np
>>> from numpyro_clustermass.estimators import MDN
>>> from numpyro_clustermass.inference import fit
>>> rng = np.random.default_rng(0)
>>> y = rng.uniform(13.5, 15.0, 300); x = y[:, None] + 0.1 * rng.normal(size=(300, 3))
>>> f = fit(MDN(2, (8,), feature_names=("a", "b", "c")), (x, y), method="nuts", num_epochs=50,  # doctest: +SKIP
...         batch_size=64, num_warmup=50, num_samples=50, max_tree_depth=5, progress_bar=False)
>>> "max_rhat" in f.info["function_space"], f.info["num_chains"], f.info["trunk_precomputed"]  # doctest: +SKIP
(True, 2, True)

References
----------
Hoffman, M. D., Gelman, A. (2014). The No-U-Turn Sampler: adaptively setting path lengths in Hamiltonian Monte
Carlo. JMLR 15, 1593-1623.
Neal, R. M. (1996). Bayesian Learning for Neural Networks. Springer.
Vehtari, A., Gelman, A., Simpson, D., Carpenter, B., Buerkner, P.-C. (2021). Rank-normalization, folding, and
localization: an improved R-hat. Bayesian Analysis 16, 667-718.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Any, Callable, ClassVar, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro import handlers
from numpyro.diagnostics import split_gelman_rubin
from numpyro.infer import MCMC, NUTS
from numpyro.infer.initialization import init_to_value

from numpyro_clustermass.diagnostics import (
    ConvergenceError,
    ConvergenceWarning,
    convergence_problems,
    function_space_convergence,
)
from numpyro_clustermass.inference._bayes import (
    bayesian_model,
    check_bayesian_layers,
    check_init,
    fixed_trunk_problem,
    map_params_from,
    net_site_values,
    point_params,
    require_latents,
    substitute_params,
    tile,
)
from numpyro_clustermass.inference import sharding
from numpyro_clustermass.inference.laplace import gaussian_at_mode, nuts_start, start_at_values
from numpyro_clustermass.inference.options import (
    MethodOptions,
    check_bool,
    check_choice,
    check_float,
    check_int,
    nested_options,
)
from numpyro_clustermass.inference.protocol import (
    OneShotMethod,
    RunResult,
    TrainingData,
    TrainingPlan,
    register_method,
)
from numpyro_clustermass.inference.svi import MapStartOptions
from numpyro_clustermass.models import OBS_SITE

__all__ = ["nuts_method", "NUTSOptions", "MCMCState", "predictive_means", "DEFAULT_NUM_DRAWS", "RHAT_THRESHOLD",
           "MIN_ESS_PER_CHAIN", "MAX_TREE_DEPTH", "SAMPLE_STATS"]

#: Default number of posterior draws mixed per predictive (thinned from all chains).
DEFAULT_NUM_DRAWS = 200
#: Function-space split R-hat below which the chains count as converged (Vehtari et al. 2021 advise 1.01 for
#: final results; the package's benchmark target is 1.05).
RHAT_THRESHOLD = 1.05
#: Minimum bulk ESS per chain below which the run gets a ConvergenceWarning (Vehtari et al. 2021 ask for 100 per
#: chain before R-hat and quantiles are trusted).
MIN_ESS_PER_CHAIN = 100
#: Largest ``max_tree_depth`` accepted: a draw takes up to ``2**max_tree_depth`` leapfrog steps.
MAX_TREE_DEPTH = 30
#: Per-draw statistics of the sampler kept in ``fit.history`` (flattened over chains, then draws), under the last
#: part of each name (``"step_size"``): ``diverging``, ``num_steps`` (leapfrog steps), ``energy`` (the Hamiltonian),
#: ``potential_energy``, ``accept_prob`` and the step size.
SAMPLE_STATS = ("diverging", "num_steps", "energy", "potential_energy", "accept_prob", "adapt_state.step_size")
#: Held-out clusters used for the function-space diagnostics (the first ones of the validation split).
MAX_DIAGNOSTIC_CLUSTERS = 2000


class MCMCState(NamedTuple):
    """The result of an MCMC method: weight-space samples and the fixed point parameters.

    Attributes
    ----------
    samples : dict
        Latent site values with leading axes ``(chains, draws)``.
    fixed : dict
        Values of the model's ``param``/``mutable`` sites, held at the MAP fit.
    """

    samples: dict
    fixed: dict


def predictive_means(model: Callable, obs_site: str = OBS_SITE, **model_kwargs) -> Callable:
    """A jit-compiled ``f(draws, x) -> (S, n)``: the mean of the likelihood at ``obs_site`` for each draw.

    ``draws`` are site values with a leading draw axis (weights and fixed params); the model runs once per draw
    (``lax.map``), never through an unjitted ``Predictive``.
    """

    def one(draw, x):
        tr = handlers.trace(handlers.seed(handlers.substitute(model, data=draw), 0)).get_trace(x, None,
                                                                                              **model_kwargs)
        fn = tr[obs_site]["fn"]
        return jnp.broadcast_to(fn.mean, (x.shape[0],))

    @jax.jit
    def f(draws, x):
        return jax.lax.map(lambda d: one(d, x), draws)

    return f


def _weight_space_max_rhat(samples: Mapping) -> float:
    worst = -np.inf
    for v in samples.values():
        v = np.asarray(v)
        if v.shape[0] < 2 or v.shape[1] < 4:
            return float("nan")
        r = np.asarray(split_gelman_rubin(v))
        if np.isfinite(r).any():
            worst = max(worst, float(np.nanmax(r)))
    return worst


def _report_convergence(problems: list[str], state: MCMCState, info: dict, target_accept_prob: float) -> None:
    """Warn (or raise, ``on_convergence="raise"``) about a run whose draws may not represent the posterior."""
    fixes = []
    if any(("R-hat" in p or "ESS" in p) and "not checked" not in p for p in problems):
        fewer = ("" if info.get("bayesian_layers") == "last" else
                 " or, for a network, sample fewer weights (bayesian_layers='last')")
        fixes.append(f"run longer (num_warmup={info['num_warmup']}, num_samples={info['num_samples']} per chain "
                     f"now){fewer}")
    if any("divergent" in p for p in problems):
        fixes.append(f"raise target_accept_prob (now {target_accept_prob:g}) toward 0.95, or use a tighter "
                     f"weight_prior")
    if any("2 chains" in p for p in problems):
        fixes.append("use num_chains >= 2")
    message = (f"nuts: the posterior draws may not be reliable: {'; '.join(problems)}. Fix: {'; '.join(fixes)}. "
               f"Per-cluster figures are in fit.info['function_space'].")
    if info["on_convergence"] == "raise":
        raise ConvergenceError(message + " (on_convergence='raise'; error.fit holds the fit, error.state the "
                               "draws, error.info the diagnostics)", problems, state=state, info=info)
    # stack: _report_convergence <- run <- fit <- the caller of fit
    warnings.warn(message + " Pass on_convergence='raise' to make this an error.", ConvergenceWarning,
                  stacklevel=4)


def _chain_placement(chain_method: str, num_chains: int, mesh):
    """``(method name, chain_method for MCMC, devices or None)`` of NUTSOptions' ``chain_method``.

    On a data-parallel mesh (``fit(..., devices=...)``; the data given to ``run`` lives on it), ``"auto"`` and
    ``"parallel"`` spread the chains over its devices with :func:`~numpyro_clustermass.inference.sharding.chain_map`
    (a ValueError here, before any training, unless ``num_chains`` is a multiple of the devices). Without one,
    ``"auto"`` is ``"parallel"`` (NumPyro's ``pmap`` over the first local devices) when there are enough devices.
    """
    if chain_method == "auto":
        enough = mesh is not None or jax.local_device_count() >= num_chains
        chain_method = "parallel" if num_chains > 1 and enough else "vectorized"
    if chain_method != "parallel" or num_chains == 1:
        return chain_method, chain_method, None
    if mesh is not None:  # each device its own while-loops, as with pmap, on the devices asked for
        return chain_method, sharding.chain_map(mesh, num_chains), sharding.mesh_devices(mesh)
    # numpyro's pmap over the first local devices (it runs the chains sequentially, with a warning, without enough)
    devs = jax.local_devices()[:num_chains] if jax.local_device_count() >= num_chains else None
    return chain_method, chain_method, devs


@dataclasses.dataclass(frozen=True, kw_only=True)
class NUTSOptions(MethodOptions):
    """Options of the ``"nuts"`` method (see the module docstring).

    Attributes
    ----------
    weight_prior : Distribution, dict or callable, optional
        Prior on the Bayesian weights; default None: ``Normal(0, 1)``.
    bayesian_layers : "all", "last", str or sequence, optional
        Default None: ``"last"``, the head is sampled and the trunk held at the MAP fit. ``"all"`` samples every
        weight, which for a net of a few hundred weights mixes badly in weight space and slowly in function space.
    num_warmup : int, default 300
        Warm-up draws per chain, >= 0.
    num_samples : int, default 300
        Kept draws per chain, >= 1.
    num_chains : int, default 2
        >= 1; R-hat needs at least 2 (with one, the run warns that convergence was not checked).
    chain_method : {"auto", "vectorized", "parallel", "sequential"}, default "auto"
        ``"auto"``: ``"parallel"`` when there are at least ``num_chains`` devices, else ``"vectorized"``. With
        ``fit(..., devices=...)``, ``"auto"`` and ``"parallel"`` spread the chains evenly over those devices
        (:func:`~numpyro_clustermass.inference.sharding.chain_map`: ``num_chains`` a multiple of their number, one
        chain per device when equal); without, ``"parallel"`` is NumPyro's ``pmap`` over the first local devices.
        ``fit.info["chain_devices"]`` lists the ids of the devices the chains ran on.
    target_accept_prob : float, default 0.8
        In (0, 1); raise it toward 0.95 against divergent transitions.
    max_tree_depth : int, default 10
        In [1, 30] (:data:`MAX_TREE_DEPTH`); a draw takes up to ``2**max_tree_depth`` leapfrog steps.
    dense_mass : bool, default False
        With ``mass_matrix="adapt"``: adapt a dense mass matrix.
    mass_matrix : {"laplace", "adapt"}, default "laplace"
        ``"laplace"``: the inverse mass matrix is the covariance of the Laplace approximation at the posterior mode
        (:func:`~numpyro_clustermass.inference.laplace.gaussian_at_mode`, dense, not adapted; warm-up adapts the step
        size only) and every chain starts at its own draw from that approximation, so that R-hat compares chains
        started apart. ``"adapt"``: NUTS's windowed adaptation of a diagonal (or, with ``dense_mass=True``, dense)
        mass matrix, chains started at the MAP weights.
    init : "map" or Fit, default "map"
        Train a MAP fit first (options ``map_options``), or start from a given MAP fit of the same data.
    map_options : MapStartOptions or dict, default MapStartOptions()
        Options of the internal MAP fit (``num_epochs``, ``patience``, ``learning_rate``, ...); a dict is converted.
    num_draws : int, default 200 (:data:`DEFAULT_NUM_DRAWS`)
        Default number of draws mixed per posterior (a random subset of all chains' samples), >= 1.
    rhat_threshold : float, default 1.05 (:data:`RHAT_THRESHOLD`)
        ``fit.info["converged"]`` is True when the function-space max R-hat is below it; > 1.
    min_ess : float or None, default None
        Minimum function-space bulk ESS below which the run is reported, > 0; None: ``100 * num_chains``
        (:data:`MIN_ESS_PER_CHAIN`).
    on_convergence : {"warn", "raise"}, default "warn"
        What a run with an R-hat at or above ``rhat_threshold``, divergent transitions or a bulk ESS below
        ``min_ess`` does: a :class:`~numpyro_clustermass.diagnostics.ConvergenceWarning`, or a
        :class:`~numpyro_clustermass.diagnostics.ConvergenceError` carrying the state and info (needs
        ``num_chains >= 2``).

    Examples
    --------
    >>> NUTSOptions(num_chains=4, target_accept_prob=0.9).to_dict()
    {'num_chains': 4, 'target_accept_prob': 0.9}
    >>> NUTSOptions(max_tree_depth=40)
    Traceback (most recent call last):
    ...
    ValueError: method 'nuts': max_tree_depth must be an integer in [1, 30] (a draw takes up to 2**max_tree_depth
    leapfrog steps; default 10); got 40
    """

    method_name: ClassVar[str] = "nuts"

    weight_prior: Any = None
    bayesian_layers: Any = None
    num_warmup: int = 300
    num_samples: int = 300
    num_chains: int = 2
    chain_method: str = "auto"
    target_accept_prob: float = 0.8
    max_tree_depth: int = 10
    dense_mass: bool = False
    mass_matrix: str = "laplace"
    init: Any = "map"
    map_options: MapStartOptions = dataclasses.field(default_factory=MapStartOptions)
    num_draws: int = DEFAULT_NUM_DRAWS
    rhat_threshold: float = RHAT_THRESHOLD
    min_ess: float | None = None
    on_convergence: str = "warn"

    def __post_init__(self):
        m = self.method_name
        num_chains = check_int(m, "num_chains", self.num_chains, 1, hint=" (2 or more for R-hat)")
        values = {
            "bayesian_layers": check_bayesian_layers(self.bayesian_layers),
            "num_chains": num_chains,
            "num_warmup": check_int(m, "num_warmup", self.num_warmup, 0),
            "num_samples": check_int(m, "num_samples", self.num_samples, 1),
            "num_draws": check_int(m, "num_draws", self.num_draws, 1),
            "target_accept_prob": check_float(
                m, "target_accept_prob", self.target_accept_prob, 0, 1, low_open=True, high_open=True,
                hint=" (default 0.8; raise it toward 0.95 against divergences)"),
            "max_tree_depth": check_int(
                m, "max_tree_depth", self.max_tree_depth, 1, MAX_TREE_DEPTH,
                hint=" (a draw takes up to 2**max_tree_depth leapfrog steps; default 10)"),
            "rhat_threshold": check_float(m, "rhat_threshold", self.rhat_threshold, 1, low_open=True,
                                          hint=" (default 1.05)"),
            "min_ess": None if self.min_ess is None else check_float(m, "min_ess", self.min_ess, 0, low_open=True),
            "on_convergence": check_choice(m, "on_convergence", self.on_convergence, ("warn", "raise")),
            "dense_mass": check_bool(m, "dense_mass", self.dense_mass),
            "mass_matrix": check_choice(m, "mass_matrix", self.mass_matrix, ("laplace", "adapt")),
            "chain_method": check_choice(m, "chain_method", self.chain_method,
                                         ("auto", "vectorized", "parallel", "sequential")),
        }
        if values["on_convergence"] == "raise" and num_chains < 2:
            raise ValueError(f"method 'nuts': on_convergence='raise' needs num_chains >= 2 to judge convergence "
                             f"(R-hat compares chains); got num_chains={num_chains}")
        check_init(m, self.init)
        values["map_options"] = nested_options(m, "map_options", MapStartOptions, self.map_options)
        for name, value in values.items():
            object.__setattr__(self, name, value)


def _with_fixed_params(model: Callable, x, y=None, *, fixed, **kwargs):
    """``model(x, y, **kwargs)`` with its param sites at ``fixed``: the model NUTS samples, ``fixed`` an argument."""
    return substitute_params(model, fixed)(x, y, **kwargs)


def nuts_method(model: Callable, plan: TrainingPlan, options: NUTSOptions | None = None,
                **kwargs) -> OneShotMethod:
    """Build the ``"nuts"`` method (see the module docstring).

    Parameters
    ----------
    model : callable
        The estimator's model (its Bayesian twin is sampled) or a NumPyro model with latent sample sites.
    plan : TrainingPlan
    options : NUTSOptions, optional
        Default ``NUTSOptions()``.
    **kwargs
        Instead of ``options``: its fields, converted with :class:`NUTSOptions`.

    Returns
    -------
    OneShotMethod
    """
    opts = NUTSOptions.coerce(options, kwargs)
    weight_prior, bayesian_layers, init, map_options = (opts.weight_prior, opts.bayesian_layers, opts.init,
                                                         opts.map_options)
    num_warmup, num_samples, num_chains, num_draws = opts.num_warmup, opts.num_samples, opts.num_chains, opts.num_draws
    chain_method, target_accept_prob, max_tree_depth = opts.chain_method, opts.target_accept_prob, opts.max_tree_depth
    dense_mass, mass_matrix, rhat_threshold = opts.dense_mass, opts.mass_matrix, opts.rhat_threshold
    min_ess, on_convergence = opts.min_ess, opts.on_convergence
    ess_floor = float(MIN_ESS_PER_CHAIN * num_chains) if min_ess is None else min_ess
    twin, _ = bayesian_model(model, weight_prior, bayesian_layers, "last", plan.num_features)

    def run(rng_key, data: TrainingData, plan_: TrainingPlan, progress_bar: bool):
        t0 = time.perf_counter()
        method_, run_chains, chain_devices = _chain_placement(chain_method, int(num_chains),
                                                              sharding.data_mesh_of(data.x_train))
        k_map, k_mcmc = jax.random.split(rng_key)
        map_params, info = map_params_from(init, model, plan_, data, k_map, progress_bar, map_options, "nuts")
        t_map = time.perf_counter() - t0
        sites = require_latents(twin, data.x_train[:2], data.y_train[:2], "nuts")
        fixed = point_params(map_params, sites)
        start = net_site_values(map_params, sites)
        sampled, fixed_s, x_s, trunk_pre = fixed_trunk_problem(twin, fixed, data.x_train, plan_.num_features)
        # the fixed params (the MAP trunk and point params) reach the model as an argument, with the data: the
        # sampler's program then holds neither as constants, so the next fit of this model with these shapes finds
        # it in the persistent compilation cache instead of compiling it again (jit_model_args below)
        target = functools.partial(_with_fixed_params, sampled, deterministic=True)
        k_lap, k_start, k_mcmc = jax.random.split(k_mcmc, 3)
        init_params, lap_info, nuts_kw = None, {}, {"dense_mass": dense_mass}
        if mass_matrix == "laplace":
            # precondition with the Laplace approximation at the posterior mode: its covariance is the (fixed)
            # inverse mass matrix, and each chain starts at its own draw from it
            potential_fn, z0 = start_at_values(k_lap, target, start, (x_s, data.y_train), {"fixed": fixed_s})
            lap = gaussian_at_mode(potential_fn, z0, refine_mode=False, absolute=True)
            init_params, nuts_kw = nuts_start(lap, k_start, num_chains)
            lap_info = {"laplace_" + k: v for k, v in lap["info"].items()}
        kernel = NUTS(target, init_strategy=init_to_value(values=start), target_accept_prob=target_accept_prob,
                      max_tree_depth=max_tree_depth, **nuts_kw)
        mcmc = MCMC(kernel, num_warmup=int(num_warmup), num_samples=int(num_samples), num_chains=int(num_chains),
                    chain_method=run_chains, progress_bar=progress_bar and not callable(run_chains),
                    jit_model_args=True)
        t1 = time.perf_counter()
        # full batch: num_data=None, no likelihood scale; dropout (if any) off
        mcmc.run(k_mcmc, x_s, data.y_train, fixed=fixed_s, extra_fields=SAMPLE_STATS, init_params=init_params)
        samples = mcmc.get_samples(group_by_chain=True)
        jax.block_until_ready(samples)
        t_mcmc = time.perf_counter() - t1
        extra = mcmc.get_extra_fields(group_by_chain=True)
        state = MCMCState(samples=samples, fixed=fixed)

        x_diag, where = (data.x_val, "validation") if data.x_val is not None else (data.x_train, "training")
        x_diag = x_diag[:MAX_DIAGNOSTIC_CLUSTERS]
        c, s = int(num_chains), int(num_samples)
        flat = jax.tree.map(lambda a: a.reshape((c * s,) + a.shape[2:]), samples)
        means = predictive_means(twin, deterministic=True)({**tile(fixed, c * s), **flat}, x_diag)
        means = np.asarray(means).reshape(c, s, -1)
        fs = {}
        if c >= 2:
            conv = function_space_convergence(means)
            fs = {"max_rhat": conv["max_rhat"], "min_ess_bulk": conv["min_ess_bulk"],
                  "min_ess_tail": float(np.nanmin(conv["ess_tail"])),
                  "median_rhat": float(np.nanmedian(conv["rhat"])),
                  "median_ess_bulk": float(np.nanmedian(conv["ess_bulk"]))}
        n_latent = int(sum(np.prod(np.shape(v)[2:], dtype=np.int64) for v in samples.values()))
        info.update({
            **lap_info,
            "mass_matrix": mass_matrix,
            "trunk_precomputed": trunk_pre,
            "function_space": fs,
            "function_space_clusters": int(means.shape[-1]),
            "function_space_set": where,
            "converged": bool(fs and fs["max_rhat"] < rhat_threshold),
            "weight_space_max_rhat": _weight_space_max_rhat(samples),
            "num_latent": n_latent,
            "latent_sites": list(samples),
            "num_chains": c,
            "num_samples": s,
            "num_warmup": int(num_warmup),
            "chain_method": method_,
            # the devices the chains ran on (None: one device; "parallel" without enough devices ran sequentially)
            "chain_devices": None if chain_devices is None else [int(d.id) for d in chain_devices],
            "num_divergent": int(np.asarray(extra["diverging"]).sum()),
            "mean_num_steps": float(np.asarray(extra["num_steps"]).mean()),
            "rhat_threshold": rhat_threshold,
            "min_ess": ess_floor,
            "on_convergence": on_convergence,
            "bayesian_layers": "last" if bayesian_layers is None else bayesian_layers,
            "map_time_s": t_map,
            "mcmc_time_s": t_mcmc,
        })
        # per-draw sampler statistics, flattened chain by chain (``diagnostics.fit_to_arviz`` reshapes them)
        history = {k.rsplit(".", 1)[-1]: np.asarray(extra[k]).reshape(-1) for k in SAMPLE_STATS}
        problems = convergence_problems(fs.get("max_rhat"), rhat_threshold, info["num_divergent"], c * s,
                                        fs.get("min_ess_bulk"), ess_floor)
        if c < 2:
            problems.insert(0, "convergence was not checked: R-hat needs at least 2 chains (num_chains=1)")
        info["convergence_problems"] = problems
        if problems:
            _report_convergence(problems, state, info, target_accept_prob)
        return RunResult(state, history, info)

    def get_params(state: MCMCState):
        means = jax.tree.map(lambda a: jnp.mean(a, axis=(0, 1)), state.samples)
        return {**state.fixed, **means}

    def sample(rng_key, state: MCMCState, num):
        lead = jax.tree.leaves(state.samples)[0].shape[:2]
        total = int(lead[0] * lead[1])
        flat = jax.tree.map(lambda a: a.reshape((total,) + a.shape[2:]), state.samples)
        if int(num) < total:
            idx = jax.random.choice(rng_key, total, (int(num),), replace=False)
            flat = jax.tree.map(lambda a: a[idx], flat)
        n = int(jax.tree.leaves(flat)[0].shape[0])
        return {**tile(state.fixed, n), **flat}

    return OneShotMethod(
        run=run, get_params=get_params, sample=sample, predict_kwargs={"deterministic": True},
        num_draws=int(num_draws), name="nuts", model=twin,
    )


register_method("nuts", nuts_method, options=NUTSOptions)
