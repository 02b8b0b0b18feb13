"""The classical M–σ baseline: a power law log10 σ = b + α (log10 M − pivot), fitted by least squares.

Ho et al. (2019, section 4.1) fit this relation above 10^14.5 Msun/h and invert it to predict masses;
the mock generator is validated against their numbers with it (MOCK.md). A fully Bayesian version (NumPyro,
with intrinsic scatter and a MassPosterior) lives with the other estimators.

Examples
--------
>>> import numpyro_clustermass as ncm
>>> cat = ncm.simulate.mock_catalog(volume=0.05, seed=0)
>>> law = fit_power_law(cat.log_mass, cat["sigv_members"])
>>> 0.3 < law.alpha < 0.4
True
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_clustermass.estimators import Estimator

__all__ = ["PowerLaw", "fit_power_law", "mass_observable_model", "MassObservableRelation"]

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


# ---------------------------------------------------------------------------------------------- Bayesian
def mass_observable_model(x, y=None, num_data=None, deterministic: bool = False):
    """Bayesian power-law scaling relation between log10 M and d observables, as a NumPyro model.

    In the standardised units :func:`~numpyro_clustermass.inference.fit` works in, each observable is linear
    in the log-mass with Gaussian intrinsic scatter, correlated between observables (LKJ prior)::

        x_i | y_i ~ MultivariateNormal(intercept + slope * y_i, diag(scatter) L L^T diag(scatter))

    which is the M–σ power law ``log σ = b + α (log M − pivot)`` when ``x = log σ`` (Evrard et al. 2008;
    Ho et al. 2019 use it as their baseline), and adds richness when ``x = (log σ, log Ngal)``.
    Latent sites: ``intercept``, ``slope``, ``scatter`` (each of shape ``(d,)``) and, for ``d > 1``,
    ``corr_cholesky``.

    The likelihood site ``"obs"`` is the *inverse* density of ``y`` given ``x`` under a flat prior in
    log M — the product of the Gaussian likelihoods of the observables, as a function of ``y``::

        y | x ~ Normal(m, s),  1/s^2 = slope^T Σ^-1 slope,  m = s^2 slope^T Σ^-1 (x - intercept)

    It is masked out of the joint density (the relation is fitted through the forward likelihood above),
    and is what :meth:`Fit.posterior` evaluates on its grid. Its prior is therefore flat in log10 M, and
    :meth:`MassPosterior.reweight` moves it to any other prior.
    """
    import numpyro
    import numpyro.distributions as dist
    from numpyro import handlers

    from numpyro_clustermass.models import DATA_PLATE, OBS_SITE, likelihood_scale

    n, d = x.shape
    intercept = numpyro.sample("intercept", dist.Normal(0.0, 3.0).expand([d]).to_event(1))
    slope = numpyro.sample("slope", dist.Normal(0.0, 3.0).expand([d]).to_event(1))
    scatter = numpyro.sample("scatter", dist.HalfNormal(1.0).expand([d]).to_event(1))
    if d > 1:
        corr = numpyro.sample("corr_cholesky", dist.LKJCholesky(d, concentration=2.0))
        scale_tril = scatter[:, None] * corr
    else:
        scale_tril = jnp.diag(scatter)
    if y is not None:
        with numpyro.plate(DATA_PLATE, n), handlers.scale(scale=likelihood_scale(num_data, n)):
            numpyro.sample("features", dist.MultivariateNormal(intercept + slope * y[:, None], scale_tril=scale_tril),
                           obs=x)
    # Inverse density of y given x under a flat prior: product of Gaussians in y.
    white_slope = jax.scipy.linalg.solve_triangular(scale_tril, slope, lower=True)  # L^-1 b
    white_resid = jax.scipy.linalg.solve_triangular(scale_tril, (x - intercept).T, lower=True).T  # L^-1 (x - a)
    precision = jnp.sum(white_slope**2)
    loc = (white_resid @ white_slope) / precision
    with numpyro.plate(DATA_PLATE, n), handlers.mask(mask=False):
        numpyro.sample(OBS_SITE, dist.Normal(loc, jnp.broadcast_to(precision**-0.5, (n,))), obs=y)


@dataclass(frozen=True)
class MassObservableRelation(Estimator):
    """The classical baseline of Ho et al. (2019) as an estimator: a power-law M–σ relation (optionally with
    richness) with intrinsic log-normal scatter, fitted as a NumPyro model — by NUTS for the full posterior
    of its parameters, or by ``"map"``.

    Its posterior is flat in log10 M (the inverted relation); reweight it to any prior like every other
    estimator's posterior.

    Parameters
    ----------
    feature_names : tuple of str
        Observables: ``("Logsigv",)`` (default, M–σ) or ``("Logsigv", "LogNgal")`` (M–σ with richness).

    Examples
    --------
    >>> import numpyro_clustermass as ncm
    >>> cat = ncm.simulate.mock_catalog(volume=0.02, seed=0)
    >>> f = ncm.fit(MassObservableRelation(), cat.select(cat.log_mass > 14.5), method="nuts",
    ...             progress_bar=False)                                        # doctest: +SKIP
    >>> post = f.posterior(cat)                                                  # doctest: +SKIP
    """

    feature_names: tuple[str, ...] = ("Logsigv",)

    name = "mass_sigma"
    obs_site = "obs"
    likelihood_over_mass = False  # the likelihood is p(observables | M): no mass-density baseline applies

    def __post_init__(self):
        names = tuple(self.feature_names)
        if not names:
            raise ValueError("feature_names needs at least one observable, e.g. ('Logsigv',)")
        object.__setattr__(self, "feature_names", names)

    @property
    def model(self):
        return mass_observable_model

    def config(self) -> dict:
        return {"kind": "MassObservableRelation", "feature_names": list(self.feature_names)}

    def posterior_prior(self, grid):
        """Flat in log10 M over the grid: the inverted relation carries no training prior."""
        from numpyro_clustermass.priors import Flat

        return Flat(float(grid[0]), float(grid[-1]))
