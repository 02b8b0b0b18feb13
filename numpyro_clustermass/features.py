"""Member tables to the lecture's 14 summary features, as one jit-compiled segment kernel.

A member table has one row per galaxy: the index of the mock observation (cylinder) it belongs to,
its projected radius ``R`` [Mpc/h, comoving], line-of-sight velocity ``v`` [km/s] and ``log_mstar``
[log10 Msun]. :func:`summarize` reduces it to, per mock:

- ``Ngal``: the number of galaxies,
- ``sigv``: the standard deviation of ``v`` with ``ddof=1`` (the lecture's velocity dispersion),
- for each of ``R``, ``m`` (= log_mstar) and ``v``: ``mean``, ``std`` (population, ``ddof=0``),
  ``skew`` (Fisher–Pearson g1 = m3 / m2^1.5) and ``kurt`` (excess g2 = m4 / m2^2 - 3), i.e. what
  ``scipy.stats.skew`` and ``scipy.stats.kurtosis`` return with their defaults.

The kernel works on ragged groups with segment sums (two passes: means first, then central moments,
which keeps float32 accurate), is vectorised over all mocks at once and pads its inputs to size
buckets so that catalogues of similar size reuse one compilation.

Examples
--------
>>> import numpy as np
>>> from numpyro_clustermass.features import summarize
>>> mock = np.array([0, 0, 0, 1, 1, 1, 1])
>>> R = np.array([0.1, 0.5, 0.9, 0.2, 0.3, 0.4, 1.0])
>>> v = np.array([-300.0, 10.0, 250.0, -50.0, 40.0, 80.0, -120.0])
>>> m = np.array([10.1, 10.5, 9.8, 11.0, 10.2, 9.9, 10.0])
>>> cols = summarize(mock, R, v, m, num_mocks=2)
>>> cols["Ngal"].tolist()
[3, 4]
"""

from __future__ import annotations

import math
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_clustermass.catalog import FEATURE_NAMES, MOMENT_COLUMNS, Catalog, CatalogError

__all__ = ["summarize", "features_from_members", "survey_context", "FEATURE_NAMES", "MOMENT_COLUMNS",
           "SURVEY_CONTEXT_NAMES"]

_QUANTITIES = ("R", "m", "v")


def _bucket(n: int) -> int:
    """Round n up to a size bucket (at most 12.5% larger) so that similar sizes share one compilation."""
    if n <= 1024:
        return 1024
    step = 2 ** (int(math.floor(math.log2(n))) - 3)
    return int(math.ceil(n / step) * step)


@partial(jax.jit, static_argnames=("num_segments",))
def _moments_kernel(seg, values, weight, num_segments):
    """Per-segment count, mean, ddof=0 std, g1, g2 of each column of ``values`` (n, k), weights 0/1.

    Returns ``count`` (S,), ``mean``, ``std``, ``skew``, ``kurt`` (S, k), and ``var1`` (S, k), the ddof=1
    variance. Segments with too few entries give NaN for the undefined moments.
    """
    w = weight[:, None]
    count = jax.ops.segment_sum(weight, seg, num_segments=num_segments)
    total = jax.ops.segment_sum(values * w, seg, num_segments=num_segments)
    safe = jnp.maximum(count, 1.0)[:, None]
    mean = total / safe
    # one refinement step: the float32 sum of many similar values is off by several ulps of their mean,
    # which would leave identical values a spread of rounding noise; the residuals' mean corrects it
    mean = mean + jax.ops.segment_sum((values - mean[seg]) * w, seg, num_segments=num_segments) / safe
    d = (values - mean[seg]) * w
    d2 = d * d
    m2 = jax.ops.segment_sum(d2, seg, num_segments=num_segments) / safe
    m3 = jax.ops.segment_sum(d2 * d, seg, num_segments=num_segments) / safe
    m4 = jax.ops.segment_sum(d2 * d2, seg, num_segments=num_segments) / safe
    c = count[:, None]
    nan = jnp.nan
    # A segment with zero spread has undefined shape moments; scipy returns NaN there too. A spread below a
    # few ulps of the mean is rounding noise (it gave identical values std 1e-8, skew -1, kurt -2): no spread.
    constant = m2 <= (4.0 * jnp.finfo(values.dtype).eps * jnp.abs(mean)) ** 2
    m2 = jnp.where(constant, 0.0, m2)
    m3 = jnp.where(constant, 0.0, m3)
    m4 = jnp.where(constant, 0.0, m4)
    ok = (c >= 2) & (m2 > 0)
    std = jnp.where(c >= 1, jnp.sqrt(m2), nan)
    var1 = jnp.where(c >= 2, m2 * c / jnp.maximum(c - 1.0, 1.0), nan)
    m2s = jnp.where(ok, m2, 1.0)
    skew = jnp.where(ok, m3 / m2s**1.5, nan)
    kurt = jnp.where(ok, m4 / (m2s * m2s) - 3.0, nan)
    mean = jnp.where(c >= 1, mean, nan)
    return count, mean, std, skew, kurt, var1


