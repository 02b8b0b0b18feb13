import numpy as np
import pytest

from numpyro_clustermass.catalog import (
    FEATURE_NAMES,
    REQUIRED_COLUMNS,
    Catalog,
    CatalogError,
    StandardScaler,
    read_catalog,
    write_catalog,
)
from numpyro_clustermass.simulate import mock_catalog


@pytest.fixture(scope="module")
def cat():
    return mock_catalog(volume=0.004, seed=7, with_members=True)


def _lecture_columns(n=50, seed=0):
    """Columns in the lecture file's schema, as another tool would write them (no halo_id)."""
    rng = np.random.default_rng(seed)
    cols = {name: rng.normal(size=n).astype(np.float32) for name in REQUIRED_COLUMNS}
    cols["M200c"] = 10 ** rng.uniform(13.5, 15.3, n)
    cols["Ngal"] = rng.integers(10, 200, n).astype(np.int16)
    cols["sigv"] = rng.uniform(200, 1500, n).astype(np.float32)
    return cols


@pytest.mark.parametrize("suffix", [".fits", ".parquet"])
def test_round_trip_is_unchanged(cat, tmp_path, suffix):
    path = str(tmp_path / f"cat{suffix}")
    write_catalog(cat, path)
    back = read_catalog(path)
    assert back.colnames == cat.colnames
    for name in cat.colnames:
        assert back[name].dtype == cat[name].dtype, name
        np.testing.assert_array_equal(back[name], cat[name])
    for name in cat.members:
        np.testing.assert_array_equal(back.members[name], cat.members[name])
    assert back.meta["seed"] == 7 and back.meta["physics"]["lambda0"] == cat.meta["physics"]["lambda0"]


def test_lecture_fits_written_by_astropy_loads(tmp_path):
    from astropy.table import Table

    cols = _lecture_columns()
    t = Table(cols)
    t["extra"] = np.arange(50)
    # FITS stores big-endian: the loader must hand back native arrays.
    path = str(tmp_path / "Rockstar_UM_z=0.117_contam_summary.fits")
    t.write(path)
    back = read_catalog(path)
    assert len(back) == 50 and "halo_id" not in back
    np.testing.assert_allclose(back["M200c"], cols["M200c"])
    assert back["sigv"].dtype.byteorder in ("=", "|")
    x = back.features()
    assert x.shape == (50, 14)
    # np.log10 of int16 is float32 under numpy 2; the package computes features in float64.
    np.testing.assert_allclose(x[:, 0], np.log10(cols["Ngal"].astype(np.float64)), rtol=1e-12)
    # Rows split individually when there is no halo_id.
    train, test = back.split(0.2, seed=0)
    assert len(train) == 40 and len(test) == 10


def test_raw_fits_hdu_in_other_column_order_loads(tmp_path):
    from astropy.io import fits

    cols = _lecture_columns(n=20, seed=1)
    names = list(reversed(REQUIRED_COLUMNS))
    fits_cols = [fits.Column(name=n, format="E" if cols[n].dtype == np.float32 else ("I" if n == "Ngal" else "D"),
                             array=cols[n]) for n in names]
    path = str(tmp_path / "raw.fits")
    fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns(fits_cols)]).writeto(path)
    back = read_catalog(path)
    np.testing.assert_array_equal(back["Ngal"], cols["Ngal"])


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda c: c.pop("v_kurt"), r"lacks required columns \['v_kurt'\]"),
        (lambda c: c["R_skew"].__setitem__(slice(0, 3), np.nan), r"'R_skew': 3 of 50 rows are NaN"),
        (lambda c: c["m_mean"].__setitem__(4, np.inf), r"'m_mean': 1 of 50 rows are NaN or infinite"),
        (lambda c: c["M200c"].__setitem__(slice(0, 2), -1.0), r"'M200c': 2 of 50 rows are not positive"),
        (lambda c: c["sigv"].__setitem__(7, 0.0), r"'sigv': 1 of 50 rows are not positive"),
        (lambda c: c["Ngal"].__setitem__(slice(0, 5), 2), r"'Ngal': 5 of 50 rows have fewer than 3"),
    ],
)
def test_bad_input_names_column_and_row_count(tmp_path, mutate, match):
    from astropy.table import Table

    cols = _lecture_columns()
    mutate(cols)
    with pytest.raises(CatalogError, match=match):
        Catalog(dict(cols))
    path = str(tmp_path / "bad.fits")
    Table(cols).write(path)
    with pytest.raises(CatalogError, match=match):
        read_catalog(path)
    read_catalog(path, validate=False)  # explicit opt-out still loads, nothing dropped


def test_features_reject_non_finite_and_wrong_width():
    from numpyro_clustermass.catalog import validate_features

    x = np.zeros((10, 14))
    x[2, 3] = np.nan
    with pytest.raises(CatalogError, match=r"'R_std' \(1 rows\) of 10 rows"):
        validate_features(x, FEATURE_NAMES)
    with pytest.raises(CatalogError, match="expected 14 features per cluster, got 13"):
        validate_features(np.zeros((5, 13)), expected=14)


def test_split_is_grouped_by_halo_and_reproducible(cat):
    train, test = cat.split(test_fraction=0.25, seed=3)
    assert len(train) + len(test) == len(cat)
    assert not set(train["halo_id"]) & set(test["halo_id"])
    n_halos = np.unique(cat["halo_id"]).size
    assert np.unique(test["halo_id"]).size == round(0.25 * n_halos)
    again, _ = cat.split(test_fraction=0.25, seed=3)
    np.testing.assert_array_equal(again["halo_id"], train["halo_id"])
    # Members travel with their rows and are re-indexed.
    for part in (train, test):
        assert part.members["mock"].max() < len(part)
        np.testing.assert_array_equal(np.bincount(part.members["mock"], minlength=len(part)), part["Ngal"])
    with pytest.raises(ValueError, match="test_fraction"):
        cat.split(test_fraction=1.0)


def test_scaler_fitted_on_training_side_only(cat):
    train, test = cat.split(0.3, seed=0)
    scaler = StandardScaler.fit(train.features())
    z = scaler.transform(train.features())
    np.testing.assert_allclose(z.mean(0), 0, atol=1e-9)
    np.testing.assert_allclose(z.std(0), 1, atol=1e-9)
    zt = scaler.transform(test.features())
    assert np.abs(zt.mean(0)).max() > 1e-6  # test side is not re-standardised
    np.testing.assert_allclose(scaler.inverse_transform(zt), test.features(), rtol=1e-12)
    assert StandardScaler.from_dict(scaler.to_dict()).transform(test.features()).tobytes() == zt.tobytes()


def test_table_protocol(cat):
    assert len(cat) == cat["M200c"].shape[0]
    np.testing.assert_allclose(cat["log_mass"], np.log10(cat["M200c"]))
    assert cat.features().shape == (len(cat), 14)
    assert "halos:" in cat.summary()
    with pytest.raises(KeyError, match="no column 'nope'"):
        cat["nope"]
    df = cat.to_pandas()
    assert list(df.columns) == cat.colnames


def test_write_is_atomic(cat, tmp_path):
    path = str(tmp_path / "cat.fits")
    write_catalog(cat, path)
    before = open(path, "rb").read()
    broken = Catalog({**cat.columns, "bad": np.array([object()] * len(cat))}, validate=False)
    with pytest.raises(Exception):
        write_catalog(broken, path)
    assert open(path, "rb").read() == before
    assert [p.name for p in tmp_path.iterdir()] == ["cat.fits"]
    with pytest.raises(ValueError, match="cannot tell the format"):
        write_catalog(cat, str(tmp_path / "cat.csv"))
