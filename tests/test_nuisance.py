"""Nuisance parameters of the mock universe (issue 10, part 1): the family, its draws, its records."""

import functools
import hashlib

import numpy as np
import pytest
from scipy import stats

from numpyro_clustermass import priors
from numpyro_clustermass.catalog import read_catalog, write_catalog
from numpyro_clustermass.simulate import MockPhysics, expected_halo_count, mock_catalog
from numpyro_clustermass.simulate.nuisance import NUISANCE_PARAMETERS, SUB_VOLUME, resolve_nuisance
from numpyro_clustermass.simulate.physics import expected_neighbour_halos, hubble_E

FAMILY = [n for n, p in NUISANCE_PARAMETERS.items() if p.in_family]


@functools.lru_cache(maxsize=None)
def _cat(nuisance_items=(), volume=0.01, seed=0, n_los=1, **kw):
    nuisance = dict(nuisance_items) if nuisance_items != "prior" else "prior"
    return mock_catalog(volume=volume, seed=seed, n_los=n_los, nuisance=nuisance, **kw)


def cat_with(volume=0.01, seed=0, n_los=1, **values):
    """A small catalogue with the named nuisance parameters fixed (one universe: volume < SUB_VOLUME)."""
    return _cat(tuple(sorted(values.items())), volume=volume, seed=seed, n_los=n_los)


def _hash(cat, digits=6):
    # Floats rounded to 6 significant digits, so that the hash does not depend on the last bit of a libm
    # exp/log on another CPU; integer columns (Ngal, halo_id, member counts) enter exactly.
    m = hashlib.sha256()
    tables = [cat.columns] + ([] if cat.members is None else [dict(sorted(cat.members.items()))])
    for table in tables:
        for k, a in table.items():
            a = np.asarray(a)
            if a.dtype.kind == "f":
                a = np.array([float(f"{x:.{digits}g}") for x in a.astype(np.float64)])
            m.update(k.encode())
            m.update(a.tobytes())
    return m.hexdigest()


# ------------------------------------------------------------------------------------------ nuisance=None
def test_none_is_the_fiducial_universe_of_main_bit_for_bit():
    # _hash of this catalogue as main made it at 83b8d5e, before nuisance parameters existed (the same
    # function run with main's tree first on PYTHONPATH); the unrounded bytes matched main's too (sha256
    # 32938aff...), and so did those of mock_catalog(volume=0.3, seed=0) (2127ad42...).
    cat = mock_catalog(volume=0.003, seed=7, with_members=True, nuisance=None)
    assert len(cat) == 835
    assert _hash(cat) == "8552226cf8b090f73812d43225e285463ab2d4679c01ed187a14e2f5ee6ba28a"
    default = mock_catalog(volume=0.003, seed=7, with_members=True)
    assert all(default[k].tobytes() == cat[k].tobytes() for k in cat.colnames)
    assert "nuisance" not in cat.meta and not any(k.startswith("nu_") for k in cat.colnames)


# ------------------------------------------------------------------------------------------ "prior"
@pytest.fixture(scope="module")
def family():
    # 4 sub-volumes of 0.005 (Gpc/h)^3, each its own universe; about 3.6k mocks (3 lines of sight)
    return mock_catalog(volume=0.02, seed=1, nuisance="prior", sub_volume=0.005, with_members=True)


def test_prior_draws_per_sub_volume_within_ranges_and_recorded(family):
    nu = family.meta["nuisance"]
    assert nu["mode"] == "prior" and nu["n_sub_volumes"] == 4 and nu["sub_volume_gpc3_h3"] == 0.005
    assert nu["drawn"] == FAMILY and nu["fixed"] == {}
    for name, p in NUISANCE_PARAMETERS.items():
        vals = np.asarray(nu["values"][name])
        assert vals.shape == (4,)
        if p.in_family:
            assert np.all((vals >= p.lo) & (vals <= p.hi)), name
            assert np.unique(vals).size == 4, name  # every sub-volume its own draw
        else:
            assert np.all(vals == p.fiducial), name  # clustered interlopers stay off in the family
        # the per-row columns are the sub-volume's values
        col = family["nu_" + name]
        assert col.dtype == np.float32
        np.testing.assert_array_equal(col, vals.astype(np.float32)[family["sub_volume"]])
    # each halo lives in one sub-volume; halo ids stay unique across sub-volumes
    sub_of_halo = {}
    for h, s in zip(family["halo_id"], family["sub_volume"]):
        assert sub_of_halo.setdefault(h, s) == s
    assert set(np.unique(family["sub_volume"])) == {0, 1, 2, 3}
    assert sum(nu["n_halos_per_sub_volume"]) == family.meta["n_halos"]