def summarize(
    mock: np.ndarray,
    R: np.ndarray,
    v: np.ndarray,
    log_mstar: np.ndarray,
    num_mocks: int | None = None,
    mask: np.ndarray | None = None,
) -> dict[str, np.ndarray]:
    """Reduce a member table to the lecture's per-mock columns.

    Parameters
    ----------
    mock : int array (n_gal,)
        Index of the mock observation each galaxy belongs to, in ``[0, num_mocks)``; need not be sorted.
    R, v, log_mstar : float arrays (n_gal,)
        Projected radius [Mpc/h], line-of-sight velocity [km/s], log10 stellar mass.
    num_mocks : int, optional
        Number of mocks (rows of the output); defaults to ``mock.max() + 1``.
    mask : bool array (n_gal,), optional
        Use only these galaxies (e.g. true members, to get interloper-free statistics).

    Returns
    -------
    dict
        ``Ngal`` (int32), ``sigv`` and the 12 moment columns (float32), each of length ``num_mocks``.
        Mocks with fewer than 2 galaxies (or no spread) hold NaN for the undefined moments.
    """
    mock = np.asarray(mock)
    # Columns in the order of _QUANTITIES: R, m (= log_mstar), v.
    arrays = [np.asarray(a, dtype=np.float64) for a in (R, log_mstar, v)]
    n = mock.shape[0]
    for name, a in zip(("R", "log_mstar", "v"), arrays):
        if a.shape != (n,):
            raise CatalogError(f"member column {name!r} has shape {a.shape}; expected ({n},) like 'mock'")
        bad = ~np.isfinite(a)
        if bad.any():
            raise CatalogError(f"member column {name!r}: {int(bad.sum())} of {n} rows are NaN or infinite")
    if n and (not np.issubdtype(mock.dtype, np.integer) or mock.min() < 0):
        raise CatalogError("member column 'mock' must hold non-negative integer mock indices")
    if num_mocks is None:
        num_mocks = int(mock.max()) + 1 if n else 0
    if n and mock.max() >= num_mocks:
        raise CatalogError(f"member column 'mock' has index {int(mock.max())} >= num_mocks={num_mocks}")
    weight = np.ones(n, dtype=np.float32) if mask is None else np.asarray(mask, dtype=np.float32)

    # Pad galaxies and segments to buckets; padded galaxies go to a dummy segment with weight 0.
    n_pad, s_pad = _bucket(n), _bucket(num_mocks + 1)
    seg = np.full(n_pad, s_pad - 1, dtype=np.int32)
    seg[:n] = mock
    vals = np.zeros((n_pad, 3), dtype=np.float32)
    for j, a in enumerate(arrays):
        vals[:n, j] = a
    w = np.zeros(n_pad, dtype=np.float32)
    w[:n] = weight
    count, mean, std, skew, kurt, var1 = jax.device_get(
        _moments_kernel(jnp.asarray(seg), jnp.asarray(vals), jnp.asarray(w), num_segments=s_pad)
    )
    out: dict[str, np.ndarray] = {"Ngal": np.asarray(count[:num_mocks]).round().astype(np.int32)}
    out["sigv"] = np.sqrt(var1[:num_mocks, _QUANTITIES.index("v")]).astype(np.float32)
    for j, q in enumerate(_QUANTITIES):
        out[f"{q}_mean"] = mean[:num_mocks, j].astype(np.float32)
        out[f"{q}_std"] = std[:num_mocks, j].astype(np.float32)
        out[f"{q}_skew"] = skew[:num_mocks, j].astype(np.float32)
        out[f"{q}_kurt"] = kurt[:num_mocks, j].astype(np.float32)
    return out


