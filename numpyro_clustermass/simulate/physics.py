"""Physical ingredients of the mock universe (see ``MOCK.md``), each a small vectorised function.

Every paper number used by the generator is named here, once, with its reference.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from numpyro_clustermass.cosmology import DEFAULT_COSMOLOGY, DEFAULT_Z, use_cosmology
from numpyro_clustermass.grid import LOG_MASS_RANGE

# --------------------------------------------------------------------------------------- paper numbers
#: Evrard et al. (2008), eq. 1 and table 3: sigma_DM = SIGMA_15 (h(z) M200c / 1e15 Msun)^ALPHA, where
#: h(z) M200c = E(z) M200c in Msun/h, with a log-normal scatter of 4.26% at fixed mass.
EVRARD_SIGMA_15 = 1082.9  # km/s
EVRARD_ALPHA = 0.3361
EVRARD_LN_SCATTER = 0.0426
#: Ho et al. (2019): cylinder aperture (comoving) and line-of-sight velocity cut.
HO19_APERTURE = 1.6  # Mpc/h
HO19_VCUT = 2500.0  # km/s
#: Ho et al. (2019): mocks with fewer galaxies than this in the cylinder are dropped.
HO19_NGAL_MIN = 10
#: Budzynski et al. (2012): satellite galaxies follow NFW with c_gal ~ 2.6, nearly mass independent.
BUDZYNSKI12_CGAL = 2.6
#: Munari et al. (2013), Armitage et al. (2018): galaxy velocity bias b_v ~ 1 with < 5% spread.
VELOCITY_BIAS_MEAN = 1.0
VELOCITY_BIAS_STD = 0.05
#: Zheng et al. (2005): satellite occupation <N_sat> proportional to M^alpha with alpha ~ 1.
ZHENG05_ALPHA_SAT = 1.0
#: Ho et al. (2019, post-review catalogue): stellar-mass selection, log10 M* [Msun].
LOG_MSTAR_MIN = 9.5


@dataclass(frozen=True)
class MockPhysics:
    """All knobs of the mock universe. Defaults follow ``MOCK.md``; every one can be overridden.

    Attributes
    ----------
    cosmology, z : str, float
        colossus cosmology name and redshift (MDPL2: Planck 2013, z = 0.117).
    log_mass_min, log_mass_max : float
        Halo mass range in log10 M200c [Msun/h].
    mass_function : str
        colossus mass-function model for ``natural`` sampling (Tinker et al. 2008 by default).
    lambda0 : float
        Mean number of satellites above the stellar-mass cut in a 10^13.5 Msun/h halo (the whole halo,
        out to ``r_max`` R200c). Calibrated together with the interloper rates so that the M-sigma
        power law reproduces Ho et al. (2019): slope 0.355 and 0.177 dex mass scatter for pure members,
        0.34 dex with interlopers (they found 0.366, 0.183 and 0.369; ``tests/test_simulate.py``). A
        10^13.5 cylinder then holds about 7.5 members and 8 interlopers, more than MOCK.md's "about 10":
        fewer members make the pure-member scatter too large (0.20 dex at lambda0 = 6).
    alpha_sat : float
        Slope of <N_sat> with mass (Zheng et al. 2005).
    richness_scatter_dex : float
        Log-normal scatter of the satellite mean at fixed mass (dex).
    c_gal, r_max : float
        Concentration of the satellites' NFW profile, and its truncation radius in units of R200c.
    velocity_bias_mean, velocity_bias_std : float
        Per-halo galaxy velocity bias b_v ~ N(mean, std).
    sigma_ln_scatter : float
        Log-normal scatter of sigma_DM at fixed mass (Evrard et al. 2008).
    aperture, v_cut : float
        Cylinder radius [Mpc/h comoving] and half-depth in velocity [km/s].
    n_background : float
        Density of unclustered background galaxies above the stellar-mass cut [(Mpc/h)^-3 comoving];
        0.02 gives about 7.6 per cylinder (MOCK.md: 4-8).
    infall_fraction, infall_sigma_factor : float
        Correlated interlopers: Poisson(infall_fraction * N_sat) per projection, with line-of-sight
        velocity ~ N(0, infall_sigma_factor * sigma_1D), spread uniformly over the aperture.
    log_mstar_min : float
        Stellar-mass selection, log10 M* [Msun].
    smf_alpha, smf_log_knee, smf_knee_slope : float
        Satellite Schechter function: slope, knee at 10^14 Msun/h, and the knee's change per dex of
        halo mass (brighter satellites in more massive hosts, cf. Moster et al. 2013).
    field_alpha, field_log_knee : float
        Field (interloper) Schechter function.
    ngal_min : int
        Keep mocks with at least this many galaxies in the cylinder (Ho et al. 2019).
    """

    cosmology: str = DEFAULT_COSMOLOGY
    z: float = DEFAULT_Z
    log_mass_min: float = LOG_MASS_RANGE[0]
    log_mass_max: float = LOG_MASS_RANGE[1]
    mass_function: str = "tinker08"
    lambda0: float = 7.5
    alpha_sat: float = ZHENG05_ALPHA_SAT
    richness_scatter_dex: float = 0.1
    c_gal: float = BUDZYNSKI12_CGAL
    r_max: float = 2.0
    velocity_bias_mean: float = VELOCITY_BIAS_MEAN
    velocity_bias_std: float = VELOCITY_BIAS_STD
    sigma_ln_scatter: float = EVRARD_LN_SCATTER
    aperture: float = HO19_APERTURE
    v_cut: float = HO19_VCUT
    n_background: float = 0.02
    infall_fraction: float = 0.1
    infall_sigma_factor: float = 1.5
    log_mstar_min: float = LOG_MSTAR_MIN
    smf_alpha: float = -1.2
    smf_log_knee: float = 10.8
    smf_knee_slope: float = 0.15
    field_alpha: float = -1.3
    field_log_knee: float = 10.7
    ngal_min: int = HO19_NGAL_MIN

    def __post_init__(self) -> None:
        checks = [
            (self.log_mass_min < self.log_mass_max, "log_mass_min must be below log_mass_max"),
            (self.lambda0 > 0, "lambda0 must be positive"),
            (self.c_gal > 0 and self.r_max > 0, "c_gal and r_max must be positive"),
            (self.aperture > 0 and self.v_cut > 0, "aperture and v_cut must be positive"),
            (self.n_background >= 0 and self.infall_fraction >= 0, "interloper rates must be >= 0"),
            (self.richness_scatter_dex >= 0 and self.sigma_ln_scatter >= 0, "scatters must be >= 0"),
            (self.ngal_min >= 3, "ngal_min must be at least 3 (skewness and kurtosis need 3 galaxies)"),
            (self.smf_alpha > -2 and self.field_alpha > -2, "Schechter slopes must be > -2"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"MockPhysics: {msg}")

    def to_dict(self) -> dict:
        return asdict(self)


# --------------------------------------------------------------------------------------- halos
def hubble_E(physics: MockPhysics) -> float:
    """E(z) = H(z) / H0 of the physics' cosmology."""
    with use_cosmology(physics.cosmology) as cosmo:
        return float(cosmo.Ez(physics.z))


