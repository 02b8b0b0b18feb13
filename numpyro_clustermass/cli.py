"""Command line: ``numpyro-clustermass {quickstart, simulate, info}``.

``quickstart`` runs the main job on default mock data; ``simulate`` writes a catalogue file;
``info`` validates and summarises a catalogue file (FITS in the lecture's schema, or Parquet).
"""

from __future__ import annotations

import argparse
import os
import sys
import time


def _cmd_simulate(args: argparse.Namespace) -> int:
    from numpyro_clustermass.catalog import write_catalog
    from numpyro_clustermass.simulate import mock_catalog

    t = time.perf_counter()
    cat = mock_catalog(
        volume=args.volume, mass_sampling=args.mass_sampling, n_halos=args.n_halos, seed=args.seed,
        with_members=args.members, verbose=args.verbose,
    )
    write_catalog(cat, args.output)
    print(cat.summary())
    print(f"wrote {args.output} in {time.perf_counter() - t:.1f} s "
          f"({cat.meta['n_mocks_cut_ngal_min']} mocks cut by Ngal >= 10)")
    return 0


def _cmd_info(args: argparse.Namespace) -> int:
    from numpyro_clustermass.catalog import CatalogError, read_catalog

    try:
        cat = read_catalog(args.path)
    except CatalogError as exc:
        print(f"invalid catalogue: {exc}", file=sys.stderr)
        return 2
    print(cat.summary())
    return 0


def _cmd_quickstart(args: argparse.Namespace) -> int:
    from numpyro_clustermass.quickstart import run_quickstart

    run_quickstart(volume=args.volume, seed=args.seed, out=args.out, fast=args.fast)
    return 0


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="numpyro-clustermass", description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="command", required=True)

    q = sub.add_parser("quickstart", help="the lecture in one command, on default mock data")
    q.add_argument("--volume", type=float, default=0.25, help="mock volume in (Gpc/h)^3 (default 0.25)")
    q.add_argument("--seed", type=int, default=0)
    q.add_argument("--out", default="quickstart_output", help="folder for tables and figures")
    q.add_argument("--fast", action="store_true", help="small data and few epochs (a smoke run)")
    q.set_defaults(func=_cmd_quickstart)

    s = sub.add_parser("simulate", help="write a mock catalogue (FITS or Parquet)")
    s.add_argument("output", help="path ending in .fits or .parquet")
    s.add_argument("--volume", type=float, default=1.0, help="(Gpc/h)^3; 1.0 is the lecture's size")
    s.add_argument("--mass-sampling", choices=["natural", "flat"], default="natural")
    s.add_argument("--n-halos", type=int, default=None, help="halo count for flat sampling")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--members", action="store_true", help="also store the member table")
    s.add_argument("--verbose", action="store_true")
    s.set_defaults(func=_cmd_simulate)

    i = sub.add_parser("info", help="validate and summarise a catalogue file")
    i.add_argument("path")
    i.set_defaults(func=_cmd_info)
    return p


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("MPLBACKEND", "Agg")
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
