"""The ``"laplace"`` method: a Laplace approximation of the weight posterior around its mode.

The posterior of the Bayesian weights ``w`` (by default the last layer, with the trunk held at a MAP fit: the
"last-layer Laplace" that Daxberger et al. 2021 recommend as a default) is approximated by the Gaussian
``N(w*, H^-1)``, where ``w*`` is the posterior mode and ``H`` the Hessian of the negative log joint density
(full-data likelihood plus weight prior) at ``w*`` (MacKay 1992). It is NumPyro's
:class:`~numpyro.infer.autoguide.AutoLaplaceApproximation` done in one full-batch pass:

1. train the deterministic model with the registered ``"map"`` method (or take ``init=<Fit>``);
2. hold the model's ``param`` sites at the MAP values and move the Bayesian weights from the maximum-likelihood
   MAP weights to the mode of the posterior *with* the prior (BFGS on the full training set, in NumPyro's
   unconstrained space);
3. take the exact Hessian of the potential energy there (:func:`hessian_matrix`, in batches of Hessian-vector
   products) and its eigen-decomposition;
   eigenvalues below ``eigenvalue_floor`` times the largest are raised to it (a Hessian that is not positive
   definite means the mode was not reached; their number is reported as ``info["clipped_eigenvalues"]``, and
   any such fit warns with a :class:`~numpyro_clustermass.diagnostics.ConvergenceWarning`);
4. draw weights as ``w* + V diag(lambda^-1/2) eps``.

Examples
--------
>>> import numpy as np
>>> from numpyro_clustermass.estimators import MDN
>>> from numpyro_clustermass.inference import fit
>>> rng = np.random.default_rng(0)
>>> y = rng.uniform(13.5, 15.0, 600); x = y[:, None] + 0.1 * rng.normal(size=(600, 3))
>>> f = fit(MDN(2, (8,), feature_names=("a", "b", "c")), (x, y), method="laplace", num_epochs=50,
...         batch_size=128, progress_bar=False)
>>> f.info["num_latent"], bool((f.posterior(x[:10]).epistemic_variance > 0).all())
(54, True)

References
----------
MacKay, D. J. C. (1992). A practical Bayesian framework for backpropagation networks. Neural Computation 4(3).
Daxberger, E., Kristiadi, A., Immer, A., Eschenhagen, R., Bauer, M., Hennig, P. (2021). Laplace Redux -
effortless Bayesian deep learning. NeurIPS, arXiv:2106.14806.
"""

from __future__ import annotations

import dataclasses
import functools
import time
import warnings
from typing import Any, Callable, ClassVar, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from jax.scipy.optimize import minimize
from numpyro import handlers
from numpyro.distributions import biject_to
from numpyro.infer.initialization import init_to_value
from numpyro.infer.util import initialize_model, potential_energy

from numpyro_clustermass.diagnostics import ConvergenceWarning
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
from numpyro_clustermass.inference.options import MethodOptions, check_bool, check_float, check_int, nested_options
from numpyro_clustermass.inference.protocol import (
    OneShotMethod,
    RunResult,
    TrainingData,
    TrainingPlan,
    register_method,
)
from numpyro_clustermass.inference.svi import MapStartOptions, latent_structure

__all__ = ["laplace_method", "LaplaceOptions", "gaussian_at_mode", "nuts_start", "start_at_values", "LaplaceState",
           "DEFAULT_NUM_DRAWS", "MAX_PARAMS"]

#: Default number of weight draws per posterior.
DEFAULT_NUM_DRAWS = 100
#: Largest number of Bayesian weights for the dense Hessian (its memory grows as the square).
MAX_PARAMS = 5000


class LaplaceState(NamedTuple):
    """The Gaussian ``N(mode, scale_tril scale_tril^T)`` over the flattened unconstrained latents.

    Attributes
    ----------
    mode : array (D,)
        Posterior mode in NumPyro's unconstrained space.
    scale : array (D, D)
        A square root of the covariance, ``V diag(lambda^-1/2)`` from the eigen-decomposition of the Hessian.
    fixed : dict
        The model's ``param``/``mutable`` site values, held at the MAP fit.
    """

    mode: jax.Array
    scale: jax.Array
    fixed: dict


