"""Diagnostics: ArviZ adapters, convergence in function space, and posterior-to-posterior comparison.

Weight-space R-hat of a Bayesian neural network never reaches 1 (permutation and sign symmetries of the
hidden units make every chain a different but equivalent mode), so this package judges MCMC convergence in
*function space*: split R-hat and effective sample size of per-cluster predictive quantities (the predictive
mean of log10 M for held-out clusters), which are invariant to those symmetries.

ArviZ 0.x (Python 3.11) returns ``InferenceData``; ArviZ 1.x (Python >= 3.12) returns an xarray
``DataTree`` and refuses variable names containing ``/``. Everything here goes through one adapter,
:func:`to_arviz`, that renames variables and works with both; :func:`fit_to_arviz` turns any fit into such an
object (posterior, posterior predictive, pointwise log-likelihood for ``az.loo``, sampler statistics).

Examples
--------
>>> import numpy as np
>>> draws = np.random.default_rng(0).normal(size=(2, 500, 3))   # (chains, draws, clusters)
>>> d = function_space_convergence(draws)
>>> bool(d["rhat"].max() < 1.02), d["ess_bulk"].shape
(True, (3,))
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Mapping, NamedTuple

import numpy as np

from numpyro_clustermass.metrics import true_log_mass
from numpyro_clustermass.shift import ShiftTest, mmd_test

__all__ = [
    "ConvergenceWarning",
    "ConvergenceError",
    "convergence_problems",
    "arviz_major_version",
    "arviz_groups",
    "sanitize_name",
    "to_arviz",
    "fit_to_arviz",
    "function_space_convergence",
    "compare_posteriors",
    "compare",
    "arviz_to_netcdf",
    "Comparison",
    "EPISTEMIC_RATIO_THRESHOLD",
    "PARETO_K_THRESHOLD",
    "RHAT_THRESHOLD",
    "covariate_shift",
    "ShiftTest",
]


class ConvergenceWarning(UserWarning):
    """An MCMC run whose draws may not represent the posterior: function-space R-hat above the threshold,
    divergent transitions, or a low effective sample size; or a Laplace approximation whose centre is not a
    posterior mode (a Hessian there that is not positive definite). The message gives the numbers and the fix.

    Make it an error for one run with ``fit(..., method="nuts", on_convergence="raise")``, or everywhere with
    ``warnings.simplefilter("error", ConvergenceWarning)``.
    """


class ConvergenceError(RuntimeError):
    """Raised instead of :class:`ConvergenceWarning` when a method is asked to (``on_convergence="raise"``).

    Attributes
    ----------
    problems : list of str
        One line per problem found (R-hat, divergences, ESS), with the numbers.
    state : object
        The method's final state (for NUTS an ``MCMCState`` with every draw), kept so that nothing is lost.
    info : dict
        The run's facts and diagnostics (``info["function_space"]``, ``num_divergent``, ...).
    fit : Fit or None
        The complete :class:`~numpyro_clustermass.inference.Fit`, where the caller could build one.
    """

    def __init__(self, message: str, problems=(), state=None, info=None, fit=None):
        super().__init__(message)
        self.problems = list(problems)
        self.state = state
        self.info = info
        self.fit = fit


def convergence_problems(
    max_rhat: float | None,
    rhat_threshold: float,
    num_divergent: int,
    num_draws: int,
    min_ess_bulk: float | None,
    min_ess: float,
) -> list[str]:
    """What is wrong with an MCMC run, one line per problem with its numbers (empty: nothing found).

    ``max_rhat``/``min_ess_bulk`` None means they were not computed (one chain); NaN R-hat (chains that never
    moved) counts as a problem.

    Examples
    --------
    >>> convergence_problems(1.3, 1.05, 2, 400, 35.0, 200)  # doctest: +NORMALIZE_WHITESPACE
    ['function-space R-hat 1.300 is above the threshold 1.05 (the chains disagree)',
     '2 divergent transitions of 400 draws (0.5%)',
     'minimum bulk ESS 35 is below 200']
    >>> convergence_problems(1.002, 1.05, 0, 400, 390.0, 200)
    []
    """
    problems = []
    if max_rhat is not None and not max_rhat < rhat_threshold:
        why = "the chains disagree" if np.isfinite(max_rhat) else "the draws do not vary: the chains never moved"
        problems.append(f"function-space R-hat {max_rhat:.3f} is above the threshold {rhat_threshold:g} ({why})")
    if num_divergent > 0:
        problems.append(f"{int(num_divergent)} divergent transitions of {int(num_draws)} draws "
                        f"({100.0 * num_divergent / max(num_draws, 1):.1f}%)")
    if min_ess_bulk is not None and not min_ess_bulk >= min_ess:
        problems.append(f"minimum bulk ESS {min_ess_bulk:.0f} is below {min_ess:g}")
    return problems


def _az():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az
    return az


def arviz_major_version() -> int:
    """The installed ArviZ major version (0 on Python 3.11, 1 on Python >= 3.12)."""
    return int(_az().__version__.split(".")[0])


def arviz_groups(idata) -> list[str]:
    """The group names of an ArviZ object, whichever line made it: ``InferenceData.groups()`` (ArviZ 0.x) or
    the children of a ``DataTree`` (ArviZ 1.x, whose ``groups`` property lists paths such as ``"/posterior"``).

    Examples
    --------
    >>> sorted(arviz_groups(to_arviz({"w": np.zeros((1, 3))}, observed_data={"y": np.ones(2)})))
    ['observed_data', 'posterior']
    """
    groups = idata.groups
    if callable(groups):  # InferenceData
        return list(groups())
    return list(idata.children)


def sanitize_name(name: str) -> str:
    """A variable name ArviZ 1.x accepts: ``nn$params/Dense_0.kernel`` -> ``nn_params.Dense_0.kernel``."""
    return re.sub(r"[^0-9A-Za-z_.]", "_", name.replace("/", "."))


def to_arviz(
    posterior: Mapping[str, Any],
    *,
    posterior_predictive: Mapping[str, Any] | None = None,
    log_likelihood: Mapping[str, Any] | None = None,
    observed_data: Mapping[str, Any] | None = None,
    constant_data: Mapping[str, Any] | None = None,
    sample_stats: Mapping[str, Any] | None = None,
    sample_stats_per_draw: bool = True,
    coords: Mapping[str, Any] | None = None,
    dims: Mapping[str, list[str]] | None = None,
    attrs: Mapping[str, Any] | None = None,
):
    """Build an ArviZ object (``InferenceData`` on ArviZ 0.x, ``DataTree`` on 1.x) from arrays.

    Every array in ``posterior``, ``posterior_predictive`` and ``log_likelihood`` (and in ``sample_stats`` when
    ``sample_stats_per_draw``) has leading dimensions ``(chain, draw)``; ``observed_data`` and ``constant_data``
    have none. With ``sample_stats_per_draw=False`` the ``sample_stats`` variables have no chain or draw dimension
    either (an optimiser's loss per epoch: give its dimension in ``dims``). Names are sanitised with
    :func:`sanitize_name` (and ``dims`` keys with them); ``attrs`` become the object's global attributes.

    Examples
    --------
    >>> import numpy as np
    >>> idata = to_arviz({"nn/w": np.zeros((2, 10, 3))}, observed_data={"y": np.ones(4)})
    >>> [str(v) for v in idata.posterior.data_vars]
    ['nn.w']
    """
    az = _az()

    def clean(group):
        if group is None:
            return None
        out = {}
        for k, v in group.items():
            name = sanitize_name(k)
            if name in out:
                raise ValueError(f"variables {k!r} and another both sanitise to {name!r}")
            out[name] = np.asarray(v)
        return out

    dims = {sanitize_name(k): list(v) for k, v in (dims or {}).items()}
    coords = dict(coords or {})
    stats = clean(sample_stats)
    kwargs = dict(
        posterior=clean(posterior),
        posterior_predictive=clean(posterior_predictive),
        log_likelihood=clean(log_likelihood),
        observed_data=clean(observed_data),
        constant_data=clean(constant_data),
        sample_stats=stats if sample_stats_per_draw else None,
        coords=coords,
        dims=dims,
    )
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    attrs = {str(k): v for k, v in (attrs or {}).items()}
    if not hasattr(az, "from_dict"):
        raise RuntimeError("this ArviZ has no from_dict; install arviz>=0.20")
    if arviz_major_version() < 1:
        idata = az.from_dict(**kwargs, attrs=dict(attrs))
        if stats and not sample_stats_per_draw:  # no (chain, draw): built apart, as from_dict would add them
            ds = az.dict_to_dataset(stats, coords=coords, dims=dims, default_dims=[], attrs=dict(attrs))
            idata.add_groups(sample_stats=ds)
        return idata
    tree = _from_dict_v1(az, kwargs, attrs)
    if stats and not sample_stats_per_draw:
        import xarray as xr

        to_dataset = getattr(az, "dict_to_dataset", None)
        if to_dataset is None:
            from arviz_base import dict_to_dataset as to_dataset
        tree["sample_stats"] = xr.DataTree(dataset=to_dataset(stats, coords=coords, dims=dims, sample_dims=[]))
    return tree


def _from_dict_v1(az, kwargs, attrs=None):
    # ArviZ 1.x: from_dict takes one mapping of group name -> variables; global attributes under "/".
    coords, dims = kwargs.pop("coords", None), kwargs.pop("dims", None)
    if attrs:
        return az.from_dict(kwargs, coords=coords, dims=dims, attrs={"/": dict(attrs)})
    return az.from_dict(kwargs, coords=coords, dims=dims)


#: Predictive draws of a point fit (one parameter value, e.g. ``"map"``) in :func:`fit_to_arviz` when ``num_draws``
#: is not given: the posterior predictive samples that many masses per cluster from the one predictive density.
POINT_FIT_DRAWS = 100
#: Per-draw grid densities :func:`fit_to_arviz` holds at once (bytes of float32); larger catalogues go in chunks.
ARVIZ_DENSITY_BYTES = 2**27
#: ``fold_in`` tag of the posterior predictive's random stream (distinct from the draws' of ``Fit.posterior``).
_PREDICTIVE_STREAM = 0x9D
#: NumPyro's names of NUTS statistics -> ArviZ's (the names ``az.from_numpyro`` uses).
_ARVIZ_STAT_NAMES = {"num_steps": "n_steps", "accept_prob": "acceptance_rate", "potential_energy": "lp"}


def fit_to_arviz(fit, catalog, num_draws: int | None = None, seed: int | None = None, chunk_size: int | None = None):
    """Any :class:`~numpyro_clustermass.inference.Fit` as an ArviZ object, for ``az.summary``, ``az.loo``,
    ``az.compare`` and ArviZ's plots (``InferenceData`` on ArviZ 0.x, ``DataTree`` on 1.x; built through
    :func:`to_arviz`).

    Groups (those that exist for the fit):

    ``posterior``
        The parameters with ``chain`` and ``draw`` dimensions: the network weights (named as the Bayesian twin
        names them, ``nn.head.locs.kernel``, whatever the method, so that fits can be put side by side) or a
        scaling relation's ``intercept``, ``slope``, ``scatter``. NUTS: its chains and draws (``fit.state``).
        Methods that sample (``"bbb"``, ``"laplace"``, ...): ``num_draws`` draws of the method's ``sample`` as one
        chain, the same draws :meth:`Fit.posterior` mixes for this ``seed``; where only some weights are sampled
        (a last-layer BNN) the others, held at the MAP fit, are in ``constant_data``. Ensemble: the members as the
        draws of one chain: they are independent, exchangeable draws, so ``az.loo`` takes a relative efficiency of 1
        (one chain) and ``az.summary`` gives their mean, spread and an ESS; as chains of one draw each, ArviZ
        computes neither R-hat nor ESS (it needs 4 draws per chain), and R-hat across members, which sit in different
        modes by design, would not mean convergence anyway. A point fit (``"map"``): one chain, one draw. Where every
        draw carries the same parameters (``"mc_dropout"``: the draws differ by their dropout masks, drawn inside the
        network) they are stored once, as one draw.
    ``posterior_predictive``
        ``log_mass``: one log10 M per cluster per draw, sampled from that draw's predictive density on the grid (a
        point fit: ``num_draws`` samples, default :data:`POINT_FIT_DRAWS`, from its one density).
    ``log_likelihood``
        ``log_mass``: log p(true log10 M_i | x_i, draw) per cluster and draw, per dex of log10 M, from the same
        per-draw densities (:meth:`MassPosterior.log_prob`), so that ``az.loo`` works. Each draw's density is
        normalised on the grid (the density of a mass known to lie in the grid's range), as in
        ``MassPosterior.draws_log_density``. For one draw its ``exp`` is the density of :meth:`Fit.posterior` at
        the truth; for several, the mean of ``exp`` over draws is that density where every draw's density lies
        within the grid (``Fit.posterior`` mixes the draws before normalising, which weights a draw by its mass
        inside the grid). A point fit's is the same in every draw: ``az.loo`` then gives the in-sample log score
        (there is no posterior to leave a cluster out of) and ArviZ reports Pareto k = inf, as it cannot fit a tail
        to constant weights.
    ``observed_data``
        ``log_mass``: the catalogue's true log10 M, when it has one.
    ``constant_data``
        ``features`` (``cluster`` x ``feature``, as in the catalogue, not standardised), ``halo_id`` when the
        catalogue has it, and the parameters held fixed while others were sampled.
    ``sample_stats``
        NUTS, per chain and draw: ``diverging``, ``tree_depth``, ``n_steps``, ``energy``, ``step_size``,
        ``acceptance_rate``, ``lp`` (ArviZ's names, as ``az.from_numpyro`` gives them). Methods trained by epochs:
        the loss trace ``train_loss``, ``val_loss``, ``epoch_time`` along an ``epoch`` dimension (no chain or draw:
        it is the optimiser's history, not a statistic of a draw).

    Parameters
    ----------
    fit : Fit
    catalog : Catalog, array (n, n_features) or (x, y) tuple
        The clusters; with true masses (a catalogue's ``log_mass``, the ``y`` of a tuple) for ``observed_data`` and
        ``log_likelihood``.
    num_draws : int, optional
        Draws per fit. Default: NUTS every draw of every chain, other sampling methods their ``num_draws``, a point
        fit :data:`POINT_FIT_DRAWS` predictive draws, an ensemble its members (``num_draws`` is ignored, as by
        :meth:`Fit.posterior`). For NUTS a smaller number thins every chain evenly to ``ceil(num_draws / chains)``.
    seed : int, optional
        Seed of the draws (default the fit's). The parameter draws, and so every per-draw density, are those of
        ``fit.posterior(catalog, num_draws=S, seed=seed, keep_draws=True)`` for the same ``S`` (for ``"mc_dropout"``
        also the same ``chunk_size``: a dropout mask depends on a cluster's place in its chunk).
    chunk_size : int, optional
        Clusters per call of :meth:`Fit.posterior`; default as many as :data:`ARVIZ_DENSITY_BYTES` of per-draw
        densities allow, at most ``Fit.posterior``'s own default. The predictive samples depend on it.

    Returns
    -------
    arviz.InferenceData or xarray.DataTree

    Examples
    --------
    >>> import arviz as az, numpy as np
    >>> from numpyro_clustermass.estimators import MDN
    >>> from numpyro_clustermass.inference import fit
    >>> rng = np.random.default_rng(0)
    >>> y = rng.uniform(13.5, 15.0, 600); x = y[:, None] + 0.1 * rng.normal(size=(600, 2))
    >>> f = fit(MDN(2, (8,), feature_names=("a", "b")), (x, y), num_epochs=20, batch_size=128,
    ...         progress_bar=False)
    >>> idata = fit_to_arviz(f, (x[:50], y[:50]), num_draws=40)
    >>> idata.posterior["nn.head.locs.kernel"].shape        # a MAP fit: one chain, one draw
    (1, 1, 8, 2)
    >>> idata.log_likelihood["log_mass"].shape              # (chain, draw, cluster)
    (1, 40, 50)
    >>> post = f.posterior(x[:50])
    >>> bool(np.allclose(idata.log_likelihood["log_mass"][0, 0], post.log_prob(y[:50]), atol=1e-5))
    True
    >>> az.plot_ppc(idata)                                   # doctest: +SKIP
    >>> bayes = fit_to_arviz(ncm.fit(est, train, method="nuts"), test)   # doctest: +SKIP
    >>> az.compare({"map": idata, "nuts": bayes})            # doctest: +SKIP
    """
    import copy
    import math

    import jax

    from numpyro_clustermass.posterior import MassPosterior

    if num_draws is not None and (isinstance(num_draws, (bool, np.bool_)) or not float(num_draws).is_integer()
                                  or num_draws < 1):
        raise ValueError(f"num_draws must be an integer >= 1 (draws per fit); got {num_draws!r}")
    seed = int(fit.seed if seed is None else seed)
    x, y, names, extra_data = _catalog_arrays(fit, catalog)
    n = x.shape[0]
    if n == 0:
        raise ValueError("fit_to_arviz: the catalogue holds no clusters")
    key = jax.random.key(seed)
    k_draws = jax.random.split(key)[0]  # the draws' key of Fit.posterior for this seed
    k_pred = jax.random.fold_in(key, _PREDICTIVE_STREAM)

    state = fit.state
    fixed: dict = {}
    stats, stats_per_draw = None, True
    if _is_mcmc_state(state):
        # NUTS & co: all chains, thinned evenly; Fit.posterior takes every draw of the (thinned) state in order
        lead = np.shape(jax.tree.leaves(state.samples)[0])[:2]
        num_chains, length = int(lead[0]), int(lead[1])
        per_chain = length if num_draws is None else min(length, max(1, math.ceil(int(num_draws) / num_chains)))
        idx = np.unique(np.round(np.linspace(0, length - 1, per_chain)).astype(np.int64))
        samples = jax.tree.map(lambda a: a[:, idx], state.samples)
        source = copy.copy(fit)
        source.state = state._replace(samples=samples)
        num_request = num_chains * idx.size
        post_params = {k: np.asarray(v) for k, v in _flatten_draws(samples).items()}
        fixed = {k: np.asarray(v) for k, v in _flatten_draws(state.fixed).items() if k not in post_params}
        stats = _mcmc_stats(fit.history, num_chains, length, idx)
        num_out, shape_out = num_request, (num_chains, idx.size)
        draw_coord = idx  # the draws' places in their chains
    else:
        source = fit
        num_request = int(fit._method.num_draws if num_draws is None else num_draws)
        draws = fit._method.sample(k_draws, state, num_request)
        flat = {k: np.asarray(v) for k, v in _flatten_draws(draws).items()}
        num_got = int(next(iter(flat.values())).shape[0]) if flat else 1
        if num_got > 1 and all((v == v[:1]).all() for v in flat.values()):
            flat = {k: v[:1] for k, v in flat.items()}  # the same parameters in every draw (MC dropout)
        elif num_got > 1:
            latent = set(_latent_site_names(fit, x))
            if latent & set(flat):
                fixed = {k: v[0] for k, v in flat.items() if k not in latent}
                flat = {k: v for k, v in flat.items() if k in latent}
        post_params = {k: v[None] for k, v in flat.items()}  # one chain
        num_out = num_got if num_got > 1 else int(POINT_FIT_DRAWS if num_draws is None else num_draws)
        shape_out = (1, num_out)
        stats, stats_per_draw = _loss_trace(fit.history), False
        draw_coord = None

    # per-draw predictive densities, cluster chunk by cluster chunk
    grid_size = int(np.size(fit.grid))
    default_chunk = _posterior_default_chunk(fit)
    if chunk_size is None:
        budget = max(1, ARVIZ_DENSITY_BYTES // (4 * max(num_request, 1) * grid_size))
        chunk = int(min(n, default_chunk, budget))
    else:
        if isinstance(chunk_size, (bool, np.bool_)) or not float(chunk_size).is_integer() or chunk_size < 1:
            raise ValueError(f"chunk_size must be an integer >= 1 (clusters per call); got {chunk_size!r}")
        chunk = int(min(n, chunk_size))
    predictive = np.empty((num_out, n), np.float32)
    loglik = None if y is None else np.empty((num_out, n), np.float32)
    for start in range(0, n, chunk):
        stop = min(start + chunk, n)
        k = stop - start
        xc = x[start:stop]
        if k < chunk:  # pad as Fit.posterior pads its last chunk, so that every chunk is computed alike
            xc = np.concatenate([xc, np.repeat(xc[-1:], chunk - k, axis=0)])
        post = source.posterior(xc, num_draws=num_request, seed=seed, keep_draws=True, chunk_size=chunk)
        dl = np.asarray(post.draws_log_density)[:, :k]  # (S, k, G), normalised per draw
        s = dl.shape[0]
        per_draw = MassPosterior(post.grid, dl.reshape(s * k, -1), np.zeros(s * k, np.float32),
                                 np.zeros(s * k, np.float32))
        k_chunk = jax.random.fold_in(k_pred, start)
        if s == num_out:
            predictive[:, start:stop] = per_draw.sample(k_chunk, 1)[0].reshape(s, k)
        elif s == 1:  # a point fit: num_out masses from its one density
            predictive[:, start:stop] = per_draw.sample(k_chunk, num_out)
        else:
            raise RuntimeError(f"fit_to_arviz: Fit.posterior gave {s} per-draw densities where {num_out} were "
                               f"expected (the method's sample returned a different number of draws)")
        if loglik is not None:
            ll = per_draw.log_prob(np.tile(y[start:stop], s)).reshape(s, k)
            loglik[:, start:stop] = ll if s == num_out else np.broadcast_to(ll, (num_out, k))

    coords = {"cluster": np.arange(n), "feature": list(names)}
    if draw_coord is not None:
        coords["draw"] = draw_coord
    dims = {"log_mass": ["cluster"], "features": ["cluster", "feature"]}
    constant = {"features": x}
    for k, v in extra_data.items():
        constant[k] = v
        dims[k] = ["cluster"]
    constant.update(fixed)
    if stats and not stats_per_draw:
        epochs = {np.shape(v)[0] for v in stats.values()}
        for k, v in stats.items():
            dims[k] = ["epoch"] if len(epochs) == 1 else [f"{k}_epoch"]
    import numpyro

    attrs = {
        "method": str(fit.method),
        "estimator": str(getattr(fit.estimator, "name", type(fit.estimator).__name__)),
        "seed": seed,
        "num_draws": int(num_out),
        "units": "log_mass: log10 M [Msun/h]; log_likelihood: log density per dex of log10 M",
        "inference_library": "numpyro",
        "inference_library_version": str(numpyro.__version__),
    }
    return to_arviz(
        post_params,
        posterior_predictive={"log_mass": predictive.reshape(shape_out + (n,))},
        log_likelihood=None if loglik is None else {"log_mass": loglik.reshape(shape_out + (n,))},
        observed_data=None if y is None else {"log_mass": y},
        constant_data=constant,
        sample_stats=stats or None,
        sample_stats_per_draw=stats_per_draw,
        coords=coords,
        dims=dims,
        attrs=attrs,
    )


def _is_mcmc_state(state) -> bool:
    """A state holding MCMC draws: ``samples`` with leading ``(chain, draw)`` axes and ``fixed`` parameters."""
    return (isinstance(state, tuple) and hasattr(state, "_replace") and isinstance(getattr(state, "samples", None),
                                                                                   Mapping)
            and isinstance(getattr(state, "fixed", None), Mapping) and bool(state.samples))


def _flatten_draws(tree: Mapping) -> dict[str, Any]:
    """``{name: array}`` of a dict of site values. A nested dict of network parameters ``"nn$params"`` gets the names
    the Bayesian twin gives its weight sites (``"nn/head.locs.kernel"``), so that a MAP weight and its NUTS draws
    share a name; where the twin's site is there too (its draws), the parameter it replaces in the model is left
    out. An AutoGuide's own parameters (``"scale_auto_loc"``) are left out next to their site."""
    out: dict[str, Any] = {}
    for k, v in tree.items():
        if "_auto_" in k and k.split("_auto_")[0] in tree:
            continue
        if not isinstance(v, Mapping) and hasattr(v, "shape"):
            out[k] = v
    for k, v in tree.items():
        if isinstance(v, Mapping):
            base = k[: -len("$params")] if k.endswith("$params") else k
            for path, leaf in _flatten_nested(v):
                out.setdefault(f"{base}/{path}", leaf)
    return out


def _flatten_nested(tree: Mapping, prefix: str = ""):
    for k, v in tree.items():
        path = f"{prefix}.{k}" if prefix else str(k)
        if isinstance(v, Mapping):
            yield from _flatten_nested(v, path)
        elif hasattr(v, "shape"):
            yield path, v


def _latent_site_names(fit, x) -> list[str]:
    """The latent sample sites of the model the fit's draws go into (its Bayesian twin, or the user's model)."""
    import jax.numpy as jnp

    from numpyro_clustermass.bnn import latent_site_names

    xs = jnp.asarray(fit.features(x[:2]))
    return latent_site_names(fit._model, xs, jnp.zeros(xs.shape[0], xs.dtype))


def _posterior_default_chunk(fit) -> int:
    """``Fit.posterior``'s default ``chunk_size`` (read from its signature; 4096 if it has none)."""
    import inspect

    try:
        default = inspect.signature(type(fit).posterior).parameters["chunk_size"].default
        return int(default) if isinstance(default, (int, np.integer)) and default > 0 else 4096
    except (KeyError, TypeError, ValueError):
        return 4096


def _catalog_arrays(fit, data):
    """Raw features ``x`` (n, d), true log-masses ``y`` or None, feature names, and per-cluster extras."""
    from numpyro_clustermass.catalog import FEATURE_NAMES, Catalog

    fit.features(data)  # the fit's own validation: feature columns, counts, NaN, with its error messages
    extra = {}
    if isinstance(data, Catalog):
        names = tuple(fit.feature_names) if fit.feature_names is not None else FEATURE_NAMES
        x = data.features(names)
        y = data.log_mass if ("M200c" in data or "log_mass" in data) else None
        if "halo_id" in data:
            extra["halo_id"] = np.asarray(data["halo_id"])
    else:
        if isinstance(data, (tuple, list)) and len(data) in (2, 3):
            x, y = data[0], data[1]
        else:
            x, y = data, None
        x = np.asarray(x, dtype=np.float64)
        names = (tuple(fit.feature_names) if fit.feature_names is not None
                 else tuple(f"x{i}" for i in range(x.shape[1])))
    if y is not None:
        y = true_log_mass(y, x.shape[0])  # 1-D, finite, one per cluster (ValueError naming the problem)
    return x, y, names, extra


def _mcmc_stats(history: Mapping, num_chains: int, length: int, idx: np.ndarray) -> dict[str, np.ndarray]:
    """Per-draw sampler statistics (flat in ``fit.history``) as ``(chain, draw)`` arrays under ArviZ's names."""
    out = {}
    for k, v in (history or {}).items():
        v = np.asarray(v)
        if v.size != num_chains * length:
            continue
        v = v.reshape(num_chains, length)[:, idx]
        if k == "potential_energy":
            v = -v  # ArviZ's lp is the log density, the negative potential energy
        out[_ARVIZ_STAT_NAMES.get(k, k)] = v
        if k == "num_steps":
            out["tree_depth"] = (np.floor(np.log2(np.maximum(v, 1))) + 1).astype(np.int64)
    if "diverging" in out:
        out["diverging"] = out["diverging"].astype(bool)
    return out


def _loss_trace(history: Mapping) -> dict[str, np.ndarray]:
    """The 1-D per-epoch entries of a fit's history (loss trace, epoch times)."""
    return {k: np.asarray(v) for k, v in (history or {}).items() if np.ndim(v) == 1 and np.size(v) > 0}


def function_space_convergence(draws: np.ndarray) -> dict[str, np.ndarray]:
    """Split R-hat (rank-normalised) and bulk/tail ESS of per-cluster predictive quantities.

    Parameters
    ----------
    draws : array (chains, draws, n_clusters)
        E.g. each posterior draw's predictive mean of log10 M for held-out clusters.

    Returns
    -------
    dict
        ``rhat``, ``ess_bulk``, ``ess_tail`` (each ``(n_clusters,)``) and the scalars ``max_rhat``,
        ``min_ess_bulk``.
    """
    draws = np.asarray(draws, dtype=np.float64)
    if draws.ndim != 3:
        raise ValueError(f"draws must have shape (chains, draws, n_clusters); got {draws.shape}")
    if draws.shape[0] < 2:
        raise ValueError("split R-hat needs at least 2 chains to compare")
    az = _az()
    out = {}
    if arviz_major_version() < 1:
        ds = az.convert_to_dataset({"f": draws})
        out["rhat"] = np.asarray(az.rhat(ds)["f"].values)
        out["ess_bulk"] = np.asarray(az.ess(ds, method="bulk")["f"].values)
        out["ess_tail"] = np.asarray(az.ess(ds, method="tail")["f"].values)
    else:
        # ArviZ 1.x array interface: chain and draw axes given explicitly.
        out["rhat"] = np.asarray(az.rhat(draws, chain_axis=0, draw_axis=1))
        out["ess_bulk"] = np.asarray(az.ess(draws, chain_axis=0, draw_axis=1, method="bulk"))
        out["ess_tail"] = np.asarray(az.ess(draws, chain_axis=0, draw_axis=1, method="tail", prob=0.05))
    out["max_rhat"] = float(np.nanmax(out["rhat"]))
    out["min_ess_bulk"] = float(np.nanmin(out["ess_bulk"]))
    return out


# ---------------------------------------------------------------------------------------------- comparison
#: Clusters per block of the host-side W1 computation in :func:`compare_posteriors` (bounds its float64 temporaries).
_W1_BLOCK = 4096


def _cdf_at_edges(post, rows: slice) -> np.ndarray:
    """The piecewise-linear CDF (``metrics``' convention) at the ``G + 1`` cell edges, float64, 0 to exactly 1."""
    mass = np.exp(np.asarray(post.log_density[rows], dtype=np.float64))
    mass /= mass.sum(axis=-1, keepdims=True)
    cdf = np.cumsum(mass, axis=-1)
    cdf /= cdf[:, -1:]
    return np.concatenate([np.zeros_like(cdf[:, :1]), cdf], axis=-1)


def _w1_between(cdf_a: np.ndarray, cdf_b: np.ndarray, dx: float) -> np.ndarray:
    """``int |F_a - F_b| dm`` for CDFs linear in each cell: exact, also in cells where they cross."""
    d = cdf_a - cdf_b
    d0, d1 = d[:, :-1], d[:, 1:]
    a0, a1 = np.abs(d0), np.abs(d1)
    total = a0 + a1
    same_sign = d0 * d1 >= 0
    crossing = (d0 * d0 + d1 * d1) / (2.0 * np.where(total > 0, total, 1.0))  # two triangles
    return dx * np.where(same_sign, 0.5 * total, crossing).sum(axis=-1)


def compare_posteriors(a, b) -> dict[str, np.ndarray]:
    """Per-cluster distances between two :class:`~numpyro_clustermass.posterior.MassPosterior` on one grid.

    Returns ``wasserstein1``, the 1-Wasserstein distance ``W1 = int |F_a - F_b| dlog10M`` (dex), integrated exactly
    for the grid densities (constant on each cell, so each CDF is linear between cell edges, as in
    :mod:`numpyro_clustermass.metrics`; in a cell where the CDFs cross, the two triangles are summed);
    ``total_variation``, ``0.5 int |p_a - p_b|``; and ``delta_mean`` and ``delta_std``, ``a`` minus ``b``.
    Use it to compare an SVI posterior with the NUTS one cluster by cluster; :func:`compare` does so for whole fits.

    Examples
    --------
    >>> import numpy as np
    >>> from numpyro_clustermass.posterior import MassPosterior
    >>> g = np.linspace(12.0, 16.0, 801)
    >>> one = lambda mu, sd: MassPosterior.from_mixture(g, np.zeros((1, 1)), np.full((1, 1), mu), np.full((1, 1), sd))
    >>> d = compare_posteriors(one(14.0, 0.2), one(14.3, 0.2))   # equal widths: W1 = |mu_a - mu_b|
    >>> np.round(d["wasserstein1"], 4), np.round(d["delta_mean"], 4)
    (array([0.3]), array([-0.3], dtype=float32))
    >>> float(compare_posteriors(one(14.0, 0.2), one(14.0, 0.2))["wasserstein1"][0])
    0.0
    """
    grid_a, grid_b = np.asarray(a.grid), np.asarray(b.grid)
    if grid_a.shape != grid_b.shape or not np.allclose(grid_a, grid_b):
        raise ValueError(f"the two posteriors live on different grids ([{grid_a[0]:.4g}, {grid_a[-1]:.4g}], "
                         f"{grid_a.size} points, and [{grid_b[0]:.4g}, {grid_b[-1]:.4g}], {grid_b.size} points); "
                         f"build them with the same grid (Fit.posterior(..., grid=...))")
    if len(a) != len(b):
        raise ValueError(f"the posteriors hold {len(a)} and {len(b)} clusters; compare the same clusters")
    dx = float((grid_a[-1] - grid_a[0]) / (grid_a.size - 1))
    w1, tv = np.empty(len(a)), np.empty(len(a))
    for start in range(0, len(a), _W1_BLOCK):
        rows = slice(start, min(start + _W1_BLOCK, len(a)))
        w1[rows] = _w1_between(_cdf_at_edges(a, rows), _cdf_at_edges(b, rows), dx)
        pa = np.exp(np.asarray(a.log_density[rows], dtype=np.float64))
        pb = np.exp(np.asarray(b.log_density[rows], dtype=np.float64))
        tv[rows] = 0.5 * np.abs(pa - pb).sum(-1) * dx
    return {
        "wasserstein1": w1,
        "total_variation": tv,
        "delta_mean": np.asarray(a.mean()) - np.asarray(b.mean()),
        "delta_std": np.asarray(a.std()) - np.asarray(b.std()),
    }


#: :func:`compare` notes a fit whose mean epistemic variance is below this fraction of the reference's: it
#: under-estimates the reference's epistemic uncertainty (as mean-field variational inference is known to).
EPISTEMIC_RATIO_THRESHOLD = 0.5
#: Pareto k above which PSIS-LOO's estimate for a cluster is unreliable (Vehtari et al. 2017, 2024);
#: :func:`compare` counts the clusters above it.
PARETO_K_THRESHOLD = 0.7
#: Function-space R-hat at or above which :func:`compare` notes an MCMC fit as unconverged on the compared
#: clusters (the ``"nuts"`` method's default ``rhat_threshold``).
RHAT_THRESHOLD = 1.05


class Comparison(NamedTuple):
    """What :func:`compare` returns: several fits judged on the same clusters, and against a reference fit.

    Attributes
    ----------
    table : pandas.DataFrame
        One row per fit (index ``fit``, the fit's name) with the columns

        ``method``, ``n_clusters``, ``n_draws``
            The fit's method, the clusters compared and the predictive draws mixed in its posterior.
        ``log_score``, ``crps``, ``coverage_68``, ``coverage_95``, ``bias_median``, ``scatter_68``
            :func:`numpyro_clustermass.metrics.summary` of the posterior against the true masses: the mean log
            score (per dex; higher is better), the mean CRPS (dex; lower is better), the fraction of true masses in
            the central 68% and 95% intervals (one column per ``probs``), and the median residual and half the
            16-84 percentile range of the residuals of the ``estimator`` point estimate (clusters with true log10 M
            in 13.5-15.3). NaN without true masses.
        ``pred_std``, ``aleatoric_std``, ``epistemic_std``
            Means over clusters of the predictive standard deviation (of the density on the grid) and of the square
            roots of the aleatoric ``E_w[Var(y|x,w)]`` and epistemic ``Var_w[E(y|x,w)]`` variances (dex).
        ``elpd_loo``, ``elpd_loo_se``, ``p_loo``, ``n_pareto_k_bad``
            PSIS-LOO (``az.loo`` on ``fit.to_arviz(catalog)``): expected log pointwise predictive density (the sum
            over clusters, per dex), its standard error, the effective number of parameters, and the number of
            clusters with Pareto k above :data:`PARETO_K_THRESHOLD` (their ELPD terms are unreliable; a NaN k is not
            counted, a note gives their number). NaN where
            it does not apply: a fit whose draws all give the same predictive density (a point fit such as
            ``"map"``: there is no posterior to leave a cluster out of), no true masses, ``arviz=False``, or draws
            ``az.loo`` refuses (ArviZ 1.x's PSIS needs at least 5 draws in the tail it smooths; a note says so).
        ``rhat_max``, ``ess_bulk_min``
            For MCMC fits (``"nuts"``) with at least 2 chains: the largest split R-hat and the smallest bulk ESS of
            the per-draw predictive means of the compared clusters (:func:`function_space_convergence`, every
            draw of every chain). NaN for other fits.
        ``mean_abs_diff``, ``std_ratio``, ``w1``, ``epistemic_ratio`` (with a reference only)
            Against the reference fit, cluster by cluster: the mean of ``|mean - mean_ref|`` (dex), the mean of
            ``std / std_ref``, the mean 1-Wasserstein distance between the predictive distributions (dex; exact for
            the grid densities, :func:`compare_posteriors`), and the mean epistemic variance over the reference's
            (NaN when the reference has none). The reference's own row reads 0, 1, 0, 1.
    binned : pandas.DataFrame
        Per mass bin of true log10 M and per fit (:func:`numpyro_clustermass.metrics.binned`): ``fit``, ``bin_lo``,
        ``bin_hi``, ``bin_mid``, ``n``, ``coverage_68``, ``coverage_95`` (central intervals, one per ``probs``),
        ``bias_median``, ``scatter_68``, ``crps``, ``log_score``. Empty without true masses.
    per_cluster : pandas.DataFrame
        One row per fit and cluster: ``fit``, ``cluster`` (row of the catalogue), ``mean``, ``std``,
        ``aleatoric_std``, ``epistemic_std``, ``log_mass`` (the truth, when known) and, with a reference,
        ``ref_mean``, ``ref_std`` and ``w1``.
    notes : list of str
        What a reader must know, one sentence each: a fit that under-estimates the reference's epistemic
        variance (ratio below the threshold, with the ratio), unreliable or refused PSIS-LOO, an MCMC fit not
        converged on these clusters, grids made common, no true masses.
    reference : str or None
        The reference fit's name.
    grid : numpy.ndarray
        The log10 M grid every posterior was evaluated on.
    posteriors : dict of str -> MassPosterior
        Each fit's posterior of the compared clusters, on ``grid``: every number above comes from these.
    idata : dict of str -> InferenceData or DataTree
        Each fit's ArviZ object (``fit.to_arviz(catalog)``; empty with ``arviz=False``), for ``az.compare`` and
        ArviZ's plots.
    loo : dict of str -> ELPDData
        ``az.loo``'s result for the fits where it applies.
    """

    table: Any
    binned: Any
    per_cluster: Any
    notes: list
    reference: str | None
    grid: np.ndarray
    posteriors: dict
    idata: dict
    loo: dict


def compare(
    fits,
    catalog,
    reference: str | None = "nuts",
    *,
    num_draws: int | None = None,
    seed: int | None = None,
    grid=None,
    probs=(0.68, 0.95),
    estimator: str = "mode",
    edges=None,
    epistemic_threshold: float = EPISTEMIC_RATIO_THRESHOLD,
    arviz: bool = True,
) -> Comparison:
    """Several fits side by side on the same clusters, and each against a reference fit (NUTS by default).

    Every number comes from the package's own tools applied to each fit's posterior of ``catalog``
    (:meth:`Fit.posterior`): calibration and accuracy from :func:`numpyro_clustermass.metrics.summary` and
    :func:`~numpyro_clustermass.metrics.binned`, the aleatoric/epistemic split of
    :class:`~numpyro_clustermass.posterior.MassPosterior`, PSIS-LOO from ``az.loo`` on :func:`fit_to_arviz`'s
    object (ArviZ's Pareto-k warning is let through, and the count of bad k is in the table), function-space
    R-hat and ESS from :func:`function_space_convergence`, and per-cluster distances to the reference from
    :func:`compare_posteriors`. See :class:`Comparison` for every column.

    Parameters
    ----------
    fits : dict of str -> Fit, or a list of Fit
        The fits; a list names each fit by its method (two fits of one method need a dict).
    catalog : Catalog, array (n, n_features) or (x, y) tuple
        The clusters, the same for every fit. A :class:`~numpyro_clustermass.catalog.Catalog` lets fits trained on
        different feature columns each take their own; a bare array is refused for such fits. Without true
        masses (no ``M200c``/``log_mass`` column, or an array) the comparison with the reference is made but
        log score, CRPS, coverage, bias, scatter, the per-bin table and PSIS-LOO are not (NaN, empty, and a note).
    reference : str or None, default "nuts"
        Name of the fit the others are compared with; None for no reference columns.
    num_draws, seed : int, optional
        Predictive draws and their seed, for the posteriors and the ArviZ objects (default: each fit's).
    grid : array, optional
        The log10 M grid of every posterior. Default: the fits' common default grid; when their grids differ,
        one uniform grid spanning all of them at the finest of their spacings (each fit's density is evaluated on
        it exactly, nothing is interpolated), with a note.
    probs : sequence of float
        Central-interval probabilities of the coverage columns.
    estimator : {"mode", "mean", "median"}
        Point estimate of the bias and scatter columns.
    edges : array, optional
        Mass-bin edges of ``binned`` (default :func:`numpyro_clustermass.metrics.mass_bins`: 0.1 dex, 13.5-15.3).
    epistemic_threshold : float, default :data:`EPISTEMIC_RATIO_THRESHOLD`
        A fit whose ``epistemic_ratio`` is below it gets a note saying it under-estimates the reference's
        epistemic variance.
    arviz : bool, default True
        Build each fit's ArviZ object and PSIS-LOO; False skips both (faster).

    Returns
    -------
    Comparison

    Raises
    ------
    ValueError
        No fits, a ``reference`` that is not among them, two fits named alike, fits trained on different features
        given one feature array, bad ``probs`` or ``epistemic_threshold``; the fits' own errors (a missing feature
        column, NaN features) name the fit.
    TypeError
        A value of ``fits`` that is not a fit.

    Examples
    --------
    >>> import numpy as np
    >>> from numpyro_clustermass.estimators import MDN
    >>> from numpyro_clustermass.inference import fit
    >>> rng = np.random.default_rng(0)
    >>> y = rng.uniform(13.5, 15.0, 400); x = y[:, None] + 0.1 * rng.normal(size=(400, 2))
    >>> est = MDN(2, (8,), feature_names=("a", "b"))
    >>> f0, f1 = (fit(est, (x[:300], y[:300]), num_epochs=30, batch_size=64, seed=s, progress_bar=False)
    ...           for s in (0, 1))
    >>> c = compare({"a": f0, "b": f1}, (x[300:], y[300:]), reference="a", arviz=False)
    >>> c.table.loc["a", ["w1", "std_ratio"]].tolist()                 # the reference against itself
    [0.0, 1.0]
    >>> bool(c.table.loc["b", "w1"] > 0), c.notes
    (True, ["the reference 'a' has no epistemic variance (a point fit): epistemic ratios are not defined"])
    """
    import pandas as pd

    from numpyro_clustermass import metrics
    from numpyro_clustermass.grid import check_grid

    fits = _named_fits(fits)
    names = list(fits)
    if reference is not None and reference not in fits:
        raise ValueError(f"reference {reference!r} is not among the fits ({', '.join(map(repr, names))}); name one "
                         f"of them, or pass reference=None for no reference columns")
    probs_a = np.atleast_1d(np.asarray(probs, dtype=np.float64))
    if probs_a.ndim != 1 or probs_a.size == 0 or not np.all((probs_a > 0) & (probs_a < 1)):
        raise ValueError(f"probs must be interval probabilities in (0, 1); got {probs!r}")
    threshold = float(epistemic_threshold)
    if not (np.isfinite(threshold) and threshold > 0):
        raise ValueError(f"epistemic_threshold must be a finite number > 0; got {epistemic_threshold!r}")
    _check_shared_features(fits, catalog)

    notes: list[str] = []
    if grid is None:
        grid, note = _common_grid(fits)
        if note:
            notes.append(note)
    else:
        grid = check_grid(grid, min_points=3)
    truth = _fit_call(names[0], lambda: _catalog_arrays(fits[names[0]], catalog)[1])
    if truth is None:
        notes.append("the catalogue has no true masses: log score, CRPS, coverage, bias, scatter, the per-bin "
                     "table and PSIS-LOO are not computed; the comparison with the reference is")
    labels = [metrics.percent_label(p) for p in probs_a]

    posts, idatas, loos, rows, binned_parts = {}, {}, {}, {}, []
    for name, f in fits.items():
        post = _fit_call(name, lambda: f.posterior(catalog, num_draws=num_draws, seed=seed, grid=grid))
        posts[name] = post
        row = {"method": str(f.method), "n_clusters": len(post), "n_draws": int(post.meta.get("num_draws", 1))}
        if truth is not None:
            s = metrics.summary(post, truth, estimator=estimator, probs=probs_a)
            row.update(log_score=s["log_score_mean"], crps=s["crps_mean"])
            row.update({f"coverage_{k}": s[f"coverage_central_{k}"] for k in labels})
            row.update(bias_median=s["bias_median"], scatter_68=s["scatter_68"])
            b = metrics.binned(post, truth, estimator=estimator, edges=edges, probs=probs_a)
            b = b.rename(columns={f"cov_central_{k}": f"coverage_{k}" for k in labels})
            keep = ["bin_lo", "bin_hi", "bin_mid", "n", *[f"coverage_{k}" for k in labels], "bias_median",
                    "scatter_68", "crps", "log_score"]
            binned_parts.append(b[keep].assign(fit=name)[["fit", *keep]])
        else:
            row.update(log_score=np.nan, crps=np.nan, **{f"coverage_{k}": np.nan for k in labels},
                       bias_median=np.nan, scatter_68=np.nan)
        row["pred_std"] = float(np.mean(post.std()))
        row["aleatoric_std"] = float(np.mean(np.sqrt(post.aleatoric_variance)))
        row["epistemic_std"] = float(np.mean(np.sqrt(post.epistemic_variance)))
        row.update(elpd_loo=np.nan, elpd_loo_se=np.nan, p_loo=np.nan, n_pareto_k_bad=np.nan)
        if arviz:
            idata = _fit_call(name, lambda: f.to_arviz(catalog, num_draws=num_draws, seed=seed))
            idatas[name] = idata
            if truth is not None:
                elpd, refused = _loo(idata)
                if refused:
                    notes.append(f"{name}: PSIS-LOO not computed: az.loo refused ({refused}); more predictive draws "
                                 f"(num_draws) may let it run")
                if elpd is not None:
                    loos[name] = elpd
                    k = np.asarray(_elpd_field(elpd, "pareto_k"), dtype=np.float64)
                    bad, unknown = int(np.sum(k > PARETO_K_THRESHOLD)), int(np.sum(np.isnan(k)))
                    row.update(elpd_loo=float(_elpd_field(elpd, "elpd_loo", "elpd")),
                               elpd_loo_se=float(_elpd_field(elpd, "se")),
                               p_loo=float(_elpd_field(elpd, "p_loo", "p")), n_pareto_k_bad=bad)
                    if bad:
                        notes.append(f"{name}: {bad} of {k.size} clusters {'has' if bad == 1 else 'have'} Pareto k > "
                                     f"{PARETO_K_THRESHOLD:g}: PSIS-LOO's ELPD is unreliable for them (see ArviZ's "
                                     f"warning)")
                    if unknown:
                        notes.append(f"{name}: ArviZ gave no Pareto k (NaN) for {unknown} of {k.size} clusters: "
                                     f"PSIS-LOO's reliability is unknown for them")
        row.update(rhat_max=np.nan, ess_bulk_min=np.nan)
        if _is_mcmc_state(f.state):
            conv = _fit_call(name, lambda: _mcmc_function_space(f, catalog, grid, seed))
            if conv is not None:
                row.update(rhat_max=conv["max_rhat"], ess_bulk_min=conv["min_ess_bulk"])
                if not conv["max_rhat"] < RHAT_THRESHOLD:
                    notes.append(f"{name}: function-space R-hat {conv['max_rhat']:.3f} on these clusters is at or "
                                 f"above {RHAT_THRESHOLD:g}: its chains disagree, so its draws may not represent "
                                 f"the posterior (run longer or check the fit's convergence warnings)")
        rows[name] = row

    per_cluster = []
    truth_col = {} if truth is None else {"log_mass": truth}
    for name, post in posts.items():
        columns = {"mean": post.mean(), "std": post.std(), "aleatoric_std": np.sqrt(post.aleatoric_variance),
                   "epistemic_std": np.sqrt(post.epistemic_variance)}
        per_cluster.append(pd.DataFrame({"fit": name, "cluster": np.arange(len(post)),
                                         **{k: np.asarray(v, dtype=np.float64) for k, v in columns.items()},
                                         **truth_col}))
    if reference is not None:
        ref = posts[reference]
        ref_mean, ref_std = np.asarray(ref.mean()), np.asarray(ref.std())
        ref_epi = float(np.mean(ref.epistemic_variance))
        if not ref_epi > 0:
            notes.append(f"the reference {reference!r} has no epistemic variance (a point fit): epistemic ratios "
                         f"are not defined")
        for k, (name, post) in enumerate(posts.items()):
            d = compare_posteriors(post, ref)
            epi = float(np.mean(post.epistemic_variance))
            ratio = epi / ref_epi if ref_epi > 0 else np.nan
            rows[name].update(mean_abs_diff=float(np.mean(np.abs(d["delta_mean"]))),
                              std_ratio=float(np.mean(np.asarray(post.std()) / ref_std)),
                              w1=float(np.mean(d["wasserstein1"])), epistemic_ratio=ratio)
            per_cluster[k] = per_cluster[k].assign(ref_mean=ref_mean.astype(np.float64),
                                                   ref_std=ref_std.astype(np.float64), w1=d["wasserstein1"])
            if name != reference and ratio < threshold:
                what = ("it has none (a point fit)" if epi == 0 else
                        "it under-estimates the reference's epistemic uncertainty")
                notes.append(f"{name}: epistemic variance {ratio:.3g} x the reference's ({reference}; mean over "
                             f"clusters, below {threshold:g}): {what}")
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "fit"
    table.attrs.update(reference=reference, estimator=estimator, probs=probs_a.tolist(),
                       epistemic_threshold=threshold, pareto_k_threshold=PARETO_K_THRESHOLD)
    if binned_parts:
        binned = pd.concat(binned_parts, ignore_index=True)
    else:
        binned = pd.DataFrame(columns=["fit", "bin_lo", "bin_hi", "bin_mid", "n",
                                       *[f"coverage_{k}" for k in labels]])
    return Comparison(table=table, binned=binned, per_cluster=pd.concat(per_cluster, ignore_index=True),
                      notes=notes, reference=reference, grid=np.asarray(posts[names[0]].grid), posteriors=posts, idata=idatas,
                      loo=loos)


def _named_fits(fits) -> dict:
    """``{name: fit}`` from a mapping, or from a list named by method (ValueError on a name used twice)."""
    if isinstance(fits, Mapping):
        items = list(fits.items())
    elif isinstance(fits, (list, tuple)):
        methods = [str(getattr(f, "method", type(f).__name__)) for f in fits]
        twice = sorted({m for m in methods if methods.count(m) > 1})
        if twice:
            raise ValueError(f"several fits have the method {', '.join(map(repr, twice))}: pass a dict "
                             f"name -> Fit to tell them apart")
        items = list(zip(methods, fits))
    else:
        raise TypeError(f"fits must be a dict name -> Fit or a list of Fit; got {type(fits).__name__}")
    if not items:
        raise ValueError("compare needs at least one fit")
    for name, f in items:
        if not isinstance(name, str) or not name:
            raise TypeError(f"fit names must be non-empty strings; got {name!r}")
        if not all(hasattr(f, a) for a in ("posterior", "to_arviz", "grid", "state", "method")):
            raise TypeError(f"fits[{name!r}] is a {type(f).__name__}, not a Fit (numpyro_clustermass.fit's result)")
    return dict(items)


def _check_shared_features(fits: dict, catalog) -> None:
    """One feature array suits fits only if they were all trained on the same features (a Catalog suits any)."""
    from numpyro_clustermass.catalog import Catalog

    if isinstance(catalog, Catalog):
        return
    kinds = {name: (None if f.feature_names is None else tuple(f.feature_names), int(f.num_features))
             for name, f in fits.items()}
    if len(set(kinds.values())) > 1:
        desc = "; ".join(f"{n}: {', '.join(k[0]) if k[0] else f'{k[1]} unnamed'}" for n, k in kinds.items())
        raise ValueError(f"the fits were trained on different features ({desc}), so one feature array cannot suit "
                         f"them all; pass a Catalog, from which each fit takes its own columns")


def _common_grid(fits: dict):
    """``(None, None)`` when every fit has the same default grid, else a grid spanning them all and a note."""
    from numpyro_clustermass.grid import spacing

    grids = {name: np.asarray(f.grid, dtype=np.float64) for name, f in fits.items()}
    first = next(iter(grids.values()))
    if all(g.shape == first.shape and np.allclose(g, first, rtol=0.0, atol=1e-9) for g in grids.values()):
        return None, None
    lo = min(float(g[0]) for g in grids.values())
    hi = max(float(g[-1]) for g in grids.values())
    dx = min(float(spacing(g)) for g in grids.values())
    num = int(np.ceil((hi - lo) / dx - 1e-6)) + 1
    common = np.linspace(lo, hi, num)
    desc = "; ".join(f"{n}: [{g[0]:.3f}, {g[-1]:.3f}], {g.size} points" for n, g in grids.items())
    return common, (f"the fits' default grids differ ({desc}): every posterior is evaluated on one grid spanning "
                    f"them all, [{lo:.3f}, {hi:.3f}] with {num} points (the finest spacing)")


def _fit_call(name: str, call):
    """``call()``, with a ValueError (a CatalogError too) raised again naming the fit it came from."""
    try:
        return call()
    except ValueError as exc:
        try:
            renamed = type(exc)(f"fit {name!r}: {exc}")
        except Exception:  # noqa: BLE001 - an exception type that takes other arguments: keep it as it is
            raise exc from None
        raise renamed from exc


def _loo(idata):
    """``(az.loo's pointwise result, None)``; ``(None, None)`` where LOO does not apply (every draw gives the same
    density: a point fit); ``(None, ArviZ's message)`` where ``az.loo`` refuses the draws (ArviZ 1.x's PSIS needs
    at least 5 draws in the tail it smooths)."""
    ll = np.asarray(idata["log_likelihood"]["log_mass"].values)
    draws = ll.reshape(-1, ll.shape[-1])
    if draws.shape[0] < 2 or np.all(draws == draws[:1]):
        return None, None
    try:
        return _az().loo(idata, pointwise=True), None
    except ValueError as exc:
        return None, " ".join(str(exc).split()) or type(exc).__name__


def arviz_to_netcdf(idata, path) -> None:
    """Write an ArviZ object to ``path`` as netCDF-4 (``InferenceData.to_netcdf`` on ArviZ 0.x, ``DataTree.to_netcdf``
    on 1.x, both through the ``h5netcdf`` engine, a dependency of the package); ``az.from_netcdf`` reads it back.

    Examples
    --------
    >>> import os, tempfile
    >>> path = os.path.join(tempfile.mkdtemp(), "fit.nc")
    >>> arviz_to_netcdf(to_arviz({"w": np.zeros((1, 3))}, observed_data={"y": np.ones(2)}), path)
    >>> sorted(arviz_groups(_az().from_netcdf(path)))
    ['observed_data', 'posterior']
    """
    import os

    idata.to_netcdf(os.fspath(path), engine="h5netcdf")


def _elpd_field(elpd, *names):
    """A field of ``az.loo``'s result: ``elpd_loo``/``p_loo`` of ArviZ 0.x's Series, ``elpd``/``p`` of 1.x's."""
    for name in names:
        value = getattr(elpd, name, None)
        if value is not None:
            return np.asarray(getattr(value, "values", value))
    raise KeyError(f"az.loo's result has none of {names}")


def _mcmc_function_space(fit, catalog, grid, seed):
    """Function-space R-hat and ESS of an MCMC fit on ``catalog``: each draw's predictive mean per cluster, from
    ``Fit.posterior``'s per-draw densities (every draw of every chain, in chain order); None for one chain."""
    import jax

    state = fit.state
    num_chains, length = (int(v) for v in np.shape(jax.tree.leaves(state.samples)[0])[:2])
    if num_chains < 2:
        return None
    total = num_chains * length
    x = _catalog_arrays(fit, catalog)[0]
    n = x.shape[0]
    size = int(np.size(fit.grid if grid is None else grid))
    chunk = int(max(1, min(n, _posterior_default_chunk(fit), ARVIZ_DENSITY_BYTES // (4 * total * size))))
    means = np.empty((total, n))
    with warnings.catch_warnings():
        # the same densities as the posterior compare already made (and warned about, if it had to), chunk by chunk
        warnings.simplefilter("ignore")
        for start in range(0, n, chunk):
            stop = min(start + chunk, n)
            xc = x[start:stop]
            if stop - start < chunk:  # pad as Fit.posterior pads its last chunk: one compiled shape
                xc = np.concatenate([xc, np.repeat(xc[-1:], chunk - (stop - start), axis=0)])
            post = fit.posterior(xc, num_draws=total, seed=seed, grid=grid, keep_draws=True, chunk_size=chunk)
            dl = np.asarray(post.draws_log_density, dtype=np.float64)[:, : stop - start]
            p = np.exp(dl)
            p /= p.sum(axis=-1, keepdims=True)
            means[:, start:stop] = p @ np.asarray(post.grid, dtype=np.float64)
    return function_space_convergence(means.reshape(num_chains, length, n))


# ---------------------------------------------------------------------------------------------- covariate shift
def covariate_shift(fit, catalog, *, max_rows: int = 1000, num_permutations: int = 500, level: float = 0.05,
                    seed: int = 0) -> ShiftTest:
    """Catalogue-level test: do ``catalog``'s features come from the distribution ``fit`` was trained on?

    A kernel two-sample test (maximum mean discrepancy with a Gaussian kernel, width the median heuristic, in the
    fit's whitened copula space, :mod:`numpyro_clustermass.shift`) between the fit's reservoir of training rows
    and the catalogue's rows (at most ``max_rows`` of each; one line of sight per halo when the catalogue has
    ``halo_id``, since a halo's projections are not independent rows), with a permutation p-value; and per
    feature, a Kolmogorov-Smirnov test, the mean shift and the spread ratio, which say what drives a shift.

    Parameters
    ----------
    fit : Fit
        A fit with a feature reference (every fit made by this version; not one loaded from an older file).
    catalog : Catalog, array (n, n_features) or tuple
        The catalogue to test, with the fit's feature columns (true masses are not needed).
    max_rows : int
        Rows of each sample in the MMD test (its cost grows as the square).
    num_permutations : int
        Permutations of the p-value (its resolution is ``1 / (1 + num_permutations)``).
    level : float
        Significance level of :attr:`ShiftTest.shifted`; ``level / n_features`` selects the drivers.
    seed : int
        Seeds the subsamples and the permutations.

    Returns
    -------
    ShiftTest
        Frozen: ``statistic``, ``pvalue``, ``shifted``, ``per_feature`` (a DataFrame, most shifted feature
        first), ``drivers`` (the features that differ significantly), sizes and settings.

    Raises
    ------
    ValueError
        The fit has no feature reference (loaded from a fit file written before shift detection), or bad settings.
    CatalogError
        The catalogue lacks the fit's feature columns, or has non-finite features.

    Example
    -------
    >>> import numpy as np
    >>> import numpyro_clustermass as ncm
    >>> rng = np.random.default_rng(1)
    >>> y = rng.uniform(13.5, 15.0, 3000); x = y[:, None] + 0.1 * rng.normal(size=(3000, 3))
    >>> f = ncm.fit(ncm.MDN(2, (8,), feature_names=("a", "b", "c")), (x[:2000], y[:2000]), num_epochs=2,
    ...             progress_bar=False)
    >>> same = covariate_shift(f, x[2000:], num_permutations=200)  # a 5% test: 1 in 20 such catalogues is flagged
    >>> moved = x[2000:].copy(); moved[:, 1] += 0.3             # feature "b" shifted by about 0.7 training std
    >>> test = covariate_shift(f, moved, num_permutations=200)
    >>> same.shifted, test.shifted, test.drivers
    (False, True, ('b',))
    """
    reference = getattr(fit, "feature_reference", None)
    if reference is None:
        raise ValueError("covariate_shift: this fit keeps no summary of its training features (it was loaded from "
                         "a fit file saved before shift detection existed); refit it to test for covariate shift")
    x = fit.features(catalog)
    from numpyro_clustermass.catalog import Catalog

    groups = np.asarray(catalog["halo_id"]) if isinstance(catalog, Catalog) and "halo_id" in catalog else None
    return mmd_test(reference, x, groups, max_rows=max_rows, num_permutations=num_permutations, level=level,
                    seed=seed)
