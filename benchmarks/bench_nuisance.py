"""Benchmark: the cost of a nuisance family against the fiducial universe, in one process.

``mock_catalog(volume, seed)`` against ``mock_catalog(volume, seed, nuisance="prior")`` (10 universes of
0.1 (Gpc/h)^3 at the default volume 1), alternating, after one small warm-up call of each (colossus
tables, the feature kernel's compilation). Prints wall and CPU time of each run, and the median ratio
family / fiducial (the target of issue 10: about 1).

Run: python benchmarks/bench_nuisance.py [--volume 1.0] [--reps 2]
"""

import argparse
import time

import numpy as np

from numpyro_clustermass.simulate import mock_catalog


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volume", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--reps", type=int, default=2)
    args = ap.parse_args(argv)

    for nu in (None, "prior"):
        mock_catalog(volume=0.05, seed=args.seed, nuisance=nu)  # warm-up
    times = {None: [], "prior": []}
    for rep in range(args.reps):
        for nu in (None, "prior"):
            t, c = time.perf_counter(), time.process_time()
            cat = mock_catalog(volume=args.volume, seed=args.seed, nuisance=nu)
            wall, cpu = time.perf_counter() - t, time.process_time() - c
            times[nu].append((wall, cpu))
            print(f"rep {rep} nuisance={nu!r:8s} wall {wall:5.1f} s  cpu {cpu:5.1f} s  {len(cat)} mocks, "
                  f"{cat.meta['n_halos']} halos", flush=True)
    w = np.median([p[0] / f[0] for p, f in zip(times["prior"], times[None])])
    c = np.median([p[1] / f[1] for p, f in zip(times["prior"], times[None])])
    print(f"family / fiducial: wall {w:.2f}, cpu {c:.2f} (median over {args.reps} pairs)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
