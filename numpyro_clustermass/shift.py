"""Covariate shift: how far a catalogue's features are from the features a fit was trained on.

A network trained on simulations answers for any input, also for clusters whose summary features no
simulation produced. :func:`~numpyro_clustermass.inference.fit` therefore keeps a :class:`FeatureReference`
of its training features (in the fit's standardised units): per-feature quantiles, the covariance of the
features after a per-feature Gaussian-copula transform, the distances of held-out rows for calibration, and
a small reservoir of training rows. Two questions are answered with it:

* per cluster, :meth:`FeatureReference.score`: the Mahalanobis distance of the copula-transformed features
  to the training rows' centre (larger is further out), calibrated by :meth:`FeatureReference.tail_probability`
  (the fraction of held-out training rows at least as far out). ``fit.posterior`` stores the score as
  ``MassPosterior.ood_score`` and warns when more clusters lie beyond :attr:`FeatureReference.threshold` (the
  held-out rows' ``1 - alpha`` quantile, ``alpha`` = 0.1% by default) than that false-alarm rate explains
  (:meth:`FeatureReference.excess`). This flags clusters far outside the training features, one by one; a
  catalogue whose features moved as a whole, but not that far, is what the two-sample test is for;
* per catalogue, :func:`mmd_test` (behind :func:`numpyro_clustermass.diagnostics.covariate_shift`): a
  kernel two-sample test (maximum mean discrepancy, Gaussian kernel in the whitened copula space, permutation
  p-value) between the reservoir and the catalogue, with per-feature Kolmogorov-Smirnov tests and mean
  shifts saying which features drive a difference.

The copula transform maps each standardised feature through the training rows' empirical CDF (linear
between :data:`NUM_QUANTILES` quantiles) and the inverse normal CDF; beyond the training range it continues
linearly, one unit per training standard deviation, so a value outside the training range scores beyond
every training row. This keeps heavy-tailed features (the skewness and kurtosis columns) from dominating the
distance, and discrete ones (``LogNgal``) from breaking it.

Example
-------
>>> import numpy as np
>>> from numpyro_clustermass.shift import FeatureReference
>>> rng = np.random.default_rng(0)
>>> ref = FeatureReference.build(rng.normal(size=(4000, 3)), rng.normal(size=(2000, 3)), seed=0)
>>> s = ref.score(np.array([[0.0, 0.0, 0.0], [6.0, 0.0, 0.0]]))
>>> bool(s[0] < ref.threshold < s[1]), float(ref.tail_probability(s)[1]) < 0.001
(True, True)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
from scipy import special  # loaded by numpyro already; scipy.stats and pandas are imported where used (below)

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["FeatureReference", "ShiftTest", "mmd_test", "ALPHA", "NUM_QUANTILES", "RESERVOIR_SIZE"]

#: Per-cluster false-alarm rate of :attr:`FeatureReference.threshold`.
ALPHA = 1e-3
#: Quantiles per feature kept for the copula transform.
NUM_QUANTILES = 257
#: Training rows (standardised) kept for the catalogue-level two-sample test.
RESERVOIR_SIZE = 2000
#: Ridge added to the copula-space covariance before its Cholesky factor (in copula units squared).
_RIDGE = 1e-6
#: At most this many training rows give the centre and covariance of the copula scores (the quantile knots use
#: every row); the Mahalanobis distances' relative error from it is about 1/sqrt(16384), under 1%.
MAX_COVARIANCE_ROWS = 16384


def column_quantiles(x, levels) -> np.ndarray:
    """Quantiles of each column of ``x`` (n, d) at ``levels`` (Q,), shape (Q, d): the same numbers as
    ``np.quantile(x, levels, axis=0)`` (linear interpolation), from one sort per column, which is several times
    faster than ``np.quantile``'s partition at a few hundred levels.

    >>> x = np.random.default_rng(0).normal(size=(1001, 3))
    >>> lv = np.linspace(0.0, 1.0, 257)
    >>> bool(np.allclose(column_quantiles(x, lv), np.quantile(x, lv, axis=0), rtol=0, atol=1e-12))
    True
    """
    x = np.asarray(x, dtype=np.float64)
    lv = np.asarray(levels, dtype=np.float64)
    if x.ndim != 2 or x.shape[0] < 1:
        raise ValueError(f"column_quantiles: x must be (n >= 1, d); got shape {x.shape}")
    if lv.ndim != 1 or not np.all((lv >= 0.0) & (lv <= 1.0)):
        raise ValueError(f"column_quantiles: levels must be a 1-D array in [0, 1]; got {levels!r}")
    s = np.sort(x.T, axis=1)  # (d, n), each row sorted
    n = s.shape[1]
    h = (n - 1) * lv
    lo = np.clip(np.floor(h).astype(np.int64), 0, n - 1)
    hi = np.minimum(lo + 1, n - 1)
    w = h - lo
    return (s[:, lo] + w * (s[:, hi] - s[:, lo])).T


def _one_per_group(n: int, groups, rng) -> np.ndarray:
    """Indices of one random row per group (all rows without groups), in random order."""
    if groups is None:
        return rng.permutation(n)
    groups = np.asarray(groups)
    order = rng.permutation(n)
    _, first = np.unique(groups[order], return_index=True)
    return order[np.sort(first)]


@dataclass(frozen=True, eq=False)
class FeatureReference:
    """What a fit keeps of its training features (standardised units) to score new clusters against them.

    Build one with :meth:`build`; :func:`~numpyro_clustermass.inference.fit` does it and stores it as
    ``fit.feature_reference`` (saved in the fit file).

    Attributes
    ----------
    quantiles : array (Q, d)
        Training quantiles of each standardised feature at ``levels`` (the first row is the minimum, the last
        the maximum).
    levels : array (Q,)
        Probabilities of the quantiles, from 0 to 1.
    center : array (d,)
        Mean of the copula-transformed training features.
    whitening : array (d, d)
        Inverse Cholesky factor of their covariance: ``score = |whitening @ (z - center)|``.
    calibration : array (n_cal,)
        Sorted scores of the calibration rows: the reservoir and the held-out rows given to :meth:`build`, none
        of which shaped the quantiles or the covariance.
    reservoir : array (m, d)
        A random sample of standardised training rows (one per halo when the training data had groups), held
        out from the quantiles and the covariance.
    alpha : float
        Per-cluster false-alarm rate of :attr:`threshold`.
    held_out : bool
        Whether the reservoir and calibration rows were held out from the transform (False only when the
        training rows were too few, e.g. one group).
    n_train : int
        Rows the quantiles and covariance were computed from.
    feature_names : tuple of str or None

    Example
    -------
    >>> import numpy as np
    >>> rng = np.random.default_rng(1)
    >>> ref = FeatureReference.build(rng.normal(size=(3000, 2)), rng.normal(size=(1000, 2)))
    >>> ref.held_out, ref.reservoir.shape, ref.calibration.shape, ref.n_train   # reservoir: half the rows
    (True, (1500, 2), (2500,), 1500)
    >>> int(np.sum(ref.calibration > ref.threshold))   # alpha = 0.1% of the 2500 held-out rows lie beyond
    3
    """

    quantiles: np.ndarray
    levels: np.ndarray
    center: np.ndarray
    whitening: np.ndarray
    calibration: np.ndarray
    reservoir: np.ndarray
    alpha: float = ALPHA
    held_out: bool = True
    n_train: int = 0
    feature_names: tuple | None = None
    _knots: list = field(default=None, repr=False)

    def __post_init__(self):
        q = np.asarray(self.quantiles, dtype=np.float64)
        lv = np.asarray(self.levels, dtype=np.float64)
        if q.ndim != 2 or lv.shape != (q.shape[0],) or q.shape[0] < 2:
            raise ValueError(f"quantiles must be (Q >= 2, d) with levels (Q,); got {q.shape} and {lv.shape}")
        d = q.shape[1]
        if np.shape(self.whitening) != (d, d) or np.shape(self.center) != (d,):
            raise ValueError(f"whitening must be ({d}, {d}) and center ({d},); got {np.shape(self.whitening)}, "
                             f"{np.shape(self.center)}")
        if np.ndim(self.reservoir) != 2 or np.shape(self.reservoir)[1] != d:
            raise ValueError(f"reservoir must be (m, {d}); got {np.shape(self.reservoir)}")
        if np.size(self.calibration) < 1:
            raise ValueError("calibration needs at least one score")
        if not 0 < float(self.alpha) < 1:
            raise ValueError(f"alpha must be in (0, 1); got {self.alpha}")
        for name, value in (("quantiles", q), ("levels", lv), ("center", np.asarray(self.center, np.float64)),
                            ("whitening", np.asarray(self.whitening, np.float64)),
                            ("calibration", np.sort(np.asarray(self.calibration, np.float64))),
                            ("reservoir", np.asarray(self.reservoir, np.float32))):
            object.__setattr__(self, name, value)
        # per feature: strictly increasing knots (ties, e.g. of the discrete LogNgal, get their mean level)
        knots = []
        for j in range(d):
            vals, inv = np.unique(q[:, j], return_inverse=True)
            lev = np.bincount(inv, weights=lv) / np.bincount(inv)
            knots.append((vals, lev))
        object.__setattr__(self, "_knots", knots)
        if self.feature_names is not None:
            object.__setattr__(self, "feature_names", tuple(self.feature_names))

    # ------------------------------------------------------------------ construction
    @classmethod
    def build(cls, x_train, x_calibration=None, groups=None, *, alpha: float = ALPHA,
              reservoir_size: int = RESERVOIR_SIZE, num_quantiles: int = NUM_QUANTILES, seed: int = 0,
              feature_names=None) -> "FeatureReference":
        """Summarise standardised training features.

        Parameters
        ----------
        x_train : array (n, d)
            Standardised training features. A reservoir of ``reservoir_size`` rows (at most half of them; one
            per group) is set aside, with every row of its groups; the quantiles and covariance come from the
            rest, so that the reservoir is as new to the transform as a catalogue's rows are.
        x_calibration : array (n_cal, d), optional
            Held-out rows (the fit's validation split); their scores and the reservoir's calibrate the
            threshold.
        groups : array (n,), optional
            Group (``halo_id``) of each training row: the reservoir keeps at most one row per group, so that
            the lines of sight of one halo do not enter the two-sample test as independent rows.
        alpha : float
            Per-cluster false-alarm rate of the threshold.
        reservoir_size, num_quantiles : int
        seed : int
            Seeds the reservoir sample.
        feature_names : tuple of str, optional

        Returns
        -------
        FeatureReference
        """
        x = np.asarray(x_train, dtype=np.float64)
        if x.ndim != 2 or x.shape[0] < 2:
            raise ValueError(f"x_train must be (n >= 2, d); got {x.shape}")
        if not np.all(np.isfinite(x)):
            raise ValueError("x_train has non-finite values")
        if int(num_quantiles) < 2 or int(reservoir_size) < 1:
            raise ValueError(f"num_quantiles must be >= 2 and reservoir_size >= 1; got {num_quantiles}, "
                             f"{reservoir_size}")
        # the reservoir is held out from the quantiles and the covariance (with every row of its halos): a
        # reservoir that shaped the transform would not be exchangeable with a new catalogue's rows, which the
        # permutation test needs
        rng = np.random.default_rng([int(seed), 0x5F1F7])
        n = x.shape[0]
        res_idx = _one_per_group(n, groups, rng)[: max(1, min(int(reservoir_size), n // 2))]
        fit_rows = np.ones(n, dtype=bool)
        if groups is None:
            fit_rows[res_idx] = False
        else:
            groups = np.asarray(groups)
            fit_rows = ~np.isin(groups, groups[res_idx])
        held_out = int(fit_rows.sum()) >= 2
        if not held_out:  # too few rows left (one halo): everything shapes the transform
            fit_rows[:] = True
        reservoir, x_fit = x[res_idx], x[fit_rows]
        levels = np.linspace(0.0, 1.0, int(num_quantiles))
        quantiles = column_quantiles(x_fit, levels)
        d = x.shape[1]
        n_fit = int(x_fit.shape[0])
        proto = cls(quantiles, levels, np.zeros(d), np.eye(d), np.zeros(1), reservoir[:1], alpha=alpha,
                    n_train=n_fit)
        # the centre and covariance of the copula scores from at most MAX_COVARIANCE_ROWS rows (the transform of
        # every training row would be the slowest step of fit() outside its epochs): the calibration below uses
        # the same whitening, so the threshold's false-alarm rate does not depend on it
        if n_fit > MAX_COVARIANCE_ROWS:
            x_fit = x_fit[np.sort(rng.choice(n_fit, MAX_COVARIANCE_ROWS, replace=False))]
        z = proto.transform(x_fit)
        center = z.mean(axis=0)
        cov = np.atleast_2d(np.cov(z, rowvar=False)) if n_fit > 1 else np.eye(d)
        whitening = np.linalg.inv(np.linalg.cholesky(cov + _RIDGE * np.eye(d)))
        # calibration: the held-out rows given and the reservoir, both unseen by the transform
        parts = [reservoir] if held_out else [x]
        if x_calibration is not None and np.shape(x_calibration)[0] > 0:
            parts.append(np.asarray(x_calibration, dtype=np.float64))
        cal_rows = np.concatenate(parts)
        tmp = cls(quantiles, levels, center, whitening, np.zeros(1), reservoir[:1], alpha=alpha, n_train=n_fit)
        calibration = tmp.score(cal_rows)
        return cls(quantiles, levels, center, whitening, calibration, reservoir.astype(np.float32),
                   alpha=float(alpha), held_out=bool(held_out), n_train=n_fit,
                   feature_names=feature_names)

    # ------------------------------------------------------------------ scoring
    @property
    def num_features(self) -> int:
        return int(self.quantiles.shape[1])

    @property
    def threshold(self) -> float:
        """The calibration scores' ``1 - alpha`` quantile: a score above it is an out-of-distribution alarm."""
        return float(np.quantile(self.calibration, 1.0 - self.alpha))

    def _check(self, x) -> np.ndarray:
        x = np.asarray(x, dtype=np.float64)
        if x.ndim != 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected standardised features of shape (n, {self.num_features}); got {x.shape}")
        return x

    def transform(self, x) -> np.ndarray:
        """Copula transform of standardised features (n, d): normal scores inside the training range, continued
        linearly (one unit per training standard deviation) beyond it."""
        x = self._check(x)
        n_ref = max(self.n_train, 2)
        lo_u, hi_u = 0.5 / n_ref, 1.0 - 0.5 / n_ref
        z = np.empty_like(x)
        for j, (vals, lev) in enumerate(self._knots):
            col = x[:, j]
            if vals.size == 1:  # a constant training feature: every other value is beyond its range
                z[:, j] = col - vals[0]
                continue
            u = np.clip(np.interp(col, vals, lev), lo_u, hi_u)
            zj = special.ndtri(u)
            zj = np.where(col > vals[-1], special.ndtri(hi_u) + (col - vals[-1]), zj)
            zj = np.where(col < vals[0], special.ndtri(lo_u) - (vals[0] - col), zj)
            z[:, j] = zj
        return z

    def whiten(self, x) -> np.ndarray:
        """Copula-transformed, centred and whitened features (n, d): uncorrelated, unit variance in training."""
        return (self.transform(x) - self.center) @ self.whitening.T

    def score(self, x) -> np.ndarray:
        """Out-of-distribution score per row of standardised features: the Mahalanobis distance in copula space
        (about ``sqrt(d)`` for a typical training row; larger is further out)."""
        return np.sqrt(np.sum(self.whiten(x) ** 2, axis=1))

    def tail_probability(self, score) -> np.ndarray:
        """Fraction of calibration rows scoring at least ``score``, as ``(1 + count) / (1 + n_cal)``: a p-value
        of each cluster against the training distribution (never below ``1 / (1 + n_cal)``)."""
        s = np.asarray(score, dtype=np.float64)
        n_cal = self.calibration.size
        count = n_cal - np.searchsorted(self.calibration, s, side="left")
        return (1.0 + count) / (1.0 + n_cal)

    def excess(self, score) -> tuple[int, float, float]:
        """``(count, expected, p)`` of rows beyond :attr:`threshold`: how many, how many the calibration rows'
        rate beyond it predicts, and the one-sided p-value of Fisher's exact test that the rows' rate beyond the
        threshold exceeds the calibration rows' (the threshold is itself estimated from those rows, so a binomial
        test at ``alpha`` would ignore its uncertainty and fire on large in-distribution catalogues)."""
        s = np.asarray(score, dtype=np.float64)
        thr = self.threshold
        k, n = int(np.sum(s > thr)), int(s.size)
        k_cal, n_cal = int(np.sum(self.calibration > thr)), int(self.calibration.size)
        expected = n * k_cal / n_cal
        if k == 0 or k <= expected:
            return k, float(expected), 1.0
        from scipy import stats

        p = stats.fisher_exact([[k, n - k], [k_cal, n_cal - k_cal]], alternative="greater").pvalue
        return k, float(expected), float(p)

    # ------------------------------------------------------------------ persistence
    def to_arrays(self) -> tuple[dict, dict]:
        """``(scalars, arrays)``: JSON-able settings and the named arrays (what a fit file stores)."""
        scalars = {"alpha": float(self.alpha), "held_out": bool(self.held_out), "n_train": int(self.n_train),
                   "feature_names": None if self.feature_names is None else list(self.feature_names)}
        arrays = {"quantiles": self.quantiles, "levels": self.levels, "center": self.center,
                  "whitening": self.whitening, "calibration": self.calibration, "reservoir": self.reservoir}
        return scalars, arrays

    @classmethod
    def from_arrays(cls, scalars: dict, arrays: dict) -> "FeatureReference":
        """Inverse of :meth:`to_arrays`."""
        return cls(arrays["quantiles"], arrays["levels"], arrays["center"], arrays["whitening"],
                   arrays["calibration"], arrays["reservoir"], alpha=float(scalars["alpha"]),
                   held_out=bool(scalars["held_out"]), n_train=int(scalars["n_train"]),
                   feature_names=scalars.get("feature_names"))


# ---------------------------------------------------------------------------------------------- two-sample test
@dataclass(frozen=True)
class ShiftTest:
    """Result of a catalogue-level two-sample test between training and catalogue features.

    Attributes
    ----------
    statistic : float
        The squared maximum mean discrepancy (biased V-statistic) between the two samples in the whitened
        copula space, Gaussian kernel of width ``bandwidth``.
    pvalue : float
        Permutation p-value ``(1 + #{permuted >= observed}) / (1 + num_permutations)``.
    per_feature : pandas.DataFrame
        One row per feature, largest Kolmogorov-Smirnov statistic first: ``feature``, ``mean_shift`` (catalogue
        mean minus training mean, in training standard deviations), ``std_ratio`` (catalogue over training
        standard deviation), ``ks_statistic`` and ``ks_pvalue`` (catalogue against the reservoir),
        ``frac_outside`` (catalogue rows outside the training range).
    drivers : tuple of str
        Features whose KS p-value is below ``level`` divided by the number of features (Bonferroni), most
        shifted first: the features that drive the shift.
    n_reference, n_catalog : int
        Rows of each sample in the MMD test.
    bandwidth : float
    num_permutations : int
    level : float
    """

    statistic: float
    pvalue: float
    per_feature: pd.DataFrame
    drivers: tuple
    n_reference: int
    n_catalog: int
    bandwidth: float
    num_permutations: int
    level: float = 0.05

    @property
    def shifted(self) -> bool:
        """``pvalue < level``."""
        return bool(self.pvalue < self.level)

    def __repr__(self) -> str:
        return (f"ShiftTest(statistic={self.statistic:.4g}, pvalue={self.pvalue:.4g}, drivers={self.drivers}, "
                f"n_reference={self.n_reference}, n_catalog={self.n_catalog})")


def mmd_test(reference: FeatureReference, x, groups=None, *, max_rows: int = 1000, num_permutations: int = 500,
             level: float = 0.05, seed: int = 0) -> ShiftTest:
    """Two-sample test between ``reference``'s reservoir and standardised features ``x`` (n, d).

    At most ``max_rows`` rows of each sample enter the MMD test (one per group when ``groups`` is given);
    the per-feature statistics use every reservoir row and every catalogue row (one per group).
    See :class:`ShiftTest` and :func:`numpyro_clustermass.diagnostics.covariate_shift` (the public entry).
    """
    x = reference._check(x)
    if x.shape[0] < 2:
        raise ValueError(f"the two-sample test needs at least 2 catalogue rows; got {x.shape[0]}")
    for name, v in (("max_rows", max_rows), ("num_permutations", num_permutations)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be an integer >= 1; got {v!r}")
    if not 0 < float(level) < 1:
        raise ValueError(f"level must be in (0, 1); got {level}")
    if groups is not None and np.shape(groups) != (x.shape[0],):
        raise ValueError(f"groups must have shape ({x.shape[0]},); got {np.shape(groups)}")
    rng = np.random.default_rng([int(seed), 0x33D])
    x_cat = x[_one_per_group(x.shape[0], groups, rng)]
    res = np.asarray(reference.reservoir, dtype=np.float64)
    a = reference.whiten(res[rng.permutation(res.shape[0])[:max_rows]])
    b = reference.whiten(x_cat[:max_rows])
    pooled = np.concatenate([a, b])
    n1, n = a.shape[0], pooled.shape[0]
    sq = np.sum(pooled**2, axis=1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2.0 * pooled @ pooled.T, 0.0)
    off = d2[np.triu_indices(n, 1)]
    bandwidth = float(np.sqrt(0.5 * np.median(off))) if off.size else 1.0
    bandwidth = bandwidth if bandwidth > 0 else 1.0
    k = np.exp(-d2 / (2.0 * bandwidth**2)).astype(np.float32)
    lab = np.zeros((n, num_permutations + 1), dtype=np.float32)
    lab[:n1, 0] = 1.0
    for p in range(1, num_permutations + 1):
        lab[rng.permutation(n)[:n1], p] = 1.0
    w = lab / n1 - (1.0 - lab) / (n - n1)
    stat_all = np.sum(w * (k @ w), axis=0, dtype=np.float64)
    statistic = float(stat_all[0])
    pvalue = float((1 + np.sum(stat_all[1:] >= statistic)) / (1 + num_permutations))

    import pandas as pd
    from scipy import stats

    names = reference.feature_names or tuple(f"feature {j}" for j in range(x.shape[1]))
    lo, hi = reference.quantiles[0], reference.quantiles[-1]
    rows = []
    for j, name in enumerate(names):
        ks = stats.ks_2samp(x_cat[:, j], res[:, j])
        rows.append({"feature": name, "mean_shift": float(np.mean(x_cat[:, j])),
                     "std_ratio": float(np.std(x_cat[:, j])), "ks_statistic": float(ks.statistic),
                     "ks_pvalue": float(ks.pvalue),
                     "frac_outside": float(np.mean((x_cat[:, j] < lo[j]) | (x_cat[:, j] > hi[j])))})
    per_feature = pd.DataFrame(rows).sort_values("ks_statistic", ascending=False, ignore_index=True)
    cut = float(level) / len(names)
    drivers = tuple(per_feature.feature[per_feature.ks_pvalue < cut])
    return ShiftTest(statistic=statistic, pvalue=pvalue, per_feature=per_feature, drivers=drivers,
                     n_reference=int(n1), n_catalog=int(n - n1), bandwidth=bandwidth,
                     num_permutations=int(num_permutations), level=float(level))