def mass_function_table(physics: MockPhysics, n_grid: int = 4001) -> tuple[np.ndarray, np.ndarray]:
    """dn/dlog10M [(Mpc/h)^-3 per dex] on a fine log10 M grid over the physics' mass range (colossus)."""
    from colossus.lss import mass_function

    log_m = np.linspace(physics.log_mass_min, physics.log_mass_max, n_grid)
    with use_cosmology(physics.cosmology):
        dndlnm = mass_function.massFunction(
            10**log_m, physics.z, mdef="200c", model=physics.mass_function, q_out="dndlnM"
        )
    return log_m, np.asarray(dndlnm) * np.log(10.0)


def expected_halo_count(physics: MockPhysics, volume: float, lo: float | None = None, hi: float | None = None) -> float:
    """Expected number of halos in [lo, hi] (log10 M200c) in ``volume`` (Gpc/h)^3, from colossus."""
    log_m, dn = mass_function_table(physics)
    lo = physics.log_mass_min if lo is None else lo
    hi = physics.log_mass_max if hi is None else hi
    fine = np.linspace(lo, hi, 4001)
    return float(np.trapezoid(np.interp(fine, log_m, dn), fine) * volume * 1e9)


def sample_natural_masses(rng: np.random.Generator, physics: MockPhysics, volume: float) -> np.ndarray:
    """Poisson number of halos in ``volume`` (Gpc/h)^3, masses drawn from the mass function (sorted order
    is not implied)."""
    log_m, dn = mass_function_table(physics)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dn[1:] + dn[:-1]) * np.diff(log_m))])
    n_expected = cdf[-1] * volume * 1e9
    n = rng.poisson(n_expected)
    return np.interp(rng.uniform(0.0, cdf[-1], size=n), cdf, log_m)