def test_prior_is_reproducible_from_the_seed(family):
    again = mock_catalog(volume=0.02, seed=1, nuisance="prior", sub_volume=0.005, with_members=True)
    for k in family.colnames:
        assert family[k].tobytes() == again[k].tobytes(), k
    assert again.meta["nuisance"]["values"] == family.meta["nuisance"]["values"]
    other = mock_catalog(volume=0.02, seed=2, nuisance="prior", sub_volume=0.005, n_los=1)
    assert other.meta["nuisance"]["values"]["sigma8"] != family.meta["nuisance"]["values"]["sigma8"]


def test_default_sub_volume_splits_a_large_volume():
    plan = resolve_nuisance("prior")
    assert SUB_VOLUME == 0.1 and plan.mode == "prior"
    cat = mock_catalog(volume=0.25, seed=0, nuisance={"z": 0.1}, mass_sampling="flat", n_halos=300, n_los=1,
                       ngal_min=3)
    nu = cat.meta["nuisance"]
    assert nu["n_sub_volumes"] == 3 and nu["sub_volume_gpc3_h3"] == pytest.approx(0.25 / 3)
    assert nu["n_halos_per_sub_volume"] == [100, 100, 100]
    assert "generating_mass_function" not in cat.meta
    assert priors.generating_prior(cat).support == (13.5, 15.3)


# ------------------------------------------------------------------------------------------ dict
def test_dict_fixes_named_values_and_keeps_the_rest_fiducial():
    cat = cat_with(z=0.08, c_gal=4.0)
    nu = cat.meta["nuisance"]
    assert nu["fixed"] == {"z": 0.08, "c_gal": 4.0} and nu["drawn"] == []
    np.testing.assert_array_equal(cat["nu_z"], np.float32(0.08))
    np.testing.assert_array_equal(cat["nu_c_gal"], np.float32(4.0))
    for name in ("omega_m", "sigma8", "h", "lambda0", "n_background", "infall_fraction", "clustered_excess"):
        np.testing.assert_array_equal(cat["nu_" + name], np.float32(NUISANCE_PARAMETERS[name].fiducial))
    assert NUISANCE_PARAMETERS["omega_m"].fiducial == pytest.approx(0.3071)  # colossus planck13 = MDPL2


def test_dict_with_prior_key_draws_the_others_and_prior_string_draws_one():
    cat = mock_catalog(volume=0.01, seed=3, n_los=1, sub_volume=0.005,
                       nuisance={"prior": True, "z": 0.08, "clustered_excess": "prior"})
    nu = cat.meta["nuisance"]
    assert nu["fixed"] == {"z": 0.08}
    assert set(nu["drawn"]) == (set(FAMILY) - {"z"}) | {"clustered_excess"}
    assert nu["values"]["z"] == [0.08, 0.08]
    assert len(set(nu["values"]["sigma8"])) == 2
    ce = np.asarray(nu["values"]["clustered_excess"])
    assert np.all((ce >= 0) & (ce <= 6)) and np.unique(ce).size == 2
    only = mock_catalog(volume=0.01, seed=3, n_los=1, nuisance={"sigma8": "prior"})
    assert only.meta["nuisance"]["drawn"] == ["sigma8"] and only.meta["nuisance"]["fixed"] == {}