def features_from_members(members: dict[str, np.ndarray], num_mocks: int | None = None) -> np.ndarray:
    """The (n_mocks, 14) feature matrix of :data:`FEATURE_NAMES` straight from a member table.

    ``members`` holds ``mock``, ``R``, ``v`` and ``log_mstar`` (extra columns are ignored).
    """
    cols = summarize(members["mock"], members["R"], members["v"], members["log_mstar"], num_mocks=num_mocks)
    x = np.empty((cols["Ngal"].shape[0], len(FEATURE_NAMES)), dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        x[:, 0] = np.log10(cols["Ngal"].astype(np.float64))
        x[:, 1] = np.log10(cols["sigv"].astype(np.float64))
    for j, name in enumerate(MOMENT_COLUMNS):
        x[:, 2 + j] = cols[name]
    return x


# ---------------------------------------------------------------------------------------------- survey context
#: The catalogue-level summaries :func:`survey_context` appends to every row, in this order.
SURVEY_CONTEXT_NAMES = (
    "ctx_Ngal_at_sigv",    # intercept of LogNgal on (Logsigv - 2.7): richness at sigma_v = 500 km/s
    "ctx_Ngal_sigv_slope",  # its slope
    "ctx_sigv_at_R",       # intercept of Logsigv on (log10 R_mean + 0.15): sigma_v at R_mean = 0.71 Mpc/h
    "ctx_Ngal_at_R",       # intercept of LogNgal on (log10 R_mean + 0.15)
    "ctx_v_kurt",          # median excess kurtosis of the velocities (interlopers widen the wings)
    "ctx_R_mean",          # median mean projected radius of the members
    "ctx_Ngal_p90",        # 90th percentile of LogNgal: the richness function's tail
    "ctx_Ngal_p99",        # its 99th percentile
    "ctx_sigv_Ngal_slope",  # slope of Logsigv on (LogNgal - 1.3), the inverse regression of the first
)
#: Fewest rows a survey needs for its summaries (each is a fit or a median over its rows).
MIN_SURVEY_ROWS = 50


def _survey_summaries(n: np.ndarray, s: np.ndarray, r_mean: np.ndarray, v_kurt: np.ndarray) -> np.ndarray:
    """The :data:`SURVEY_CONTEXT_NAMES` values of one survey from its LogNgal, Logsigv, R_mean, v_kurt rows."""
    lr = np.log10(r_mean) + 0.15
    slope, at_sigv = np.polyfit(s - 2.7, n, 1)
    sigv_at_r = np.polyfit(lr, s, 1)[1]
    ngal_at_r = np.polyfit(lr, n, 1)[1]
    p90, p99 = np.percentile(n, [90.0, 99.0])
    sigv_slope = np.polyfit(n - 1.3, s, 1)[0]
    return np.array([at_sigv, slope, sigv_at_r, ngal_at_r, np.median(v_kurt), np.median(r_mean), p90, p99,
                     sigv_slope])


def survey_context(catalog, by: str | None = "sub_volume", survey=None):
    """The catalogue with :data:`SURVEY_CONTEXT_NAMES` columns: summaries of the survey each row belongs to.

    One cluster's features cannot tell a universe whose galaxies are more numerous per halo (or whose
    velocities are biased, or whose background is denser) from one with heavier halos. A whole survey can:
    its richness-dispersion relation, its dispersion-radius relation (galaxy positions scale with R200c,
    velocities with the velocity bias too) and its interloper wings are the same for every cluster of one
    universe. Appending them to every row and training across the simulator's family
    (``mock_catalog(..., nuisance="prior", sub_volume=0.01)``, one universe per sub-volume) lets a network
    learn the mass likelihood *given the survey*, i.e. calibrate the occupation and interloper model on the
    catalogue it is applied to (docs/nuisance.md measures what this buys, and what it does not).

    Each summary is a least-squares line, a median or a percentile over the survey's rows: the intercepts of
    LogNgal on ``Logsigv - 2.7`` (and its slope), of Logsigv and of LogNgal on ``log10(R_mean) + 0.15``, the
    medians of ``v_kurt`` and ``R_mean``, the 90th and 99th percentiles of LogNgal, and the slope of Logsigv
    on ``LogNgal - 1.3``. The last three carry the occupation's slope, which the first six leave open
    (``benchmarks/context_identification.py``). They depend on the survey's mass distribution, so compute them
    from a catalogue selected the way the training surveys were (the natural-mass, Ngal-cut catalogue), and
    pass it as ``survey`` when the rows to be scored are sampled otherwise (a flat-mass test set).

    Parameters
    ----------
    catalog : Catalog
        Rows to annotate (the lecture's columns).
    by : str or None
        Column naming each row's survey (default ``"sub_volume"``, the simulator's universe index, which is
        not a feature itself); None, or a catalogue without that column: the whole catalogue is one survey.
        Ignored when ``survey`` is given.
    survey : Catalog, optional
        The catalogue whose summaries every row of ``catalog`` gets.

    Returns
    -------
    Catalog
        A new catalogue (members and metadata carried along) with the nine float64 context columns;
        ``meta["survey_context"]`` records how they were computed. Train with
        ``MDN(..., feature_names=FEATURE_NAMES + SURVEY_CONTEXT_NAMES)``.

    Raises
    ------
    CatalogError
        A survey with fewer than :data:`MIN_SURVEY_ROWS` rows, or a non-positive ``R_mean``.

    Examples
    --------
    >>> from numpyro_clustermass.simulate import mock_catalog
    >>> fam = mock_catalog(volume=0.02, seed=0, nuisance="prior", sub_volume=0.01)
    >>> ctx = survey_context(fam)
    >>> [len(set(ctx[c].tolist())) for c in SURVEY_CONTEXT_NAMES]  # two universes, two values each
    [2, 2, 2, 2, 2, 2, 2, 2, 2]
    """
    if not isinstance(catalog, Catalog) or (survey is not None and not isinstance(survey, Catalog)):
        raise TypeError("survey_context takes Catalog objects (catalog, and survey when given)")
    source = catalog if survey is None else survey
    for c in ("Ngal", "sigv", "R_mean", "v_kurt"):
        if c not in source:
            raise CatalogError(f"survey_context: the survey catalogue lacks the column {c!r}")
    if len(source) < MIN_SURVEY_ROWS:
        raise CatalogError(f"survey_context: the survey catalogue has {len(source)} rows, fewer than "
                           f"{MIN_SURVEY_ROWS}; its summaries would be noise")
    cols = [np.asarray(source[c], dtype=np.float64) for c in ("LogNgal", "Logsigv", "R_mean", "v_kurt")]
    if np.any(cols[2] <= 0):
        raise CatalogError("survey_context: R_mean must be positive (it is a mean projected radius in Mpc/h)")
    group = by if survey is None and by is not None and by in catalog else None
    labels = np.zeros(len(source), dtype=np.int64) if group is None else np.asarray(catalog[group])
    keys, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    if counts.min() < MIN_SURVEY_ROWS:
        small = keys[counts < MIN_SURVEY_ROWS][:5].tolist()
        raise CatalogError(
            f"survey_context: {int((counts < MIN_SURVEY_ROWS).sum())} survey(s) have fewer than "
            f"{MIN_SURVEY_ROWS} rows (first: {small} with {counts.min()} rows); their summaries would be noise"
        )
    table = np.stack([_survey_summaries(*(c[inverse == k] for c in cols)) for k in range(len(keys))])
    values = table[inverse] if survey is None else np.broadcast_to(table[0], (len(catalog), table.shape[1]))
    columns = dict(catalog.columns)
    for j, name in enumerate(SURVEY_CONTEXT_NAMES):
        columns[name] = np.array(values[:, j], dtype=np.float64)
    meta = dict(catalog.meta)
    meta["survey_context"] = {"names": list(SURVEY_CONTEXT_NAMES), "num_surveys": len(keys), "by": group,
                              "from_other_catalog": survey is not None, "survey_rows": int(len(source))}
    return Catalog(columns, members=catalog.members, meta=meta, validate=False)
