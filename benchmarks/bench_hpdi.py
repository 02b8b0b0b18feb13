"""Benchmark: ``MassPosterior.hpdi`` against ``quantiles`` on 61k clusters (target, issue 15: within 3x).

Both algorithms of ``hpdi`` are timed on the same posteriors (random 16-component mixtures on a 512-point
grid, the lecture MDN's shape): the two-pointer sweep (what ``hpdi`` runs on CPU) and the vectorised binary
search (what it runs on other platforms), each against ``quantiles([0.16, 0.84])`` in the same process, best of
``--repeats`` after a warm-up call; wall and process CPU time (the CPU ratio is the steadier one on a shared
machine).

Run:  python3 benchmarks/bench_hpdi.py  [--n 61000] [--repeats 7]
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_clustermass.posterior import MassPosterior, _k_hpdi, _k_hpdi_search


def best(fn, repeats: int):
    fn()
    wall, cpu = [], []
    for _ in range(repeats):
        t, p = time.perf_counter(), time.process_time()
        fn()
        wall.append(time.perf_counter() - t)
        cpu.append(time.process_time() - p)
    return min(wall), min(cpu)


def measure(n: int = 61_000, repeats: int = 7) -> dict:
    """Time ``quantiles([0.16, 0.84])`` and both ``hpdi(0.68)`` algorithms on the same posteriors.

    Returns a dict of best wall and CPU times in seconds (``quantiles``, ``sweep``, ``search``; each
    ``(wall, cpu)``), ``used`` (the algorithm ``hpdi`` runs on this platform) and the sizes.
    """
    rng = np.random.default_rng(0)
    k, g = 16, 512
    grid = np.linspace(13.0, 15.8, g)
    post = MassPosterior.from_mixture(grid, rng.normal(size=(n, k)), rng.uniform(13.5, 15.3, (n, k)),
                                      rng.uniform(0.03, 0.3, (n, k)))
    prob = jnp.asarray(0.68, jnp.float32)
    q = best(lambda: post.quantiles([0.16, 0.84]), repeats)
    s = best(lambda: post._map(_k_hpdi, prob, out_axis=1), repeats)
    b = best(lambda: post._map(_k_hpdi_search, prob, out_axis=1), repeats)
    d = jax.devices()[0]
    return dict(quantiles=q, sweep=s, search=b, used="sweep" if d.platform == "cpu" else "search", n=n, grid=g,
                components=k, repeats=repeats, device=f"{d.platform} ({d.device_kind})")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=61_000)
    ap.add_argument("--repeats", type=int, default=7)
    args = ap.parse_args(argv)
    m = measure(args.n, args.repeats)
    (wq, cq), (ws, cs), (wb, cb) = m["quantiles"], m["sweep"], m["search"]
    print(f"{m['device']}, jax {jax.__version__}; {m['n']} clusters x {m['grid']} grid points, best of {args.repeats}")
    print(f"  quantiles([0.16, 0.84])     : wall {wq:7.3f} s  cpu {cq:7.3f} s")
    print(f"  hpdi(0.68), sweep           : wall {ws:7.3f} s  cpu {cs:7.3f} s   ratio {ws / wq:5.1f}x wall, {cs / cq:5.1f}x cpu")
    print(f"  hpdi(0.68), binary search   : wall {wb:7.3f} s  cpu {cb:7.3f} s   ratio {wb / wq:5.1f}x wall, {cb / cq:5.1f}x cpu")
    print(f"  hpdi() on this platform uses the {'sweep' if m['used'] == 'sweep' else 'binary search'} (target <= 3x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
