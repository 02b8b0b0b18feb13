"""Diagnostics: ArviZ adapters, convergence in function space, and posterior-to-posterior comparison.

Weight-space R-hat of a Bayesian neural network never reaches 1 (permutation and sign symmetries of the
hidden units make every chain a different but equivalent mode), so this package judges MCMC convergence in
*function space*: split R-hat and effective sample size of per-cluster predictive quantities (the predictive
mean of log10 M for held-out clusters), which are invariant to those symmetries.

ArviZ 0.x (Python 3.11) returns ``InferenceData``; ArviZ 1.x (Python >= 3.12) returns an xarray
``DataTree`` and refuses variable names containing ``/``. Everything here goes through one adapter,
:func:`to_arviz`, that renames variables and works with both.

Example
-------
>>> import numpy as np
>>> draws = np.random.default_rng(0).normal(size=(2, 500, 3))   # (chains, draws, clusters)
>>> d = function_space_convergence(draws)
>>> bool(d["rhat"].max() < 1.02), d["ess_bulk"].shape
(True, (3,))
"""

from __future__ import annotations

import re
import warnings
from typing import Any, Mapping

import numpy as np

__all__ = [
    "ConvergenceWarning",
    "ConvergenceError",
    "convergence_problems",
    "arviz_major_version",
    "sanitize_name",
    "to_arviz",
    "function_space_convergence",
    "compare_posteriors",
]


class ConvergenceWarning(UserWarning):
    """An MCMC run whose draws may not represent the posterior: function-space R-hat above the threshold,
    divergent transitions, or a low effective sample size. The message gives the numbers and the fix.

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


def sanitize_name(name: str) -> str:
    """A variable name ArviZ 1.x accepts: ``nn$params/Dense_0.kernel`` -> ``nn_params.Dense_0.kernel``."""
    return re.sub(r"[^0-9A-Za-z_.]", "_", name.replace("/", "."))


def to_arviz(
    posterior: Mapping[str, Any],
    *,
    posterior_predictive: Mapping[str, Any] | None = None,
    log_likelihood: Mapping[str, Any] | None = None,
    observed_data: Mapping[str, Any] | None = None,
    coords: Mapping[str, Any] | None = None,
    dims: Mapping[str, list[str]] | None = None,
):
    """Build an ArviZ object (``InferenceData`` on ArviZ 0.x, ``DataTree`` on 1.x) from arrays.

    Every array in ``posterior``, ``posterior_predictive`` and ``log_likelihood`` has leading dimensions
    ``(chain, draw)``. Names are sanitised with :func:`sanitize_name` (and ``dims`` keys with them).
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

    dims = {sanitize_name(k): v for k, v in (dims or {}).items()}
    kwargs = dict(
        posterior=clean(posterior),
        posterior_predictive=clean(posterior_predictive),
        log_likelihood=clean(log_likelihood),
        observed_data=clean(observed_data),
        coords=dict(coords or {}),
        dims=dims,
    )
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    if hasattr(az, "from_dict"):
        return az.from_dict(**kwargs) if arviz_major_version() < 1 else _from_dict_v1(az, kwargs)
    raise RuntimeError("this ArviZ has no from_dict; install arviz>=0.20")


def _from_dict_v1(az, kwargs):
    # ArviZ 1.x: from_dict takes one mapping of group name -> variables.
    coords, dims = kwargs.pop("coords", None), kwargs.pop("dims", None)
    return az.from_dict(kwargs, coords=coords, dims=dims)


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


def compare_posteriors(a, b) -> dict[str, np.ndarray]:
    """Per-cluster distances between two :class:`~numpyro_clustermass.posterior.MassPosterior` on one grid.

    Returns the 1-Wasserstein distance ``W1 = int |F_a - F_b| dlogM`` (dex), the total-variation distance
    ``0.5 int |p_a - p_b|``, and the differences of means and standard deviations. Use it to compare an SVI
    posterior with the NUTS one cluster by cluster.
    """
    grid_a, grid_b = np.asarray(a.grid), np.asarray(b.grid)
    if grid_a.shape != grid_b.shape or not np.allclose(grid_a, grid_b):
        raise ValueError("the two posteriors live on different grids; build them with the same grid")
    if len(a) != len(b):
        raise ValueError(f"the posteriors hold {len(a)} and {len(b)} clusters")
    dx = float(grid_a[1] - grid_a[0])
    pa, pb = np.asarray(a.density()), np.asarray(b.density())
    cdf_a, cdf_b = np.cumsum(pa, axis=-1) * dx, np.cumsum(pb, axis=-1) * dx
    return {
        "wasserstein1": np.abs(cdf_a - cdf_b).sum(-1) * dx,
        "total_variation": 0.5 * np.abs(pa - pb).sum(-1) * dx,
        "delta_mean": np.asarray(a.mean()) - np.asarray(b.mean()),
        "delta_std": np.asarray(a.std()) - np.asarray(b.std()),
    }
