"""Command line: ``numpyro-clustermass {quickstart, simulate, info}``.

``quickstart`` runs the main job on default mock data; ``simulate`` writes a catalogue file;
``info`` validates and summarises a catalogue file (FITS in the lecture's schema, or Parquet).

Bad input never ends in a Python traceback: a bad option value gets argparse's usage error, and a file or
folder that cannot be used (missing, a directory, an unknown suffix, unreadable, no rows, an output folder
that does not exist) gets one line on stderr, ``numpyro-clustermass: error: ...``, naming the path and the
fix. Both exit with status 2. Paths are checked before any simulation runs.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

from numpyro_clustermass.catalog import FORMAT_SUFFIXES as SUFFIXES  # the suffixes read_catalog recognises

PROG = "numpyro-clustermass"
#: Exit status of every usage or input error (argparse's convention).
EXIT_USAGE = 2


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


def _check_input_file(path: str) -> None:
    if not os.path.exists(path):
        raise CLIError(f"no such file: {path!r}")
    if os.path.isdir(path):
        raise CLIError(f"{path!r} is a directory; give the path of a catalogue file (.fits or .parquet)")
    if not os.access(path, os.R_OK):
        raise CLIError(f"cannot read {path!r}: permission denied")


def _check_output_file(path: str) -> None:
    """The output can be written: not a directory, in a folder that exists and is writable."""
    if path == "" or path.endswith(os.sep):
        raise CLIError(f"{path!r} is not a file name; give a path such as catalog.fits")
    if os.path.isdir(path):
        example = os.path.join(path, "catalog.fits")
        raise CLIError(f"{path!r} is a directory; give a file name inside it, such as {example!r}")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CLIError(f"the output folder {os.path.dirname(path) or folder!r} does not exist; create it first "
                       f"(mkdir -p {os.path.dirname(path) or folder}) or write elsewhere")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise CLIError(f"cannot write in the output folder {folder!r}: permission denied")


def _check_output_folder(path: str) -> None:
    """``quickstart --out``: a folder that exists, or one that can be created."""
    if os.path.exists(path) and not os.path.isdir(path):
        raise CLIError(f"--out {path!r} is a file, not a folder; give a folder name")
    existing = os.path.abspath(path)
    while not os.path.exists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        raise CLIError(f"--out {path!r}: {existing!r} is a file, so the folder cannot be created")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise CLIError(f"--out {path!r}: cannot write in {existing!r}: permission denied")


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

    from numpyro_clustermass.catalog import CatalogError, read_catalog

    try:
        cat = read_catalog(args.path, format=fmt)
    except CatalogError as exc:
        raise CLIError(f"invalid catalogue {args.path!r}: {_one_line(exc)}") from None
    except Exception as exc:  # noqa: BLE001 - any parser failure on a user's file is an input error here
        raise CLIError(f"cannot read {args.path!r} as {fmt}: {type(exc).__name__}: {_one_line(exc)}; check that "
                       f"it is a {fmt} catalogue (or pass --format)") from None
    if len(cat) == 0:
        raise CLIError(f"{args.path!r} holds a catalogue with 0 rows: nothing to summarise")
    print(cat.summary())
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    _check_output_folder(args.out)

    from numpyro_clustermass.quickstart import run_quickstart

    run_quickstart(volume=args.volume, seed=args.seed, out=args.out, fast=args.fast)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=PROG, description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)
    seed_type = _int_at_least(0)

    q = sub.add_parser("quickstart", help="the lecture in one command, on default mock data")
    q.add_argument("--volume", type=_finite_positive_float, default=0.25,
                   help="mock volume in (Gpc/h)^3, finite and > 0 (default 0.25)")
    q.add_argument("--seed", type=seed_type, default=0)
    q.add_argument("--out", default="quickstart_output", help="folder for tables and figures")
    q.add_argument("--fast", action="store_true", help="small data and few epochs (a smoke run)")
    q.set_defaults(func=_cmd_quickstart)

    s = sub.add_parser("simulate", help="write a mock catalogue (FITS or Parquet)")
    s.add_argument("output", help="path ending in .fits or .parquet (or any name with --format)")
    s.add_argument("--format", choices=sorted(SUFFIXES), default=None,
                   help="file format (default: from the suffix of OUTPUT)")
    s.add_argument("--volume", type=_finite_positive_float, default=1.0,
                   help="(Gpc/h)^3, finite and > 0; 1.0 is the lecture's size")
    s.add_argument("--mass-sampling", choices=["natural", "flat"], default="natural")
    s.add_argument("--n-halos", type=_int_at_least(1), default=None, help="halo count for flat sampling (>= 1)")
    s.add_argument("--seed", type=seed_type, default=0)
    s.add_argument("--members", action="store_true", help="also store the member table")
    s.add_argument("--verbose", action="store_true")
    s.set_defaults(func=_cmd_simulate)

    i = sub.add_parser("info", help="validate and summarise a catalogue file")
    i.add_argument("path")
    i.add_argument("--format", choices=sorted(SUFFIXES), default=None,
                   help="file format (default: from the suffix of PATH)")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (0, or 2 for a usage or input error)."""
    os.environ.setdefault("MPLBACKEND", "Agg")
    args = build_parser().parse_args(argv)  # bad option values: argparse's usage error, SystemExit(2)
    try:
        return args.func(args)
    except CLIError as exc:
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