#: Hessian columns computed at once by :func:`hessian_matrix`: its memory is this many Hessian-vector products'
#: intermediates, where a whole ``jax.hessian`` holds one per weight (for the lecture MDN's 3120 head weights on a
#: 0.1 (Gpc/h)^3 mock that ran out of memory; ``benchmarks/nuts_lecture_reference.py``).
HESSIAN_BATCH_SIZE = 32


def hessian_matrix(fn: Callable, x: jax.Array, batch_size: int = HESSIAN_BATCH_SIZE) -> jax.Array:
    """The dense Hessian of a scalar ``fn`` at the flat ``x``, ``batch_size`` columns at a time.

    Each column is a Hessian-vector product (forward-over-reverse, what ``jax.hessian`` computes for all columns at
    once); ``jax.lax.map`` runs them in batches, so the memory is that of ``batch_size`` products, not of ``x.size``.

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> hessian_matrix(lambda z: z[0] ** 2 * z[1] + z[1] ** 3, jnp.array([1.0, 2.0]), batch_size=1)
    Array([[ 4.,  2.],
           [ 2., 12.]], dtype=float32)
    """
    grad = jax.grad(fn)

    def column(v):
        return jax.jvp(grad, (x,), (v,))[1]

    # row j of the result is H @ e_j, the j-th column; transposed back to H[i, j] = d2 fn / dx_i dx_j
    return jax.lax.map(column, jnp.eye(x.size, dtype=x.dtype), batch_size=int(batch_size)).T


def _sym_eigh(h):
    return jnp.linalg.eigh(0.5 * (h + h.T))


def _newton(potential, grad, hessian, x, max_steps: int):
    """Saddle-free Newton (|eigenvalues|) with backtracking; stops when the potential no longer decreases."""
    f = float(potential(x))
    steps = 0
    for _ in range(int(max_steps)):
        g = grad(x)
        lam, vec = hessian(x)
        lam_abs = jnp.maximum(jnp.abs(lam), 1e-6 * jnp.max(jnp.abs(lam)))
        direction = -vec @ ((vec.T @ g) / lam_abs)
        t, accepted = 1.0, False
        for _ in range(20):
            cand = x + t * direction
            fc = float(potential(cand))
            if fc < f:
                accepted = True
                break
            t *= 0.5
        if not accepted:
            break
        steps += 1
        done = (f - fc) < 1e-6 * max(1.0, abs(f))
        x, f = cand, fc
        if done:
            break
    return x, steps


