"""Physical ingredients of the mock universe (see ``MOCK.md``), each a small vectorised function.

Every paper number used by the generator is named here, once, with its reference.
"""

from __future__ import annotations

import functools
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
    omega_m, sigma8, h : float or None
        Replace the named cosmology's Omega_m, sigma_8 and h = H0 / (100 km/s/Mpc) (None: keep the named
        cosmology's; its other parameters, Omega_b and n_s, are kept either way). The mass function,
        E(z) and R200c all follow, through colossus.
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
    sigma_15, sigma_alpha : float
        Normalisation [km/s] at E(z) M200c = 10^15 Msun/h and slope of the dark-matter sigma-M relation
        (Evrard et al. 2008: 1082.9 +- 4.0 km/s and 0.3361 +- 0.0026).
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
    clustered_excess : float
        Clustered interlopers (0, the default, switches them off): galaxies of neighbouring halos that lie
        in the cylinder. The number of neighbour halos per cylinder is ``clustered_excess`` times the cosmic
        mean number of halos with log10 M in ``[clustered_log_mass_min, clustered_log_mass_max]`` in a
        cylinder widened by ``clustered_reach``: the mean excess density of such halos around a cluster
        (the cluster-halo correlation function averaged over the cylinder), on top of the uniform
        background, which already stands for the mean density. See :func:`sample_neighbour_halos`.
    clustered_log_mass_min, clustered_log_mass_max : float
        Mass range of the neighbour halos, log10 M200c [Msun/h].
    clustered_reach : float
        Neighbour centres are uniform in a disk of radius ``aperture + clustered_reach`` [Mpc/h comoving]
        (neighbours centred just outside the aperture still put galaxies in it).
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
    omega_m: float | None = None
    sigma8: float | None = None
    h: float | None = None
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
    sigma_15: float = EVRARD_SIGMA_15
    sigma_alpha: float = EVRARD_ALPHA
    sigma_ln_scatter: float = EVRARD_LN_SCATTER
    aperture: float = HO19_APERTURE
    v_cut: float = HO19_VCUT
    n_background: float = 0.02
    infall_fraction: float = 0.1
    infall_sigma_factor: float = 1.5
    clustered_excess: float = 0.0
    clustered_log_mass_min: float = 12.5
    clustered_log_mass_max: float = 13.5
    clustered_reach: float = 0.5
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
            (self.z >= 0, "z must be >= 0"),
            (self.omega_m is None or 0 < self.omega_m < 1, "omega_m must be in (0, 1) or None"),
            (self.sigma8 is None or self.sigma8 > 0, "sigma8 must be positive or None"),
            (self.h is None or self.h > 0, "h must be positive or None"),
            (self.sigma_15 > 0 and self.sigma_alpha > 0, "sigma_15 and sigma_alpha must be positive"),
            (self.velocity_bias_mean > 0 and self.velocity_bias_std >= 0,
             "velocity_bias_mean must be positive and velocity_bias_std >= 0"),
            (self.clustered_excess >= 0 and self.clustered_reach >= 0,
             "clustered_excess and clustered_reach must be >= 0"),
            (self.clustered_log_mass_min < self.clustered_log_mass_max,
             "clustered_log_mass_min must be below clustered_log_mass_max"),
        ]
        for ok, msg in checks:
            if not ok:
                raise ValueError(f"MockPhysics: {msg}")

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def cosmology_overrides(self) -> dict:
        """colossus parameters that replace the named cosmology's (``Om0``, ``sigma8``, ``H0``); empty for
        the named cosmology itself."""
        out = {}
        if self.omega_m is not None:
            out["Om0"] = float(self.omega_m)
        if self.sigma8 is not None:
            out["sigma8"] = float(self.sigma8)
        if self.h is not None:
            out["H0"] = 100.0 * float(self.h)
        return out


def physics_cosmology(physics: MockPhysics):
    """Context manager: colossus's current cosmology set to the physics' (named one plus overrides).

    Examples
    --------
    >>> with physics_cosmology(MockPhysics(omega_m=0.28)) as c:
    ...     round(c.Om0, 2)
    0.28
    """
    return use_cosmology(physics.cosmology, physics.cosmology_overrides or None)


# --------------------------------------------------------------------------------------- halos
@functools.lru_cache(maxsize=64)
def hubble_E(physics: MockPhysics) -> float:
    """E(z) = H(z) / H0 of the physics' cosmology (cached per physics).

    Examples
    --------
    >>> round(hubble_E(MockPhysics()), 4)
    1.0587
    """
    with physics_cosmology(physics) as cosmo:
        return float(cosmo.Ez(physics.z))


