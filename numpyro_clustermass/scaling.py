"""The classical M–σ baseline: a power law log10 σ = b + α (log10 M − pivot), fitted by least squares.

Ho et al. (2019, section 4.1) fit this relation above 10^14.5 Msun/h and invert it to predict masses;
the mock generator is validated against their numbers with it (MOCK.md). A fully Bayesian version (NumPyro,
with intrinsic scatter and a MassPosterior) lives with the other estimators.

Example
-------
>>> import numpyro_clustermass as ncm
>>> cat = ncm.simulate.mock_catalog(volume=0.05, seed=0)
>>> law = fit_power_law(cat.log_mass, cat["sigv_members"])
>>> 0.3 < law.alpha < 0.4
True
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["PowerLaw", "fit_power_law"]

#: Ho et al. (2019) fit the M–σ relation to halos above this mass (log10 M200c [Msun/h]).
HO19_FIT_MIN_LOG_MASS = 14.5


class PowerLaw(NamedTuple):
    """log10 σ = log_sigma_pivot + alpha (log10 M − pivot).

    Attributes
    ----------
    alpha : float
        Slope.
    log_sigma_pivot : float
        log10 σ [km/s] at the pivot mass.
    pivot : float
        Pivot, log10 M [Msun/h].
    scatter : float
        RMS residual in log10 σ at fixed mass (dex).
    n : int
        Number of mocks used in the fit.
    """

    alpha: float
    log_sigma_pivot: float
    pivot: float
    scatter: float
    n: int

    @property
    def sigma_pivot(self) -> float:
        """σ at the pivot mass [km/s]."""
        return float(10**self.log_sigma_pivot)

    def predict_log_mass(self, sigv: np.ndarray) -> np.ndarray:
        """Invert the relation: log10 M from σ [km/s]."""
        return self.pivot + (np.log10(np.asarray(sigv, dtype=np.float64)) - self.log_sigma_pivot) / self.alpha


def fit_power_law(
    log_mass: np.ndarray,
    sigv: np.ndarray,
    min_log_mass: float = HO19_FIT_MIN_LOG_MASS,
    pivot: float = 15.0,
) -> PowerLaw:
    """Least-squares fit of log10 σ on log10 M for mocks above ``min_log_mass``.

    Rows with non-finite or non-positive σ (e.g. a mock with fewer than two true members) are an error,
    not silently dropped: pass only the rows you mean to fit.
    """
    log_mass = np.asarray(log_mass, dtype=np.float64)
    sigv = np.asarray(sigv, dtype=np.float64)
    sel = log_mass > min_log_mass
    bad = sel & ~(np.isfinite(sigv) & (sigv > 0))
    if bad.any():
        raise ValueError(
            f"sigv has {int(bad.sum())} non-finite or non-positive values among the {int(sel.sum())} mocks "
            f"above log M = {min_log_mass}; select valid rows first"
        )
    if sel.sum() < 3:
        raise ValueError(f"only {int(sel.sum())} mocks above log M = {min_log_mass}; need at least 3")
    x, y = log_mass[sel] - pivot, np.log10(sigv[sel])
    alpha, b = np.polyfit(x, y, 1)
    resid = y - (b + alpha * x)
    return PowerLaw(float(alpha), float(b), float(pivot), float(resid.std()), int(sel.sum()))