def start_at_values(rng_key, model: Callable, values: dict, model_args: tuple = (),
                    model_kwargs: dict | None = None) -> tuple[Callable, dict]:
    """``(potential_fn, z0)``: the potential energy of ``model`` over unconstrained latent values, and ``values``
    mapped to them; what ``numpyro.infer.util.initialize_model`` with ``init_to_value(values=values)`` and
    ``dynamic_args=False`` gives, with the model traced inside one compiled program.

    ``initialize_model`` runs the model and its gradient op by op, outside ``jit``: in a fresh process each of some
    hundreds of small operations is compiled on its own. Here the model runs once under ``jax.jit`` to read its
    latent sites' supports, and ``potential_fn`` is NumPyro's ``potential_energy``, which its callers compile
    (:func:`gaussian_at_mode`). A model with a latent site that ``values`` lacks, or whose start has a
    non-finite potential, goes through ``initialize_model`` (its random start and its error).

    Examples
    --------
    >>> import numpyro, numpyro.distributions as dist
    >>> def model():
    ...     numpyro.sample("s", dist.HalfNormal(1.0))
    >>> potential_fn, z0 = start_at_values(jax.random.key(0), model, {"s": jnp.asarray(2.0)})
    >>> round(float(z0["s"]), 4), round(float(potential_fn(z0)), 4)  # log 2; -log HalfNormal(2) - log|ds/dz|
    (0.6931, 1.5326)
    """
    model_kwargs = {} if model_kwargs is None else dict(model_kwargs)
    # array keywords (a population model's data) are arguments of the compiled program, the rest (flags) constants
    arrays = {k: v for k, v in model_kwargs.items() if isinstance(v, (jax.Array, np.ndarray))}
    flags = {k: v for k, v in model_kwargs.items() if k not in arrays}

    @jax.jit
    def unconstrained(key, args, arrays, values):
        kwargs = {**flags, **arrays}
        tr = handlers.trace(handlers.seed(handlers.substitute(model, data=values), key)).get_trace(*args, **kwargs)
        latent = {k: s for k, s in tr.items() if s["type"] == "sample" and not s["is_observed"]}
        z = {k: biject_to(s["fn"].support).inv(s["value"]) for k, s in latent.items()}
        return z, potential_energy(model, args, kwargs, z)

    z0, pe = unconstrained(rng_key, tuple(model_args), arrays, dict(values))
    if not set(z0) <= set(values) or not np.isfinite(float(pe)):
        info = initialize_model(rng_key, model, init_strategy=init_to_value(values=values), model_args=model_args,
                                model_kwargs=model_kwargs, dynamic_args=False)
        return info.potential_fn, info.param_info.z
    return functools.partial(potential_energy, model, tuple(model_args), model_kwargs), z0


def gaussian_at_mode(potential_fn: Callable, z0: dict, refine_mode: bool = True, max_iter: int = 500,
                     eigenvalue_floor: float = 1e-10, max_newton: int = 50, absolute: bool = False) -> dict:
    """The Laplace approximation of ``exp(-potential_fn(z))`` around its mode, from the start ``z0``.

    ``z0`` is a dict of unconstrained site values; they are flattened with ``ravel_pytree`` (the order NumPyro's
    samplers use). The mode is found with BFGS (kept only if it lowers the potential) followed by damped
    saddle-free Newton steps (at most ``max_newton``; float32 BFGS often stops early); the Hessian there is
    symmetrised and eigen-decomposed, with eigenvalues below ``eigenvalue_floor`` times the largest raised to it
    (``absolute=True``: their absolute values are used first, a positive-definite metric away from the mode).

    Returns
    -------
    dict
        ``mode`` (D,), ``scale`` (D, D) with ``scale @ scale.T`` the covariance, ``unravel`` and ``info``
        (potential at the start and at the mode, gradient norm, eigenvalue range, number clipped).

    Examples
    --------
    >>> import jax.numpy as jnp
    >>> g = gaussian_at_mode(lambda z: 0.5 * jnp.sum((z["a"] - 1.0) ** 2 / jnp.array([1.0, 4.0])),
    ...                      {"a": jnp.zeros(2)})
    >>> [round(float(v), 4) for v in g["mode"]], [round(float(v), 3) for v in jnp.diag(g["scale"] @ g["scale"].T)]
    ([1.0, 1.0], [1.0, 4.0])
    """
    flat0, unravel = ravel_pytree(z0)
    potential = jax.jit(lambda f: potential_fn(unravel(f)))
    grad = jax.jit(jax.grad(potential))
    hessian = jax.jit(lambda f: _sym_eigh(hessian_matrix(potential, f)))
    mode, opt, newton_steps = flat0, None, 0
    if refine_mode:
        opt = jax.jit(lambda f: minimize(potential, f, method="BFGS", options={"maxiter": int(max_iter)}))(flat0)
        # judged by the potential at opt.x itself: after a failed first line search jax's BFGS can return an x
        # far from the start together with the start's value in opt.fun
        f_opt = float(potential(opt.x))
        if np.isfinite(f_opt) and f_opt <= float(potential(flat0)):
            mode = opt.x
        # BFGS in float32 often stops early (line-search failure); finish with damped saddle-free Newton steps
        mode, newton_steps = _newton(potential, grad, hessian, mode, max_newton)
    grad_norm = float(jnp.linalg.norm(grad(mode)))
    # eigen-decomposition in float64 on the host: a trained MDN's posterior precision spans ~8 decades, beyond
    # float32 eigh's accuracy for the small eigenvalues
    h = np.asarray(jax.jit(lambda f: hessian_matrix(potential, f))(mode), np.float64)
    lam, vec = np.linalg.eigh(0.5 * (h + h.T))
    floor = float(eigenvalue_floor) * float(np.max(np.abs(lam)))
    clipped = int(np.sum(lam < floor))
    if absolute:  # a preconditioner away from the mode: |H| ("saddle-free") is positive definite
        lam = np.abs(lam)
    scale = jnp.asarray(vec / np.sqrt(np.maximum(lam, floor))[None, :], mode.dtype)
    if not bool(jnp.all(jnp.isfinite(scale))):
        raise FloatingPointError("laplace: the Hessian at the mode is not finite; check the MAP fit")
    info = {
        "mode_refined": mode is not flat0,
        "bfgs_iterations": None if opt is None else int(opt.nit),
        "newton_steps": newton_steps,
        "potential_at_map": float(potential(flat0)),
        "potential_at_mode": float(potential(mode)),
        "grad_norm_at_mode": grad_norm,
        "hessian_min_eigenvalue": float(lam[0]),
        "hessian_max_eigenvalue": float(lam[-1]),
        "clipped_eigenvalues": clipped,
    }
    return {"mode": mode, "scale": scale, "unravel": unravel, "info": info}


