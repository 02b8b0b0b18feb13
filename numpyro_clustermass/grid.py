"""The log-mass grid: the one home of the mass range, grid validation, spacing and normalisation.

Every posterior in the package is a density of log10 M on a uniform, increasing grid; priors are evaluated
on the same grid. :mod:`numpyro_clustermass.posterior`, :mod:`numpyro_clustermass.priors`,
:mod:`numpyro_clustermass.inference` and :mod:`numpyro_clustermass.simulate` take these definitions from here.

Examples
--------
>>> import numpy as np
>>> from numpyro_clustermass.grid import LOG_MASS_RANGE, check_grid, default_grid, spacing
>>> g = default_grid(np.array(LOG_MASS_RANGE))
>>> g.shape, round(float(spacing(check_grid(g))), 6)
((512,), 0.00548)
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["LOG_MASS_RANGE", "DEFAULT_GRID_SIZE", "DEFAULT_GRID_MARGIN", "check_grid", "default_grid", "spacing",
           "normalise_log_density"]

#: Mass range of the lecture's catalogue (Ho et al. 2019): log10 M200c in [13.5, 15.3] Msun/h.
LOG_MASS_RANGE = (13.5, 15.3)
#: Default number of grid points of a posterior.
DEFAULT_GRID_SIZE = 512
#: Smallest margin (dex) the default grid adds on each side of the training masses.
DEFAULT_GRID_MARGIN = 0.5


def check_grid(grid, min_points: int = 2) -> np.ndarray:
    """Validate a log-mass grid: 1-D, finite, at least ``min_points`` points, strictly increasing, uniform.

    Parameters
    ----------
    grid : array_like, shape (G,)
    min_points : int
        2 for evaluating a prior; posteriors need 3.

    Returns
    -------
    numpy.ndarray
        The grid as float64 (for host-side checks; the caller keeps its own array for computation).

    Raises
    ------
    ValueError
        Naming what is wrong and how to fix it.

    Examples
    --------
    >>> check_grid(np.linspace(13.0, 16.0, 5)).shape
    (5,)
    """
    g = np.asarray(grid)
    if g.ndim != 1 or g.shape[0] < min_points:
        raise ValueError(f"grid must be 1-D with at least {min_points} points, got shape {g.shape}")
    g64 = g.astype(np.float64)
    if not np.all(np.isfinite(g64)):
        raise ValueError(f"grid has {int(np.sum(~np.isfinite(g64)))} non-finite value(s)")
    d = np.diff(g64)
    if np.any(d <= 0):
        raise ValueError(
            f"grid must be strictly increasing; {int(np.sum(d <= 0))} step(s) are <= 0 "
            "(build it with numpy.linspace(lo, hi, G))"
        )
    dx = (g64[-1] - g64[0]) / (g64.shape[0] - 1)
    eps = np.finfo(g.dtype).eps if np.issubdtype(g.dtype, np.floating) else 0.0
    tol = 1e-3 * dx + 8.0 * eps * np.max(np.abs(g64))
    if np.max(np.abs(d - dx)) > tol:
        raise ValueError(
            f"grid must be uniform: steps range over [{d.min():.6g}, {d.max():.6g}] around dx={dx:.6g} "
            "(build it with numpy.linspace(lo, hi, G))"
        )
    return g64


def default_grid(log_mass, num: int = DEFAULT_GRID_SIZE, margin: float | None = None) -> np.ndarray:
    """A uniform grid of log10 M covering ``log_mass``'s range with a margin on both sides.

    The margin defaults to ``max(0.5 dex, 25% of the range)``, wide enough for the predictive tails of the
    lightest and heaviest clusters.

    Examples
    --------
    >>> g = default_grid(np.array([13.5, 15.3]))
    >>> g.shape, round(float(g[0]), 2), round(float(g[-1]), 2)
    ((512,), 13.0, 15.8)
    """
    log_mass = np.asarray(log_mass, dtype=np.float64)
    if log_mass.size == 0 or not np.isfinite(log_mass).all():
        raise ValueError("default_grid needs a non-empty array of finite log-masses")
    lo, hi = float(log_mass.min()), float(log_mass.max())
    if margin is None:
        margin = max(DEFAULT_GRID_MARGIN, 0.25 * (hi - lo))
    if num < 3:
        raise ValueError(f"a grid needs at least 3 points; got {num}")
    return np.linspace(lo - margin, hi + margin, int(num))


def spacing(grid):
    """Grid spacing from the end points: a float32 ``grid[1] - grid[0]`` is off by up to 2e-4 relative."""
    return (grid[-1] - grid[0]) / (grid.shape[0] - 1)


def normalise_log_density(log_density: jax.Array, dx) -> jax.Array:
    """Normalise rows of an unnormalised log-density on a uniform grid so ``exp(.).sum(-1) * dx == 1``."""
    return log_density - jax.nn.logsumexp(log_density, axis=-1, keepdims=True) - jnp.log(dx)
