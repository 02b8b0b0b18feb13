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
    # checked in blocks of 65536 rows: a bad value in a later block, or in the last row, is found and counted
    big = np.zeros((200_001, 14))
    big[[70_000, 200_000], 0] = [np.inf, np.nan]
    with pytest.raises(CatalogError, match=r"'LogNgal' \(2 rows\) of 200001 rows"):
        validate_features(big, FEATURE_NAMES)
    validate_features(np.zeros((200_001, 14)), FEATURE_NAMES)


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


# ---------------------------------------------------------------------------------------------- never silently wrong
def test_log_mass_column_must_agree_with_m200c():
    cols = _lecture_columns()
    cols["log_mass"] = np.log10(cols["M200c"])
    Catalog(dict(cols))  # consistent: fine
    cols["log_mass"] = cols["log_mass"] + np.where(np.arange(50) < 4, 0.3, 0.0)
    with pytest.raises(CatalogError, match=r"'log_mass': 4 of 50 rows disagree with log10\(M200c\).*largest 0.3 dex"):
        Catalog(dict(cols))
    cols["log_mass"] = np.log10(cols["M200c"])
    cols["log_mass"][2] = np.nan
    with pytest.raises(CatalogError, match=r"'log_mass': 1 of 50 rows are NaN"):
        Catalog(dict(cols))


def test_strings_and_non_integer_counts_are_not_coerced():
    cols = _lecture_columns()
    cols["sigv"] = cols["sigv"].astype(str)
    with pytest.raises(CatalogError, match=r"column 'sigv' of 50 rows holds <U\d+ values, not real numbers"):
        Catalog(dict(cols))
    cols = _lecture_columns()
    cols["Ngal"] = cols["Ngal"].astype(np.float64)
    Catalog(dict(cols))  # whole numbers stored as floats are fine
    cols["Ngal"][[3, 9]] += 0.5
    with pytest.raises(CatalogError, match=r"'Ngal': 2 of 50 rows are not whole numbers"):
        Catalog(dict(cols))


def test_scaler_refuses_a_spread_that_overflows():
    x = np.random.default_rng(0).normal(size=(40, 3))
    x[17, 1] = 1e300
    with pytest.raises(CatalogError, match=r"'Logsigv' \(largest \|value\| 1e\+300 in row 17\).*overflows"):
        StandardScaler.fit(x, names=("LogNgal", "Logsigv", "R_mean"))
    with pytest.raises(CatalogError, match="zero rows"):
        StandardScaler.fit(np.zeros((0, 3)))


def test_parquet_without_members_removes_stale_members(cat, tmp_path):
    path = str(tmp_path / "cat.parquet")
    write_catalog(cat, path)
    assert (tmp_path / "cat.parquet.members.parquet").exists()
    small = cat.select(np.arange(10))
    small.members = None
    write_catalog(small, path)
    assert not (tmp_path / "cat.parquet.members.parquet").exists()
    back = read_catalog(path)
    assert back.members is None and len(back) == 10
    back.split(0.5, seed=0)  # used to fail with IndexError on the stale members
    # a stale members file put back by hand is refused, not attached
    write_catalog(cat, str(tmp_path / "other.parquet"))
    (tmp_path / "other.parquet.members.parquet").rename(tmp_path / "cat.parquet.members.parquet")
    with pytest.raises(CatalogError, match="stale"):
        read_catalog(path)


def _flip_byte(path, offset):
    b = bytearray(open(path, "rb").read())
    b[offset] ^= 0xFF
    open(path, "wb").write(bytes(b))


def test_fits_checksum_catches_flipped_bytes(cat, tmp_path):
    path = str(tmp_path / "cat.fits")
    write_catalog(cat, path)
    from astropy.io import fits

    with fits.open(path) as h:
        assert "CHECKSUM" in h["CLUSTERS"].header and "DATASUM" in h["CLUSTERS"].header
        data_start = h.fileinfo(1)["datLoc"]
    _flip_byte(path, data_start + 100)  # inside the CLUSTERS table: a wrong value, not a broken header
    with pytest.raises(CatalogError, match=r"corrupt or truncated \(Checksum verification failed for HDU \('CLUSTERS'"):
        read_catalog(path)


@pytest.mark.parametrize("keep", [0.5, 0.97])
def test_truncated_fits_is_an_error_not_a_silent_loss(cat, tmp_path, keep):
    path = str(tmp_path / "cat.fits")
    write_catalog(cat, path)
    b = open(path, "rb").read()
    open(path, "wb").write(b[: int(len(b) * keep)])
    with pytest.raises(CatalogError, match="truncated"):
        read_catalog(path)


def test_corrupt_metadata_hdu_is_named(cat, tmp_path):
    from astropy.io import fits

    path = str(tmp_path / "cat.fits")
    write_catalog(cat, path)
    with fits.open(path) as h:
        h["META"].data["json"][0] = "{not json"
        h.writeto(path, overwrite=True)  # astropy rewrites without our checksums: the JSON check must catch it
    with pytest.raises(CatalogError, match="metadata HDU META is corrupt"):
        read_catalog(path)


def test_missing_path_directory_and_empty_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="no catalogue file at"):
        read_catalog(str(tmp_path / "nope.fits"))
    d = tmp_path / "dir.fits"
    d.mkdir()
    with pytest.raises(IsADirectoryError, match="is a folder"):
        read_catalog(str(d))
    with pytest.raises(IsADirectoryError, match="is a folder"):
        write_catalog(Catalog(_lecture_columns()), str(d))
    with pytest.raises(FileNotFoundError, match="does not exist; create it first"):
        write_catalog(Catalog(_lecture_columns()), str(tmp_path / "no" / "such" / "cat.fits"))
    empty = Catalog({k: v[:0] for k, v in _lecture_columns().items()})
    assert "(no rows)" in empty.summary()
    path = str(tmp_path / "empty.fits")
    write_catalog(empty, path)
    with pytest.raises(CatalogError, match="has no rows"):
        read_catalog(path)
    assert len(read_catalog(path, validate=False)) == 0
    garbage = tmp_path / "garbage.parquet"
    garbage.write_bytes(b"not a parquet file at all")
    with pytest.raises(CatalogError, match="cannot be read as a PARQUET catalogue"):
        read_catalog(str(garbage))


@pytest.mark.parametrize("suffix", [".fits", ".parquet"])
def test_written_files_follow_the_umask(cat, tmp_path, suffix):
    import os

    old = os.umask(0o022)
    try:
        path = tmp_path / f"cat{suffix}"
        write_catalog(cat, str(path))
        assert (path.stat().st_mode & 0o777) == 0o644
        if suffix == ".parquet":
            assert ((tmp_path / f"cat{suffix}.members.parquet").stat().st_mode & 0o777) == 0o644
    finally:
        os.umask(old)
