"""Property-based tests of the feature kernel (features.py) and of catalogue I/O (catalog.py).

Features: on random member tables (random mock sizes >= 3, values on fine binary grids so that float32 holds
them exactly), :func:`summarize` must not depend on the order of the members, must agree with numpy/scipy
(``sigv``: ``ddof=1``; ``*_std``: ``ddof=0``; ``*_skew``: ``scipy.stats.skew(bias=True)``; ``*_kurt``:
``scipy.stats.kurtosis(fisher=True, bias=True)``, as the module documents) within float32 accuracy, and a
shift of every velocity must move ``v_mean`` only.

Catalogues: random valid catalogues (the required columns with random float32/float64 dtypes, integer ``Ngal``
>= 3, positive ``M200c``/``sigv``, optional extra columns, JSON metadata and member table) must come back from
FITS and Parquet bitwise (values and dtypes), and random corruptions (NaN or inf in a required column, a
missing required column, ``Ngal`` < 3, a non-positive mass or dispersion) must raise :class:`CatalogError`
naming the column, both when the catalogue is built and when a file holding it is read.

The number of examples per property is ``NCM_PROPERTY_EXAMPLES`` (default 30: the file in about 15 s);
run ``NCM_PROPERTY_EXAMPLES=3000 pytest tests/test_properties_io.py`` for a thorough search.
"""

from __future__ import annotations

import os
import tempfile
import warnings

import numpy as np
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from scipy import stats

from numpyro_clustermass.catalog import (
    MOMENT_COLUMNS,
    REQUIRED_COLUMNS,
    Catalog,
    CatalogError,
    read_catalog,
    write_catalog,
)
from numpyro_clustermass.features import features_from_members, summarize

