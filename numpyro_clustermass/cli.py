"""Command line: ``numpyro-clustermass {quickstart, simulate, info, train, predict, evaluate, compare}``.

``quickstart`` runs the main job on default mock data; ``simulate`` writes a catalogue file; ``info``
validates and summarises a catalogue file (FITS in the lecture's schema, or Parquet). ``train`` fits an
estimator (``--estimator mdn|mse|msigma|flow``) with any registered inference method to a catalogue and saves
the fit in one file (``.ncm``); ``predict`` turns a saved fit and a catalogue into a table (FITS, Parquet or
CSV) of per-cluster posterior statistics; ``evaluate`` scores a saved fit on a catalogue with true masses
(overall and per-mass-bin tables, coverage, the lecture's figures); ``compare`` puts several saved fits side
by side on one catalogue against a reference fit (``diagnostics.compare``: a markdown report, tables, figures
and each fit's ArviZ object as netCDF). ``predict`` and ``evaluate`` reweight the posteriors to another mass
prior with ``--prior`` (``flat:13.5,15.3``, ``tinker08``, ...).

Examples
--------
.. code-block:: bash

    numpyro-clustermass simulate cat.fits --volume 0.1
    numpyro-clustermass train cat.fits --out fit.ncm --estimator mdn --hidden 64,64 --epochs 50
    numpyro-clustermass predict fit.ncm test.fits --out masses.parquet --prior flat:13.5,15.3
    numpyro-clustermass evaluate fit.ncm test.fits --out report/ --prior tinker08
    numpyro-clustermass compare map.ncm bbb.ncm nuts.ncm --catalog test.fits --reference nuts --out cmp/

Bad input never ends in a Python traceback: a bad option value gets argparse's usage error, and a file or
folder that cannot be used (missing, a directory, an unknown suffix, unreadable, no rows, a corrupt fit
file, an output folder that does not exist) gets one line on stderr, ``numpyro-clustermass: error: ...``,
naming the path and the fix. Both exit with status 2. Paths, option values and the estimator spec are
checked before any simulation or training runs. Any other failure is one line and exit status 1;
``--debug`` (before or after the command) shows the full traceback instead. Warnings are one line each,
``numpyro-clustermass: warning: ...``. Ctrl-C during ``train`` saves the best state so far next to the
output (``FIT.checkpoint.ncm`` for ``--out FIT.ncm``), says where on stderr, and exits with status 130;
``train --resume`` continues from it.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import time
import warnings

from numpyro_clustermass.catalog import FORMAT_SUFFIXES as SUFFIXES  # the suffixes read_catalog recognises
from numpyro_clustermass.catalog import atomic_target

PROG = "numpyro-clustermass"
#: Exit status of every usage or input error (argparse's convention).
EXIT_USAGE = 2
#: Exit status of any other failure (a diverged fit, an unexpected error).
EXIT_FAILURE = 1
#: Exit status after Ctrl-C (128 + SIGINT, the shell's convention).
EXIT_INTERRUPTED = 130

#: Suffixes of the table formats ``predict`` writes.
TABLE_SUFFIXES = {**SUFFIXES, "csv": (".csv",)}
#: Recommended suffix of a saved fit.
FIT_SUFFIX = ".ncm"
#: Estimators ``train --estimator`` builds.
ESTIMATORS = ("mdn", "mse", "msigma", "flow")
#: Quantile levels of the ``predict`` table and their column names.
TABLE_QUANTILES = {"q16": 0.16, "q84": 0.84, "q025": 0.025, "q975": 0.975}
#: Catalogue columns copied into the ``predict`` table when present (identifiers; the truth is added apart).
ID_COLUMNS = ("halo_id", "los")
#: Defaults shown in ``train --help`` (the estimators' and ``fit``'s own defaults).
DEFAULT_COMPONENTS = 16
DEFAULT_HIDDEN = (128, 128, 64)
DEFAULT_MSIGMA_FEATURES = ("Logsigv",)


class CLIError(Exception):
    """A bad input found by the command line: printed as one line on stderr, exit status 2."""


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


# ---------------------------------------------------------------------------------------------- option types
def _finite_positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"must be a finite number > 0; got {text!r}")
    return value


def _int_at_least(minimum: int):
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}; got {text!r}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _fraction(text: str) -> float:
    """A number in [0, 1) (validation fraction, dropout rate)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"must be a number in [0, 1); got {text!r}")
    return value


def _patience(text: str) -> int | None:
    if text.strip().lower() == "none":
        return None
    return _int_at_least(1)(text)


