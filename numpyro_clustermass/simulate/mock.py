"""Assemble mock cluster observations: halos -> 3-D satellites -> projected cylinders with interlopers.

Everything is vectorised over all halos and galaxies at once (``np.repeat`` over per-halo counts);
there is no Python loop over clusters. One ``numpy.random.Generator`` seeded once drives every draw in a
fixed order, so the same seed gives the same catalogue bit for bit on the same machine. With
``nuisance=`` the volume is a few sub-volumes, each a universe with its own physics and its own generator
(spawned from the seed), simulated in turn and summarised together.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import time

import numpy as np

from numpyro_clustermass.catalog import Catalog
from numpyro_clustermass.features import summarize
from numpyro_clustermass.simulate.nuisance import (
    NUISANCE_COLUMN_PREFIX,
    NUISANCE_PARAMETERS,
    SUB_VOLUME,
    physics_for,
    resolve_nuisance,
)
from numpyro_clustermass.simulate.physics import (
    MockPhysics,
    SchechterSampler,
    expected_halo_count,
    hubble_E,
    isotropic_directions,
    mass_function_table,
    nfw_radius_sampler,
    r200c_comoving,
    sample_natural_masses,
    sample_neighbour_halos,
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
    nuisance: str | dict | None = None,
    sub_volume: float = SUB_VOLUME,
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
    nuisance : None, "prior" or dict
        ``None`` (default): one universe, the physics above, exactly as without this argument.
        Otherwise the volume is split into sub-volumes of about ``sub_volume`` each, every one a universe
        of its own: ``"prior"`` draws every nuisance parameter of the family
        (:data:`~numpyro_clustermass.simulate.nuisance.NUISANCE_PARAMETERS`, ranges in
        ``docs/nuisance.md``) per sub-volume; a dict ``{name: number, (lo, hi) or "prior"}`` fixes the named
        parameters, draws them from part of their range or from all of it, and keeps the others at the
        physics' values, unless it holds ``"prior": True``, which
        draws the unnamed family parameters too. The clustered interlopers are outside the family: name
        ``clustered_excess`` to switch them on. Unknown names and values outside a range raise; so does a
        keyword override of a parameter the nuisance argument sets.
    sub_volume : float
        Target size of a sub-volume in (Gpc/h)^3 (default 0.1): ``ceil(volume / sub_volume)`` equal
        sub-volumes (one if ``volume`` is smaller). With ``flat`` sampling the halos are shared out
        evenly among them. Only used with ``nuisance``.

    Returns
    -------
    Catalog
        Columns ``M200c`` [Msun/h], ``Ngal``, ``sigv`` and the 12 moments, plus ``halo_id``, ``los``,
        ``log_mass`` and the truth columns ``n_true_members``, ``n_interlopers``, ``sigma_dm`` (the halo's
        dark-matter dispersion with its scatter), ``velocity_bias`` and ``sigv_members`` (the
        dispersion of all true members inside the aperture, before the velocity cut: what perfect
        membership would measure). ``catalog.meta`` records the physics, the seed and the
        number of mocks removed by the ``Ngal >= ngal_min`` cut.

        With ``nuisance``: a column ``sub_volume`` (which universe the row's halo lives in) and one column
        ``nu_<name>`` per nuisance parameter (float32; every parameter, the fiducial value where the
        argument did not set it), which ``Catalog.features`` refuses to use. ``meta["nuisance"]`` holds the
        plan, the exact values per sub-volume and the ranges; for ``natural`` sampling
        ``meta["generating_mass_function"]`` holds the mixture of the sub-volumes' mass functions that the
        halo masses were drawn from (``numpyro_clustermass.priors.generating_prior`` reads it).

    Random streams: without ``nuisance`` one ``numpy.random.default_rng(seed)`` drives every draw. With it,
    ``numpy.random.SeedSequence(seed).spawn(n_sub + 1)``: the first child draws the nuisance values, child
    ``k + 1`` simulates sub-volume ``k``; so the same seed gives the same catalogue.

    Examples
    --------
    >>> from numpyro_clustermass.simulate import mock_catalog
    >>> cat = mock_catalog(volume=0.01, seed=0)
    >>> len(cat) > 1000, bool(cat["Ngal"].min() >= 10)
    (True, True)
    >>> flat = mock_catalog(mass_sampling="flat", n_halos=500, n_background=0.0, infall_fraction=0.0, seed=1)
    >>> int(flat["n_interlopers"].sum())
    0
    >>> fam = mock_catalog(volume=0.02, seed=0, nuisance="prior", sub_volume=0.01)
    >>> fam.meta["nuisance"]["n_sub_volumes"], sorted(set(fam["sub_volume"].tolist()))
    (2, [0, 1])
    >>> fam.features().shape[1]                    # the 14 features: no nuisance column
    14
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
    plan = resolve_nuisance(nuisance)
    if plan is not None:
        clash = sorted(set(overrides) & set(plan.names))
        if clash:
            raise ValueError(f"{clash} set both as keyword override(s) and by nuisance=; set each in one place "
                             f"(a fixed value goes into the nuisance dict)")
        if not (isinstance(sub_volume, numbers.Real) and not isinstance(sub_volume, bool)
                and math.isfinite(sub_volume) and sub_volume > 0):
            raise ValueError(f"sub_volume must be a positive number of (Gpc/h)^3; got {sub_volume!r}")

    clock = _Clock(verbose)
    if plan is None:
        rngs, universes, volumes = [np.random.default_rng(seed)], [physics], [volume]
        if mass_sampling == "flat" and n_halos is None:
            n_halos = int(round(expected_halo_count(physics, volume)))
        halo_counts = [n_halos]
    else:
        n_sub = max(1, math.ceil(volume / sub_volume - 1e-9))
        draw_seq, *sub_seqs = np.random.SeedSequence(seed).spawn(n_sub + 1)
        values = plan.draw(np.random.default_rng(draw_seq), n_sub)
        universes = [physics_for(physics, values, k) for k in range(n_sub)]
        rngs = [np.random.default_rng(q) for q in sub_seqs]
        volumes = [volume / n_sub] * n_sub
        if mass_sampling == "flat":
            total = int(round(expected_halo_count(physics, volume))) if n_halos is None else int(n_halos)
            halo_counts = [total // n_sub + (k < total % n_sub) for k in range(n_sub)]
        else:
            halo_counts = [None] * n_sub

    subs = []
    for rng, phys, vol, n_k in zip(rngs, universes, volumes, halo_counts):
        subs.append(_simulate_volume(rng, phys, vol, mass_sampling, n_k, n_los, clock if plan is None else None))
    if plan is not None:
        clock(f"{len(subs)} sub-volumes: halos to interlopers")
    n_per = np.array([s["log_m"].size for s in subs])
    n_h = int(n_per.sum())
    if n_h == 0:
        raise ValueError(f"no halos in volume {volume} (Gpc/h)^3; use a larger volume")
    offsets = np.concatenate([[0], np.cumsum(n_per)[:-1]]) * n_los  # first mock index of each sub-volume
    parts = [(p[0] + off, *p[1:]) for s, off in zip(subs, offsets) for p in s["parts"]]
    in_aperture = [(p[0] + off, *p[1:]) for s, off in zip(subs, offsets) for p in s["in_aperture"]]
    log_m = np.concatenate([s["log_m"] for s in subs])
    sigma_dm = np.concatenate([s["sigma_dm"] for s in subs])
    b_v = np.concatenate([s["b_v"] for s in subs])
    n_mocks = n_h * n_los
    mock_host = np.arange(n_mocks) // n_los

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
    if plan is not None:
        halo_sub = np.repeat(np.arange(len(subs)), n_per)
        columns["sub_volume"] = halo_sub[mock_host].astype(np.int32)
        per_sub = {name: np.array([_parameter_value(u, name) for u in universes]) for name in NUISANCE_PARAMETERS}
        for name, vals in per_sub.items():
            columns[NUISANCE_COLUMN_PREFIX + name] = vals[halo_sub][mock_host].astype(np.float32)
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
    if plan is not None:
        meta["nuisance"] = {
            **plan.to_dict(),
            "n_sub_volumes": len(subs),
            "sub_volume_gpc3_h3": volumes[0],
            "n_halos_per_sub_volume": n_per.tolist(),
            "values": {name: vals.tolist() for name, vals in per_sub.items()},
            "ranges": {n: [*plan.range_of(n), p.scale] for n, p in NUISANCE_PARAMETERS.items()},
            "column_prefix": NUISANCE_COLUMN_PREFIX,
            "seeding": "numpy.random.SeedSequence(seed).spawn(n_sub_volumes + 1): child 0 draws the values, "
                       "child k + 1 simulates sub-volume k",
        }
        if mass_sampling == "natural":
            meta["generating_mass_function"] = _mixture_mass_function(universes, volumes)
    cat = Catalog(columns, members=members if with_members else None, meta=meta, validate=False)
    cat = cat.select(selected) if n_cut else cat  # select() carries meta along
    cat.check()
    clock("catalogue")
    return cat


def _parameter_value(physics: MockPhysics, name: str) -> float:
    """The value a universe has for a nuisance parameter (the named cosmology's where not overridden)."""
    value = getattr(physics, name)
    if value is None:  # omega_m, sigma8, h of the named cosmology
        return NUISANCE_PARAMETERS[name].fiducial if physics.cosmology == MockPhysics().cosmology else _named(physics, name)
    return float(value)


def _named(physics: MockPhysics, name: str) -> float:
    from colossus.cosmology import cosmology as cc

    key = {"omega_m": "Om0", "sigma8": "sigma8", "h": "H0"}[name]
    v = float(cc.cosmologies[physics.cosmology][key])
    return v / 100.0 if name == "h" else v


def _mixture_mass_function(universes, volumes, step: int = 4) -> dict:
    """The distribution the halo masses were drawn from: the volume-weighted sum of the sub-volumes' mass
    functions, normalised over the mass range, as a log density on every ``step``-th node of the
    sampling table (1001 nodes over 13.5-15.3 by default)."""
    total = None
    for phys, vol in zip(universes, volumes):
        log_m, dn = mass_function_table(phys)
        total = dn * vol if total is None else total + dn * vol
    norm = np.trapezoid(total, log_m)
    return {
        "log10_mass": log_m[::step].tolist(),
        "log_density": np.log(total[::step] / norm).tolist(),
        "what": "p(log10 M200c) of the halos before the Ngal cut: the sub-volumes' mass functions "
                "(dn/dlog10M, colossus) summed with their volumes as weights",
    }


def _simulate_volume(rng, physics, volume, mass_sampling, n_halos, n_los, clock):
    """One universe: halos -> 3-D satellites -> projected cylinders with interlopers, drawn from ``rng``.

    Mock indices are local (halo * n_los + axis). Returns per-halo arrays and the member parts
    ``(mock, R, v, log_mstar, is_interloper)`` plus the true members inside the aperture.
    """
    clock = clock or (lambda label: None)
    e_z = hubble_E(physics)

    # ---- halos
    if mass_sampling == "natural":
        log_m = sample_natural_masses(rng, physics, volume)
    else:
        log_m = rng.uniform(physics.log_mass_min, physics.log_mass_max, size=n_halos)
    n_h = log_m.size
    if n_h == 0:
        return {"log_m": log_m, "sigma_dm": np.zeros(0), "b_v": np.zeros(0), "parts": [], "in_aperture": []}
    r200 = r200c_comoving(physics, log_m)
    sigma_dm = sigma_dm_evrard(log_m, e_z, physics.sigma_15, physics.sigma_alpha) * np.exp(
        physics.sigma_ln_scatter * rng.standard_normal(n_h)
    )
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
    if physics.clustered_excess > 0:
        parts.append(_clustered_interlopers(rng, physics, n_mocks, e_z))
    clock("projections and interlopers")
    return {"log_m": log_m, "sigma_dm": sigma_dm, "b_v": b_v, "parts": parts, "in_aperture": in_aperture}


def _clustered_interlopers(rng, physics, n_mocks, e_z):
    """Galaxies of neighbour halos that fall in each cylinder (``physics.clustered_excess > 0``).

    Neighbours come from :func:`sample_neighbour_halos`; each holds Poisson(lambda(M)) satellites with the
    cluster's occupation (normalisation, slope, scatter), NFW radii with ``c_gal`` around its centre,
    velocities ``N(v_offset, b_v sigma_DM(M))`` with the mean velocity bias, and the satellite stellar-mass
    function at its mass. Those inside the aperture and the velocity cut are interlopers.
    """
    nb_mock, nb_x, nb_y, nb_v0, nb_lm = sample_neighbour_halos(rng, physics, n_mocks, e_z)
    lam = (
        physics.lambda0
        * 10 ** (physics.alpha_sat * (nb_lm - _PIVOT_LOG_MASS))
        * 10 ** (physics.richness_scatter_dex * rng.standard_normal(nb_lm.size))
    )
    group = np.repeat(np.arange(nb_lm.size), rng.poisson(lam))
    n = group.size
    r = nfw_radius_sampler(physics.c_gal, physics.r_max)(rng, n) * r200c_comoving(physics, nb_lm)[group]
    offset = isotropic_directions(rng, n) * r[:, None]
    sigma = physics.velocity_bias_mean * sigma_dm_evrard(nb_lm, e_z, physics.sigma_15, physics.sigma_alpha)
    v = nb_v0[group] + rng.standard_normal(n) * sigma[group]
    R = np.hypot(nb_x[group] + offset[:, 0], nb_y[group] + offset[:, 1])
    knee = physics.smf_log_knee + physics.smf_knee_slope * (nb_lm - _SMF_PIVOT_LOG_MASS)
    log_ms = SchechterSampler(physics.smf_alpha).sample(rng, knee[group], physics.log_mstar_min)
    keep = (R < physics.aperture) & (np.abs(v) < physics.v_cut)
    return nb_mock[group][keep], R[keep], v[keep], log_ms[keep], True


class _Clock:
    def __init__(self, verbose: bool):
        self.verbose = verbose
        self.t = time.perf_counter()

    def __call__(self, label: str) -> None:
        if self.verbose:
            now = time.perf_counter()
            print(f"  {label:30s} {now - self.t:7.2f} s")
            self.t = now