def mass_function_table(
    physics: MockPhysics, n_grid: int = 4001, lo: float | None = None, hi: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """dn/dlog10M [(Mpc/h)^-3 per dex] on a fine log10 M grid over ``[lo, hi]`` (default: the physics'
    mass range), from colossus in the physics' cosmology and redshift. Cached per arguments: do not
    modify the returned arrays.

    Examples
    --------
    >>> log_m, dn = mass_function_table(MockPhysics(), n_grid=5)
    >>> bool(dn[0] > dn[-1] > 0)
    True
    """
    lo = physics.log_mass_min if lo is None else float(lo)
    hi = physics.log_mass_max if hi is None else float(hi)
    return _mass_function_table(physics, int(n_grid), lo, hi)


@functools.lru_cache(maxsize=64)
def _mass_function_table(physics: MockPhysics, n_grid: int, lo: float, hi: float):
    from colossus.lss import mass_function

    log_m = np.linspace(lo, hi, n_grid)
    with physics_cosmology(physics):
        dndlnm = mass_function.massFunction(
            10**log_m, physics.z, mdef="200c", model=physics.mass_function, q_out="dndlnM"
        )
    dn = np.asarray(dndlnm) * np.log(10.0)
    log_m.flags.writeable = False
    dn.flags.writeable = False
    return log_m, dn


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

    with physics_cosmology(physics):
        r_phys_kpc = mass_so.M_to_R(10 ** np.asarray(log_mass, dtype=np.float64), physics.z, "200c")
    return np.asarray(r_phys_kpc) * 1e-3 * (1.0 + physics.z)


def sigma_dm_evrard(
    log_mass: np.ndarray, e_z: float, sigma_15: float = EVRARD_SIGMA_15, alpha: float = EVRARD_ALPHA
) -> np.ndarray:
    """Mean dark-matter 1-D velocity dispersion at fixed mass, Evrard et al. (2008) [km/s]:
    ``sigma_15 (E(z) M200c / 10^15 Msun/h)^alpha``.

    Examples
    --------
    >>> round(float(sigma_dm_evrard(15.0, 1.0)), 1)
    1082.9
    """
    return sigma_15 * (e_z * 10 ** (np.asarray(log_mass) - 15.0)) ** alpha


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


# --------------------------------------------------------------------------------------- clustered interlopers
def expected_neighbour_halos(physics: MockPhysics, e_z: float) -> float:
    """Mean number of neighbour halos per cylinder for the clustered-interloper model.

    ``clustered_excess`` times the cosmic mean number density of halos with log10 M200c in
    ``[clustered_log_mass_min, clustered_log_mass_max]`` (colossus, the physics' mass function) times the
    volume of the cylinder widened by ``clustered_reach``: pi (aperture + reach)^2 x 2 v_cut / (100 E(z)).

    Examples
    --------
    >>> expected_neighbour_halos(MockPhysics(), 1.06)      # switched off by default
    0.0
    """
    if physics.clustered_excess == 0:
        return 0.0
    log_m, dn = mass_function_table(physics, 1025, physics.clustered_log_mass_min, physics.clustered_log_mass_max)
    density = float(np.trapezoid(dn, log_m))  # (Mpc/h)^-3
    depth = 2.0 * physics.v_cut / (100.0 * e_z)
    return physics.clustered_excess * density * np.pi * (physics.aperture + physics.clustered_reach) ** 2 * depth


def sample_neighbour_halos(rng: np.random.Generator, physics: MockPhysics, n_mocks: int, e_z: float):
    """Neighbour halos in each mock's cylinder (the clustered-interloper model), vectorised over mocks.

    Per mock a Poisson number (mean :func:`expected_neighbour_halos`) of halos, with masses from the mass
    function over the neighbour range, centres uniform in the disk of radius ``aperture + clustered_reach``
    and a line-of-sight velocity offset uniform in ``(-v_cut, v_cut)`` (a position along the cylinder's
    depth, seen through the Hubble flow).

    Returns
    -------
    mock : int array (n,)
        The mock each neighbour belongs to.
    x, y : float arrays (n,)
        Projected centre relative to the cluster [Mpc/h comoving].
    v_offset : float array (n,)
        Line-of-sight velocity of the neighbour's centre relative to the cluster [km/s].
    log_mass : float array (n,)
        log10 M200c of the neighbour [Msun/h].

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> mock, x, y, v, lm = sample_neighbour_halos(rng, MockPhysics(clustered_excess=2.0), 1000, 1.06)
    >>> bool(np.all(np.hypot(x, y) < 2.1) and np.all(np.abs(v) < 2500) and np.all((lm >= 12.5) & (lm <= 13.5)))
    True
    """
    mean = expected_neighbour_halos(physics, e_z)
    n_nb = rng.poisson(mean, size=n_mocks)
    mock = np.repeat(np.arange(n_mocks), n_nb)
    n = mock.size
    log_m, dn = mass_function_table(physics, 1025, physics.clustered_log_mass_min, physics.clustered_log_mass_max)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (dn[1:] + dn[:-1]) * np.diff(log_m))])
    nb_log_m = np.interp(rng.uniform(0.0, cdf[-1], size=n), cdf, log_m)
    r = uniform_disk_radius(rng, n, physics.aperture + physics.clustered_reach)
    phi = rng.uniform(0.0, 2.0 * np.pi, size=n)
    v_offset = rng.uniform(-physics.v_cut, physics.v_cut, size=n)
    return mock, r * np.cos(phi), r * np.sin(phi), v_offset, nb_log_m


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
    "physics_cosmology",
    "expected_neighbour_halos",
    "sample_neighbour_halos",
]