def _warn_if_off_the_mode(info: dict) -> None:
    """A :class:`~numpyro_clustermass.diagnostics.ConvergenceWarning` when the Hessian at the Laplace centre is not
    positive definite: the centre is not a mode, and the floored directions get a variance the data did not set."""
    clipped = int(info["clipped_eigenvalues"])
    if clipped == 0:
        return
    grad = f"gradient norm {info['grad_norm_at_mode']:.3g}"
    if info["bfgs_iterations"] is None:
        where, refine = f"{grad} at the MAP weights, not refined (refine_mode=False)", "; or leave refine_mode=True"
    else:
        where = f"{grad} after {info['bfgs_iterations']} BFGS iterations and {info['newton_steps']} Newton steps"
        refine = ""
    warnings.warn(
        f"laplace: the approximation is not centred at a posterior mode: {clipped} of {info['num_latent']} "
        f"eigenvalues of the Hessian there were below the floor and were raised to it (smallest "
        f"{info['hessian_min_eigenvalue']:.3g}, largest {info['hessian_max_eigenvalue']:.3g}; {where}). Fix: start "
        f"from a better-trained MAP fit (map_options={{'num_epochs': ...}}, or init=<a converged MAP Fit>){refine}. "
        f"The figures are in fit.info.", ConvergenceWarning, stacklevel=4)


def nuts_start(lap: dict, rng_key, num_chains: int) -> tuple[dict, dict]:
    """NUTS preconditioned by a :func:`gaussian_at_mode` result: chain starts and the kernel's metric keywords.

    Each chain starts at its own draw from ``N(mode, scale scale^T)`` (so that R-hat compares chains started
    apart; no leading chain axis when ``num_chains == 1``), and the covariance is the fixed dense inverse mass
    matrix, warm-up adapting the step size only.

    Returns
    -------
    (init_params, nuts_kwargs)
        ``init_params`` for ``MCMC.run`` (unconstrained values) and keywords for ``NUTS``.
    """
    eps = jax.random.normal(rng_key, (int(num_chains), lap["mode"].size), lap["mode"].dtype)
    init_params = jax.vmap(lap["unravel"])(lap["mode"][None, :] + eps @ lap["scale"].T)
    if int(num_chains) == 1:
        init_params = jax.tree.map(lambda a: a[0], init_params)
    nuts_kwargs = {"dense_mass": True, "inverse_mass_matrix": lap["scale"] @ lap["scale"].T,
                   "adapt_mass_matrix": False}
    return init_params, nuts_kwargs