def test_dict_range_draws_from_that_part_of_the_range_and_records_it():
    # the family centred on the fiducial universe for three parameters whose literature ranges are off-centre
    centred = {"prior": True, "alpha_sat": (0.95, 1.05), "c_gal": (2.0, 3.2), "n_background": [0.015, 0.03]}
    cat = mock_catalog(volume=0.01, seed=3, n_los=1, sub_volume=0.002, nuisance=centred)
    nu = cat.meta["nuisance"]
    assert set(nu["drawn"]) == set(FAMILY) and nu["fixed"] == {}
    assert nu["drawn_ranges"] == {"alpha_sat": [0.95, 1.05], "c_gal": [2.0, 3.2], "n_background": [0.015, 0.03]}
    assert nu["ranges"]["alpha_sat"] == [0.95, 1.05, "linear"] and nu["ranges"]["sigma8"] == [0.76, 0.87, "linear"]
    for name, (lo, hi) in (("alpha_sat", (0.95, 1.05)), ("c_gal", (2.0, 3.2)), ("n_background", (0.015, 0.03))):
        v = np.asarray(nu["values"][name])
        assert v.size == 5 and np.unique(v).size == 5 and np.all((v >= lo) & (v <= hi)), (name, v)
        assert set(np.unique(cat["nu_" + name])) <= set(v.astype(np.float32))
    # the distribution within the part keeps the parameter's scale: uniform in alpha_sat, in log n_background
    draws = resolve_nuisance(centred).draw(np.random.default_rng(0), 4000)
    assert stats.kstest(draws["alpha_sat"], stats.uniform(0.95, 0.10).cdf).pvalue > 0.01
    assert stats.kstest(np.log(draws["n_background"]), stats.uniform(np.log(0.015), np.log(2.0)).cdf).pvalue > 0.01
    assert stats.kstest(draws["sigma8"], stats.uniform(0.76, 0.11).cdf).pvalue > 0.01  # the others: whole range
    # a pair for a parameter outside the family switches it on, drawn from that part
    on = resolve_nuisance({"clustered_excess": (1.0, 2.0)})
    assert on.drawn == ("clustered_excess",) and on.range_of("clustered_excess") == (1.0, 2.0)


@pytest.mark.parametrize(
    "nuisance, err, match",
    [
        ({"omega_mass": 0.3}, ValueError, r"unknown nuisance parameter\(s\) \['omega_mass'\]; accepted: omega_m"),
        ({"sigma8": 0.95}, ValueError, r"'sigma8' = 0.95 is outside its range \[0.76, 0.87\]"),
        ({"z": -0.01}, ValueError, r"outside its range \[0.05, 0.15\]"),
        ({"n_background": 0.0}, ValueError, r"outside its range \[0.01, 0.04\]"),
        ({"c_gal": "wide"}, ValueError, "a string value must be 'prior'"),
        ({"c_gal": [2.0]}, TypeError, r"a range is a pair \(lo, hi\) of numbers; got \[2.0\]"),
        ({"c_gal": {"lo": 2.0}}, TypeError, r"expected a number, a pair \(lo, hi\) or 'prior'"),
        ({"c_gal": (3.0, 2.5)}, ValueError, r"'c_gal': the range \(3.0, 2.5\) must have lo < hi and lie in \[2, 5\]"),
        ({"alpha_sat": (0.8, 1.0)}, ValueError, r"must have lo < hi and lie in \[0.85, 1.05\]"),
        ({"prior": "yes"}, TypeError, r"nuisance\['prior'\] must be True or False"),
        ("priors", ValueError, "nuisance must be None, 'prior' or a dict"),
        (3, TypeError, "nuisance must be None, 'prior' or a dict"),
    ],
)
def test_bad_nuisance_raises(nuisance, err, match):
    with pytest.raises(err, match=match):
        mock_catalog(volume=0.001, nuisance=nuisance)