N_EXAMPLES = int(os.environ.get("NCM_PROPERTY_EXAMPLES", "30"))
PROP = settings(max_examples=N_EXAMPLES, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
EPS32 = float(np.finfo(np.float32).eps)
QUANTITIES = {"R": "R", "m": "log_mstar", "v": "v"}


# ============================================================================================ features
def _grid_values(lo: int, hi: int, denom: int, offset: float = 0.0):
    """Values offset + k / denom, k in [lo, hi]: exact in float32 (|k| < 2**24), so both sides see one input."""
    return st.integers(lo, hi).map(lambda k: offset + k / denom)


@st.composite
def member_tables(draw, max_mocks: int = 5, max_size: int = 30):
    """A member table of 1..max_mocks mocks of 3..max_size members each, rows in random order.

    R in [0, 3] Mpc/h, v in [-4000, 4000] km/s and log_mstar in [8, 12.5] on binary grids (steps 2**-10, 1/4,
    2**-10); small value sets (``narrow``) make ties and constant groups likely.
    """
    n_mocks = draw(st.integers(1, max_mocks))
    sizes = draw(st.lists(st.integers(3, max_size), min_size=n_mocks, max_size=n_mocks))
    n = int(sum(sizes))
    narrow = draw(st.booleans())
    if narrow:
        R_el, v_el, m_el = _grid_values(0, 4, 1024), _grid_values(-3, 3, 4), _grid_values(0, 3, 1024, 10.0)
    else:
        R_el, v_el, m_el = _grid_values(0, 3072, 1024), _grid_values(-16000, 16000, 4), _grid_values(0, 4608, 1024, 8.0)
    R = np.asarray(draw(st.lists(R_el, min_size=n, max_size=n)), dtype=np.float64)
    v = np.asarray(draw(st.lists(v_el, min_size=n, max_size=n)), dtype=np.float64)
    m = np.asarray(draw(st.lists(m_el, min_size=n, max_size=n)), dtype=np.float64)
    order = np.asarray(draw(st.permutations(range(n))), dtype=np.int64)
    mock = np.repeat(np.arange(n_mocks), sizes)
    return {"mock": mock[order], "R": R[order], "v": v[order], "log_mstar": m[order]}, n_mocks


def _tolerance(x: np.ndarray, expected: float) -> float:
    """Float32 accuracy of a moment of x: the kernel's mean is good to ~n eps max|x|, which moves a
    standardised moment by about that over the spread (the condition number max|x| / std)."""
    spread = x.std()
    if spread == 0:
        return 0.0  # a constant group: its moments are exact (or NaN)
    cond = np.abs(x).max() / spread
    return 1e-5 + 20.0 * x.size * EPS32 * cond * (1.0 + abs(expected))


def _assert_matches_scipy(cols: dict, members: dict, n_mocks: int) -> None:
    for k in range(n_mocks):
        sel = members["mock"] == k
        assert int(cols["Ngal"][k]) == int(sel.sum())
        v = members["v"][sel]
        if v.std() > 0:
            s1 = v.std(ddof=1)
            assert abs(float(cols["sigv"][k]) - s1) <= _tolerance(v, 0.0) * s1, ("sigv", k)
        else:
            assert float(cols["sigv"][k]) == 0.0, ("sigv of a constant group", k, cols["sigv"][k])
        for q, col in QUANTITIES.items():
            x = members[col][sel]
            mean, std = float(cols[f"{q}_mean"][k]), float(cols[f"{q}_std"][k])
            skew, kurt = float(cols[f"{q}_skew"][k]), float(cols[f"{q}_kurt"][k])
            scale = float(np.abs(x).max())
            assert abs(mean - x.mean()) <= 1e-6 + 4 * x.size * EPS32 * scale, (f"{q}_mean", k, mean, x.mean())
            if x.std() == 0:
                # zero spread: the shape moments are undefined, NaN as in scipy, never rounding noise
                assert std == 0.0, (f"{q}_std of a constant group", k, std)
                assert np.isnan(skew) and np.isnan(kurt), (f"{q} shape moments of a constant group", k, skew, kurt)
                continue
            tol = _tolerance(x, 0.0)
            assert abs(std - x.std(ddof=0)) <= tol * x.std(), (f"{q}_std", k, std, x.std())
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                g1 = float(stats.skew(x, bias=True))
                g2 = float(stats.kurtosis(x, fisher=True, bias=True))
            assert abs(skew - g1) <= _tolerance(x, g1), (f"{q}_skew", k, skew, g1, x.tolist())
            assert abs(kurt - g2) <= _tolerance(x, g2), (f"{q}_kurt", k, kurt, g2, x.tolist())


@PROP
@given(member_tables())
def test_features_agree_with_numpy_and_scipy(table):
    members, n_mocks = table
    cols = summarize(members["mock"], members["R"], members["v"], members["log_mstar"], num_mocks=n_mocks)
    assert set(cols) == {"Ngal", "sigv", *MOMENT_COLUMNS}
    assert cols["Ngal"].dtype == np.int32 and all(cols[c].dtype == np.float32 for c in MOMENT_COLUMNS)
    _assert_matches_scipy(cols, members, n_mocks)
    x = features_from_members(members, num_mocks=n_mocks)
    assert x.shape == (n_mocks, 14)
    np.testing.assert_array_equal(x[:, 0], np.log10(cols["Ngal"].astype(np.float64)))
    with np.errstate(divide="ignore"):
        np.testing.assert_array_equal(x[:, 1], np.log10(cols["sigv"].astype(np.float64)))
    np.testing.assert_array_equal(x[:, 2:], np.stack([cols[c] for c in MOMENT_COLUMNS], axis=1))


def _assert_same_summaries(a: dict, b: dict, members: dict, n_mocks: int, exact=()) -> None:
    """a and b agree: exactly on ``exact`` and Ngal, otherwise within the float32 tolerance of each group."""
    np.testing.assert_array_equal(a["Ngal"], b["Ngal"])
    for name in exact:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    for k in range(n_mocks):
        sel = members["mock"] == k
        for name in a:
            if name == "Ngal" or name in exact:
                continue
            q = name.split("_")[0] if name != "sigv" else "v"
            x = members[QUANTITIES[q]][sel]
            va, vb = float(a[name][k]), float(b[name][k])
            if np.isnan(va) or np.isnan(vb):
                assert np.isnan(va) and np.isnan(vb), (name, k, va, vb)
                continue
            if name.endswith(("skew", "kurt")):
                tol = _tolerance(x, va)
            elif name.endswith("mean"):
                tol = 1e-6 + 8 * x.size * EPS32 * float(np.abs(x).max())
            else:
                tol = _tolerance(x, 0.0) * x.std()
            assert abs(va - vb) <= tol, (name, k, va, vb)


@PROP
@given(member_tables(), st.randoms(use_true_random=False))
def test_features_do_not_depend_on_member_order(table, rnd):
    members, n_mocks = table
    base = summarize(members["mock"], members["R"], members["v"], members["log_mstar"], num_mocks=n_mocks)
    # permute the members within each mock, and the order in which the mocks' rows come
    order = np.arange(members["mock"].size)
    for k in range(n_mocks):
        idx = np.flatnonzero(members["mock"] == k)
        order[idx] = idx[rnd.sample(range(idx.size), idx.size)]
    rows = np.asarray(rnd.sample(range(order.size), order.size))
    perm = order[rows]
    p = {c: a[perm] for c, a in members.items()}
    moved = summarize(p["mock"], p["R"], p["v"], p["log_mstar"], num_mocks=n_mocks)
    _assert_same_summaries(moved, base, members, n_mocks)


@PROP
@given(member_tables(), st.integers(-3000, 3000))
def test_shifting_velocities_moves_v_mean_only(table, shift):
    members, n_mocks = table
    base = summarize(members["mock"], members["R"], members["v"], members["log_mstar"], num_mocks=n_mocks)
    moved = summarize(members["mock"], members["R"], members["v"] + shift, members["log_mstar"], num_mocks=n_mocks)
    untouched = ("Ngal",) + tuple(c for c in MOMENT_COLUMNS if not c.startswith("v_"))
    for name in untouched:  # the R and m columns see the same input: bitwise equal
        np.testing.assert_array_equal(moved[name], base[name], err_msg=name)
    shifted = {**members, "v": members["v"] + shift}
    for k in range(n_mocks):
        sel = members["mock"] == k
        scale = float(np.abs(shifted["v"][sel]).max()) + float(np.abs(members["v"][sel]).max())
        assert abs(float(moved["v_mean"][k]) - (float(base["v_mean"][k]) + shift)) <= 1e-6 + 8 * sel.sum() * EPS32 * scale
    # every other velocity moment is that of the shifted sample (scipy), hence unchanged up to float32 accuracy
    _assert_matches_scipy(moved, shifted, n_mocks)
    for name in ("sigv", "v_std", "v_skew", "v_kurt"):
        for k in range(n_mocks):
            x = shifted["v"][members["mock"] == k]
            a, b = float(moved[name][k]), float(base[name][k])
            if np.isnan(a) or np.isnan(b):
                assert np.isnan(a) and np.isnan(b), (name, k, a, b)
            elif name in ("sigv", "v_std"):
                assert abs(a - b) <= 2 * _tolerance(x, 0.0) * x.std(), (name, k, a, b)
            else:
                assert abs(a - b) <= 2 * _tolerance(x, b), (name, k, a, b)


@PROP
@given(st.floats(-4000, 4000, width=32), st.integers(3, 60))
@example(0.1, 7)
def test_a_constant_group_has_zero_spread_and_nan_shape(value, size):
    x = np.full(size, value, dtype=np.float64)
    cols = summarize(np.zeros(size, dtype=np.int64), x, x, x)
    assert float(cols["sigv"][0]) == 0.0
    for q in QUANTITIES:
        assert float(cols[f"{q}_std"][0]) == 0.0, (q, cols[f"{q}_std"][0])
        assert np.isnan(cols[f"{q}_skew"][0]) and np.isnan(cols[f"{q}_kurt"][0]), (q, cols[f"{q}_skew"][0])


# ============================================================================================ catalogues
FORMATS = (".fits", ".parquet")
EXTRA_DTYPES = ("f4", "f8", "i2", "i4", "i8", "u1", "?")
RESERVED_META = ("format_version", "n_member_rows")


def _values(dtype, n: int, lo=None, hi=None, allow_nan=False):
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        el = st.floats(lo, hi, width=8 * dtype.itemsize, allow_nan=allow_nan,
                       allow_infinity=allow_nan and lo is None and hi is None,
                       exclude_min=lo is not None and lo == 0.0)
    elif dtype.kind == "b":
        el = st.booleans()
    else:
        info = np.iinfo(dtype)
        el = st.integers(info.min if lo is None else lo, info.max if hi is None else hi)
    return hnp.arrays(dtype, n, elements=el)


_json_scalar = (st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False)
                | st.text(max_size=8))
