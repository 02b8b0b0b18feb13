"""Assemble mock cluster observations: halos -> 3-D satellites -> projected cylinders with interlopers.

Everything is vectorised over all halos and galaxies at once (``np.repeat`` over per-halo counts);
there is no Python loop over clusters. One ``numpy.random.Generator`` seeded once drives every draw in a
fixed order, so the same seed gives the same catalogue bit for bit on the same machine.
"""

from __future__ import annotations

import dataclasses
import time

import numpy as np

from numpyro_clustermass.catalog import Catalog
from numpyro_clustermass.features import summarize
from numpyro_clustermass.simulate.physics import (
    MockPhysics,
    SchechterSampler,
    expected_halo_count,
    hubble_E,
    isotropic_directions,
    nfw_radius_sampler,
    r200c_comoving,
    sample_natural_masses,
    sigma_dm_evrard,
    uniform_disk_radius,
)

__all__ = ["mock_catalog", "MockPhysics"]

#: Log10 halo mass at which ``lambda0`` is quoted.
_PIVOT_LOG_MASS = 13.5
#: Halo mass at which the satellite Schechter knee is quoted.
_SMF_PIVOT_LOG_MASS = 14.0


def mock_catalog(
    volume: float = 1.0,
    mass_sampling: str = "natural",
    n_halos: int | None = None,
    n_los: int = 3,
    seed: int = 0,
    with_members: bool = False,
    physics: MockPhysics | None = None,
    verbose: bool = False,
    **overrides,
) -> Catalog:
    """Generate a mock catalogue in the schema of Ho et al. (2019)'s MDPL2 file.

    Parameters
    ----------
    volume : float
        Comoving volume in (Gpc/h)^3 for ``natural`` sampling: halo counts are Poisson draws from the
        Tinker et al. (2008) mass function (1 (Gpc/h)^3 gives about 92k halos above 10^13.5 Msun/h and
        about 261k mocks with 3 lines of sight, the lecture's size). For ``flat`` sampling it sets the
        default number of halos (the same count the natural mode would give).
    mass_sampling : {"natural", "flat"}
        ``natural``: the mass function; ``flat``: uniform in log10 M, the training trick of Ho et al.
    n_halos : int, optional
        Number of halos for ``flat`` sampling (ignored, and an error if given, for ``natural``).
    n_los : {1, 2, 3}
        Orthogonal lines of sight per halo. The projections share the same 3-D satellites; interlopers
        are drawn per projection. Mocks of one halo are correlated: split by ``halo_id``.
    seed : int
        Seed of the single random generator behind every draw.
    with_members : bool
        Attach the member table (one row per galaxy: ``mock``, ``R``, ``v``, ``log_mstar``,
        ``is_interloper``) as ``catalog.members``.
    physics : MockPhysics, optional
        The physical model; keyword ``overrides`` replace single fields (e.g. ``n_background=0``).
    verbose : bool
        Print the time spent in each stage.

    Returns
    -------
    Catalog
        Columns ``M200c`` [Msun/h], ``Ngal``, ``sigv`` and the 12 moments, plus ``halo_id``, ``los``,
        ``log_mass`` and the truth columns ``n_true_members``, ``n_interlopers``, ``sigma_dm`` (the halo's
        dark-matter dispersion with its scatter), ``velocity_bias`` and ``sigv_members`` (the
        dispersion of all true members inside the aperture, before the velocity cut: what perfect
        membership would measure). ``catalog.meta`` records the physics, the seed and the
        number of mocks removed by the ``Ngal >= ngal_min`` cut.

    Examples
    --------
    >>> from numpyro_clustermass.simulate import mock_catalog
    >>> cat = mock_catalog(volume=0.01, seed=0)
    >>> len(cat) > 1000, bool(cat["Ngal"].min() >= 10)
    (True, True)
    >>> flat = mock_catalog(mass_sampling="flat", n_halos=500, n_background=0.0, infall_fraction=0.0, seed=1)
    >>> int(flat["n_interlopers"].sum())
    0
    """
    physics = dataclasses.replace(physics or MockPhysics(), **overrides)
    if mass_sampling not in ("natural", "flat"):
        raise ValueError(f"mass_sampling must be 'natural' or 'flat'; got {mass_sampling!r}")
    if n_los not in (1, 2, 3):
        raise ValueError(f"n_los must be 1, 2 or 3 (orthogonal axes); got {n_los}")
    if volume <= 0:
        raise ValueError(f"volume must be positive (Gpc/h)^3; got {volume}")
    if mass_sampling == "natural" and n_halos is not None:
        raise ValueError("n_halos applies to mass_sampling='flat'; natural counts come from the volume")
    if n_halos is not None and n_halos < 1:
        raise ValueError(f"n_halos must be >= 1; got {n_halos}")

    clock = _Clock(verbose)
    rng = np.random.default_rng(seed)
    e_z = hubble_E(physics)

    # ---- halos
    if mass_sampling == "natural":
        log_m = sample_natural_masses(rng, physics, volume)
    else:
        if n_halos is None:
            n_halos = int(round(expected_halo_count(physics, volume)))
        log_m = rng.uniform(physics.log_mass_min, physics.log_mass_max, size=n_halos)
    n_h = log_m.size
    if n_h == 0:
        raise ValueError(f"no halos in volume {volume} (Gpc/h)^3; use a larger volume")
    r200 = r200c_comoving(physics, log_m)
    sigma_dm = sigma_dm_evrard(log_m, e_z) * np.exp(physics.sigma_ln_scatter * rng.standard_normal(n_h))
    b_v = rng.normal(physics.velocity_bias_mean, physics.velocity_bias_std, size=n_h)
    sigma_1d = b_v * sigma_dm
    lam = (
        physics.lambda0
        * 10 ** (physics.alpha_sat * (log_m - _PIVOT_LOG_MASS))
        * 10 ** (physics.richness_scatter_dex * rng.standard_normal(n_h))
    )
    n_sat = rng.poisson(lam)
    clock("halos")

    # ---- 3-D satellites: NFW radii, isotropic directions and velocities, stellar masses
    host = np.repeat(np.arange(n_h), n_sat)
    n_gal3d = host.size
    r = nfw_radius_sampler(physics.c_gal, physics.r_max)(rng, n_gal3d) * r200[host]
    pos = isotropic_directions(rng, n_gal3d) * r[:, None]
    vel = rng.standard_normal((n_gal3d, 3)) * sigma_1d[host, None]
    sat_knee = physics.smf_log_knee + physics.smf_knee_slope * (log_m - _SMF_PIVOT_LOG_MASS)
    log_ms = SchechterSampler(physics.smf_alpha).sample(rng, sat_knee[host], physics.log_mstar_min)
    clock("satellites")

    # ---- projections: mock index = halo * n_los + axis
    n_mocks = n_h * n_los
    parts = []
    in_aperture = []  # true members inside the aperture, before the velocity cut (for sigv_members)
    for axis in range(n_los):
        a, b = [j for j in range(3) if j != axis]
        R = np.hypot(pos[:, a], pos[:, b])
        v = vel[:, axis]
        disk = R < physics.aperture
        inside = disk & (np.abs(v) < physics.v_cut)
        parts.append((host[inside] * n_los + axis, R[inside], v[inside], log_ms[inside], False))
        in_aperture.append((host[disk] * n_los + axis, R[disk], v[disk], log_ms[disk]))

    # ---- interlopers, drawn per projection
    mock_host = np.arange(n_mocks) // n_los
    depth = 2.0 * physics.v_cut / (100.0 * e_z)  # Mpc/h, as in MOCK.md
    cyl_volume = np.pi * physics.aperture**2 * depth
    field_sampler = SchechterSampler(physics.field_alpha)
    n_bg = rng.poisson(physics.n_background * cyl_volume, size=n_mocks)
    bg_mock = np.repeat(np.arange(n_mocks), n_bg)
    bg_R = uniform_disk_radius(rng, bg_mock.size, physics.aperture)
    bg_v = rng.uniform(-physics.v_cut, physics.v_cut, size=bg_mock.size)
    bg_ms = field_sampler.sample(rng, np.full(bg_mock.size, physics.field_log_knee), physics.log_mstar_min)
    parts.append((bg_mock, bg_R, bg_v, bg_ms, True))
    n_inf = rng.poisson(physics.infall_fraction * n_sat[mock_host])
    inf_mock = np.repeat(np.arange(n_mocks), n_inf)
    inf_R = uniform_disk_radius(rng, inf_mock.size, physics.aperture)
    inf_v = rng.standard_normal(inf_mock.size) * physics.infall_sigma_factor * sigma_1d[mock_host[inf_mock]]
    inf_ms = field_sampler.sample(rng, np.full(inf_mock.size, physics.field_log_knee), physics.log_mstar_min)
    keep = np.abs(inf_v) < physics.v_cut
    parts.append((inf_mock[keep], inf_R[keep], inf_v[keep], inf_ms[keep], True))
    clock("projections and interlopers")

    mock = np.concatenate([p[0] for p in parts])
    order = np.argsort(mock, kind="stable")
    members = {
        "mock": mock[order],
        "R": np.concatenate([p[1] for p in parts])[order],
        "v": np.concatenate([p[2] for p in parts])[order],
        "log_mstar": np.concatenate([p[3] for p in parts])[order],
        "is_interloper": np.concatenate([np.full(p[0].size, p[4]) for p in parts])[order],
    }

    # ---- summaries (one jit-compiled kernel for all mocks, then once more on true members only)
    cols = summarize(members["mock"], members["R"], members["v"], members["log_mstar"], num_mocks=n_mocks)
    # The dispersion a perfect membership algorithm would measure: every true member in the aperture,
    # with no velocity cut (the cut exists to reject interlopers; it also clips a massive halo's tails).
    pure = summarize(*(np.concatenate([p[j] for p in in_aperture]) for j in range(4)), num_mocks=n_mocks)
    clock("features")

    n_true = np.bincount(members["mock"][~members["is_interloper"]], minlength=n_mocks)
    columns = {
        "M200c": 10 ** log_m[mock_host],
        **cols,
        "halo_id": mock_host.astype(np.int64),
        "los": (np.arange(n_mocks) % n_los).astype(np.int16),  # FITS has no int8
        "log_mass": log_m[mock_host],
        "n_true_members": n_true.astype(np.int32),
        "n_interlopers": (cols["Ngal"] - n_true).astype(np.int32),
        "sigma_dm": sigma_dm[mock_host].astype(np.float32),
        "velocity_bias": b_v[mock_host].astype(np.float32),
        "sigv_members": pure["sigv"],
    }
    selected = columns["Ngal"] >= physics.ngal_min
    n_cut = int(n_mocks - selected.sum())
    meta = {
        "generator": "numpyro_clustermass.simulate.mock_catalog",
        "seed": seed,
        "volume_gpc3_h3": volume,
        "mass_sampling": mass_sampling,
        "n_los": n_los,
        "n_halos": int(n_h),
        "n_mocks_generated": int(n_mocks),
        "n_mocks_cut_ngal_min": n_cut,
        "physics": physics.to_dict(),
    }
    cat = Catalog(columns, members=members if with_members else None, meta=meta, validate=False)
    cat = cat.select(selected) if n_cut else cat  # select() carries meta along
    cat.check()
    clock("catalogue")
    return cat


class _Clock:
    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.t = time.perf_counter()

    def __call__(self, label: str) -> None:
        if self.verbose:
            now = time.perf_counter()
            print(f"  {label:30s} {now - self.t:7.2f} s")
            self.t = now
