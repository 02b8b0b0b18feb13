"""The ``"bbb"`` method: Bayes by Backprop, mean-field variational inference over the network's weights.

Bayes by Backprop (Blundell et al. 2015) fits a factorised Normal ``q(w) = prod_i N(w_i | m_i, s_i^2)`` to the
posterior of the weights of the estimator's *Bayesian twin* (:mod:`numpyro_clustermass.bnn`) by maximising the
ELBO with reparameterised gradients. Here it is NumPyro SVI with an
:class:`~numpyro.infer.autoguide.AutoNormal` guide and :class:`~numpyro.infer.TraceMeanField_ELBO`, which uses
the closed-form KL(q || prior) for every weight site (Normal against Normal), so only the likelihood term is
estimated by sampling.

Minibatch scaling: the model scales the likelihood of a batch of ``B`` clusters by ``N / B`` and counts the
prior (the KL) once, so each step's loss is an unbiased estimate of the full-data negative ELBO, the
``pi_i = 1/M`` weighting of Blundell et al. Training runs in the package's jit-compiled ``lax.scan`` epochs,
like ``"map"``: measured at 0.92x MAP's throughput on ``MDN(3, (16, 16))`` (665 weights, batch 512) and
0.77-0.80x on the lecture's 16-component 128-128-64 net (29.8k weights, whose noise is drawn every step)
(``benchmarks/bench_bbb_throughput.py``, shared 2-core CPU). Two things keep the step close to MAP's on CPU: the
noise is drawn by :func:`numpyro_clustermass._random.normal` (``jax.random.normal``'s numbers, its hash written
out), and the guide's flat vectors are split into sites with a gradient that is one concatenation.

The guide starts with small scales (``init_scale``) around the network's usual (flax) initial weights, or around
a MAP fit: ``init="map"`` trains one first with the registered ``"map"`` method, ``init=<Fit>`` reuses one.
Parameters that are not Bayesian (the trunk of a last-layer BNN, the MSE model's scatter) are optimised as
points (type-II maximum likelihood).

Examples
--------
>>> import numpy as np, numpyro.distributions as dist
>>> from numpyro_clustermass.estimators import MDN
>>> from numpyro_clustermass.inference import fit
>>> rng = np.random.default_rng(0)
>>> y = rng.uniform(13.5, 15.0, 800); x = y[:, None] + 0.1 * rng.normal(size=(800, 3))
>>> f = fit(MDN(2, (8,), feature_names=("a", "b", "c")), (x, y), method="bbb", num_epochs=50,
...         batch_size=128, weight_prior=dist.Normal(0, 1), progress_bar=False)
>>> post = f.posterior(x[:20])
>>> bool((post.epistemic_variance > 0).all())
True

References
----------
Blundell, C., Cornebise, J., Kavukcuoglu, K., Wierstra, D. (2015). Weight uncertainty in neural networks.
ICML, arXiv:1505.05424.
Kingma, D. P., Welling, M. (2014). Auto-encoding variational Bayes. ICLR.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, ClassVar

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.infer import SVI, TraceMeanField_ELBO
from numpyro.infer.autoguide import AutoNormal
from numpyro.infer.initialization import init_to_median, init_to_value
from numpyro.optim import optax_to_numpyro

from numpyro_clustermass._random import normal
from numpyro_clustermass.bnn import deterministic_model
from numpyro_clustermass.inference._bayes import (
    bayesian_model,
    check_bayesian_layers,
    check_init,
    copy_tree,
    drive_epochs,
    initial_params,
    map_params_from,
    net_site_values,
    point_params,
    require_latents,
    tile,
)
from numpyro_clustermass.inference.fitting import Fit
from numpyro_clustermass.inference.options import MethodOptions, check_float, check_int, nested_options
from numpyro_clustermass.inference.protocol import (
    InferenceMethod,
    IterativeMethod,
    OneShotMethod,
    RunResult,
    TrainingData,
    TrainingPlan,
    register_method,
)
from numpyro_clustermass.inference.svi import (
    PLATEAU_OPTIONS,
    MapStartOptions,
    check_plateau_options,
    check_schedule_options,
    latent_structure,
    make_optimizer,
    make_schedule,
    plateau_of,
    prepare_svi,
)
from numpyro_clustermass.models import OBS_SITE

__all__ = ["bbb_method", "BBBOptions", "MeanFieldGuide", "DEFAULT_INIT_SCALE", "DEFAULT_NUM_DRAWS"]

#: Initial standard deviation of every weight in the guide: small, so that training starts close to the
#: deterministic net (Blundell et al. 2015 start their softplus(rho) scales at a few 1e-3 to 1e-2).
DEFAULT_INIT_SCALE = 0.01
#: Default number of weight draws per posterior.
DEFAULT_NUM_DRAWS = 100


class _NormalAt(dist.Normal):
    """``Normal(loc, scale)`` whose draw is a value computed beforehand (``loc + scale * eps``).

    Lets :class:`MeanFieldGuide` draw the noise of all weights with one random call and still expose one Normal
    sample site per weight tensor, so that ``TraceMeanField_ELBO`` finds its closed-form KL (Normal, Normal).
    """

    pytree_data_fields = ("value",)

    def __init__(self, loc, scale, value, *, validate_args=None):
        self.value = value
        super().__init__(loc, scale, validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        return jnp.broadcast_to(self.value, sample_shape + self.batch_shape)

    def rsample(self, key, sample_shape=()):
        return self.sample(key, sample_shape)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _split_flat(layout, flat):
    """``{site: flat[..., begin:end] reshaped}`` for ``layout = ((site, begin, end, shape), ...)``, which tiles
    the last axis.

    Its gradient is one concatenation of the sites' cotangents. Differentiated as plain slices, each slice's
    cotangent is padded to the whole vector and the pads are summed: on the lecture net (12 sites, and the
    means, scales and weights each split) that was about 90 passes over the 29.8k weights per step, a quarter of
    the step's time on CPU.
    """
    lead = flat.shape[:-1]
    return {k: flat[..., b:e].reshape(lead + shp) for k, b, e, shp in layout}


def _split_flat_fwd(layout, flat):
    return _split_flat(layout, flat), flat.shape[:-1]


def _split_flat_bwd(layout, lead, cotangents):
    if not layout:
        return (jnp.zeros(lead + (0,), jnp.float32),)
    return (jnp.concatenate([jnp.reshape(cotangents[k], lead + (e - b,)) for k, b, e, _ in layout], axis=-1),)


_split_flat.defvjp(_split_flat_fwd, _split_flat_bwd)


def _inv_softplus(s: float) -> float:
    return float(s + math.log(-math.expm1(-s)))


class MeanFieldGuide:
    """Bayes by Backprop's guide: ``w_i ~ Normal(m_i, softplus(rho_i))`` independently for every weight.

    All means and all ``rho`` live in two flat param sites (``"bbb$loc"``, ``"bbb$rho"``) and the noise of all
    weights is one draw, which keeps a training step close to a MAP step; each weight tensor is still its own
    Normal sample site, named as in the model (``"nn/trunk.Dense_0.kernel"``), so that
    :class:`~numpyro.infer.TraceMeanField_ELBO` uses the analytic KL against the model's prior. Equivalent to
    :class:`~numpyro.infer.autoguide.AutoNormal` with the scale parameterised as in Blundell et al. (2015).

    Parameters
    ----------
    shapes : dict
        ``{site name: shape}`` of the latent weight sites.
    init_values : dict, optional
        Initial means by site (default zeros): the ``"bbb$loc"`` param's initial value when ``SVI.init`` is not
        given one. The ``"bbb"`` method leaves it out and passes :meth:`loc_vector` of its start values as
        ``init_params`` instead, so that the start is in the state and the guide depends on shapes only.
    init_scale : float
        Initial standard deviation of every weight.

    Examples
    --------
    >>> import jax, jax.numpy as jnp
    >>> from numpyro import handlers
    >>> g = MeanFieldGuide({"a": (2, 3), "b": (3,)}, init_scale=0.01)
    >>> tr = handlers.trace(handlers.seed(g, 0)).get_trace()
    >>> tr["a"]["value"].shape, tr["bbb$rho"]["value"].shape
    ((2, 3), (9,))
    >>> s = g.sample_posterior(jax.random.key(1), {"bbb$loc": jnp.zeros(9), "bbb$rho": jnp.zeros(9)}, (4,))
    >>> s["b"].shape
    (4, 3)
    """

    def __init__(self, shapes, init_values=None, init_scale: float = DEFAULT_INIT_SCALE):
        self.shapes = {k: tuple(v) for k, v in shapes.items()}
        layout = []
        start = 0
        for k, shp in self.shapes.items():
            size = int(np.prod(shp, dtype=np.int64))
            layout.append((k, start, start + size, shp))
            start += size
        self.layout = tuple(layout)  # hashable: the static argument of _split_flat
        self.size = start
        self.init_loc = self.loc_vector(init_values or {})
        self.init_rho = jnp.full(self.size, _inv_softplus(float(init_scale)), jnp.float32)

    def loc_vector(self, values):
        """The flat vector of means (``"bbb$loc"``) from ``{site: value}``; sites left out get zeros."""
        loc = [jnp.reshape(jnp.asarray(values[k], jnp.float32), (-1,)) if k in values
               else jnp.zeros(e - b, jnp.float32) for k, b, e, _ in self.layout]
        return jnp.concatenate(loc) if loc else jnp.zeros(0, jnp.float32)

    def _split(self, flat):
        return _split_flat(self.layout, flat)

    def __call__(self, *args, **kwargs):
        loc = numpyro.param("bbb$loc", self.init_loc)
        scale = jax.nn.softplus(numpyro.param("bbb$rho", self.init_rho))
        key = numpyro.prng_key()
        eps = normal(key, (self.size,)) if key is not None else jnp.zeros(self.size)
        w = loc + scale * eps
        locs, scales, values = self._split(loc), self._split(scale), self._split(w)
        for k, shp in self.shapes.items():
            numpyro.sample(k, _NormalAt(locs[k], scales[k], values[k]).to_event(len(shp)))

    def median(self, params):
        """Posterior means (= medians) of the weights by site."""
        return self._split(params["bbb$loc"])

    def scales(self, params):
        """Posterior standard deviations of the weights by site."""
        return self._split(jax.nn.softplus(params["bbb$rho"]))

    def sample_posterior(self, rng_key, params, sample_shape=()):
        """Draws of all weight sites, each with leading shape ``sample_shape``."""
        eps = normal(rng_key, tuple(sample_shape) + (self.size,))
        return self._split(params["bbb$loc"] + jax.nn.softplus(params["bbb$rho"]) * eps)


@dataclasses.dataclass(frozen=True, kw_only=True)
class BBBOptions(MethodOptions):
    """Options of the ``"bbb"`` method (Bayes by Backprop).

    Attributes
    ----------
    weight_prior : Distribution, dict or callable, optional
        Prior on the Bayesian weights (:mod:`numpyro_clustermass.bnn`); default None: ``Normal(0, 1)``.
    bayesian_layers : "all", "last", str or sequence, optional
        Which weights are Bayesian; default None: ``"all"``.
    init : {"net", "map"} or Fit, default "net"
        Guide means at the flax initial weights (``"net"``), at a MAP fit trained first with the ``"map"`` method
        (``"map"``, options ``map_options``), or at a given MAP :class:`~numpyro_clustermass.inference.Fit` of the
        same data.
    init_scale : float, default 0.01 (:data:`DEFAULT_INIT_SCALE`)
        Initial guide standard deviation of every weight, > 0.
    num_draws : int, default 100 (:data:`DEFAULT_NUM_DRAWS`)
        Default number of weight draws per posterior, >= 1.
    num_particles : int, default 1
        Monte Carlo samples of the likelihood term per step, >= 1.
    eval_particles : int, default 8
        Samples of the held-out ELBO used for early stopping, >= 1. Each is a forward pass over the validation set
        at the end of every epoch: with 8, at ``fit``'s default 10% validation, an epoch of the lecture net on
        17,943 mocks took 58-60 ms against 51-56 ms with 1 and MAP's 48 ms (two runs, shared 2-core CPU).
        Without validation data (``validation_fraction=0``) the loss of one training batch after each epoch only
        guards against divergence and is drawn with ``num_particles``.
    learning_rate, schedule, warmup_steps, final_lr_fraction, clip_norm :
        Optax Adam with a schedule, as in :class:`~numpyro_clustermass.inference.svi.MapOptions` (same defaults).
    plateau_patience, plateau_factor, plateau_reductions :
        The ``"plateau"`` schedule's policy, as in :class:`~numpyro_clustermass.inference.svi.MapOptions`.
    patience : int or None, default 20
        Early stopping of the BBB epochs when ``init="map"`` (which runs its own loop; otherwise the :func:`fit`
        settings apply), >= 0; None: never stop early.
    min_delta : float, default 1e-4
        With ``patience``: the smallest improvement that counts, >= 0.
    map_options : MapStartOptions or dict, default MapStartOptions()
        Options of the internal MAP fit of ``init="map"`` (``num_epochs``, ``patience``, ``learning_rate``, ...);
        a dict is converted.

    Examples
    --------
    >>> BBBOptions(init="map", map_options={"num_epochs": 20}).map_options.num_epochs
    20
    >>> BBBOptions(num_particles=0)
    Traceback (most recent call last):
    ...
    ValueError: method 'bbb': num_particles must be an integer >= 1; got 0
    """

    method_name: ClassVar[str] = "bbb"

    weight_prior: Any = None
    bayesian_layers: Any = None
    init: Any = "net"
    init_scale: float = DEFAULT_INIT_SCALE
    num_draws: int = DEFAULT_NUM_DRAWS
    num_particles: int = 1
    eval_particles: int = 8
    learning_rate: float = 1e-3
    schedule: str | Callable = "cosine"
    warmup_steps: int | None = None
    final_lr_fraction: float = 0.01
    plateau_patience: int = 3
    plateau_factor: float = 0.25
    plateau_reductions: int = 3
    clip_norm: float | None = None
    patience: int | None = 20
    min_delta: float = 1e-4
    map_options: MapStartOptions = dataclasses.field(default_factory=MapStartOptions)

    def __post_init__(self):
        m = self.method_name
        lr, schedule, warmup, fraction = check_schedule_options(m, self.learning_rate, self.schedule,
                                                                self.warmup_steps, self.final_lr_fraction)
        clip_norm = None if self.clip_norm is None else check_float(m, "clip_norm", self.clip_norm, 0,
                                                                    low_open=True, hint=" or None")
        values = {
            "bayesian_layers": check_bayesian_layers(self.bayesian_layers),
            "init_scale": check_float(m, "init_scale", self.init_scale, 0, low_open=True, hint=" (default 0.01)"),
            "num_draws": check_int(m, "num_draws", self.num_draws, 1),
            "num_particles": check_int(m, "num_particles", self.num_particles, 1),
            "eval_particles": check_int(m, "eval_particles", self.eval_particles, 1),
            "learning_rate": lr, "warmup_steps": warmup, "final_lr_fraction": fraction, "clip_norm": clip_norm,
            **dict(zip(PLATEAU_OPTIONS, check_plateau_options(m, *(getattr(self, k) for k in PLATEAU_OPTIONS)))),
            "patience": None if self.patience is None else check_int(m, "patience", self.patience, 0),
            "min_delta": check_float(m, "min_delta", self.min_delta, 0),
            "map_options": nested_options(m, "map_options", MapStartOptions, self.map_options),
        }
        check_init(m, self.init, ("net", "map"))
        for name, value in values.items():
            object.__setattr__(self, name, value)


def bbb_method(model: Callable, plan: TrainingPlan, options: BBBOptions | None = None,
               **kwargs) -> InferenceMethod:
    """Build the ``"bbb"`` method (Bayes by Backprop: a mean-field Normal guide, analytic-KL ELBO).

    Parameters
    ----------
    model : callable
        The estimator's (deterministic) model; its Bayesian twin is built here. A user's own model with
        latent sample sites is used as it is.
    plan : TrainingPlan
    options : BBBOptions, optional
        Default ``BBBOptions()``.
    **kwargs
        Instead of ``options``: its fields, converted with :class:`BBBOptions`.

    Returns
    -------
    IterativeMethod or OneShotMethod
        An :class:`~numpyro_clustermass.inference.IterativeMethod` trained by :func:`fit`'s epochs; with
        ``init="map"`` a :class:`~numpyro_clustermass.inference.OneShotMethod` whose ``run`` trains the MAP fit and
        then the BBB epochs itself (``patience``, ``min_delta``).
    """
    opts = BBBOptions.coerce(options, kwargs)
    init, init_scale, map_options = opts.init, opts.init_scale, opts.map_options
    num_draws, num_particles, eval_particles = opts.num_draws, opts.num_particles, opts.eval_particles
    patience, min_delta = opts.patience, opts.min_delta
    weight_prior, bayesian_layers = opts.weight_prior, opts.bayesian_layers
    twin, is_twin = bayesian_model(model, weight_prior, bayesian_layers, "all", plan.num_features)
    sched = make_schedule(opts.learning_rate, plan.num_steps, opts.schedule, opts.warmup_steps,
                          opts.final_lr_fraction)
    optim = optax_to_numpyro(make_optimizer(sched, clip_norm=opts.clip_norm, plateau=plateau_of(opts)))
    num_data = plan.num_data
    init_scale = float(init_scale)

    # Everything step, evaluate, get_params and sample use is built here from the model and the plan, never by
    # init or run, so that they work on a state made by another instance of this method (a saved fit), and a
    # method shared by fits of one configuration shares nothing that depends on a fit. The start of the guide
    # (flax initial weights or MAP weights) is in init's state: SVI.init's init_params.
    shapes, _ = latent_structure(twin, plan.batch_size, plan.num_features)
    if not shapes:  # nothing to be Bayesian about: require_latents raises the explanation
        require_latents(twin, jnp.zeros((1, plan.num_features), jnp.float32), jnp.zeros(1, jnp.float32), "bbb")
    sites = list(shapes)
    if is_twin:
        guide = MeanFieldGuide({k: v.shape for k, v in shapes.items()}, init_scale=init_scale)
    else:  # a user's model: any latent sites, with their constraints; set up by prepare_svi (structure only)
        guide = AutoNormal(twin, init_loc_fn=init_to_median(num_samples=15), init_scale=init_scale)
    elbo = TraceMeanField_ELBO(num_particles=int(num_particles))
    eval_elbo = TraceMeanField_ELBO(num_particles=int(eval_particles))
    svi = prepare_svi(SVI(twin, guide, optim, elbo), plan, num_data=num_data)
    given_map = None
    if isinstance(init, Fit):
        given_map, _ = map_params_from(init, model, plan, None, None, False, None, "bbb")

    # The twin's start and SVI.init are pure with the mean-field guide: compiled, each one program instead of
    # a few hundred eager operations, each compiled on its own in a fresh process (5.5 s of a 20 s first fit).
    # twin_init's SVI is its own object, as init_from's for a user's model: init sets nothing the others use.
    flax_init = jax.jit(functools.partial(initial_params, deterministic_model(twin))) if is_twin else None
    twin_init = jax.jit(SVI(twin, guide, optim, elbo).init, static_argnames="num_data") if is_twin else None

    def start_values(rng_key, x, y, map_params):
        """Initial guide locations (sample sites) and initial params of the twin."""
        if map_params is not None:
            return net_site_values(map_params, sites), point_params(map_params, sites)
        if is_twin:
            return net_site_values(flax_init(x, y, rng_key), sites), None
        return None, None

    def init_from(map_params, rng_key, x, y):
        k0, k1 = jax.random.split(rng_key)
        locs, params = start_values(k0, x, y, map_params)
        init_params = None if params is None else copy_tree(params)
        if is_twin:
            init_params = {**(init_params or {}), "bbb$loc": guide.loc_vector(locs)}
            return twin_init(k1, x, y, num_data=num_data, init_params=init_params)
        # AutoNormal takes its initial locations from its first call (seeded by SVI.init's key): a fresh one
        loc_fn = init_to_median(num_samples=15) if locs is None else init_to_value(values=locs)
        init_guide = AutoNormal(twin, init_loc_fn=loc_fn, init_scale=init_scale)
        # its own SVI object: init sets nothing that the other functions use
        return SVI(twin, init_guide, optim, elbo).init(k1, x, y, num_data=num_data, init_params=init_params)

    def step(state, x, y):
        return svi.update(state, x, y, num_data=num_data)

    def negative_elbo(loss_fn, state, x, y):
        # per-datum negative ELBO with the likelihood scaled to the training-set size (comparable to train_loss)
        params = {**svi.get_params(state), **(state.mutable_state or {})}
        return loss_fn.loss(state.rng_key, params, twin, guide, x, y, num_data=num_data) / num_data

    def evaluate(state, x, y):
        # NumPyro ignores mutable state (batch norm) with several particles: use one particle then
        return negative_elbo(eval_elbo if state.mutable_state is None else elbo, state, x, y)

    def check(state, x, y):
        # without validation data: the training step's num_particles draws guard against divergence (epochs.py)
        return negative_elbo(elbo, state, x, y)

    @jax.jit
    def prior_kl(rng_key, params):
        # evaluate's loss without its likelihood: the ELBO of the twin with the observation site hidden is the
        # KL of the guide from the prior (analytic for the mean-field guide); compiled, for the reason of twin_init
        x0, y0 = jnp.zeros((1, plan.num_features), jnp.float32), jnp.zeros(1, jnp.float32)
        no_obs = handlers.block(twin, hide=[OBS_SITE])
        return eval_elbo.loss(rng_key, params, no_obs, guide, x0, y0, num_data=num_data)

    def prior_loss(state):
        """The KL of the guide from the prior per training datum."""
        params = {**svi.get_params(state), **(state.mutable_state or {})}
        return float(prior_kl(state.rng_key, params)) / num_data

    def get_params(state):
        params = svi.get_params(state)
        latent = guide.median(params)
        return {**point_params(params, latent), **latent, **(state.mutable_state or {})}

    def sample(rng_key, state, num):
        params = svi.get_params(state)
        draws = guide.sample_posterior(rng_key, params, sample_shape=(int(num),))
        draws = {k: v for k, v in draws.items() if k not in params}
        fixed = {**point_params(params, draws), **(state.mutable_state or {})}
        return {**tile(fixed, int(num)), **draws}

    method = IterativeMethod(
        init=functools.partial(init_from, given_map), step=step, evaluate=evaluate, get_params=get_params,
        sample=sample, predict_kwargs={"deterministic": True}, num_draws=int(num_draws), name="bbb", model=twin,
        prior_loss=prior_loss, check=check,
    )
    if not (isinstance(init, str) and init == "map"):
        return method

    def run(rng_key, data: TrainingData, plan_: TrainingPlan, progress_bar: bool):
        k_map, k_bbb = jax.random.split(rng_key)
        map_params, info = map_params_from(init, model, plan_, data, k_map, progress_bar, map_options, "bbb")
        from_map = method._replace(init=functools.partial(init_from, map_params))
        state, history, extra = drive_epochs(twin, from_map, plan_, k_bbb, data, patience, min_delta, progress_bar,
                                             "bbb")
        return RunResult(state, history, {**info, **extra})

    return OneShotMethod(run=run, get_params=get_params, sample=sample, predict_kwargs=method.predict_kwargs,
                         num_draws=method.num_draws, name=method.name, model=method.model)


register_method("bbb", bbb_method, options=BBBOptions)
