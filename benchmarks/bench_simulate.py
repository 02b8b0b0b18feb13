"""Benchmark: a lecture-sized mock catalogue (1 (Gpc/h)^3, about 272k mocks with members) with features.

Target (issue "Foundation"): under 90 s and under 6 GB peak memory on the 2-core CPU machine.
Prints the time of each stage, the peak resident memory, and, as the in-process reference, the time of
a plain-numpy (np.bincount) implementation of the same 14 summaries on the same member table, with the
ratio of the two (> 1 means the jit-compiled segment kernel is faster).

Run: python benchmarks/bench_simulate.py [--volume 1.0]
"""

import argparse
import resource
import sys
import time

import numpy as np

from numpyro_clustermass.features import summarize
from numpyro_clustermass.simulate import mock_catalog


def numpy_reference(mock, R, v, m, num_mocks):
    """Two-pass moments with np.bincount: the obvious numpy implementation."""
    out = {}
    count = np.bincount(mock, minlength=num_mocks).astype(np.float64)
    safe = np.maximum(count, 1)
    for q, x in (("R", R), ("m", m), ("v", v)):
        mean = np.bincount(mock, weights=x, minlength=num_mocks) / safe
        d = x - mean[mock]
        m2 = np.bincount(mock, weights=d**2, minlength=num_mocks) / safe
        m3 = np.bincount(mock, weights=d**3, minlength=num_mocks) / safe
        m4 = np.bincount(mock, weights=d**4, minlength=num_mocks) / safe
        out[f"{q}_mean"], out[f"{q}_std"] = mean, np.sqrt(m2)
        out[f"{q}_skew"], out[f"{q}_kurt"] = m3 / m2**1.5, m4 / m2**2 - 3
    out["sigv"] = np.sqrt(out["v_std"] ** 2 * count / np.maximum(count - 1, 1))
    return out


def peak_resident_mib() -> float:
    """This process's peak resident memory in MiB: ``VmHWM`` of /proc/self/status (Linux), else ``ru_maxrss``.

    ``VmHWM`` belongs to the process's own address space; ``ru_maxrss`` of a child started from a large parent
    starts at the parent's resident size (Linux carries it over the fork), which once made this script, run as a
    child of the benchmark suite, read as the suite's 3.4 GB.
    """
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    kb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return kb / 1024 if sys.platform != "darwin" else kb / 2**20  # macOS reports bytes


def measure(volume: float = 1.0, seed: int = 0, verbose: bool = True) -> dict:
    """Simulate a catalogue with members and features, then time the feature kernel against the NumPy reference.

    Returns a dict: ``total_s`` (``mock_catalog`` with members and features), ``n_mocks``, ``n_galaxies``,
    ``peak_gb`` (this process's peak resident memory so far: run it in a fresh process for a clean figure),
    ``features_s`` (the jit segment kernel, warm), ``numpy_s`` (the np.bincount reference) and ``max_rel_diff``.
    """
    t0 = time.perf_counter()
    cat = mock_catalog(volume=volume, seed=seed, with_members=True, verbose=verbose)
    total = time.perf_counter() - t0
    peak_gb = peak_resident_mib() * 2**20 / 1e9  # VmHWM: ru_maxrss would include a large parent's memory
    m = cat.members
    args_ = (m["mock"], m["R"], m["v"], m["log_mstar"])
    summarize(*args_, num_mocks=len(cat))  # warm
    t = time.perf_counter()
    ours = summarize(*args_, num_mocks=len(cat))
    t_ours = time.perf_counter() - t
    t = time.perf_counter()
    ref = numpy_reference(m["mock"], m["R"], m["v"], m["log_mstar"], len(cat))
    t_ref = time.perf_counter() - t
    err = max(np.nanmax(np.abs(ours[k] - ref[k]) / (np.abs(ref[k]) + 1e-3)) for k in ref)
    return dict(total_s=total, n_mocks=len(cat), n_galaxies=int(m["mock"].size),
                n_cut=int(cat.meta["n_mocks_cut_ngal_min"]), peak_gb=peak_gb, features_s=t_ours, numpy_s=t_ref,
                max_rel_diff=float(err), volume=volume)


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--volume", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="also write the numbers to this JSON file")
    args = ap.parse_args(argv)

    r = measure(args.volume, args.seed)
    print(f"mock_catalog(volume={args.volume}): {r['n_mocks']} mocks, {r['n_galaxies']} galaxies, "
          f"{r['n_cut']} cut by Ngal >= 10")
    print(f"total time {r['total_s']:.1f} s (target < 90 s); peak memory {r['peak_gb']:.2f} GB (target < 6 GB)")
    print(f"features: jit segment kernel {r['features_s']:.2f} s, numpy bincount reference {r['numpy_s']:.2f} s, "
          f"ratio {r['numpy_s'] / r['features_s']:.2f}x; max relative difference {r['max_rel_diff']:.1e}")
    if args.json:
        import json

        with open(args.json, "w") as fh:
            json.dump(r, fh, indent=1)


if __name__ == "__main__":
    main()