def test_override_clash_and_bad_sub_volume_raise():
    with pytest.raises(ValueError, match=r"\['n_background'\] set both as keyword override"):
        mock_catalog(volume=0.001, nuisance="prior", n_background=0.0)
    with pytest.raises(ValueError, match="sub_volume must be a positive number"):
        mock_catalog(volume=0.001, nuisance="prior", sub_volume=0.0)
    # an override of a parameter the dict leaves alone is fine
    cat = mock_catalog(volume=0.002, n_los=1, nuisance={"z": 0.1}, n_background=0.0, infall_fraction=0.0)
    assert cat["n_interlopers"].sum() == 0


# ------------------------------------------------------------------------------------------ records
def test_features_exclude_nuisance_and_split_keeps_it(family):
    x = family.features()
    assert x.shape == (len(family), 14)
    with pytest.raises(ValueError, match=r"\['nu_sigma8'\] are the simulator's nuisance parameters"):
        family.features(("LogNgal", "nu_sigma8"))
    with pytest.raises(ValueError, match="sub_volume"):
        family.features(("sub_volume",))
    train, test = family.split(test_fraction=0.3, seed=0)
    for part in (train, test):
        assert part.meta["nuisance"] == family.meta["nuisance"]
        assert all("nu_" + n in part for n in NUISANCE_PARAMETERS) and "sub_volume" in part
    assert len(train) + len(test) == len(family)
    assert not set(train["halo_id"]) & set(test["halo_id"])


@pytest.mark.parametrize("suffix", [".fits", ".parquet"])
def test_nuisance_columns_and_meta_survive_file_round_trip(family, tmp_path, suffix):
    path = str(tmp_path / ("family" + suffix))
    write_catalog(family, path)
    back = read_catalog(path)
    assert back.colnames == family.colnames
    for k in family.colnames:
        assert back[k].dtype == family[k].dtype, k
        np.testing.assert_array_equal(back[k], family[k], err_msg=k)
    assert back.meta["nuisance"] == family.meta["nuisance"]
    assert back.meta["generating_mass_function"] == family.meta["generating_mass_function"]
    g = np.linspace(13.5, 15.3, 37)
    np.testing.assert_array_equal(priors.generating_prior(back).log_prob(g), priors.generating_prior(family).log_prob(g))
    for k in family.members:
        np.testing.assert_array_equal(back.members[k], family.members[k])


# ------------------------------------------------------------------------------------------ the family's prior
def test_generating_prior_is_the_mixture_of_the_sub_volume_mass_functions(family):
    mix = priors.generating_prior(family)
    assert isinstance(mix, priors.Tabulated)
    values = family.meta["nuisance"]["values"]
    # Independent construction: priors.MassFunction per sub-volume (its own colossus table), weighted by
    # the sub-volume's expected halo count (equal volumes).
    g = np.linspace(13.5, 15.3, 181)
    dens, weights = [], []
    for k in range(4):
        phys = MockPhysics(**{n: values[n][k] for n in ("omega_m", "sigma8", "h", "z")})
        from numpyro_clustermass.cosmology import use_cosmology

        with use_cosmology(phys.cosmology, phys.cosmology_overrides) as cosmo:
            mf = priors.MassFunction("tinker08", z=phys.z, cosmology=cosmo)
        dens.append(np.exp(np.asarray(mf.log_prob(g), float)))
        weights.append(expected_halo_count(phys, 1.0))
    expect = np.log(np.average(dens, axis=0, weights=weights))
    # log-linear interpolation between 1001 and 1025 nodes: measured max |difference| 6.2e-6 here
    np.testing.assert_allclose(np.asarray(mix.log_prob(g), float), expect, atol=1e-4)
    # ... and it is not the fiducial mass function (measured max |difference| 0.076)
    fid = np.asarray(priors.generating_prior(cat_with()).log_prob(g), float)
    assert np.abs(fid - expect).max() > 0.05