@dataclasses.dataclass(frozen=True, kw_only=True)
class LaplaceOptions(MethodOptions):
    """Options of the ``"laplace"`` method (see the module docstring).

    Attributes
    ----------
    weight_prior : Distribution, dict or callable, optional
        Prior on the Bayesian weights; default None: ``Normal(0, 1)``. It sets the curvature floor of the
        posterior.
    bayesian_layers : "all", "last", str or sequence, optional
        Default None: ``"last"`` (last-layer Laplace).
    init : "map" or Fit, default "map"
        Where the MAP weights and the fixed parameters come from: a MAP fit trained first (options
        ``map_options``), or a given MAP fit of the same data.
    map_options : MapStartOptions or dict, default MapStartOptions()
        Options of the internal MAP fit (``num_epochs``, ``patience``, ``learning_rate``, ...); a dict is converted.
    num_draws : int, default 100 (:data:`DEFAULT_NUM_DRAWS`)
        Default number of weight draws per posterior, >= 1.
    refine_mode : bool, default True
        Move from the MAP (maximum-likelihood) weights to the mode of the posterior with the prior (BFGS).
    max_iter : int, default 500
        BFGS iterations, >= 0.
    eigenvalue_floor : float, default 1e-10
        Floor of the Hessian's eigenvalues relative to the largest, in (0, 1).
    max_params : int, default 5000 (:data:`MAX_PARAMS`)
        Refuse more Bayesian weights than this (dense Hessian), >= 1; use ``bayesian_layers="last"``.

    Examples
    --------
    >>> LaplaceOptions(refine_mode=False, map_options={"num_epochs": 30}).to_dict()
    {'map_options': {'num_epochs': 30}, 'refine_mode': False}
    """

    method_name: ClassVar[str] = "laplace"

    weight_prior: Any = None
    bayesian_layers: Any = None
    init: Any = "map"
    map_options: MapStartOptions = dataclasses.field(default_factory=MapStartOptions)
    num_draws: int = DEFAULT_NUM_DRAWS
    refine_mode: bool = True
    max_iter: int = 500
    eigenvalue_floor: float = 1e-10
    max_params: int = MAX_PARAMS

    def __post_init__(self):
        m = self.method_name
        values = {
            "bayesian_layers": check_bayesian_layers(self.bayesian_layers),
            "num_draws": check_int(m, "num_draws", self.num_draws, 1),
            "max_iter": check_int(m, "max_iter", self.max_iter, 0),
            "max_params": check_int(m, "max_params", self.max_params, 1),
            "eigenvalue_floor": check_float(
                m, "eigenvalue_floor", self.eigenvalue_floor, 0, 1, low_open=True, high_open=True,
                hint=" (relative to the largest Hessian eigenvalue; default 1e-10)"),
            "refine_mode": check_bool(m, "refine_mode", self.refine_mode),
        }
        check_init(m, self.init)
        values["map_options"] = nested_options(m, "map_options", MapStartOptions, self.map_options)
        for name, value in values.items():
            object.__setattr__(self, name, value)


