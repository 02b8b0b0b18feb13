"""Cluster catalogues: the lecture's column schema, validation, FITS/Parquet I/O, splits and scaling.

A :class:`Catalog` is a table with one row per mock observation (a halo seen along one line of sight),
holding the columns of Ho et al. (2019)'s ``Rockstar_UM_z=0.117_contam_summary.fits`` (see ``MOCK.md``)
and, for generated catalogues, ``halo_id``, ``los``, ``log_mass`` and truth columns. It may also carry a
member table (one row per galaxy) for users who want their own summaries.

Examples
--------
>>> import numpyro_clustermass as ncm
>>> cat = ncm.simulate.mock_catalog(volume=0.002, seed=0)
>>> train, test = cat.split(test_fraction=0.2, seed=1)
>>> x, y = train.features(), train.log_mass
>>> scaler = ncm.catalog.StandardScaler.fit(x)
>>> x_std = scaler.transform(x)
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

__all__ = [
    "FEATURE_NAMES",
    "MOMENT_COLUMNS",
    "REQUIRED_COLUMNS",
    "MEMBER_COLUMNS",
    "NUISANCE_PREFIX",
    "Catalog",
    "CatalogError",
    "StandardScaler",
    "read_catalog",
    "write_catalog",
    "validate_features",
]

#: The 12 moment columns of the lecture's file, in its order.
MOMENT_COLUMNS = tuple(f"{q}_{s}" for q in ("R", "m", "v") for s in ("mean", "std", "skew", "kurt"))
#: Columns a catalogue file must hold (the lecture's schema).
REQUIRED_COLUMNS = ("M200c", "Ngal", "sigv") + MOMENT_COLUMNS
#: The 14 model features, in the lecture's order.
FEATURE_NAMES = ("LogNgal", "Logsigv") + MOMENT_COLUMNS
#: Columns of a member table (one row per galaxy in a cylinder).
MEMBER_COLUMNS = ("mock", "R", "v", "log_mstar", "is_interloper")
#: Minimum number of galaxies for the moments (skewness, kurtosis) to be defined.
MIN_NGAL = 3
#: Columns holding the simulator's nuisance parameters (``mock_catalog(nuisance=...)``) start with this;
#: they describe the universe a mock came from, and :meth:`Catalog.features` never hands them to a model.
NUISANCE_PREFIX = "nu_"

FORMAT_VERSION = 1
_MEMBERS_KEY = "n_member_rows"  # member-table row count in the file's JSON metadata (None: no members)
_MEMBERS_SUFFIX = ".members.parquet"
_DTYPES_KEY = "column_dtypes"  # every column's dtype as written, in the file's JSON metadata
#: Largest accepted |log_mass - log10(M200c)| [dex]: a float32 M200c is good to about 3e-8 dex.
LOG_MASS_TOLERANCE = 1e-5


class CatalogError(ValueError):
    """A catalogue failed validation: the message names the column, the row count and the fix."""


def _count_bad(name: str, bad: np.ndarray, what: str, fix: str) -> None:
    n_bad = int(np.count_nonzero(bad))
    if n_bad:
        first = np.flatnonzero(bad)[:5].tolist()
        raise CatalogError(
            f"column {name!r}: {n_bad} of {bad.size} rows {what} (first rows: {first}). {fix}"
        )


@dataclass
class Catalog:
    """A catalogue of mock (or real) cluster observations.

    Parameters
    ----------
    columns : mapping of str to 1-D array
        Column name to values, all of the same length.
    members : mapping of str to 1-D array, optional
        Member table with :data:`MEMBER_COLUMNS`; ``members["mock"]`` is the row index into this catalogue.
    meta : dict
        Free-form provenance (generator parameters, seed, cosmology, cuts applied).
    validate : bool
        Check the lecture's columns (missing, non-finite, non-positive mass or sigv, Ngal < 3).
    """

    columns: dict[str, np.ndarray]
    members: dict[str, np.ndarray] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    validate: bool = True

    def __post_init__(self) -> None:
        self.columns = {str(k): np.asarray(v) for k, v in self.columns.items()}
        lengths = {k: v.shape for k, v in self.columns.items()}
        ns = {s[0] if len(s) else -1 for s in lengths.values()}
        if any(len(s) != 1 for s in lengths.values()) or len(ns) > 1:
            raise CatalogError(f"columns must be 1-D arrays of one length; got shapes {lengths}")
        if self.members is not None:
            self.members = {k: np.asarray(v) for k, v in self.members.items()}
            missing = [c for c in MEMBER_COLUMNS if c not in self.members]
            if missing:
                raise CatalogError(f"member table lacks columns {missing}; it needs {list(MEMBER_COLUMNS)}")
        if self.validate:
            self.check()

    # ------------------------------------------------------------------ table protocol
    def __len__(self) -> int:
        return 0 if not self.columns else len(next(iter(self.columns.values())))

    def __getitem__(self, name: str) -> np.ndarray:
        if name in self.columns:
            return self.columns[name]
        if name == "LogNgal":
            return np.log10(self.columns["Ngal"].astype(np.float64))
        if name == "Logsigv":
            return np.log10(self.columns["sigv"].astype(np.float64))
        if name == "log_mass" and "M200c" in self.columns:
            return np.log10(self.columns["M200c"].astype(np.float64))
        raise KeyError(f"no column {name!r}; columns are {list(self.columns)}")

    def __contains__(self, name: str) -> bool:
        return name in self.columns

    @property
    def colnames(self) -> list[str]:
        return list(self.columns)

    def __repr__(self) -> str:
        extra = f", {len(self.members['mock'])} members" if self.members is not None else ""
        return f"Catalog({len(self)} rows, {len(self.columns)} columns{extra})"

    # ------------------------------------------------------------------ validation
    def check(self) -> None:
        """Raise :class:`CatalogError` for missing columns or rows the models cannot use."""
        validate_columns(self.columns)

    # ------------------------------------------------------------------ model inputs
    def features(self, names: tuple[str, ...] = FEATURE_NAMES) -> np.ndarray:
        """The feature matrix, shape ``(len(self), len(names))``, float64, validated finite.

        Nuisance columns (``nu_*``, the simulator's parameters, unknown for a real catalogue) and the
        ``sub_volume`` index are refused: a network must not see them. Read them with ``catalog[name]``.
        """
        hidden = [n for n in names if str(n).startswith(NUISANCE_PREFIX) or n == "sub_volume"]
        if hidden:
            raise ValueError(
                f"features {hidden} are the simulator's nuisance parameters (or its sub-volume index), which a "
                f"real catalogue does not have; a model must not see them. Use observable columns, e.g. "
                f"{list(FEATURE_NAMES)}"
            )
        x = np.stack([np.asarray(self[n], dtype=np.float64) for n in names], axis=1)
        validate_features(x, names)
        return x

    @property
    def log_mass(self) -> np.ndarray:
        """log10 of M200c [Msun/h], float64."""
        return np.asarray(self["log_mass"], dtype=np.float64)

    # ------------------------------------------------------------------ row selection
    def select(self, rows: np.ndarray) -> "Catalog":
        """A new catalogue with the given rows (boolean mask or integer indices), members carried along."""
        rows = np.asarray(rows)
        idx = np.flatnonzero(rows) if rows.dtype == bool else rows.astype(np.int64)
        cols = {k: v[idx] for k, v in self.columns.items()}
        members = None
        if self.members is not None:
            remap = np.full(len(self), -1, dtype=np.int64)
            remap[idx] = np.arange(idx.size)
            new_mock = remap[self.members["mock"]]
            keep = new_mock >= 0
            members = {k: v[keep] for k, v in self.members.items()}
            members["mock"] = new_mock[keep]
            order = np.argsort(members["mock"], kind="stable")
            members = {k: v[order] for k, v in members.items()}
        return Catalog(cols, members=members, meta=dict(self.meta), validate=False)

    def split(self, test_fraction: float = 0.2, seed: int = 0) -> tuple["Catalog", "Catalog"]:
        """Split into ``(train, test)``, grouped by ``halo_id`` when present.

        The lines of sight of one halo are correlated, so a halo never lands on both sides. Without
        ``halo_id`` (the lecture's file), rows are split individually.
        """
        if not 0.0 < test_fraction < 1.0:
            raise ValueError(f"test_fraction must be in (0, 1); got {test_fraction}")
        rng = np.random.default_rng(seed)
        if "halo_id" in self.columns:
            groups, inverse = np.unique(self.columns["halo_id"], return_inverse=True)
            is_test_group = rng.permutation(groups.size) < round(test_fraction * groups.size)
            is_test = is_test_group[inverse]
        else:
            is_test = rng.permutation(len(self)) < round(test_fraction * len(self))
        return self.select(~is_test), self.select(is_test)

    # ------------------------------------------------------------------ conversion
    def to_pandas(self):
        import pandas as pd

        return pd.DataFrame(self.columns)

    def to_table(self):
        from astropy.table import Table

        return Table(self.columns)

    def summary(self) -> str:
        """A short human-readable summary (row count, mass range, feature ranges)."""
        lines = [repr(self)]
        if len(self) == 0:
            return lines[0] + "\n  (no rows)"
        lm = self.log_mass
        lines.append(f"  log10 M200c [Msun/h]: {lm.min():.3f} .. {lm.max():.3f} (median {np.median(lm):.3f})")
        if "halo_id" in self.columns:
            lines.append(f"  halos: {np.unique(self.columns['halo_id']).size}")
        for name in ("Ngal", "sigv"):
            v = self.columns[name]
            q = np.percentile(v, [5, 50, 95])
            lines.append(f"  {name:5s} 5/50/95%: {q[0]:9.1f} {q[1]:9.1f} {q[2]:9.1f}")
        if "n_interlopers" in self.columns:
            frac = self.columns["n_interlopers"].sum() / self.columns["Ngal"].sum()
            lines.append(f"  interloper fraction of galaxies: {frac:.3f}")
        return "\n".join(lines)


def validate_columns(columns: Mapping[str, np.ndarray]) -> None:
    """Check the lecture's schema: every required column present, finite, positive mass/sigv, Ngal >= 3."""
    n = len(next(iter(columns.values()))) if columns else 0
    missing = [c for c in REQUIRED_COLUMNS if c not in columns]
    if missing:
        raise CatalogError(
            f"catalogue of {n} rows lacks required columns {missing}; the lecture's schema needs "
            f"{list(REQUIRED_COLUMNS)}"
        )
    for name in REQUIRED_COLUMNS:
        raw = np.asarray(columns[name])
        if not (np.issubdtype(raw.dtype, np.integer) or np.issubdtype(raw.dtype, np.floating)):
            raise CatalogError(
                f"column {name!r} of {n} rows holds {raw.dtype} values, not real numbers (first values: "
                f"{raw[:3].tolist()}). Convert it to a numeric column before loading; nothing is coerced."
            )
        v = raw.astype(np.float64)
        _count_bad(name, ~np.isfinite(v), "are NaN or infinite", "Remove or repair those rows before loading.")
    ngal = np.asarray(columns["Ngal"], dtype=np.float64)
    _count_bad(
        "Ngal", ngal != np.round(ngal), "are not whole numbers of galaxies",
        "Ngal counts galaxies; repair the column (it is not rounded for you).",
    )
    for name in ("M200c", "sigv"):
        v = np.asarray(columns[name], dtype=np.float64)
        _count_bad(name, v <= 0, "are not positive", "Masses and dispersions must be > 0; remove those rows.")
    _count_bad(
        "Ngal", ngal < MIN_NGAL, f"have fewer than {MIN_NGAL} galaxies",
        "Skewness and kurtosis need at least 3 members; cut those rows (Ho et al. keep Ngal >= 10).",
    )
    if "log_mass" in columns:
        # the target of every fit: it must be log10(M200c), not a second truth that silently wins
        lm = np.asarray(columns["log_mass"], dtype=np.float64)
        _count_bad("log_mass", ~np.isfinite(lm), "are NaN or infinite", "Drop the column or repair those rows.")
        off = np.abs(lm - np.log10(np.asarray(columns["M200c"], dtype=np.float64)))
        _count_bad(
            "log_mass", off > LOG_MASS_TOLERANCE,
            f"disagree with log10(M200c) by more than {LOG_MASS_TOLERANCE:g} dex (largest {off.max(initial=0.0):.3g} dex)",
            "log_mass must equal log10(M200c); drop the column (it is derived from M200c) or fix M200c.",
        )


def validate_features(x: np.ndarray, names: tuple[str, ...] | None = None, expected: int | None = None) -> None:
    """Check a feature matrix: 2-D, the expected width, all finite. Errors name the feature and row count."""
    x = np.asarray(x)
    if x.ndim != 2:
        raise CatalogError(f"features must be a 2-D array (clusters, features); got shape {x.shape}")
    if expected is not None and x.shape[1] != expected:
        raise CatalogError(
            f"expected {expected} features per cluster, got {x.shape[1]} (array of shape {x.shape}); "
            f"pass the same feature columns the model was trained on"
        )
    # checked in blocks of rows: a boolean copy of a million-row catalogue would outweigh a prediction's chunk
    block = 1 << 16
    if all(np.isfinite(x[i:i + block]).all() for i in range(0, x.shape[0], block)):
        return
    # some value is not finite: the whole mask, once, to name the columns and count their rows
    finite = np.isfinite(x)
    parts = []
    for j in np.flatnonzero(~finite.all(axis=0)):
        label = names[j] if names is not None and j < len(names) else f"feature {j}"
        parts.append(f"{label!r} ({int((~finite[:, j]).sum())} rows)")
    raise CatalogError(
        f"non-finite (NaN or inf) feature values in {', '.join(parts)} of {x.shape[0]} rows; "
        f"remove or repair those rows"
    )


# ---------------------------------------------------------------------------------------------- scaling
@dataclass(frozen=True)
class StandardScaler:
    """Affine standardisation ``(x - mean) / scale``, fitted on the training side only."""

    mean: np.ndarray
    scale: np.ndarray

    @classmethod
    def fit(cls, x: np.ndarray, names: tuple[str, ...] | None = None) -> "StandardScaler":
        """Mean and standard deviation per column (a constant column gets scale 1).

        Raises :class:`CatalogError` when a column's mean or spread overflows (a value such as 1e300 would
        make its scale infinite and the standardised feature 0 for every cluster), naming the column.
        """
        x = np.asarray(x, dtype=np.float64)
        if x.shape[0] == 0:
            raise CatalogError("cannot fit a scaler on zero rows")
        with np.errstate(over="ignore", invalid="ignore"):
            mean = x.mean(axis=0)
            scale = x.std(axis=0)
        bad = ~(np.isfinite(mean) & np.isfinite(scale))
        if bad.any():
            cols = np.atleast_1d(np.flatnonzero(np.atleast_1d(bad)))
            parts = []
            for j in cols[:5]:
                col = x[:, j] if x.ndim == 2 else x
                label = names[j] if names is not None and j < len(names) else f"feature {j}"
                parts.append(f"{label!r} (largest |value| {np.abs(col).max():.3g} in row {int(np.abs(col).argmax())})")
            raise CatalogError(
                f"the spread of {', '.join(parts)} over {x.shape[0]} rows overflows float64, so standardising "
                f"would flatten the feature for every cluster; those values are not physical: repair or remove "
                f"the rows"
            )
        scale = np.where(scale > 0, scale, 1.0)
        return cls(mean=mean, scale=scale)

    def transform(self, x: np.ndarray) -> np.ndarray:
        return (np.asarray(x, dtype=np.float64) - self.mean) / self.scale

    def inverse_transform(self, z: np.ndarray) -> np.ndarray:
        return np.asarray(z, dtype=np.float64) * self.scale + self.mean

    def to_dict(self) -> dict[str, list]:
        return {"mean": np.atleast_1d(self.mean).tolist(), "scale": np.atleast_1d(self.scale).tolist()}

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "StandardScaler":
        return cls(mean=np.asarray(d["mean"], dtype=np.float64), scale=np.asarray(d["scale"], dtype=np.float64))


# ---------------------------------------------------------------------------------------------- I/O
#: File suffixes that name a catalogue format.
FORMAT_SUFFIXES = {"fits": (".fits", ".fit", ".fits.gz", ".fts"), "parquet": (".parquet", ".pq")}


def _format_of(path: str, fmt: str | None) -> str:
    if fmt is not None:
        return fmt.lower()
    low = str(path).lower()
    for name, suffixes in FORMAT_SUFFIXES.items():
        if low.endswith(suffixes):
            return name
    raise ValueError(f"cannot tell the format of {path!r}; use a .fits or .parquet suffix or pass format=")


def atomic_target(path: str) -> tuple[str, str]:
    """A fresh temporary file next to ``path`` (mode as the umask gives new files) and ``path``: write the
    temporary file, then ``os.replace(tmp, path)``, so that ``path`` never holds half a file."""
    directory = os.path.dirname(os.path.abspath(path)) or "."
    if not os.path.isdir(directory):
        raise FileNotFoundError(f"cannot write {path!r}: the folder {directory!r} does not exist; create it first")
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=os.path.basename(path), dir=directory)
    os.close(fd)
    # mkstemp creates the file with mode 0600; give it the mode any new file gets under the user's umask
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    return tmp, path


def write_catalog(cat: Catalog, path: str, format: str | None = None, overwrite: bool = True) -> None:
    """Write a catalogue to FITS or Parquet, atomically (temporary file, then rename).

    FITS: the catalogue is the first binary-table HDU (``CLUSTERS``) in the lecture's layout; a member
    table, if any, goes to a second HDU ``MEMBERS``; every HDU carries FITS ``CHECKSUM``/``DATASUM``
    keywords, verified by :func:`read_catalog`. Parquet: one file with the catalogue (page checksums on);
    members are written next to it as ``<path>.members.parquet``, and a stale members file from an earlier
    write is removed. Metadata travels as JSON, with the member count so that a reader never attaches
    members that belong to another catalogue.
    """
    fmt = _format_of(path, format)
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write a catalogue to {path!r}: it is a folder; give a file name")
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(path)
    n_members = None if cat.members is None else int(len(cat.members["mock"]))
    dtypes = {"columns": {k: np.asarray(v).dtype.str for k, v in cat.columns.items()},
              "members": {k: np.asarray(v).dtype.str for k, v in (cat.members or {}).items()}}
    meta_json = json.dumps({**cat.meta, "format_version": FORMAT_VERSION, _MEMBERS_KEY: n_members,
                            _DTYPES_KEY: dtypes}, default=_json_default)
    tmp, final = atomic_target(path)
    try:
        if fmt == "fits":
            from astropy.io import fits

            hdus = [fits.PrimaryHDU()]
            cl = fits.BinTableHDU(data=_fits_rec(cat.columns), name="CLUSTERS")
            cl.header["NCMMETA"] = "see HDU META"
            hdus.append(cl)
            if cat.members is not None:
                hdus.append(fits.BinTableHDU(data=_fits_rec(cat.members), name="MEMBERS"))
            hdus.append(fits.BinTableHDU.from_columns(
                [fits.Column(name="json", format=f"{max(len(meta_json), 1)}A", array=np.array([meta_json]))],
                name="META",
            ))
            fits.HDUList(hdus).writeto(tmp, overwrite=True, checksum=True)
        elif fmt == "parquet":
            import pyarrow as pa
            import pyarrow.parquet as pq

            table = pa.table({k: v for k, v in cat.columns.items()})
            table = table.replace_schema_metadata({b"numpyro_clustermass": meta_json.encode()})
            pq.write_table(table, tmp, write_page_checksum=True)
            mpath = path + _MEMBERS_SUFFIX
            if cat.members is not None:
                mtmp, mfinal = atomic_target(mpath)
                try:
                    pq.write_table(pa.table(dict(cat.members)), mtmp, write_page_checksum=True)
                    os.replace(mtmp, mfinal)
                finally:
                    if os.path.exists(mtmp):
                        os.remove(mtmp)
            elif os.path.exists(mpath):
                os.remove(mpath)  # members of the catalogue this file replaces
        else:
            raise ValueError(f"unknown format {fmt!r}; use 'fits' or 'parquet'")
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _fits_rec(columns: Mapping[str, np.ndarray]):
    from astropy.table import Table

    # FITS has no signed byte or half float: astropy writes int8 as logical (every non-zero value reads back
    # as True) and float16 as float32. Store them widened; read_catalog narrows them back (META records
    # every column's dtype).
    widen = {np.dtype(np.int8): np.int16, np.dtype(np.float16): np.float32}
    t = Table({k: np.asarray(v).astype(widen.get(np.asarray(v).dtype, np.asarray(v).dtype)) for k, v in columns.items()})
    return t.as_array()


def _restore_dtypes(path: str, table: dict[str, np.ndarray] | None, dtypes: Mapping[str, str]):
    """Cast columns back to the dtypes they were written with, where the file format stored them wider."""
    if table is None:
        return table
    for name, want in dtypes.items():
        if name in table and table[name].dtype.str != want:
            want = np.dtype(want)
            have = table[name]
            if have.dtype.kind in "OUS" or want.kind in "OUS":
                continue  # text columns: the formats' own string types are kept
            back = have.astype(want)
            if not np.array_equal(back.astype(have.dtype), have, equal_nan=have.dtype.kind == "f"):
                raise CatalogError(f"{path}: column {name!r} was written as {want} but holds values that do not fit "
                                   f"it; the file was changed by another tool")
            table[name] = back
    return table


def _json_default(o):
    if isinstance(o, np.generic):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    return str(o)


def read_catalog(path: str, format: str | None = None, validate: bool = True) -> Catalog:
    """Read a catalogue from FITS or Parquet.

    Any FITS file with the lecture's columns (the first table HDU holding them) loads, whether written by
    this package, astropy, fitsio or TOPCAT. Columns are returned in native byte order with their stored
    dtypes. ``validate=True`` checks the schema and raises :class:`CatalogError` naming the offending
    column and the number of rows.

    Raises
    ------
    FileNotFoundError, IsADirectoryError
        No file at ``path``.
    CatalogError
        A file that cannot be read as a catalogue: truncated or corrupt (a FITS checksum that does not
        match, a header or table cut short, unreadable metadata), no rows, members that do not belong to
        the table, or (with ``validate``) a failed schema check.
    """
    fmt = _format_of(path, format)
    if os.path.isdir(path):
        raise IsADirectoryError(f"{path!r} is a folder, not a catalogue file")
    if not os.path.exists(path):
        raise FileNotFoundError(f"no catalogue file at {path!r}")
    try:
        columns, members, meta = _read_fits(path) if fmt == "fits" else _read_parquet(path)
    except CatalogError:
        raise
    except (OSError, ValueError, TypeError, KeyError, IndexError, EOFError) as exc:
        if fmt not in ("fits", "parquet"):
            raise
        raise CatalogError(
            f"{path}: cannot be read as a {fmt.upper()} catalogue ({type(exc).__name__}: {exc}); the file is "
            f"truncated, corrupt or not a {fmt.upper()} file"
        ) from exc
    version = meta.pop("format_version", FORMAT_VERSION)
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CatalogError(f"{path}: format version {version!r} is not one this package reads "
                           f"(it writes version {FORMAT_VERSION}); update numpyro_clustermass")
    n_members = meta.pop(_MEMBERS_KEY, "absent")
    dtypes = meta.pop(_DTYPES_KEY, None) or {}
    columns = _restore_dtypes(path, columns, dtypes.get("columns", {}))
    members = _restore_dtypes(path, members, dtypes.get("members", {}))
    n_rows = len(next(iter(columns.values()))) if columns else 0
    if validate and n_rows == 0:
        raise CatalogError(f"{path}: the catalogue has no rows")
    if n_members is None and members is not None:
        raise CatalogError(f"{path}: a member table lies beside a catalogue written without one (a stale "
                           f"{_MEMBERS_SUFFIX} file?); remove it or write the catalogue again")
    if members is not None:
        mock = np.asarray(members.get("mock", np.zeros(0, dtype=np.int64)))
        if n_members not in ("absent", len(mock)):
            raise CatalogError(f"{path}: the member table has {len(mock)} rows, the catalogue recorded "
                               f"{n_members}; it belongs to another write")
        if mock.size and (mock.min() < 0 or mock.max() >= n_rows):
            raise CatalogError(f"{path}: member rows point at catalogue rows up to {int(mock.max())}, but the "
                               f"catalogue has {n_rows} rows; the member table belongs to another catalogue")
    return Catalog(columns, members=members, meta=meta, validate=validate)


def _read_fits(path: str):
    import warnings

    from astropy.io import fits

    meta: dict[str, Any] = {}
    members = None
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with fits.open(path, memmap=False, checksum=True) as hdul:
            table_hdus = [h for h in hdul if isinstance(h, fits.BinTableHDU | fits.TableHDU)]
            data_hdu = next((h for h in table_hdus if h.name == "CLUSTERS"), None)
            if data_hdu is None:
                data_hdu = next((h for h in table_hdus if h.name not in ("MEMBERS", "META")), None)
            if data_hdu is None:
                _raise_fits_problems(path, caught)
                raise CatalogError(f"{path}: no table HDU found")
            columns = _from_fits(data_hdu.data)
            has_meta = False
            for h in table_hdus:
                if h.name == "MEMBERS":
                    members = _from_fits(h.data)
                elif h.name == "META":
                    has_meta = True
                    raw = h.data["json"][0]
                    try:
                        meta = json.loads(raw.decode() if isinstance(raw, bytes) else raw)
                    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
                        raise CatalogError(f"{path}: the metadata HDU META is corrupt ({exc})") from exc
            _raise_fits_problems(path, caught)
            if "NCMMETA" in data_hdu.header and not has_meta:
                raise CatalogError(f"{path}: the metadata HDU META that this package writes is missing; the "
                                   f"file was truncated")
    return columns, members, meta


def _raise_fits_problems(path: str, caught) -> None:
    """Turn astropy's warnings about checksums and damaged headers into errors: never load a damaged file."""
    problems = [str(w.message).strip().splitlines()[0] for w in caught
                if any(s in str(w.message) for s in ("verification failed", "Error validating header", "truncated"))]
    if problems:
        raise CatalogError(f"{path}: the file is corrupt or truncated ({'; '.join(dict.fromkeys(problems))}); "
                           f"nothing was loaded. Copy or write it again")


def _read_parquet(path: str):
    import pyarrow.parquet as pq

    meta: dict[str, Any] = {}
    members = None
    table = pq.read_table(path, page_checksum_verification=True)
    columns = {name: table.column(name).to_numpy() for name in table.column_names}
    md = table.schema.metadata or {}
    if b"numpyro_clustermass" in md:
        try:
            meta = json.loads(md[b"numpyro_clustermass"].decode())
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise CatalogError(f"{path}: the package metadata is corrupt ({exc})") from exc
    mpath = path + _MEMBERS_SUFFIX
    if os.path.exists(mpath):
        mt = pq.read_table(mpath, page_checksum_verification=True)
        members = {name: mt.column(name).to_numpy() for name in mt.column_names}
    return columns, members, meta


def _from_fits(data) -> dict[str, np.ndarray]:
    out = {}
    for name in data.columns.names:
        col = np.asarray(data[name])
        if col.ndim != 1:
            continue
        if col.dtype.byteorder not in ("=", "|"):
            col = col.astype(col.dtype.newbyteorder("="))
        out[name] = np.ascontiguousarray(col)
    return out