def test_fiducial_generating_prior_is_the_physics_mass_function():
    p = priors.generating_prior(mock_catalog(volume=0.002, seed=0, n_los=1))
    assert isinstance(p, priors.MassFunction) and p.cosmology == "planck13" and p.z == 0.117
    q = priors.generating_prior(mock_catalog(volume=0.002, seed=0, n_los=1, omega_m=0.3, z=0.1))
    assert q.cosmology.startswith("planck13[") and q.z == 0.1
    assert float(q.log_prob(15.0)) != pytest.approx(float(p.log_prob(15.0)), abs=1e-3)
    with pytest.raises(ValueError, match="does not record how its masses were drawn"):
        priors.generating_prior({"generator": "someone else"})


def test_family_halo_masses_follow_the_mixture():
    # 2 universes (sigma8 0.764, 0.762), 1402 halos above 10^14: chi-square p = 0.21 against the mixture
    # (measured; against the fiducial Tinker08 p = 0.0095)
    cat = mock_catalog(volume=0.1, seed=5, nuisance="prior", sub_volume=0.05, n_los=1)
    mix = priors.generating_prior(cat)
    _, first = np.unique(cat["halo_id"], return_index=True)
    lm = cat.log_mass[first]
    lm = lm[lm >= 14.0]  # above 10^14 the Ngal cut keeps every halo
    edges = np.arange(14.0, 15.0001, 0.1)
    obs, _ = np.histogram(lm, edges)
    fine = np.linspace(13.5, 15.3, 18001)
    cdf = np.concatenate([[0], np.cumsum(np.exp(np.asarray(mix.log_prob(fine[:-1]), float)) * np.diff(fine))])
    n_tot = cat.meta["n_halos"]
    expect = n_tot * np.diff(np.interp(edges, fine, cdf))
    chi2 = np.sum((obs - expect) ** 2 / expect)
    assert stats.chi2.sf(chi2, len(obs)) > 1e-3, (obs, expect)


# ------------------------------------------------------------------------------------------ physics per parameter
def test_cosmology_moves_the_mass_function_and_E_z():
    lo, hi = (MockPhysics(sigma8=s) for s in (0.76, 0.87))
    # colossus Tinker08, 1 (Gpc/h)^3 above 10^14.5: 996 (sigma8 0.76) and 2293 (0.87) halos; Omega_m 0.26
    # and 0.35 at fixed sigma8: 1081 and 2519; h 0.67 and 0.72: 91.9k and 94.2k above 10^13.5.
    assert expected_halo_count(hi, 1.0, lo=14.5) > 2.0 * expected_halo_count(lo, 1.0, lo=14.5)
    om_lo, om_hi = (MockPhysics(omega_m=o) for o in (0.26, 0.35))
    assert expected_halo_count(om_hi, 1.0, lo=14.5) > 2.0 * expected_halo_count(om_lo, 1.0, lo=14.5)
    assert hubble_E(om_hi) > hubble_E(om_lo)
    # R200c (colossus mass_so) follows the cosmology: rho_c(z) scales as E(z)^2, so R200c as E(z)^(-2/3)
    from numpyro_clustermass.simulate.physics import r200c_comoving

    ratio = r200c_comoving(om_hi, np.array([14.0, 15.0])) / r200c_comoving(om_lo, np.array([14.0, 15.0]))
    np.testing.assert_allclose(ratio, (hubble_E(om_hi) / hubble_E(om_lo)) ** (-2 / 3), rtol=1e-6)
    h_lo, h_hi = (MockPhysics(h=h) for h in (0.67, 0.72))
    assert expected_halo_count(h_hi, 1.0) > 1.015 * expected_halo_count(h_lo, 1.0)
    # ... and the catalogue follows: more halos above 10^14.3 at the higher sigma8 (same seed)
    n = [np.unique(cat_with(volume=0.05, sigma8=s)["halo_id"][cat_with(volume=0.05, sigma8=s).log_mass > 14.3]).size
         for s in (0.76, 0.87)]
    assert n[1] > 1.4 * n[0], n  # measured 318 and 176 halos (colossus ratio above 10^14.3 about 1.9)


def _per_halo(cat, col):
    ids, first = np.unique(cat["halo_id"], return_index=True)
    return dict(zip(ids.tolist(), np.asarray(cat[col], float)[first]))