json_values = st.recursive(
    _json_scalar,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=8,
)


@st.composite
def valid_catalogs(draw, max_rows: int = 12):
    n = draw(st.integers(1, max_rows))
    cols = {}
    for name in REQUIRED_COLUMNS:
        if name == "Ngal":
            dtype = draw(st.sampled_from(("i2", "i4", "i8")))
            cols[name] = draw(_values(dtype, n, 3, 5000))
        else:
            dtype = draw(st.sampled_from(("f4", "f8")))
            if name == "M200c":
                cols[name] = draw(_values(dtype, n, 2.0**33, 2.0**57))  # 8.6e9 .. 1.4e17
            elif name == "sigv":
                cols[name] = draw(_values(dtype, n, 0.0, 2.0**13))  # > 0 (exclude_min)
            else:
                cols[name] = draw(_values(dtype, n))  # any finite value, subnormals and -0.0 included
    if draw(st.booleans()):
        cols["log_mass"] = np.log10(cols["M200c"].astype(np.float64))
    # names that cannot collide with the schema, even in FITS, where column names ignore case
    extra_names = draw(st.lists(st.from_regex(r"x[a-z0-9_]{0,11}", fullmatch=True), max_size=3, unique=True))
    for name in extra_names:
        cols[name] = draw(_values(draw(st.sampled_from(EXTRA_DTYPES)), n, allow_nan=True))
    meta = draw(st.dictionaries(st.text(max_size=8).filter(lambda s: s not in RESERVED_META), json_values,
                                max_size=4))
    members = None
    if draw(st.booleans()):
        n_mem = draw(st.integers(0, 20))
        members = {
            "mock": draw(_values(draw(st.sampled_from(("i4", "i8"))), n_mem, 0, n - 1)),
            "R": draw(_values(draw(st.sampled_from(("f4", "f8"))), n_mem, 0.0, 5.0)),
            "v": draw(_values(draw(st.sampled_from(("f4", "f8"))), n_mem, -5e3, 5e3)),
            "log_mstar": draw(_values(draw(st.sampled_from(("f4", "f8"))), n_mem, 8.0, 13.0)),
            "is_interloper": draw(_values("?", n_mem)),
        }
    return cols, members, meta


