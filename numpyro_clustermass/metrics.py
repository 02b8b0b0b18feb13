"""Accuracy and calibration of cluster-mass predictions.

Point predictions are judged as in Ho et al. 2019: per bin of true log10 M (default 0.1 dex over
13.5–15.3), the median of the residual ε = log M_pred − log M_true (bias) and its scatter (standard
deviation, and half the 16–84 percentile range). Predictive distributions (:class:`~numpyro_clustermass.
posterior.MassPosterior`) are also judged by

* interval coverage: the fraction of true masses inside the central and the highest-posterior-density (HPD)
  intervals of nominal probability p (68% and 95% by default), with its binomial standard error;
* the probability integral transform PIT = F_i(y_i), uniform on [0, 1] for calibrated posteriors, with a
  Kolmogorov–Smirnov and a chi-square test of uniformity;
* the continuous ranked probability score CRPS = ∫ (F_i(x) − 1{x ≥ y_i})² dx (Gneiting & Raftery 2007,
  eq. 20), in dex, computed exactly for the grid density;
* the log score log p_i(y_i) (per unit log10 M; larger is better).

All statistics come from the posterior's own methods (``mode``, ``mean``, ``median``, ``quantiles``,
``hpdi``, ``log_prob``) and, for the CDF needed by PIT and CRPS, from its ``grid``/``log_density`` arrays
with the same convention as :mod:`numpyro_clustermass.posterior`: the density is constant on the cells
``[g_j − dx/2, g_j + dx/2]``, so the CDF is piecewise linear between cell edges.

References
----------
Ho, M., Rau, M. M., Ntampaka, M., et al. 2019, ApJ 887, 25 (arXiv:1902.05950).
Ho, M., Farahi, A., Rau, M. M., Trac, H. 2021, ApJ 908, 204 (arXiv:2006.13231).
Gneiting, T., Raftery, A. E. 2007, JASA 102, 359: strictly proper scoring rules (CRPS, log score).
Dawid, A. P. 1984, JRSS A 147, 278 (PIT).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

if TYPE_CHECKING:  # pandas (0.2 s) is imported by the functions that build tables, not with the package
    import pandas as pd

from numpyro_clustermass.grid import LOG_MASS_RANGE

__all__ = [
    "BIN_WIDTH",
    "LOG_MASS_RANGE",
    "PITTest",
    "binned",
    "coverage",
    "coverage_by_bin",
    "coverage_curve",
    "crps",
    "log_score",
    "mass_bins",
    "percent_label",
    "pit",
    "pit_uniformity",
    "point_estimate",
    "residual_stats",
    "summary",
]

#: Bin width of Ho et al. 2019's binned statistics (dex); the range is priors.LOG_MASS_RANGE (13.5-15.3).
BIN_WIDTH = 0.1
#: Percentiles of the predictions drawn as bands in the lecture's binned plot.
BAND_PERCENTILES = (5, 15, 50, 85, 95)
#: Clusters per compiled call of the PIT/CRPS kernel (bounds memory for catalogue-sized posteriors).
_CHUNK = 8192


# --------------------------------------------------------------------------------------------------------
# input handling
# --------------------------------------------------------------------------------------------------------
def is_posterior(obj) -> bool:
    """Whether ``obj`` is a posterior on a grid (a :class:`~numpyro_clustermass.posterior.MassPosterior` or
    anything with ``grid``, ``log_density`` and ``quantiles``) rather than an array of point estimates."""
    return hasattr(obj, "grid") and hasattr(obj, "log_density") and hasattr(obj, "quantiles")


def true_log_mass(truth, n: int | None = None) -> np.ndarray:
    """True log10 masses from an array or anything with a ``log_mass`` attribute (a Catalog), checked: 1-D,
    finite, and ``n`` values when ``n`` is given (ValueError otherwise)."""
    if hasattr(truth, "log_mass") and not isinstance(truth, np.ndarray):
        truth = truth.log_mass
    y = np.asarray(truth, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"truth_log_mass must be 1-D (one true log10 M per cluster), got shape {y.shape}")
    bad = ~np.isfinite(y)
    if bad.any():
        raise ValueError(f"truth_log_mass has {int(bad.sum())} non-finite value(s) out of {y.size}")
    if n is not None and y.size != n:
        raise ValueError(f"truth_log_mass has {y.size} values but the prediction has {n} clusters")
    return y


def _n(post_or_points) -> int:
    if is_posterior(post_or_points):
        return int(np.shape(post_or_points.log_density)[0])
    return int(np.size(post_or_points))


def point_estimate(post_or_points, estimator: str = "mode") -> np.ndarray:
    """Point prediction per cluster.

    Parameters
    ----------
    post_or_points : MassPosterior or array_like, shape (n,)
        A posterior (then ``estimator`` picks its ``mode``, ``mean`` or ``median``) or point predictions,
        returned unchanged (as float64).
    estimator : {"mode", "mean", "median"}

    Returns
    -------
    numpy.ndarray, shape (n,)

    Examples
    --------
    >>> point_estimate([14.0, 14.5])
    array([14. , 14.5])
    """
    if is_posterior(post_or_points):
        if estimator not in ("mode", "mean", "median"):
            raise ValueError(f"estimator must be 'mode', 'mean' or 'median', got {estimator!r}")
        return np.asarray(getattr(post_or_points, estimator)(), dtype=np.float64)
    x = np.asarray(post_or_points, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"point predictions must be 1-D, got shape {x.shape}")
    bad = ~np.isfinite(x)
    if bad.any():
        raise ValueError(f"point predictions have {int(bad.sum())} non-finite value(s) out of {x.size}")
    return x


def mass_bins(lo: float = LOG_MASS_RANGE[0], hi: float = LOG_MASS_RANGE[1], width: float = BIN_WIDTH) -> np.ndarray:
    """Bin edges of true log10 M: ``width``-dex bins from ``lo`` to ``hi`` (default 18 bins of 0.1 dex).

    Examples
    --------
    >>> mass_bins().shape, mass_bins()[[0, -1]].tolist()
    ((19,), [13.5, 15.3])
    """
    lo, hi, width = float(lo), float(hi), float(width)
    if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
        raise ValueError(f"need finite lo < hi, got ({lo}, {hi})")
    if not width > 0:
        raise ValueError(f"bin width must be > 0, got {width}")
    nb = max(1, int(round((hi - lo) / width)))
    return np.linspace(lo, hi, nb + 1)


# --------------------------------------------------------------------------------------------------------
# CDF-based kernels: PIT and CRPS (exact for the cell-constant grid density)
# --------------------------------------------------------------------------------------------------------
@jax.jit
def _pit_crps_kernel(log_density, y, e0, dx):
    """PIT and CRPS for densities (c, G) constant on cells [e0 + j dx, e0 + (j+1) dx] and truths y (c,).

    CRPS = ∫_{x<y} F² dx + ∫_{x>y} (1 − F)² dx, summed cell by cell (F is linear in each cell), so every
    term is non-negative and nothing cancels in float32.
    """
    num = log_density.shape[-1]
    mass = jnp.exp(log_density)
    mass = mass / jnp.sum(mass, axis=-1, keepdims=True)
    cdf_hi = jnp.cumsum(mass, axis=-1)
    cdf_hi = cdf_hi / cdf_hi[:, -1:]
    a = cdf_hi - mass  # CDF at the left edge of each cell
    b = cdf_hi  # ... and at the right edge
    eg = e0 + num * dx
    yc = jnp.clip(y, e0, eg)
    t = (yc - e0) / dx
    k = jnp.clip(jnp.floor(t).astype(jnp.int32), 0, num - 1)
    f = jnp.clip(t - k, 0.0, 1.0)
    ak = jnp.take_along_axis(a, k[:, None], axis=-1)[:, 0]
    mk = jnp.take_along_axis(mass, k[:, None], axis=-1)[:, 0]
    c = jnp.clip(ak + f * mk, 0.0, 1.0)  # F(yc); float32 rounding can put it a few ulps past 1
    pit = jnp.where(y <= e0, 0.0, jnp.where(y >= eg, 1.0, c))
    j = jnp.arange(num)[None, :]
    left_cells = j < k[:, None]
    right_cells = j > k[:, None]
    sq = (a * a + a * b + b * b) / 3.0
    ua, ub = 1.0 - a, 1.0 - b
    usq = (ua * ua + ua * ub + ub * ub) / 3.0
    full = dx * jnp.sum(jnp.where(left_cells, sq, 0.0) + jnp.where(right_cells, usq, 0.0), axis=-1)
    bk = jnp.take_along_axis(b, k[:, None], axis=-1)[:, 0]
    part_left = f * dx * (ak * ak + ak * c + c * c) / 3.0
    uc, ubk = 1.0 - c, 1.0 - bk
    part_right = (1.0 - f) * dx * (uc * uc + uc * ubk + ubk * ubk) / 3.0
    outside = jnp.maximum(e0 - y, 0.0) + jnp.maximum(y - eg, 0.0)
    return pit, full + part_left + part_right + outside


def _pit_crps(post, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    grid = np.asarray(post.grid, dtype=np.float64)
    dx = float((grid[-1] - grid[0]) / (grid.size - 1))  # mean spacing, as in posterior.py
    e0 = float(grid[0] - 0.5 * dx)
    ld = jnp.asarray(post.log_density, dtype=jnp.float32)
    n = ld.shape[0]
    if n == 0:
        raise ValueError("the posterior holds no clusters")
    size = min(_CHUNK, n)
    yj = jnp.asarray(y, dtype=jnp.float32)
    pits, crpss = [], []
    for start in range(0, n, size):
        stop = min(start + size, n)
        pad = size - (stop - start)
        part, yp = ld[start:stop], yj[start:stop]
        if pad:
            part = jnp.pad(part, ((0, pad), (0, 0)), mode="edge")
            yp = jnp.pad(yp, (0, pad), mode="edge")
        p, c = _pit_crps_kernel(part, yp, jnp.float32(e0), jnp.float32(dx))
        pits.append(np.asarray(p[: stop - start]))
        crpss.append(np.asarray(c[: stop - start]))
    return np.concatenate(pits).astype(np.float64), np.concatenate(crpss).astype(np.float64)


def pit(post, truth_log_mass) -> np.ndarray:
    """Probability integral transform PIT_i = F_i(y_i) of each true mass under its posterior.

    Uniform on [0, 1] when the posteriors are calibrated (Dawid 1984); a U shape means over-confident
    posteriors, a hump under-confident ones, a slope bias. Truths below (above) the grid get 0 (1).

    Parameters
    ----------
    post : MassPosterior
    truth_log_mass : array_like (n,) or Catalog

    Returns
    -------
    numpy.ndarray, shape (n,)

    Examples
    --------
    >>> import numpy as np
    >>> from numpyro_clustermass.posterior import MassPosterior
    >>> g = np.linspace(12.0, 16.0, 801)
    >>> post = MassPosterior.from_mixture(g, np.zeros((1, 1)), np.full((1, 1), 14.0), np.full((1, 1), 0.2))
    >>> np.round(pit(post, [14.2]), 3)       # Phi(1)
    array([0.841])
    """
    y = true_log_mass(truth_log_mass, _n(post))
    return _pit_crps(post, y)[0]


def crps(post, truth_log_mass) -> np.ndarray:
    """Continuous ranked probability score per cluster, in dex (lower is better).

    CRPS(F, y) = ∫ (F(x) − 1{x ≥ y})² dx (Gneiting & Raftery 2007, eq. 20), integrated exactly for the
    posterior's piecewise-linear grid CDF, including the parts outside the grid when y lies there. For a
    Gaussian N(μ, σ²) it equals σ [z (2Φ(z) − 1) + 2φ(z) − 1/√π] with z = (y − μ)/σ; for a point
    prediction it reduces to the absolute error.

    Examples
    --------
    >>> import numpy as np
    >>> from numpyro_clustermass.posterior import MassPosterior
    >>> g = np.linspace(12.0, 16.0, 801)
    >>> post = MassPosterior.from_mixture(g, np.zeros((1, 1)), np.full((1, 1), 14.0), np.full((1, 1), 0.2))
    >>> np.round(crps(post, [14.0]), 4)      # sigma (sqrt 2 - 1)/sqrt(pi)
    array([0.0467])
    """
    y = true_log_mass(truth_log_mass, _n(post))
    return _pit_crps(post, y)[1]


def log_score(post, truth_log_mass) -> np.ndarray:
    """Log predictive density log p_i(y_i) per unit log10 M (``post.log_prob``); ``-inf`` off the grid.

    ``post.log_prob`` interpolates the log density linearly between grid points with non-zero density and
    otherwise takes the value of the grid cell holding the truth, so a truth inside a reweighted
    posterior's prior support (e.g. just above the 13.5 lower bound of ``Flat(13.5, 15.3)``) scores
    finitely. ``-inf`` means zero density: a truth outside the grid's cells ``[grid[0] - dx/2,
    grid[-1] + dx/2]``, or in a cell with no posterior mass (outside the prior's support);
    :func:`summary` counts them in ``n_off_grid`` and ``n_zero_density``.
    """
    y = true_log_mass(truth_log_mass, _n(post))
    return np.asarray(post.log_prob(y.astype(np.float32)), dtype=np.float64)


class PITTest(NamedTuple):
    """Uniformity tests of PIT values.

    Attributes
    ----------
    n : int
        Number of PIT values.
    ks_statistic, ks_pvalue : float
        Kolmogorov–Smirnov distance to U(0, 1) and its p-value.
    chi2, chi2_pvalue : float
        Pearson chi-square of the ``bins``-bin histogram against equal counts, and its p-value.
    dof : int
        Degrees of freedom of the chi-square (bins − 1).
    counts : numpy.ndarray
        The histogram counts.
    """

    n: int
    ks_statistic: float
    ks_pvalue: float
    chi2: float
    chi2_pvalue: float
    dof: int
    counts: np.ndarray


def pit_uniformity(pit_values, bins: int = 10) -> PITTest:
    """Test PIT values for uniformity (KS and chi-square).

    Examples
    --------
    >>> import numpy as np
    >>> t = pit_uniformity(np.random.default_rng(0).uniform(size=5000))
    >>> bool(t.ks_pvalue > 0.01 and t.chi2_pvalue > 0.01)
    True
    """
    from scipy import stats

    u = np.asarray(pit_values, dtype=np.float64).ravel()
    if u.size < 2:
        raise ValueError(f"need at least 2 PIT values, got {u.size}")
    if np.any(~np.isfinite(u)) or np.any((u < 0) | (u > 1)):
        raise ValueError("PIT values must be finite and in [0, 1]")
    bins = int(bins)
    if bins < 2:
        raise ValueError(f"bins must be >= 2, got {bins}")
    ks = stats.kstest(u, "uniform")
    counts, _ = np.histogram(u, bins=bins, range=(0.0, 1.0))
    chi = stats.chisquare(counts)
    return PITTest(int(u.size), float(ks.statistic), float(ks.pvalue), float(chi.statistic), float(chi.pvalue),
                   bins - 1, counts)


# --------------------------------------------------------------------------------------------------------
# coverage
# --------------------------------------------------------------------------------------------------------
def _check_probs(probs) -> np.ndarray:
    p = np.atleast_1d(np.asarray(probs, dtype=np.float64))
    if p.ndim != 1 or p.size == 0 or np.any(~((p > 0) & (p < 1))):
        raise ValueError(f"interval probabilities must be in (0, 1), got {probs}")
    return p


def _inside(post, y, probs, kind) -> np.ndarray:
    """Boolean (len(probs), n): truth inside the central / HPD interval of each probability."""
    probs = _check_probs(probs)
    if kind == "central":
        lv = np.concatenate([(1 - probs) / 2, (1 + probs) / 2])
        q = np.asarray(post.quantiles(lv), dtype=np.float64)
        lo, hi = q[: probs.size], q[probs.size:]
    elif kind == "hpd":
        iv = np.stack([np.asarray(post.hpdi(float(p)), dtype=np.float64) for p in probs])  # (P, 2, n)
        lo, hi = iv[:, 0], iv[:, 1]
    else:
        raise ValueError(f"kind must be 'central' or 'hpd', got {kind!r}")
    return (y[None, :] >= lo) & (y[None, :] <= hi)


def coverage(post, truth_log_mass, probs: Sequence[float] = (0.68, 0.95), kind: str = "central") -> pd.DataFrame:
    """Empirical coverage of the posteriors' credible intervals.

    Parameters
    ----------
    post : MassPosterior
    truth_log_mass : array_like (n,) or Catalog
    probs : sequence of float in (0, 1)
        Nominal probabilities.
    kind : {"central", "hpd"}
        Equal-tailed intervals from ``post.quantiles`` or shortest intervals from ``post.hpdi``.

    Returns
    -------
    pandas.DataFrame
        One row per probability: ``nominal``, ``empirical`` (fraction of truths inside), ``stderr``
        (binomial, sqrt(p(1−p)/n) at the nominal p), ``n``.

    Examples
    --------
    >>> import numpy as np
    >>> from numpyro_clustermass.posterior import MassPosterior
    >>> rng = np.random.default_rng(0); n = 2000
    >>> mu = rng.uniform(13.8, 15.0, n); y = mu + 0.2 * rng.standard_normal(n)
    >>> post = MassPosterior.from_mixture(np.linspace(12.5, 16.5, 401), np.zeros((n, 1)), mu[:, None],
    ...                                   np.full((n, 1), 0.2))
    >>> c = coverage(post, y, [0.68])
    >>> bool(abs(c.empirical[0] - 0.68) < 3 * c.stderr[0])
    True
    """
    y = true_log_mass(truth_log_mass, _n(post))
    probs = _check_probs(probs)
    inside = _inside(post, y, probs, kind)
    import pandas as pd

    return pd.DataFrame(
        {
            "nominal": probs,
            "empirical": inside.mean(axis=1),
            "stderr": np.sqrt(probs * (1 - probs) / y.size),
            "n": y.size,
        }
    )


def coverage_curve(post, truth_log_mass, probs=None, kind: str = "central") -> pd.DataFrame:
    """:func:`coverage` over a range of nominal probabilities (default 0.05, 0.10, ..., 0.95), for the
    calibration plot (empirical against nominal coverage)."""
    if probs is None:
        probs = np.round(np.arange(1, 20) * 0.05, 2)
    return coverage(post, truth_log_mass, probs, kind)


def _bin_variable(by, truth, n: int) -> tuple[np.ndarray, str]:
    """The values binned by :func:`coverage_by_bin` and their label."""
    if isinstance(by, str):
        if by == "log_mass":
            return true_log_mass(truth, n), "log_mass"
        if not (hasattr(truth, "features") and hasattr(truth, "log_mass")):
            raise TypeError(f"coverage_by_bin: by={by!r} names a column, so the truth must be a Catalog holding it; "
                            f"got {type(truth).__name__} (pass by=<array> to bin by your own values)")
        from numpyro_clustermass.catalog import FEATURE_NAMES

        try:
            values = truth.features((by,))[:, 0] if by in FEATURE_NAMES else truth[by]
        except (KeyError, ValueError) as exc:
            raise ValueError(f"coverage_by_bin: the catalogue has no column {by!r} ({exc})") from None
        label = by
    else:
        values, label = by, "value"
    v = np.asarray(values, dtype=np.float64)
    if v.shape != (n,):
        raise ValueError(f"coverage_by_bin: the binned values must have shape ({n},), one per cluster; got {v.shape}")
    return v, label


def coverage_by_bin(
    post,
    catalog,
    by="log_mass",
    *,
    edges=None,
    bins: int = 10,
    width: float = BIN_WIDTH,
    lo: float = LOG_MASS_RANGE[0],
    hi: float = LOG_MASS_RANGE[1],
    probs: Sequence[float] = (0.68, 0.95),
    kind: str = "central",
) -> pd.DataFrame:
    """Interval coverage per bin of true mass, of a feature, or of any per-cluster value.

    One overall coverage can look perfect while every mass bin is off (0.46 to 0.86 per bin at 0.673
    overall in issue 10): this is the per-bin view, with the counts and binomial errors to judge it.

    Parameters
    ----------
    post : MassPosterior
    catalog : Catalog or array_like (n,)
        The true log10 masses (a catalogue's ``log_mass``, or the array of them).
    by : "log_mass", str or array_like (n,)
        What to bin: the true log10 mass (default), a column of ``catalog`` (a feature such as ``"Logsigv"`` or
        ``"R_mean"``, or a truth column such as ``"n_interlopers"``), or any value per cluster (e.g.
        ``post.ood_score``, for coverage by region of feature space).
    edges : array_like, optional
        Bin edges. Default: for ``log_mass``, :func:`mass_bins` (``width``-dex bins from ``lo`` to ``hi``, 0.1 dex
        over 13.5-15.3); otherwise ``bins`` bins of equal count (quantiles of the values).
    bins : int
        Number of equal-count bins when ``by`` is not the mass and ``edges`` is not given.
    width, lo, hi : float
        Mass bins' width and range (``by="log_mass"`` without ``edges``).
    probs : sequence of float in (0, 1)
        Nominal probabilities of the intervals.
    kind : {"central", "hpd"}
        Equal-tailed intervals (``post.quantiles``) or shortest ones (``post.hpdi``).

    Returns
    -------
    pandas.DataFrame
        One row per bin (empty bins with ``n = 0`` and NaN coverage): ``bin_lo``, ``bin_hi``, ``bin_mid``, ``n``,
        and per probability ``coverage_XX`` (fraction of truths inside the XX% intervals) and ``stderr_XX``
        (binomial, ``sqrt(p (1 - p) / n)`` at the nominal p: the spread a calibrated posterior shows).
        ``df.attrs`` holds ``by``, ``kind``, ``n_total`` and ``n_outside`` (clusters outside the edges, not used).

    Examples
    --------
    >>> import numpy as np
    >>> from numpyro_clustermass.posterior import MassPosterior
    >>> rng = np.random.default_rng(0); n = 4000
    >>> mu = rng.uniform(13.6, 15.2, n); y = mu + 0.1 * rng.standard_normal(n)
    >>> post = MassPosterior.from_mixture(np.linspace(12.5, 16.5, 801), np.zeros((n, 1)), mu[:, None],
    ...                                   np.full((n, 1), 0.1))
    >>> df = coverage_by_bin(post, y)
    >>> len(df), list(df.columns[:6])
    (18, ['bin_lo', 'bin_hi', 'bin_mid', 'n', 'coverage_68', 'stderr_68'])
    >>> by_mu = coverage_by_bin(post, y, by=mu, bins=4)          # calibrated: about 0.68 in every bin
    >>> bool(np.all(np.abs(by_mu.coverage_68 - 0.68) < 4 * by_mu.stderr_68))
    True
    """
    if not is_posterior(post):
        raise TypeError(f"coverage_by_bin needs a MassPosterior; got {type(post).__name__}")
    n = _n(post)
    y = true_log_mass(catalog, n)
    probs_a = _check_probs(probs)
    values, label = _bin_variable(by, catalog, n)
    if edges is None:
        if label == "log_mass":
            edges = mass_bins(lo, hi, width)
        else:
            if isinstance(bins, bool) or not isinstance(bins, (int, np.integer)) or bins < 1:
                raise ValueError(f"bins must be an integer >= 1; got {bins!r}")
            finite = values[np.isfinite(values)]
            if finite.size == 0:
                raise ValueError(f"coverage_by_bin: every value of {label!r} is NaN or infinite")
            edges = np.unique(np.quantile(finite, np.linspace(0.0, 1.0, int(bins) + 1)))
            if edges.size < 2:  # one distinct value: one bin around it
                edges = np.array([edges[0] - 0.5, edges[0] + 0.5])
    edges = np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0) or np.any(~np.isfinite(edges)):
        raise ValueError("edges must be a finite, strictly increasing 1-D array of at least 2 values")
    nb = edges.size - 1
    idx = np.searchsorted(edges, values, side="right") - 1
    idx[values == edges[-1]] = nb - 1  # the last bin is closed on the right
    inb = (idx >= 0) & (idx < nb) & np.isfinite(values)
    inside = _inside(post, y, probs_a, kind)
    rows = []
    for b in range(nb):
        sel = inb & (idx == b)
        k = int(sel.sum())
        row = {"bin_lo": edges[b], "bin_hi": edges[b + 1], "bin_mid": 0.5 * (edges[b] + edges[b + 1]), "n": k}
        for j, p in enumerate(probs_a):
            lab = percent_label(p)
            row[f"coverage_{lab}"] = float(inside[j, sel].mean()) if k else np.nan
            row[f"stderr_{lab}"] = float(np.sqrt(p * (1 - p) / k)) if k else np.nan
        rows.append(row)
    import pandas as pd

    df = pd.DataFrame(rows)
    df.attrs.update({"by": label, "kind": kind, "n_total": int(n), "n_outside": int((~inb).sum())})
    return df


# --------------------------------------------------------------------------------------------------------
# binned accuracy (Ho et al. 2019) and the summary
# --------------------------------------------------------------------------------------------------------
def residual_stats(residuals) -> dict:
    """Bias and scatter of residuals ε = log M_pred − log M_true (Ho et al. 2019).

    Returns ``bias_median``, ``bias_mean``, ``scatter_std`` (ddof = 1), ``scatter_68`` (half the 16–84
    percentile range) and ``n``; NaN statistics for fewer than 2 residuals (1 for the median).

    Examples
    --------
    >>> residual_stats([-0.1, 0.0, 0.1])["bias_median"]
    0.0
    """
    r = np.asarray(residuals, dtype=np.float64).ravel()
    n = r.size
    out = {"n": n, "bias_median": np.nan, "bias_mean": np.nan, "scatter_std": np.nan, "scatter_68": np.nan}
    if n >= 1:
        out["bias_median"] = float(np.median(r))
        out["bias_mean"] = float(np.mean(r))
    if n >= 2:
        p16, p84 = np.percentile(r, [16, 84])
        out["scatter_std"] = float(np.std(r, ddof=1))
        out["scatter_68"] = float(0.5 * (p84 - p16))
    return out


def binned(
    post_or_points,
    truth_log_mass,
    *,
    estimator: str = "mode",
    edges=None,
    lo: float = LOG_MASS_RANGE[0],
    hi: float = LOG_MASS_RANGE[1],
    width: float = BIN_WIDTH,
    probs: Sequence[float] = (0.68, 0.95),
    percentiles: Sequence[float] = BAND_PERCENTILES,
) -> pd.DataFrame:
    """Per-bin accuracy (and, for posteriors, calibration) against true log10 M.

    Parameters
    ----------
    post_or_points : MassPosterior or array_like (n,)
        A posterior (its ``estimator`` gives the point prediction) or point predictions.
    truth_log_mass : array_like (n,) or Catalog
        True log10 M.
    estimator : {"mode", "mean", "median"}
        Point estimate taken from a posterior (ignored for arrays). The mode of the reweighted posterior
        is the unbiased choice of the lecture; the mean shows the training-prior bias.
    edges : array_like, optional
        Bin edges in true log10 M; default :func:`mass_bins` (``lo``, ``hi``, ``width``).
    probs : sequence of float
        Interval probabilities for the coverage columns (posteriors only).
    percentiles : sequence of float
        Percentiles of the predictions per bin (the lecture's bands: 5, 15, 50, 85, 95).

    Returns
    -------
    pandas.DataFrame
        One row per bin (empty bins included with ``n = 0`` and NaN statistics): ``bin_lo``, ``bin_hi``,
        ``bin_mid``, ``n``, ``bias_median``, ``bias_mean``, ``scatter_std``, ``scatter_68``,
        ``pred_pXX`` and ``resid_pXX`` (percentiles of the predictions and of the residuals) for each
        percentile; for posteriors also ``cov_central_XX`` and ``cov_hpd_XX`` (the
        fraction of truths inside the XX% intervals), ``crps`` and ``log_score`` (bin means) and
        ``pit_mean``. ``df.attrs`` records ``estimator``, ``n_total`` and ``n_outside`` (truths outside
        the bins, counted, not used).

    Examples
    --------
    >>> import numpy as np
    >>> y = np.random.default_rng(0).uniform(13.5, 15.3, 1000)
    >>> df = binned(y + 0.1, y)
    >>> len(df), bool(np.allclose(df.bias_median, 0.1))
    (18, True)
    """
    is_post = is_posterior(post_or_points)
    n = _n(post_or_points)
    y = true_log_mass(truth_log_mass, n)
    pred = point_estimate(post_or_points, estimator)
    if pred.size != y.size:
        raise ValueError(f"{pred.size} predictions but {y.size} true masses")
    edges = mass_bins(lo, hi, width) if edges is None else np.asarray(edges, dtype=np.float64)
    if edges.ndim != 1 or edges.size < 2 or np.any(np.diff(edges) <= 0) or np.any(~np.isfinite(edges)):
        raise ValueError("edges must be a finite, strictly increasing 1-D array of at least 2 values")
    nb = edges.size - 1
    idx = np.searchsorted(edges, y, side="right") - 1
    idx[y == edges[-1]] = nb - 1  # the last bin is closed on the right
    inb = (idx >= 0) & (idx < nb)
    resid = pred - y
    pcts = np.asarray(percentiles, dtype=np.float64)

    extra = {}
    if is_post:
        probs_a = _check_probs(probs)
        cen = _inside(post_or_points, y, probs_a, "central")
        hpd = _inside(post_or_points, y, probs_a, "hpd")
        u, cr = _pit_crps(post_or_points, y)
        ls = log_score(post_or_points, y)
        for k, p in enumerate(probs_a):
            extra[f"cov_central_{percent_label(p)}"] = cen[k].astype(np.float64)
            extra[f"cov_hpd_{percent_label(p)}"] = hpd[k].astype(np.float64)
        extra["crps"] = cr
        extra["log_score"] = ls
        extra["pit_mean"] = u

    rows = []
    for b in range(nb):
        sel = inb & (idx == b)
        row = {"bin_lo": edges[b], "bin_hi": edges[b + 1], "bin_mid": 0.5 * (edges[b] + edges[b + 1])}
        st = residual_stats(resid[sel])
        row["n"] = st.pop("n")
        row.update(st)
        for q, v in zip(pcts, _percentiles(pred[sel], pcts)):
            row[f"pred_p{percent_label(q / 100)}"] = v
        for q, v in zip(pcts, _percentiles(resid[sel], pcts)):
            row[f"resid_p{percent_label(q / 100)}"] = v
        for name, vals in extra.items():
            row[name] = float(np.mean(vals[sel])) if sel.any() else np.nan
        rows.append(row)
    import pandas as pd

    df = pd.DataFrame(rows)
    df.attrs.update(
        {"estimator": estimator if is_post else "points", "n_total": int(y.size), "n_outside": int((~inb).sum())}
    )
    return df


def percent_label(p: float) -> str:
    """The label of a probability in column names (``coverage_central_68``): a percentage, two digits at least.

    Examples
    --------
    >>> percent_label(0.68), percent_label(0.05), percent_label(0.975)
    ('68', '05', '97.5')
    """
    v = round(100 * float(p), 6)
    return f"{int(v):02d}" if v == int(v) else f"{v:g}"


def _percentiles(x: np.ndarray, pcts: np.ndarray) -> np.ndarray:
    if x.size == 0:
        return np.full(pcts.size, np.nan)
    return np.percentile(x, pcts)


def summary(
    post,
    truth_log_mass,
    *,
    estimator: str = "mode",
    probs: Sequence[float] = (0.68, 0.95),
    pit_bins: int = 10,
    lo: float = LOG_MASS_RANGE[0],
    hi: float = LOG_MASS_RANGE[1],
) -> dict:
    """Calibration and accuracy numbers of a set of posteriors, as a flat dict of floats.

    Keys: ``n``; ``coverage_central_XX``, ``coverage_hpd_XX`` and ``coverage_stderr_XX`` for each
    probability; ``pit_ks_statistic``, ``pit_ks_pvalue``, ``pit_chi2``, ``pit_chi2_pvalue``, ``pit_dof``;
    ``crps_mean``; ``log_score_mean`` (``-inf`` if a truth has zero density; ``n_off_grid`` counts the
    truths outside the grid's cells ``[grid[0] - dx/2, grid[-1] + dx/2]`` and ``n_zero_density`` those on
    the grid where the posterior density is zero, e.g. outside a reweighting prior's support);
    and for the ``estimator`` point prediction of the clusters with ``lo <= y <= hi``: ``bias_median``,
    ``bias_mean``, ``scatter_std``, ``scatter_68`` and ``n_in_range``; ``estimator`` names the point
    estimate used.

    Examples
    --------
    >>> import numpy as np
    >>> from numpyro_clustermass.posterior import MassPosterior
    >>> rng = np.random.default_rng(1); n = 1000
    >>> mu = rng.uniform(13.8, 15.0, n); y = mu + 0.2 * rng.standard_normal(n)
    >>> post = MassPosterior.from_mixture(np.linspace(12.5, 16.5, 401), np.zeros((n, 1)), mu[:, None],
    ...                                   np.full((n, 1), 0.2))
    >>> s = summary(post, y)
    >>> bool(s["pit_ks_pvalue"] > 0.01), bool(abs(s["coverage_central_68"] - 0.68) < 0.05)
    (True, True)
    """
    if not is_posterior(post):
        raise TypeError("summary needs a MassPosterior; use binned() or residual_stats() for point predictions")
    n = _n(post)
    y = true_log_mass(truth_log_mass, n)
    probs_a = _check_probs(probs)
    out: dict = {"n": int(n)}
    cen = _inside(post, y, probs_a, "central").mean(axis=1)
    hpd = _inside(post, y, probs_a, "hpd").mean(axis=1)
    for k, p in enumerate(probs_a):
        out[f"coverage_central_{percent_label(p)}"] = float(cen[k])
        out[f"coverage_hpd_{percent_label(p)}"] = float(hpd[k])
        out[f"coverage_stderr_{percent_label(p)}"] = float(np.sqrt(p * (1 - p) / n))
    u, cr = _pit_crps(post, y)
    t = pit_uniformity(u, bins=pit_bins)
    out.update(
        pit_ks_statistic=t.ks_statistic, pit_ks_pvalue=t.ks_pvalue, pit_chi2=t.chi2,
        pit_chi2_pvalue=t.chi2_pvalue, pit_dof=t.dof, crps_mean=float(np.mean(cr)),
    )
    ls = log_score(post, y)
    grid = np.asarray(post.grid, dtype=np.float64)
    half = 0.5 * float((grid[-1] - grid[0]) / (grid.size - 1))
    off = (y < grid[0] - half) | (y > grid[-1] + half)
    zero = ~np.isfinite(ls)
    out["n_off_grid"] = int(np.sum(off))
    out["n_zero_density"] = int(np.sum(zero & ~off))
    out["log_score_mean"] = float(np.mean(ls))
    sel = (y >= lo) & (y <= hi)
    st = residual_stats(point_estimate(post, estimator)[sel] - y[sel])
    out["n_in_range"] = st.pop("n")
    out.update(st)
    out["estimator"] = estimator
    return out