def test_sigma_m_parameters_scale_the_dispersion_exactly():
    # Same seed, only the relation changes: the same halos with the same normal draws (the Ngal cut may keep
    # a slightly different set of low-mass halos, so compare the halos both keep).
    from numpyro_clustermass.simulate.physics import sigma_dm_evrard

    base = cat_with(sigma_15=1074.9, sigma_ln_scatter=0.04)
    hi15 = cat_with(sigma_15=1090.9, sigma_ln_scatter=0.04)
    wide = cat_with(sigma_15=1074.9, sigma_ln_scatter=0.08)
    steep = cat_with(sigma_15=1074.9, sigma_ln_scatter=0.04, sigma_alpha=0.3413)
    common = sorted(set.intersection(*(set(c["halo_id"].tolist()) for c in (base, hi15, wide, steep))))
    assert len(common) > 0.95 * np.unique(base["halo_id"]).size
    lm = _per_halo(base, "log_mass")
    e_z = hubble_E(MockPhysics())

    def resid(cat, s15, alpha):
        d = _per_halo(cat, "sigma_dm")
        return np.array([np.log(d[i] / sigma_dm_evrard(lm[i], e_z, s15, alpha)) for i in common])

    r_base = resid(base, 1074.9, 0.3361)
    # a larger normalisation: every halo's sigma_DM larger by 1090.9 / 1074.9 (float32 columns)
    np.testing.assert_allclose(resid(hi15, 1074.9, 0.3361) - r_base, np.log(1090.9 / 1074.9), atol=1e-6)
    # twice the scatter: the same normal draws, twice the log residual
    np.testing.assert_allclose(resid(wide, 1074.9, 0.3361), 2 * r_base, atol=1e-6)
    # a steeper slope: the residual about the steeper relation is the same draw
    np.testing.assert_allclose(resid(steep, 1074.9, 0.3413), r_base, atol=1e-6)
    # ... and what an observer measures follows: larger member dispersions at fixed mass
    assert np.nanmedian(hi15["sigv_members"]) > np.nanmedian(base["sigv_members"])


def test_redshift_and_velocity_bias_raise_the_dispersion():
    def scaled(cat, col):
        return np.nanmedian(np.asarray(cat[col], float) / 10 ** (0.3361 * (cat.log_mass - 15)))

    # z moves the mass function too, so the halos differ: compare medians of sigma_DM / M^0.3361, which
    # scale as E(z)^0.3361 = 1.0172 from z = 0.05 to 0.15; the median of the 4.26% scatter over about 1.1k
    # halos is good to about 0.2% each
    lo_z, hi_z = cat_with(z=0.05), cat_with(z=0.15)
    e = [hubble_E(MockPhysics(z=z)) for z in (0.05, 0.15)]
    # measured 1.0169 against 1.0171
    assert scaled(hi_z, "sigma_dm") / scaled(lo_z, "sigma_dm") == pytest.approx((e[1] / e[0]) ** 0.3361, abs=0.008)
    # velocity bias 0.9 -> 1.1: member dispersions at fixed mass up by about 1.1 / 0.9 = 1.22
    lo, hi = cat_with(velocity_bias_mean=0.9), cat_with(velocity_bias_mean=1.1)
    assert np.median(hi["velocity_bias"]) - np.median(lo["velocity_bias"]) == pytest.approx(0.2, abs=0.01)
    assert scaled(hi, "sigv_members") / scaled(lo, "sigv_members") == pytest.approx(1.1 / 0.9, rel=0.05)  # 1.227
    # per-halo b_v ~ N(mean, std): its sample spread over 921 halos (10% tolerance, about 4 sigma; measured
    # 0.0304 and 0.0810)
    for std in (0.03, 0.08):
        b_v = np.array(list(_per_halo(cat_with(velocity_bias_std=std), "velocity_bias").values()))
        assert np.std(b_v) == pytest.approx(std, rel=0.1)