@pytest.mark.parametrize("dtype, suffix", [(d, s) for d in ("i1", "u2", "u4", "u8", "f2") for s in FORMATS])
def test_extra_narrow_columns_keep_their_dtype(dtype, suffix, tmp_path):
    """FITS has no int8 or float16: astropy wrote int8 as logical (non-zero read back as True) and float16
    as float32; the catalogue writer widens them and the reader narrows them back."""
    cols = {name: np.full(4, 2.0) for name in REQUIRED_COLUMNS}
    cols["Ngal"], cols["M200c"] = np.full(4, 10), np.full(4, 1e14)
    top = np.finfo(dtype).max if dtype == "f2" else np.iinfo(dtype).max
    cols["x"] = np.array([0, 1, 2, top], dtype=dtype)
    write_catalog(Catalog(cols), str(tmp_path / f"c{suffix}"))
    back = read_catalog(str(tmp_path / f"c{suffix}"))
    assert back["x"].dtype == cols["x"].dtype and back["x"].tobytes() == cols["x"].tobytes(), back["x"]


def _assert_bitwise(back: dict, orig: dict, what: str) -> None:
    assert list(back) == list(orig), (what, list(back), list(orig))
    for name, a in orig.items():
        b = back[name]
        assert b.dtype == a.dtype, (what, name, b.dtype, a.dtype)
        assert b.shape == a.shape, (what, name, b.shape, a.shape)
        assert b.tobytes() == np.ascontiguousarray(a).tobytes(), (what, name, b, a)


@PROP
@given(valid_catalogs())
def test_catalog_round_trips_bitwise(drawn):
    cols, members, meta = drawn
    cat = Catalog(dict(cols), members=None if members is None else dict(members), meta=dict(meta))
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in FORMATS:
            path = os.path.join(tmp, "cat" + suffix)
            write_catalog(cat, path)
            back = read_catalog(path)
            _assert_bitwise(back.columns, cols, suffix)
            if members is None:
                assert back.members is None, suffix
            else:
                assert back.members is not None, suffix
                _assert_bitwise(back.members, members, suffix + " members")
            assert back.meta == meta, (suffix, back.meta, meta)


@st.composite
def corrupt_catalogs(draw):
    cols, _, _ = draw(valid_catalogs())
    cols = {k: v.copy() for k, v in cols.items()}
    n = len(cols["Ngal"])
    row = draw(st.integers(0, n - 1))
    kind = draw(st.sampled_from(("non-finite", "missing", "few members", "non-positive")))
    if kind == "non-finite":
        name = draw(st.sampled_from([c for c in REQUIRED_COLUMNS if c != "Ngal"]))
        cols[name][row] = draw(st.sampled_from((np.nan, np.inf, -np.inf)))
    elif kind == "missing":
        name = draw(st.sampled_from(REQUIRED_COLUMNS))
        del cols[name]
    elif kind == "few members":
        name = "Ngal"
        cols[name][row] = draw(st.integers(-5, 2))
    else:
        name = draw(st.sampled_from(("M200c", "sigv")))
        cols[name][row] = draw(st.sampled_from((0.0, -0.0, -1.0, -1e14)))
    if kind != "missing" and "log_mass" in cols and name == "M200c":
        with np.errstate(invalid="ignore", divide="ignore"):
            cols["log_mass"] = np.log10(cols["M200c"].astype(np.float64))
    return cols, kind, name


@PROP
@given(corrupt_catalogs())
def test_corrupt_catalogs_raise_naming_the_column(drawn):
    cols, kind, name = drawn
    with pytest.raises(CatalogError) as built:
        Catalog(dict(cols))
    assert repr(name) in str(built.value), (kind, name, str(built.value))
    with tempfile.TemporaryDirectory() as tmp:
        for suffix in FORMATS:
            path = os.path.join(tmp, "bad" + suffix)
            write_catalog(Catalog(dict(cols), validate=False), path)
            with pytest.raises(CatalogError) as read:
                read_catalog(path)
            assert repr(name) in str(read.value), (suffix, kind, name, str(read.value))
            read_catalog(path, validate=False)  # the file itself is sound: it loads when asked not to check