def laplace_method(model: Callable, plan: TrainingPlan, options: LaplaceOptions | None = None,
                   **kwargs) -> OneShotMethod:
    """Build the ``"laplace"`` method (see the module docstring).

    Parameters
    ----------
    model : callable
        The estimator's model (its Bayesian twin is approximated) or a NumPyro model with latent sample sites.
    plan : TrainingPlan
    options : LaplaceOptions, optional
        Default ``LaplaceOptions()``.
    **kwargs
        Instead of ``options``: its fields, converted with :class:`LaplaceOptions`.
    """
    opts = LaplaceOptions.coerce(options, kwargs)
    weight_prior, bayesian_layers, init, map_options = (opts.weight_prior, opts.bayesian_layers, opts.init,
                                                         opts.map_options)
    num_draws, refine_mode, max_iter = opts.num_draws, opts.refine_mode, opts.max_iter
    eigenvalue_floor, max_params = opts.eigenvalue_floor, opts.max_params
    twin, _ = bayesian_model(model, weight_prior, bayesian_layers, "last", plan.num_features)
    # The flattening of the unconstrained latents and their constraining transforms come from the model and the
    # plan (a trace on abstract inputs of the training set's shape), not from run: sample and get_params work on a
    # state made by another instance of this method (a saved fit), and share nothing that depends on a fit.
    shapes, transforms = latent_structure(twin, plan.num_data, plan.num_features, deterministic=True)
    if not shapes:  # nothing to be Bayesian about: require_latents raises the explanation
        require_latents(twin, jnp.zeros((1, plan.num_features), jnp.float32), jnp.zeros(1, jnp.float32), "laplace")
    unconstrained = {k: jax.ShapeDtypeStruct(transforms[k].inverse_shape(v.shape), v.dtype) for k, v in shapes.items()}
    flat_like, unravel = ravel_pytree({k: jnp.zeros(v.shape, v.dtype) for k, v in unconstrained.items()})
    dim = int(flat_like.size)
    if dim > max_params:
        raise ValueError(
            f"laplace: {dim} Bayesian weights is more than max_params={max_params} for a dense Hessian; use "
            f"bayesian_layers='last' (last-layer Laplace) or raise max_params"
        )

    def run(rng_key, data: TrainingData, plan_: TrainingPlan, progress_bar: bool):
        t0 = time.perf_counter()
        k_map, k_init = jax.random.split(rng_key)
        map_params, info = map_params_from(init, model, plan_, data, k_map, progress_bar, map_options, "laplace")
        sites = require_latents(twin, data.x_train[:2], data.y_train[:2], "laplace")
        fixed = point_params(map_params, sites)
        sampled, fixed_s, x_s, trunk_pre = fixed_trunk_problem(twin, fixed, data.x_train, plan_.num_features)
        target = substitute_params(sampled, fixed_s)
        start = net_site_values(map_params, sites)
        potential_fn, z0 = start_at_values(k_init, target, start, (x_s, data.y_train), {"deterministic": True})
        found = {k: (tuple(jnp.shape(v)), jnp.result_type(v)) for k, v in z0.items()}
        expected = {k: (tuple(v.shape), v.dtype) for k, v in unconstrained.items()}
        if found != expected:
            raise ValueError(
                f"laplace: the model's latent sites on the training data, {found}, differ from those traced on "
                f"inputs of the training set's shape when the method was built, {expected}; the latent sites' "
                f"shapes must follow from the shape of the data"
            )
        t1 = time.perf_counter()
        lap = gaussian_at_mode(potential_fn, z0, refine_mode, max_iter, eigenvalue_floor)
        info.update({"num_latent": dim, "latent_sites": list(z0), **lap["info"], "trunk_precomputed": trunk_pre,
                     "laplace_time_s": time.perf_counter() - t1, "map_time_s": t1 - t0})
        _warn_if_off_the_mode(info)
        return RunResult(LaplaceState(lap["mode"], lap["scale"], fixed), {}, info)

    def constrain(flat):
        z = unravel(flat)
        return {k: transforms[k](v) for k, v in z.items()}

    def get_params(state: LaplaceState):
        return {**state.fixed, **constrain(state.mode)}

    def sample(rng_key, state: LaplaceState, num):
        eps = jax.random.normal(rng_key, (int(num), state.mode.size), state.mode.dtype)
        flat = state.mode[None, :] + eps @ state.scale.T
        draws = jax.vmap(constrain)(flat)
        return {**tile(state.fixed, int(num)), **draws}

    return OneShotMethod(
        run=run, get_params=get_params, sample=sample, predict_kwargs={"deterministic": True},
        num_draws=int(num_draws), name="laplace", model=twin,
    )


register_method("laplace", laplace_method, options=LaplaceOptions)