def _widths(text: str) -> tuple[int, ...]:
    """``128,128,64`` -> (128, 128, 64)."""
    parts = [p.strip() for p in text.split(",")]
    try:
        widths = tuple(int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be comma-separated layer widths such as 128,128,64; got {text!r}") \
            from None
    if not widths or any(w < 1 for w in widths):
        raise argparse.ArgumentTypeError(f"layer widths must be integers >= 1; got {text!r}")
    return widths


def _names(text: str) -> tuple[str, ...]:
    names = tuple(p.strip() for p in text.split(","))
    if not names or any(not n for n in names):
        raise argparse.ArgumentTypeError(f"must be comma-separated column names such as Logsigv,LogNgal; got {text!r}")
    return names


def _key_value(text: str) -> tuple[str, object]:
    """``KEY=VALUE`` -> (KEY, VALUE parsed as JSON when it is JSON, else the string)."""
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key.isidentifier():
        raise argparse.ArgumentTypeError(f"must be KEY=VALUE with KEY an option name, e.g. learning_rate=3e-4; "
                                         f"got {text!r}")
    try:
        value = json.loads(raw)
    except ValueError:
        value = raw
    return key, value


def parse_options(pairs, learning_rate: float | None = None) -> dict:
    """Method options from ``--option KEY=VALUE`` pairs (and ``--learning-rate``); a key given twice is an error.

    Examples
    --------
    >>> parse_options([("schedule", "constant"), ("clip_norm", 1.0)], learning_rate=3e-4)
    {'schedule': 'constant', 'clip_norm': 1.0, 'learning_rate': 0.0003}
    """
    options: dict = {}
    for key, value in pairs or ():
        if key in options:
            raise CLIError(f"--option {key} is given twice ({options[key]!r} and {value!r}); give it once")
        options[key] = value
    if learning_rate is not None:
        if "learning_rate" in options:
            raise CLIError(f"--learning-rate {learning_rate:g} and --option learning_rate={options['learning_rate']!r} "
                           f"both set the learning rate; give one")
        options["learning_rate"] = learning_rate
    return options


# ---------------------------------------------------------------------------------------------- priors
def parse_prior(spec: str | None):
    """A ``--prior`` spec -> a :mod:`numpyro_clustermass.priors` prior, or None for no reweighting.

    ``none`` (or ``training``): keep the fit's own prior. ``flat`` or ``flat:LO,HI``: flat in log10 M (default
    the lecture's 13.5-15.3). ``tinker08``, or any colossus mass-function model, optionally ``:LO,HI``: the
    halo mass function at the lecture's redshift and cosmology over that range.

    Examples
    --------
    >>> parse_prior("flat:13.5,15.3")
    Flat(13.5, 15.3)
    >>> parse_prior("none") is None
    True
    """
    if spec is None:
        return None
    text = spec.strip()
    name, sep, rng = text.partition(":")
    name = name.strip().lower()
    if name in ("none", "training") and not sep:
        return None
    from numpyro_clustermass import priors

    help_text = ("use flat, flat:LO,HI (log10 M), tinker08 or another colossus mass-function model (optionally "
                 "MODEL:LO,HI), or none")
    lo, hi = priors.LOG_MASS_RANGE
    if sep:
        parts = rng.split(",")
        try:
            if len(parts) != 2:
                raise ValueError
            lo, hi = (float(p) for p in parts)
        except ValueError:
            raise CLIError(f"--prior {spec!r}: the range must be two numbers LO,HI such as 13.5,15.3; "
                           f"{help_text}") from None
        if not (math.isfinite(lo) and math.isfinite(hi) and lo < hi):
            raise CLIError(f"--prior {spec!r}: the range must be finite with LO < HI; got {lo:g},{hi:g}")
    if name == "flat":
        return priors.Flat(lo, hi)
    if not name:
        raise CLIError(f"--prior {spec!r} names no prior; {help_text}")
    from colossus.lss import mass_function as cmf

    if name not in cmf.models:
        raise CLIError(f"unknown --prior {spec!r}; {help_text} (colossus models: {', '.join(sorted(cmf.models))})")
    try:
        return priors.MassFunction(name, lo=lo, hi=hi)
    except ValueError as exc:
        raise CLIError(f"--prior {spec!r}: {_one_line(exc)}") from None


# ---------------------------------------------------------------------------------------------- path checks
def _catalog_format(path: str, fmt: str | None) -> str:
    """The format of ``path``: ``fmt`` if given (``--format``), else from the suffix."""
    if fmt is not None:
        return fmt
    low = path.lower()
    for name, suffixes in SUFFIXES.items():
        if low.endswith(suffixes):
            return name
    raise CLIError(f"cannot tell the format of {path!r} from its suffix; name the file *.fits or *.parquet, or "
                   f"pass --format fits or --format parquet")


def _table_format(path: str, fmt: str | None) -> str:
    if fmt is not None:
        return fmt
    low = path.lower()
    for name, suffixes in TABLE_SUFFIXES.items():
        if low.endswith(suffixes):
            return name
    raise CLIError(f"cannot tell the table format of {path!r} from its suffix; name it *.fits, *.parquet or "
                   f"*.csv, or pass --format fits, parquet or csv")


def _check_input_file(path: str, what: str = "a catalogue file (.fits or .parquet)") -> None:
    if not os.path.exists(path):
        raise CLIError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise CLIError(f"{path!r} is a directory; give the path of {what}")
    if not os.access(path, os.R_OK):
        raise CLIError(f"cannot read {path!r}: permission denied")


def _check_output_file(path: str, example: str = "catalog.fits") -> None:
    """The output can be written: not a directory, in a folder that exists and is writable."""
    if path == "" or path.endswith(os.sep):
        raise CLIError(f"{path!r} is not a file name; give a path such as {example}")
    if os.path.isdir(path):
        example = os.path.join(path, example)
        raise CLIError(f"{path!r} is a directory; give a file name inside it, such as {example!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CLIError(f"the output folder {os.path.dirname(path) or folder!r} does not exist; create it first "
                       f"(mkdir -p {os.path.dirname(path) or folder}) or write elsewhere")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CLIError(f"cannot write in the output folder {folder!r}: permission denied")


def _check_output_folder(path: str) -> None:
    """``quickstart --out``, ``evaluate --out``: a folder that exists, or one that can be created."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CLIError(f"--out {path!r} is a file, not a folder; give a folder name")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise CLIError(f"--out {path!r}: {existing!r} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(f"--out {path!r}: cannot write in {existing!r}: permission denied")


def checkpoint_path(out: str) -> str:
    """Where ``train --out OUT`` keeps its checkpoints and the state saved on Ctrl-C: ``fit.ncm`` ->
    ``fit.checkpoint.ncm`` (``fit`` -> ``fit.checkpoint``), in the same folder.

    Examples
    --------
    >>> checkpoint_path("runs/fit.ncm")
    'runs/fit.checkpoint.ncm'
    """
    stem, suffix = os.path.splitext(out)
    return f"{stem}.checkpoint{suffix}"


def _read_catalog(path: str, fmt: str):
    from numpyro_clustermass.catalog import CatalogError, read_catalog

    try:
        cat = read_catalog(path, format=fmt)
    except CatalogError as exc:
        raise CLIError(f"invalid catalogue {path!r}: {_one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure on a user's file is an input error here
        raise CLIError(f"cannot read {path!r} as {fmt}: {type(exc).__name__}: {_one_line(exc)}; check that "
                       f"it is a {fmt} catalogue (or pass --format)") from None
    if len(cat) == 0:
        raise CLIError(f"{path!r} holds a catalogue with 0 rows")
    return cat


def _load_fit(path: str):
    """``numpyro_clustermass.load(path)``; a missing, damaged or foreign file is one CLIError line."""
    _check_input_file(path, f"a saved fit (a {FIT_SUFFIX} file written by train)")
    from numpyro_clustermass import FitFileError, load

    try:
        return load(path)
    except FitFileError as exc:
        msg, where = _one_line(exc), repr(path)
        if msg.startswith(where + ": "):  # the message names the file already
            raise CLIError(f"cannot load the fit {where}: {msg[len(where) + 2:]}") from None
        raise CLIError(f"cannot load the fit: {msg}" if where in msg else f"cannot load the fit {where}: {msg}") \
            from None
    except OSError as exc:
        raise CLIError(f"cannot read the fit {path!r}: {_one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - a damaged file may fail below the format's own checks
        raise CLIError(f"cannot load the fit {path!r}: it is damaged or not a fit file ({type(exc).__name__}: "
                       f"{_one_line(exc)})") from None


def _atomic_write(path: str, write) -> None:
    """``write(tmp)`` into a temporary file next to ``path``, then rename it to ``path``."""
    tmp, path = atomic_target(path)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


# ---------------------------------------------------------------------------------------------- estimators
def build_estimator(kind: str = "mdn", *, components: int | None = None, hidden=None, dropout: float | None = None,
                    features=None):
    """The estimator of a ``train`` spec; an option that does not apply to ``kind`` is a CLIError.

    Examples
    --------
    >>> build_estimator("mdn", components=4, hidden=(32, 32)).config()["num_components"]
    4
    >>> build_estimator("msigma", features=("Logsigv", "LogNgal")).feature_names
    ('Logsigv', 'LogNgal')
    """
    from numpyro_clustermass.estimators import MDN, MSE, Flow
    from numpyro_clustermass.scaling import MassObservableRelation

    if kind not in ESTIMATORS:
        raise CLIError(f"unknown --estimator {kind!r}; use one of {', '.join(ESTIMATORS)}")
    given = {"--components": components, "--hidden": hidden, "--dropout": dropout}
    if kind == "mse" and components is not None:
        raise CLIError("--components applies to --estimator mdn only, and to flow as its spline bins (the MSE regressor "
                       "has a point head)")
    if kind == "msigma":
        bad = [flag for flag, value in given.items() if value is not None]
        if bad:
            raise CLIError(f"{', '.join(bad)} {'does' if len(bad) == 1 else 'do'} not apply to --estimator msigma "
                           f"(a power-law M-sigma relation has no network); choose its observables with --features")
    kw = {}
    if features is not None:
        kw["feature_names"] = tuple(features)
    try:
        if kind == "msigma":
            return MassObservableRelation(**{"feature_names": DEFAULT_MSIGMA_FEATURES, **kw})
        kw["hidden"] = DEFAULT_HIDDEN if hidden is None else tuple(hidden)
        if dropout is not None:
            kw["dropout_rate"] = dropout
        if kind == "mse":
            return MSE(**kw)
        if kind == "flow":  # --components: the spline's bins
            return Flow(num_bins=DEFAULT_COMPONENTS if components is None else components, **kw)
        return MDN(num_components=DEFAULT_COMPONENTS if components is None else components, **kw)
    except (TypeError, ValueError) as exc:
        raise CLIError(f"--estimator {kind}: {_one_line(exc)}") from None


# ---------------------------------------------------------------------------------------------- predict
def posterior_table(fit_obj, cat, prior=None, num_draws: int | None = None, seed: int | None = None):
    """One row per catalogue row: posterior statistics of log10 M (and ids and the true mass when present).

    Columns: ``halo_id`` and ``los`` (when the catalogue has them), ``log_mass`` (the true mass, when present),
    then ``mean``, ``median``, ``mode``, ``q16``, ``q84``, ``q025``, ``q975`` (quantiles at 16, 84, 2.5 and
    97.5%), ``std`` (of the posterior density), ``aleatoric_std`` and ``epistemic_std`` (the split of the
    predictive variance; zero epistemic for point fits). With ``prior`` the posterior is first reweighted
    from the fit's training prior to ``prior`` (the split then keeps its proportions).

    Returns
    -------
    (pandas.DataFrame, MassPosterior)
    """
    import numpy as np
    import pandas as pd

    from numpyro_clustermass.catalog import CatalogError

    try:
        post = fit_obj.posterior(cat, num_draws=num_draws, seed=seed)
        if prior is not None:
            post = post.reweight(prior)
    except (CatalogError, ValueError) as exc:
        raise CLIError(_one_line(exc)) from None
    columns = {}
    for name in ID_COLUMNS:
        if name in cat:
            columns[name] = np.asarray(cat[name])
    if "M200c" in cat or "log_mass" in cat:
        columns["log_mass"] = np.asarray(cat.log_mass, dtype=np.float64)
    q = post.quantiles(list(TABLE_QUANTILES.values()))
    columns["mean"] = post.mean()
    columns["median"] = post.median()
    columns["mode"] = post.mode()
    for k, name in enumerate(TABLE_QUANTILES):
        columns[name] = q[k]
    columns["std"] = post.std()
    columns["aleatoric_std"] = np.sqrt(np.asarray(post.aleatoric_variance))
    columns["epistemic_std"] = np.sqrt(np.asarray(post.epistemic_variance))
    return pd.DataFrame(columns), post


def write_table(df, path: str, fmt: str, meta: dict | None = None) -> None:
    """Write ``df`` to FITS (``meta`` in the header), Parquet (``meta`` as JSON schema metadata) or CSV, atomically."""
    meta = {k: str(v) for k, v in (meta or {}).items()}
    if fmt == "fits":
        from astropy.io import fits
        from astropy.table import Table

        def write(tmp):
            hdu = fits.table_to_hdu(Table.from_pandas(df))
            hdu.name = "MASSES"
            for key, value in meta.items():
                hdu.header[f"HIERARCH NCM {key.upper()}"] = value
            fits.HDUList([fits.PrimaryHDU(), hdu]).writeto(tmp, overwrite=True, checksum=True)
    elif fmt == "parquet":
        import pyarrow as pa
        import pyarrow.parquet as pq

        def write(tmp):
            table = pa.Table.from_pandas(df, preserve_index=False)
            table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                                   b"numpyro_clustermass": json.dumps(meta).encode()})
            pq.write_table(table, tmp, write_page_checksum=True)
    elif fmt == "csv":
        def write(tmp):
            df.to_csv(tmp, index=False)  # floats as their shortest round-trip repr: read back bit for bit
    else:
        raise CLIError(f"unknown table format {fmt!r}; use fits, parquet or csv")
    try:
        _atomic_write(path, write)
    except OSError as exc:
        raise CLIError(f"cannot write {path!r}: {_one_line(exc)}") from None


# ---------------------------------------------------------------------------------------------- evaluate
def _markdown(df, digits: int = 4) -> str:
    """A GitHub-flavoured markdown table (no dependency on ``tabulate``)."""
    import numpy as np

    def cell(v):
        if isinstance(v, (float, np.floating)):
            return "-" if not np.isfinite(v) else f"{float(v):.{digits}g}"
        return str(v)

    cols = [str(c) for c in df.columns]
    lines = ["| " + " | ".join(cols) + " |", "|" + "|".join("---" for _ in cols) + "|"]
    for row in df.itertuples(index=False):
        lines.append("| " + " | ".join(cell(v) for v in row) + " |")
    return "\n".join(lines)


#: Columns of the per-bin table shown in ``metrics.md`` (all are in ``binned.csv``).
_MD_BINNED = ("bin_lo", "bin_hi", "n", "bias_median", "scatter_68", "cov_central_68", "cov_central_95",
              "cov_hpd_68", "crps")
#: Columns of the overall table shown in ``metrics.md`` (all are in ``metrics.csv``).
_MD_SUMMARY = ("posterior", "estimate", "n", "bias_median", "scatter_68", "coverage_central_68",
               "coverage_central_95", "coverage_hpd_68", "pit_ks_pvalue", "crps_mean", "log_score_mean")


def evaluate_fit(fit_obj, cat, out: str, prior=None, num_draws: int | None = None, seed: int | None = None,
                 label: str = "") -> dict:
    """Score ``fit_obj`` on ``cat`` (which has true masses) and write tables and figures into ``out``.

    Writes ``metrics.csv`` (overall numbers of :func:`numpyro_clustermass.metrics.summary` per posterior and
    point estimate: mean and mode, before and, with ``prior``, after reweighting; the calibration columns
    belong to the posterior and are the same for both), ``binned.csv`` (Ho et al.'s per-0.1-dex-bin bias and
    scatter of both estimates, :func:`~numpyro_clustermass.metrics.binned`, with coverage, CRPS and log score
    per bin on the mode's rows), ``coverage.csv`` (central and HPD coverage at 5%, 10%, ..., 95% and 68%),
    ``coverage_by_bin.csv`` (68% and 95% central coverage with binomial errors per 0.1-dex bin of true mass,
    :func:`~numpyro_clustermass.metrics.coverage_by_bin`, per posterior), ``metrics.md`` (the main rows as
    markdown, with the per-bin coverage and, for a fit with a feature reference, the covariate-shift test of
    :func:`~numpyro_clustermass.diagnostics.covariate_shift` and the count of out-of-distribution clusters),
    ``summary.json`` and the lecture's figures: ``binned_predictions.png``, ``training_prior.png``,
    ``posterior_examples.png``, ``pit_histogram.png``, ``coverage_curve.png`` and ``coverage_by_bin.png`` (the
    last three for the reweighted posterior when there is one). Returns ``{name: path}`` of what was written.
    """
    import numpy as np
    import pandas as pd

    from numpyro_clustermass import metrics, plots
    from numpyro_clustermass.catalog import CatalogError
    from numpyro_clustermass.quickstart import write_summary_json

    if not ("M200c" in cat or "log_mass" in cat):
        raise CLIError("evaluate needs true masses: the catalogue has neither M200c nor log_mass")
    truth = np.asarray(cat.log_mass, dtype=np.float64)
    try:
        post = fit_obj.posterior(cat, num_draws=num_draws, seed=seed)
        posts = {"posterior": post}
        if prior is not None:
            posts["reweighted"] = post.reweight(prior)
    except (CatalogError, ValueError) as exc:
        raise CLIError(_one_line(exc)) from None
    main_label = "reweighted" if prior is not None else "posterior"
    main = posts[main_label]

    # the calibration numbers (coverage, PIT, CRPS, log score) belong to a posterior, not to a point estimate:
    # computed once per posterior; the posterior mean's bias and scatter come from its point values
    lo, hi = metrics.LOG_MASS_RANGE
    in_range = (truth >= lo) & (truth <= hi)
    levels = sorted(set(np.round(np.arange(1, 20) * 0.05, 2).tolist()) | {0.68})
    summary_rows, binned_tables, coverage_tables, points, by_bin_tables = [], [], [], {}, {}
    for name, p in posts.items():
        points[name] = {"mean": p.mean(), "mode": p.mode()}
        s_mode = metrics.summary(p, truth, estimator="mode")
        s_mean = {**s_mode, **metrics.residual_stats(points[name]["mean"][in_range] - truth[in_range])}
        s_mean["n_in_range"] = s_mean.pop("n")
        s_mean["n"] = s_mode["n"]
        for est, row in (("mean", s_mean), ("mode", s_mode)):
            summary_rows.append({"posterior": name, "estimate": est, **row})
            b = metrics.binned(p if est == "mode" else points[name]["mean"], truth)
            b.insert(0, "estimate", est)
            b.insert(0, "posterior", name)
            binned_tables.append(b)
        by_bin_tables[name] = metrics.coverage_by_bin(p, truth)
        for kind in ("central", "hpd"):
            c = metrics.coverage(p, truth, probs=levels, kind=kind)
            c.insert(0, "kind", kind)
            c.insert(0, "posterior", name)
            coverage_tables.append(c)
    summary = pd.DataFrame(summary_rows).drop(columns=["estimator"], errors="ignore")
    first = ["posterior", "estimate", "n", "n_in_range", "bias_median", "bias_mean", "scatter_std", "scatter_68"]
    summary = summary[[c for c in first if c in summary] + [c for c in summary if c not in first]]
    binned = pd.concat(binned_tables, ignore_index=True)
    coverage = pd.concat(coverage_tables, ignore_index=True)
    by_bin = pd.concat([t.assign(posterior=name)[["posterior", *t.columns]] for name, t in by_bin_tables.items()],
                       ignore_index=True)
    shift_lines = _shift_lines(fit_obj, cat, post)

    os.makedirs(out, exist_ok=True)
    paths = {name: os.path.join(out, name) for name in (
        "metrics.csv", "binned.csv", "coverage.csv", "metrics.md", "summary.json", "binned_predictions.png",
        "training_prior.png", "posterior_examples.png", "pit_histogram.png", "coverage_curve.png",
        "coverage_by_bin.csv", "coverage_by_bin.png")}
    for name, df in (("metrics.csv", summary), ("binned.csv", binned), ("coverage.csv", coverage),
                     ("coverage_by_bin.csv", by_bin)):
        _atomic_write(paths[name], lambda tmp, df=df: df.to_csv(tmp, index=False, float_format="%.7g"))

    mode_bins = binned[(binned.posterior == main_label) & (binned.estimate == "mode")]
    cov_main = coverage[(coverage.posterior == main_label) & coverage.nominal.isin([0.5, 0.68, 0.9, 0.95])]
    prior_text = repr(prior) if prior is not None else "none (the fit's training prior)"
    md = "\n\n".join([
        f"# Evaluation of {label or 'the fit'} on {len(cat)} clusters",
        f"Estimator {fit_obj.estimator.name!r}, method {fit_obj.method!r}; reweighting prior: {prior_text}.",
        "## Overall (bias and scatter over 13.5-15.3)",
        _markdown(summary[[c for c in _MD_SUMMARY if c in summary.columns]]),
        f"## Per mass bin ({main_label} posterior, mode)",
        _markdown(mode_bins[[c for c in _MD_BINNED if c in mode_bins.columns]]),
        f"## Coverage ({main_label} posterior)",
        _markdown(cov_main[["kind", "nominal", "empirical", "stderr", "n"]]),
        f"## Coverage per mass bin ({main_label} posterior, central intervals, binomial standard errors)",
        _markdown(by_bin_tables[main_label][by_bin_tables[main_label].n > 0].drop(columns=["bin_lo", "bin_hi"])),
        *shift_lines,
    ]) + "\n"
    def write_md(tmp):
        with open(tmp, "w") as fh:
            fh.write(md)

    _atomic_write(paths["metrics.md"], write_md)
    write_summary_json({f"{r['posterior']}_{r['estimate']}": {k: v for k, v in r.items()
                                                            if k not in ("posterior", "estimate")}
                        for r in summary_rows}, paths["summary.json"])

    estimates = {"posterior mean": points["posterior"]["mean"], "posterior mode": points["posterior"]["mode"]}
    if prior is not None:
        estimates["reweighted mode"] = points["reweighted"]["mode"]
    plots.binned_predictions(estimates, truth, path=paths["binned_predictions.png"])
    train_prior = post.prior if post.source_prior is None else None  # the scaling relation's is flat, not the data's
    plots.training_prior(np.asarray(fit_obj.training_log_mass), train_prior, path=paths["training_prior.png"])
    plots.posterior_examples(post, truth, reweighted=posts.get("reweighted"), path=paths["posterior_examples.png"])
    plots.pit_histogram(main, truth, path=paths["pit_histogram.png"])
    plots.coverage_curve(main, truth, path=paths["coverage_curve.png"])
    plots.coverage_by_bin(by_bin_tables[main_label], path=paths["coverage_by_bin.png"])
    return paths


def _shift_lines(fit_obj, cat, post) -> list[str]:
    """The metrics.md section on covariate shift (empty for a fit without a feature reference)."""
    reference = getattr(fit_obj, "feature_reference", None)
    if reference is None or post.ood_score is None:
        return []
    from numpyro_clustermass.diagnostics import covariate_shift

    count, expected, _ = reference.excess(post.ood_score)
    test = covariate_shift(fit_obj, cat)
    drivers = ", ".join(test.drivers) if test.drivers else "none"
    return [
        "## Covariate shift (catalogue against the training features)",
        f"{count} of {len(post)} clusters score beyond the out-of-distribution threshold "
        f"{reference.threshold:.2f} (about {expected:.1f} expected in distribution). Two-sample test (MMD, "
        f"{test.n_reference} training and {test.n_catalog} catalogue rows): statistic {test.statistic:.4g}, "
        f"p-value {test.pvalue:.3g}; features that differ (KS, Bonferroni at {test.level}): {drivers}.",
        _markdown(test.per_feature.head(5)),
    ]


# ---------------------------------------------------------------------------------------------- commands
def _cmd_simulate(args: argparse.Namespace) -> int:
    _check_output_file(args.output)
    fmt = _catalog_format(args.output, args.format)
    if args.n_halos is not None and args.mass_sampling != "flat":
        raise CLIError(f"--n-halos {args.n_halos} needs --mass-sampling flat (natural sampling draws the halo count "
                       f"from the mass function and --volume)")

    from numpyro_clustermass.catalog import write_catalog
    from numpyro_clustermass.simulate import mock_catalog

    t = time.perf_counter()
    cat = mock_catalog(
        volume=args.volume, mass_sampling=args.mass_sampling, n_halos=args.n_halos, seed=args.seed,
        with_members=args.members, verbose=args.verbose,
    )
    try:
        write_catalog(cat, args.output, format=fmt)
    except OSError as exc:
        raise CLIError(f"cannot write {args.output!r}: {_one_line(exc)}") from None
    print(cat.summary())
    print(f"wrote {args.output} in {time.perf_counter() - t:.1f} s "
          f"({cat.meta['n_mocks_cut_ngal_min']} mocks cut by Ngal >= 10)")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    _check_input_file(args.path)
    fmt = _catalog_format(args.path, args.format)
    cat = _read_catalog(args.path, fmt)
    print(cat.summary())
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    _check_output_folder(args.out)

    from numpyro_clustermass.quickstart import run_quickstart

    run_quickstart(volume=args.volume, seed=args.seed, out=args.out, fast=args.fast)
    return 0


def _save_fit(fit_obj, path: str) -> str:
    try:
        return str(fit_obj.save(path))
    except OSError as exc:
        raise CLIError(f"cannot write the fit to {path!r}: {_one_line(exc)}") from None
    except ValueError as exc:  # FitFileError: something in the fit that the file format cannot hold
        raise _Failure(f"cannot save the fit to {path!r}: {_one_line(exc)}") from None


def _kept(err: BaseException, path: str, what: str) -> str:
    """Save the fit a training error carries (``err.fit``) to ``path``; the clause that says where, or ''."""
    fit_obj = getattr(err, "fit", None)
    if fit_obj is None:
        return ""
    try:
        return f" [{what} is saved in {str(fit_obj.save(path))!r}]"
    except Exception as exc:  # noqa: BLE001 - the training error is the one to report
        return f" [{what} could not be saved: {type(exc).__name__}: {_one_line(exc)}]"


def _cmd_train(args: argparse.Namespace) -> int:
    # everything that can be checked without the catalogue is checked before reading it and before training
    _check_input_file(args.catalog)
    fmt = _catalog_format(args.catalog, args.catalog_format)
    _check_output_file(args.out, example=f"fit{FIT_SUFFIX}")
    ckpt = checkpoint_path(args.out)
    if os.path.isdir(ckpt):
        raise CLIError(f"the checkpoint path {ckpt!r} next to --out is a directory; remove it or choose another --out")
    options = parse_options(args.option, args.learning_rate)
    spec_given = any(v is not None for v in (args.estimator, args.components, args.hidden, args.dropout,
                                             args.features))
    estimator = (build_estimator(args.estimator or "mdn", components=args.components, hidden=args.hidden,
                                 dropout=args.dropout, features=args.features)
                 if spec_given or args.resume is None else None)

    from numpyro_clustermass.catalog import CatalogError
    from numpyro_clustermass.diagnostics import ConvergenceError
    from numpyro_clustermass.inference import FitDivergedError, FitInterrupted, available_methods, fit, make_options

    method = args.method
    if method is not None and method not in available_methods():
        raise CLIError(f"unknown --method {method!r}; the registered methods are {', '.join(available_methods())}")
    resume = None
    if args.resume is not None:
        resume = _load_fit(args.resume)
        if estimator is None:
            estimator = resume.estimator
        elif estimator.config() != resume.estimator.config():
            raise CLIError(f"--resume {args.resume!r} holds a {resume.estimator.config()} estimator, not the "
                           f"{estimator.config()} given; leave out the estimator options to continue it")
        if method is None:
            method = resume.method
        elif method != resume.method:
            raise CLIError(f"--resume {args.resume!r} was trained with --method {resume.method}, not {method}")
        if not options:  # continue with the options it was trained with
            options = dict(getattr(resume, "method_options", None) or {})
    method = method or "map"
    try:  # an unknown key or a bad value: one line naming the method's options, before reading the catalogue
        method_options = make_options(method, options)
    except (ValueError, TypeError) as exc:
        raise CLIError(f"--option: {_one_line(exc)}") from None
    cat = _read_catalog(args.catalog, fmt)
    t_start = time.perf_counter()

    settings = dict(method=method, seed=args.seed, num_epochs=args.epochs, batch_size=args.batch_size,
                    validation_fraction=args.validation_fraction, patience=args.patience,
                    progress_bar=not args.no_progress, checkpoint_every=args.checkpoint_every, resume=resume)
    try:
        result = fit(estimator, cat, checkpoint=ckpt, options=method_options, **settings)
    except FitInterrupted as stop:
        saved = getattr(stop, "checkpoint", None)
        if saved is None and stop.fit is not None:
            saved = _save_fit(stop.fit, ckpt)
        if saved is None:
            print(f"{PROG}: interrupted before the first epoch ended; nothing was saved", file=sys.stderr)
        else:
            epoch = stop.fit.info.best_epoch if stop.fit is not None else None
            which = f" (epoch {epoch})" if isinstance(epoch, int) and epoch >= 0 else ""
            print(f"{PROG}: interrupted; the best state so far{which} is saved in {str(saved)!r}: continue with "
                  f"--resume {saved}", file=sys.stderr)
        return EXIT_INTERRUPTED
    except FitDivergedError as err:
        raise _Failure(f"training diverged: {_one_line(err)}{_kept(err, ckpt, 'the last acceptable state')}") \
            from None
    except ConvergenceError as err:
        raise _Failure(f"the fit did not converge: {_one_line(err)}{_kept(err, ckpt, 'the unconverged fit')}") \
            from None
    except (CatalogError, ValueError, TypeError) as exc:
        raise CLIError(_one_line(exc)) from None
    saved = _save_fit(result, args.out)
    if os.path.abspath(ckpt) != os.path.abspath(saved) and os.path.isfile(ckpt):
        os.remove(ckpt)  # the finished fit supersedes its checkpoints
    best = result.info.best_val_loss
    loss = f", best validation loss {best:.4f}" if isinstance(best, float) and math.isfinite(best) else ""
    epochs = result.info.epochs_run
    ran = f"{epochs} epochs" if epochs is not None else "one run"
    print(f"trained {result.estimator.name} ({method}) on {len(cat)} clusters: {ran}{loss} in "
          f"{time.perf_counter() - t_start:.1f} s; wrote {saved}")
    return 0


def _fit_and_catalog(args: argparse.Namespace):
    """The checks shared by ``predict`` and ``evaluate``: input paths first, then the fit and the catalogue."""
    _check_input_file(args.fit, f"a saved fit (a {FIT_SUFFIX} file written by train)")
    _check_input_file(args.catalog)
    return _catalog_format(args.catalog, args.catalog_format)


def _cmd_predict(args: argparse.Namespace) -> int:
    fmt = _fit_and_catalog(args)
    _check_output_file(args.out, example="masses.parquet")
    table_fmt = _table_format(args.out, args.format)
    prior = parse_prior(args.prior)
    fit_obj = _load_fit(args.fit)
    cat = _read_catalog(args.catalog, fmt)
    t = time.perf_counter()
    df, post = posterior_table(fit_obj, cat, prior=prior, num_draws=args.num_draws, seed=args.seed)
    meta = {"fit": os.path.basename(args.fit), "catalog": os.path.basename(args.catalog),
            "estimator": fit_obj.estimator.name, "method": fit_obj.method,
            "prior": repr(prior) if prior is not None else "training", "num_draws": post.meta.get("num_draws"),
            "seed": fit_obj.seed if args.seed is None else args.seed}
    write_table(df, args.out, table_fmt, meta)
    print(f"wrote {len(df)} posteriors ({', '.join(c for c in df.columns if c not in ID_COLUMNS)}) to {args.out} "
          f"in {time.perf_counter() - t:.1f} s")
    return 0


def _cmd_evaluate(args: argparse.Namespace) -> int:
    fmt = _fit_and_catalog(args)
    _check_output_folder(args.out)
    prior = parse_prior(args.prior)
    fit_obj = _load_fit(args.fit)
    cat = _read_catalog(args.catalog, fmt)
    t = time.perf_counter()
    paths = evaluate_fit(fit_obj, cat, args.out, prior=prior, num_draws=args.num_draws, seed=args.seed,
                         label=os.path.basename(args.fit))
    with open(paths["metrics.md"]) as fh:
        print(fh.read().rstrip())
    print(f"wrote {len(paths)} tables and figures to {args.out}/ in {time.perf_counter() - t:.1f} s")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    specs = parse_fit_specs(args.fits)
    reference = None if args.reference.strip().lower() == "none" else args.reference.strip()
    if reference is not None and reference not in specs:
        raise CLIError(f"--reference {reference!r} is not among the fits ({', '.join(specs)}); name one of them "
                       f"(a fit is named by its file name without the suffix, or NAME=PATH), or --reference none")
    _check_output_folder(args.out)
    for path in specs.values():
        _check_input_file(path, f"a saved fit (a {FIT_SUFFIX} file written by train)")
    _check_input_file(args.catalog)
    fmt = _catalog_format(args.catalog, args.catalog_format)
    fits = {name: _load_fit(path) for name, path in specs.items()}
    cat = _read_catalog(args.catalog, fmt)
    t = time.perf_counter()
    paths, result = compare_report(fits, cat, args.out, reference=reference, num_draws=args.num_draws, seed=args.seed,
                                   sources=specs, catalog_name=os.path.basename(args.catalog))
    print(_markdown(_transposed(result.table)))
    for note in result.notes:
        print(f"- {note}")
    print(f"wrote {len(paths)} files (report.md, tables, figures, netCDF) to {args.out}/ in "
          f"{time.perf_counter() - t:.1f} s")
    return 0


# ---------------------------------------------------------------------------------------------- compare
def parse_fit_specs(specs) -> dict:
    """``compare``'s FIT arguments -> ``{name: path}``: ``NAME=PATH``, or a path, named by its file name without
    the suffix. A name is letters, digits, ``_``, ``-`` and ``.`` (it names the fit's netCDF file too); a name
    given twice is a CLIError.

    Examples
    --------
    >>> parse_fit_specs(["runs/nuts.ncm", "vi=runs/bbb.ncm"])
    {'nuts': 'runs/nuts.ncm', 'vi': 'runs/bbb.ncm'}
    """
    out: dict = {}
    for spec in specs:
        name, sep, path = spec.partition("=")
        if not sep or os.path.exists(spec):  # an existing path holding "=" is a path
            name, path = os.path.splitext(os.path.basename(spec.rstrip(os.sep)))[0], spec
        name = name.strip()
        if not name or not name.replace("_", "").replace("-", "").replace(".", "").isalnum() or name[0] == ".":
            raise CLIError(f"cannot name the fit {spec!r}: a name is letters, digits, '_', '-' and '.' (not first); "
                           f"give one as NAME=PATH")
        if not path:
            raise CLIError(f"{spec!r} names no file; give NAME=PATH")
        if name in out:
            raise CLIError(f"two fits are named {name!r} ({out[name]!r} and {path!r}); tell them apart with "
                           f"NAME=PATH")
        out[name] = path
    return out


def _transposed(table):
    """compare's table with one row per column and one column per fit, for markdown."""
    import pandas as pd

    rows = {"fit": list(table.columns)}
    for name in table.index:
        rows[str(name)] = [table.loc[name, col] for col in table.columns]
    return pd.DataFrame(rows)


def compare_report(fits: dict, cat, out: str, reference=None, num_draws: int | None = None, seed: int | None = None,
                   sources: dict | None = None, catalog_name: str = "") -> tuple:
    """Compare ``fits`` on ``cat`` (:func:`numpyro_clustermass.diagnostics.compare`) and write the report into ``out``.

    Writes ``report.md`` (the table in markdown, one column per fit, the notes, per-bin coverage, links to the
    figures and files), ``comparison.csv`` (the table at full precision, one row per fit), ``binned.csv`` and
    ``per_cluster.csv`` (compare's other tables), the figures ``compare_to_reference.png`` (with a reference) and
    ``coverage_by_mass.png`` (with true masses), and each fit's ArviZ object as ``NAME.nc`` (netCDF; read it back
    with ``az.from_netcdf``). Every file is written atomically. Returns ``({name: path}, Comparison)``.
    """
    from numpyro_clustermass import plots
    from numpyro_clustermass.catalog import CatalogError
    from numpyro_clustermass.diagnostics import arviz_to_netcdf, compare

    try:
        result = compare(fits, cat, reference=reference, num_draws=num_draws, seed=seed)
    except (CatalogError, ValueError) as exc:
        raise CLIError(_one_line(exc)) from None
    os.makedirs(out, exist_ok=True)
    paths: dict = {}

    def write(name, writer):
        path = os.path.join(out, name)
        try:
            _atomic_write(path, writer)
        except OSError as exc:
            raise CLIError(f"cannot write {path!r}: {_one_line(exc)}") from None
        paths[name] = path

    write("comparison.csv", lambda tmp: result.table.to_csv(tmp, index=True))
    write("binned.csv", lambda tmp: result.binned.to_csv(tmp, index=False))
    write("per_cluster.csv", lambda tmp: result.per_cluster.to_csv(tmp, index=False))
    figures = []
    if result.reference is not None:
        fig = plots.compare_to_reference(result)
        write("compare_to_reference.png", lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
        figures.append(("compare_to_reference.png", f"predictive mean and standard deviation against {reference}"))
    if len(result.binned):
        fig = plots.coverage_by_mass(result)
        write("coverage_by_mass.png", lambda tmp: fig.savefig(tmp, dpi=120, bbox_inches="tight", format="png"))
        figures.append(("coverage_by_mass.png", "coverage per bin of true mass"))
    for name, idata in result.idata.items():
        write(f"{name}.nc", lambda tmp, idata=idata: arviz_to_netcdf(idata, tmp))

    sources = sources or {}
    lines = [f"# {len(fits)} fits compared on {catalog_name or 'the catalogue'}", "",
             f"{result.table['n_clusters'].iloc[0]} clusters; reference: "
             f"{'`' + reference + '`' if reference is not None else 'none'}. Fits: "
             + ", ".join(f"`{n}` ({f.method}{', ' + os.path.basename(sources[n]) if n in sources else ''})"
                         for n, f in fits.items()) + ".", "",
             "## Table", "", "Columns are explained in docs/compare.md; comparison.csv holds them at full precision.",
             "", _markdown(_transposed(result.table)), "", "## Notes", ""]
    lines += [f"- {note}" for note in result.notes] or ["(none)"]
    if len(result.binned):
        lines += ["", "## Coverage per mass bin (central intervals)", ""]
        cov = [c for c in result.binned.columns if str(c).startswith("coverage_")]
        filled = result.binned[result.binned["n"] > 0]
        wide = filled.pivot_table(index=["bin_lo", "bin_hi", "n"], columns="fit", values=cov, sort=False)
        wide.columns = [f"{fit} {col[len('coverage_'):]}%" for col, fit in wide.columns]
        lines += [_markdown(wide.reset_index()), "", "All bins, with bias, scatter, CRPS and log score: binned.csv."]
    if figures:
        lines += ["", "## Figures", ""] + [f"![{text}]({name})" for name, text in figures]
    lines += ["", "## Files", "", "- comparison.csv, binned.csv, per_cluster.csv: compare's tables",
              *[f"- {name}.nc: the ArviZ object of `{name}` (`arviz.from_netcdf`)" for name in result.idata]]
    text = "\n".join(lines) + "\n"

    def write_md(tmp):
        with open(tmp, "w") as fh:
            fh.write(text)

    write("report.md", write_md)
    return paths, result


class _Failure(Exception):
    """A failure that is not the user's input (a diverged fit): one line, exit status 1."""


# ---------------------------------------------------------------------------------------------- parser
class _VersionAction(argparse.Action):
    """``--version``: the package's version and those of JAX, NumPyro and Flax (imported only when asked)."""

    def __init__(self, option_strings, dest=argparse.SUPPRESS, default=argparse.SUPPRESS, help=None):  # noqa: A002
        super().__init__(option_strings=option_strings, dest=dest, default=default, nargs=0, help=help)

    def __call__(self, parser, namespace, values, option_string=None):
        print(version_string())
        parser.exit()


def version_string() -> str:
    """``numpyro-clustermass 0.1.0 (jax 0.10.2, numpyro 0.22.0, flax 0.12.8, Python 3.11.9)``."""
    import platform

    import flax
    import jax
    import numpyro

    import numpyro_clustermass

    return (f"{PROG} {numpyro_clustermass.__version__} (jax {jax.__version__}, numpyro {numpyro.__version__}, "
            f"flax {flax.__version__}, Python {platform.python_version()})")


class _Formatter(argparse.HelpFormatter):
    """Appends ``(default: X)`` to an option's help unless the help already names its default or there is none."""

    def _get_help_string(self, action):
        text = action.help or ""
        default = action.default
        if ("default" in text or not action.option_strings or default is None or default is False
                or default is argparse.SUPPRESS or default == []):
            return text
        return text + " (default: %(default)s)"


def _common(sub_parser: argparse.ArgumentParser) -> None:
    """``--debug`` also after the command name (``train ... --debug``)."""
    sub_parser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                            help="show the full Python traceback of an error instead of one line")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0], formatter_class=_Formatter)
    p.add_argument("--version", action=_VersionAction,
                   help="print the version of numpyro-clustermass, JAX, NumPyro and Flax and exit")
    p.add_argument("--debug", action="store_true",
                   help="show the full Python traceback of an error instead of one line")
    sub = p.add_subparsers(dest="command", required=True)
    seed_type = _int_at_least(0)
    fmt = _Formatter

    q = sub.add_parser("quickstart", help="the lecture in one command, on default mock data", formatter_class=fmt)
    q.add_argument("--volume", type=_finite_positive_float, default=0.25,
                   help="mock volume in (Gpc/h)^3, finite and > 0")
    q.add_argument("--seed", type=seed_type, default=0, help="seed of the mock, the split and the fits")
    q.add_argument("--out", default="quickstart_output", help="folder for tables and figures")
    q.add_argument("--fast", action="store_true", help="small data and few epochs (a smoke run)")
    _common(q)
    q.set_defaults(func=_cmd_quickstart)

    s = sub.add_parser("simulate", help="write a mock catalogue (FITS or Parquet)", formatter_class=fmt)
    s.add_argument("output", help="path ending in .fits or .parquet (or any name with --format)")
    s.add_argument("--format", choices=sorted(SUFFIXES), default=None,
                   help="file format (default: from the suffix of OUTPUT)")
    s.add_argument("--volume", type=_finite_positive_float, default=1.0,
                   help="(Gpc/h)^3, finite and > 0; 1.0 is the lecture's size")
    s.add_argument("--mass-sampling", choices=["natural", "flat"], default="natural",
                   help="halo masses from the mass function (natural) or flat in log10 M")
    s.add_argument("--n-halos", type=_int_at_least(1), default=None,
                   help="halo count for flat sampling (>= 1; default: from --volume)")
    s.add_argument("--seed", type=seed_type, default=0, help="seed of the mock universe")
    s.add_argument("--members", action="store_true", help="also store the member table")
    s.add_argument("--verbose", action="store_true", help="report the generator's steps")
    _common(s)
    s.set_defaults(func=_cmd_simulate)

    i = sub.add_parser("info", help="validate and summarise a catalogue file", formatter_class=fmt)
    i.add_argument("path", help="catalogue file (.fits or .parquet)")
    i.add_argument("--format", choices=sorted(SUFFIXES), default=None,
                   help="file format (default: from the suffix of PATH)")
    _common(i)
    i.set_defaults(func=_cmd_info)

    t = sub.add_parser(
        "train", formatter_class=fmt,
        help="fit an estimator to a catalogue and save the fit",
        description="Fit an estimator to a catalogue (validation split by halo, early stopping) and save the fit "
                    f"to one file ({FIT_SUFFIX}). The best state so far is checkpointed every --checkpoint-every "
                    "epochs to OUT's sibling FIT.checkpoint.ncm, which Ctrl-C also writes and --resume continues.")
    t.add_argument("catalog", help="training catalogue with true masses (.fits or .parquet)")
    t.add_argument("--out", required=True, metavar="FIT_PATH",
                   help=f"file for the saved fit (suffix {FIT_SUFFIX} recommended); its folder must exist")
    t.add_argument("--catalog-format", choices=sorted(SUFFIXES), default=None,
                   help="format of CATALOG (default: from its suffix)")
    e = t.add_argument_group("estimator")
    e.add_argument("--estimator", choices=ESTIMATORS, default=None,
                   help="mdn: Mixture Density Network; mse: MLP regressor; msigma: power-law M-sigma relation; "
                        "flow: conditional spline flow on the training mass range "
                        "(default: mdn, or the --resume fit's)")
    e.add_argument("--components", type=_int_at_least(1), default=None,
                   help=f"Gaussian components of the mdn, spline bins of the flow (default: {DEFAULT_COMPONENTS})")
    e.add_argument("--hidden", type=_widths, default=None, metavar="W1,W2,...",
                   help=f"hidden layer widths of mdn/mse/flow (default: {','.join(map(str, DEFAULT_HIDDEN))})")
    e.add_argument("--dropout", type=_fraction, default=None, metavar="RATE",
                   help="dropout rate after each hidden layer of mdn/mse/flow, in [0, 1) (default: 0; the mc_dropout method "
                        "sets its own unless given)")
    e.add_argument("--features", type=_names, default=None, metavar="NAME,...",
                   help="catalogue feature columns (default: the lecture's 14 for mdn/mse, Logsigv for msigma)")
    m = t.add_argument_group("inference")
    m.add_argument("--method", default=None,
                   help="a registered inference method (numpyro_clustermass.inference.available_methods(): map, "
                        "bbb, mc_dropout, nuts, laplace, ensemble, ...) (default: map, or the --resume fit's)")
    m.add_argument("--epochs", type=_int_at_least(1), default=150, help="maximum number of epochs")
    m.add_argument("--batch-size", type=_int_at_least(1), default=512, help="minibatch size")
    m.add_argument("--learning-rate", type=_finite_positive_float, default=None, metavar="LR",
                   help="peak learning rate, shorthand for --option learning_rate=LR (default: the method's, 1e-3)")
    m.add_argument("--seed", type=seed_type, default=0,
                   help="seed of the validation split, initialisation, shuffling and posterior draws")
    m.add_argument("--validation-fraction", type=_fraction, default=0.1,
                   help="fraction of halos held out for early stopping, in [0, 1) (0: none)")
    m.add_argument("--patience", type=_patience, default=20,
                   help="stop after this many epochs without a validation improvement ('none': never stop early)")
    m.add_argument("--option", type=_key_value, action="append", default=[], metavar="KEY=VALUE",
                   help="a method option (repeatable), e.g. schedule=constant, num_draws=200, "
                        "bayesian_layers=last: a field of the method's options class (MapOptions, BBBOptions, "
                        "NUTSOptions, ... in numpyro_clustermass.inference); VALUE is read as JSON when it is JSON, "
                        "else as a string")
    c = t.add_argument_group("checkpoints and output")
    c.add_argument("--checkpoint-every", type=_int_at_least(1), default=10, metavar="N",
                   help="save the best state so far to FIT.checkpoint.ncm every N epochs (removed once the "
                        "fit is saved)")
    c.add_argument("--resume", default=None, metavar="CHECKPOINT",
                   help="continue training from a saved fit or checkpoint for --epochs more epochs, on the same "
                        "catalogue and --seed (its estimator, method and method options unless given)")
    c.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    _common(t)
    t.set_defaults(func=_cmd_train)

    pr = sub.add_parser(
        "predict", formatter_class=fmt, help="posterior masses of a catalogue from a saved fit, as a table",
        description="Posterior of log10 M200c [Msun/h] for every catalogue row from a saved fit: one row per "
                    "cluster with halo_id and los (when present), the true log_mass (when present), mean, median, "
                    "mode, q16, q84, q025, q975, std, aleatoric_std and epistemic_std.")
    pr.add_argument("fit", metavar="FIT_PATH", help="a fit saved by train")
    pr.add_argument("catalog", help="catalogue (.fits or .parquet)")
    pr.add_argument("--out", required=True, metavar="TABLE",
                    help="output table (.fits, .parquet or .csv); its folder must exist")
    pr.add_argument("--format", choices=sorted(TABLE_SUFFIXES), default=None,
                    help="table format (default: from the suffix of TABLE)")
    pr.add_argument("--catalog-format", choices=sorted(SUFFIXES), default=None,
                    help="format of CATALOG (default: from its suffix)")
    _prediction_options(pr, seed_type)
    _common(pr)
    pr.set_defaults(func=_cmd_predict)

    ev = sub.add_parser(
        "evaluate", formatter_class=fmt, help="score a saved fit on a catalogue with true masses",
        description="Score a saved fit on a catalogue with true masses: metrics.csv (overall), binned.csv (per "
                    "0.1-dex mass bin: bias, scatter, coverage), coverage.csv, metrics.md, summary.json and the "
                    "lecture's figures (PNG) in the folder --out.")
    ev.add_argument("fit", metavar="FIT_PATH", help="a fit saved by train")
    ev.add_argument("catalog", help="catalogue with true masses (.fits or .parquet)")
    ev.add_argument("--out", required=True, metavar="FOLDER", help="folder for tables and figures (created)")
    ev.add_argument("--catalog-format", choices=sorted(SUFFIXES), default=None,
                    help="format of CATALOG (default: from its suffix)")
    _prediction_options(ev, seed_type)
    _common(ev)
    ev.set_defaults(func=_cmd_evaluate)

    cp = sub.add_parser(
        "compare", formatter_class=fmt, help="several saved fits side by side on one catalogue, against a reference",
        description="Compare saved fits on the same clusters (numpyro_clustermass.diagnostics.compare): log score, "
                    "CRPS, 68/95% coverage overall and per mass bin, bias and scatter, the aleatoric/epistemic split, "
                    "PSIS-LOO (az.loo), function-space R-hat/ESS of MCMC fits, and per-cluster differences and "
                    "1-Wasserstein distances to the reference fit. Writes report.md, comparison.csv, binned.csv, "
                    "per_cluster.csv, PNG figures and each fit's ArviZ object (NAME.nc, netCDF) into --out.")
    cp.add_argument("fits", nargs="+", metavar="FIT",
                    help="a fit saved by train: PATH (named by its file name without the suffix) or NAME=PATH")
    cp.add_argument("--catalog", required=True, help="the clusters to compare on (.fits or .parquet)")
    cp.add_argument("--reference", default="nuts", metavar="NAME",
                    help="the fit the others are compared with, or none for no reference columns (default: nuts)")
    cp.add_argument("--out", required=True, metavar="FOLDER", help="folder for the report (created)")
    cp.add_argument("--catalog-format", choices=sorted(SUFFIXES), default=None,
                    help="format of --catalog (default: from its suffix)")
    cp.add_argument("--num-draws", type=_int_at_least(1), default=None,
                    help="predictive draws of each Bayesian fit (default: each method's)")
    cp.add_argument("--seed", type=seed_type, default=None, help="seed of the predictive draws (default: each fit's)")
    _common(cp)
    cp.set_defaults(func=_cmd_compare)
    return p


def _prediction_options(parser: argparse.ArgumentParser, seed_type) -> None:
    parser.add_argument("--prior", default="none", metavar="SPEC",
                        help="reweight the posteriors from the fit's training prior to this mass prior: flat, "
                             "flat:LO,HI, tinker08 or another colossus mass-function model (MODEL:LO,HI for a "
                             "range other than 13.5,15.3), or none")
    parser.add_argument("--num-draws", type=_int_at_least(1), default=None,
                        help="predictive draws of a Bayesian fit (weight draws, dropout masks; default: the method's)")
    parser.add_argument("--seed", type=seed_type, default=None,
                        help="seed of the predictive draws (default: the fit's)")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    print(f"{PROG}: warning: {category.__name__}: {_one_line(message)}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0; 2 for a usage or input error; 1 for another failure;
    130 after Ctrl-C)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    args = build_parser().parse_args(argv)  # bad option values: argparse's usage error, SystemExit(2)
    if getattr(args, "debug", False):
        return args.func(args)  # tracebacks and warnings as Python prints them
    with warnings.catch_warnings():
        warnings.showwarning = _show_warning
        try:
            return args.func(args)
        except CLIError as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return EXIT_USAGE
        except _Failure as exc:
            print(f"{PROG}: error: {exc}", file=sys.stderr)
            return EXIT_FAILURE
        except KeyboardInterrupt:
            print(f"{PROG}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as exc:  # noqa: BLE001 - one line instead of a traceback; --debug shows it
            print(f"{PROG}: error: {type(exc).__name__}: {_one_line(exc)} (rerun with --debug for the traceback)",
                  file=sys.stderr)
            return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