def test_occupation_and_concentration():
    def members_at(cat, lo, hi):
        sel = (cat.log_mass > lo) & (cat.log_mass < hi)
        return cat["n_true_members"][sel].mean()

    small, big = cat_with(volume=0.02, lambda0=4.875), cat_with(volume=0.02, lambda0=10.125)
    # ratio 2.06 measured (10.125 / 4.875 = 2.08)
    assert members_at(big, 13.9, 14.1) > 1.8 * members_at(small, 13.9, 14.1)
    flat, steep = cat_with(volume=0.02, alpha_sat=0.85), cat_with(volume=0.02, alpha_sat=1.05)
    ratio = lambda c: members_at(c, 14.3, 14.7) / members_at(c, 13.6, 13.8)  # noqa: E731
    assert ratio(steep) > 1.1 * ratio(flat)  # measured 1.46 (0.2 x 0.8 dex between the bins: 10^0.16 = 1.45)
    tight, loose = cat_with(volume=0.02, richness_scatter_dex=0.0652), cat_with(volume=0.02, richness_scatter_dex=0.152)
    spread = lambda c: np.std(np.log(c["n_true_members"][(c.log_mass > 14.2)]) - 0.9 * c.log_mass[c.log_mass > 14.2])  # noqa: E731
    assert spread(loose) > 1.2 * spread(tight)  # measured 1.61 (Poisson noise dilutes 0.152 / 0.0652 = 2.3)
    # satellites more concentrated -> smaller mean projected radius of true members (no interlopers here)
    cats = [mock_catalog(volume=0.01, seed=0, n_los=1, nuisance={"c_gal": c}, n_background=0.0, infall_fraction=0.0)
            for c in (2.0, 5.0)]
    assert np.median(cats[1]["R_mean"]) < 0.9 * np.median(cats[0]["R_mean"])  # measured ratio 0.836


def test_interloper_parameters_add_interlopers():
    def interlopers_low(cat):
        return cat["n_interlopers"][cat.log_mass < 13.7].mean()

    few, many = cat_with(n_background=0.01, infall_fraction=0.0), cat_with(n_background=0.04, infall_fraction=0.0)
    # 0.01 and 0.04 (Mpc/h)^-3 x pi 1.6^2 x 47.2 (Mpc/h)^3 = 3.8 and 15.2 per cylinder (more survive the cut)
    assert interlopers_low(many) > 2.5 * interlopers_low(few)  # measured 15.2 and 4.0
    no_inf, inf = cat_with(n_background=0.01, infall_fraction=0.0), cat_with(n_background=0.01, infall_fraction=0.2)
    assert interlopers_low(inf) > interlopers_low(no_inf) + 0.5  # measured 6.0 against 4.0
    off, on = cat_with(n_background=0.01, infall_fraction=0.0), cat_with(n_background=0.01, infall_fraction=0.0,
                                                                        clustered_excess=6.0)
    assert expected_neighbour_halos(MockPhysics(clustered_excess=6.0), hubble_E(MockPhysics())) > 4  # 4.46
    assert interlopers_low(on) > interlopers_low(off) + 1.0  # measured 9.0 against 4.0


def test_clustered_interlopers_are_neighbour_groups():
    cat = mock_catalog(volume=0.01, seed=4, n_los=1, with_members=True, n_background=0.0, infall_fraction=0.0,
                       nuisance={"clustered_excess": 6.0})
    m = cat.members
    inter = m["is_interloper"]
    assert inter.any()
    assert np.all(m["R"][inter] < 1.6) and np.all(np.abs(m["v"][inter]) < 2500)
    # galaxies of one neighbour share its velocity offset: within a cylinder, interloper velocities cluster
    # far more tightly than a uniform spread over +-2500 km/s (std 1443 km/s)
    spread = [np.std(m["v"][inter & (m["mock"] == k)]) for k in np.unique(m["mock"][inter])
              if (inter & (m["mock"] == k)).sum() >= 3]
    assert np.median(spread) < 0.8 * 2 * 2500 / np.sqrt(12)  # measured 878 km/s over 564 cylinders