def r200c_comoving(physics: MockPhysics, log_mass: np.ndarray) -> np.ndarray:
    """R200c in comoving Mpc/h (colossus ``mass_so`` gives physical kpc/h)."""
    from colossus.halo import mass_so

    with use_cosmology(physics.cosmology):
        r_phys_kpc = mass_so.M_to_R(10 ** np.asarray(log_mass, dtype=np.float64), physics.z, "200c")
    return np.asarray(r_phys_kpc) * 1e-3 * (1.0 + physics.z)


def sigma_dm_evrard(log_mass: np.ndarray, e_z: float) -> np.ndarray:
    """Mean dark-matter 1-D velocity dispersion at fixed mass, Evrard et al. (2008) [km/s]."""
    return EVRARD_SIGMA_15 * (e_z * 10 ** (np.asarray(log_mass) - 15.0)) ** EVRARD_ALPHA


# --------------------------------------------------------------------------------------- galaxies
def nfw_radius_sampler(c: float, r_max: float, n_table: int = 4096):
    """Inverse CDF of the NFW enclosed mass, truncated at ``r_max`` (units of R200c, concentration c)."""
    u = np.linspace(0.0, r_max, n_table)
    x = c * u
    m = np.log1p(x) - x / (1.0 + x)
    m /= m[-1]

    def sample(rng: np.random.Generator, n: int) -> np.ndarray:
        return np.interp(rng.uniform(size=n), m, u)

    return sample


def isotropic_directions(rng: np.random.Generator, n: int) -> np.ndarray:
    """Unit vectors uniform on the sphere, shape (n, 3)."""
    mu = rng.uniform(-1.0, 1.0, size=n)
    phi = rng.uniform(0.0, 2.0 * np.pi, size=n)
    s = np.sqrt(1.0 - mu * mu)
    return np.stack([s * np.cos(phi), s * np.sin(phi), mu], axis=1)


class SchechterSampler:
    """Draw log10 M* above a cut from dn/dM* ~ (M*/M_knee)^alpha exp(-M*/M_knee), with per-object knees.

    Tabulates the cumulative integral of x^alpha e^-x in x = M*/M_knee once; each draw is an inverse-CDF
    lookup between the object's lower limit and infinity, so knees may differ per galaxy.
    """

    def __init__(self, alpha: float, x_lo: float = 1e-5, x_hi: float = 40.0, n_table: int = 8192):
        self.log_x = np.linspace(np.log(x_lo), np.log(x_hi), n_table)
        x = np.exp(self.log_x)
        integrand = x ** (alpha + 1.0) * np.exp(-x)  # d/dlnx of the cumulative
        tail = np.concatenate([[0.0], np.cumsum(0.5 * (integrand[1:] + integrand[:-1]) * np.diff(self.log_x))])
        self.cum_from_top = tail[-1] - tail  # integral from x to x_hi, decreasing

    def sample(self, rng: np.random.Generator, log_knee: np.ndarray, log_min: float) -> np.ndarray:
        log_knee = np.asarray(log_knee, dtype=np.float64)
        lnx_min = (log_min - log_knee) * np.log(10.0)
        # Survival integral from each object's lower limit; draw uniformly below it and invert.
        s_min = np.interp(lnx_min, self.log_x, self.cum_from_top)
        target = rng.uniform(size=log_knee.shape) * s_min
        lnx = np.interp(-target, -self.cum_from_top, self.log_x)
        return np.maximum(log_knee + lnx / np.log(10.0), log_min)


def uniform_disk_radius(rng: np.random.Generator, n: int, radius: float) -> np.ndarray:
    """Projected radii of points uniform in a disk of the given radius."""
    return radius * np.sqrt(rng.uniform(size=n))


__all__ = [
    "MockPhysics",
    "EVRARD_SIGMA_15",
    "EVRARD_ALPHA",
    "EVRARD_LN_SCATTER",
    "HO19_APERTURE",
    "HO19_VCUT",
    "HO19_NGAL_MIN",
    "hubble_E",
    "mass_function_table",
    "expected_halo_count",
    "sample_natural_masses",
    "r200c_comoving",
    "sigma_dm_evrard",
    "nfw_radius_sampler",
    "isotropic_directions",
    "SchechterSampler",
    "uniform_disk_radius",
]
