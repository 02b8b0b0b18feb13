"""Benchmark: does a later NUTS fit of the same model and shapes read its sampler from the persistent cache?

A user fitting several seeds, or the same model to another catalogue of the same size, should compile the NUTS
sampler once. This script starts one fresh Python process with the package's default compilation cache in an
empty folder, and in it fits the Bayesian M–σ relation (``MassObservableRelation``, ``method="nuts"``) to one
mock catalogue ``--fits`` times with seeds 0, 1, ... (another split, MAP start and chains each time). For each fit
it prints the wall time, ``MCMC.run``'s time (``fit.info["mcmc_time_s"]``) and the time XLA spent compiling the
sampler's program (``jit(_fori_collect_loop)``, from JAX's ``backend_compile_duration`` events; a read from the
cache shows as a short compile). A fit whose training split has another size compiles again: that is a new shape.

Run:  python3 benchmarks/nuts_refit.py  [--fits 3] [--n-halos 300] [--warmup 50] [--samples 50]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile


def child(fits: int, n_halos: int, warmup: int, samples: int) -> list[dict]:
    import time
    import warnings

    import jax.monitoring as mon

    import numpyro_clustermass as ncm

    sampler = []

    def listen(event, duration, **kw):
        if event.endswith("backend_compile_duration") and kw.get("fun_name") == "jit(_fori_collect_loop)":
            sampler.append(duration)

    mon.register_event_duration_secs_listener(listen)
    cat = ncm.simulate.mock_catalog(volume=1.0, mass_sampling="flat", n_halos=n_halos, seed=0)
    out = []
    for seed in range(fits):
        sampler.clear()
        t0 = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # a short run's convergence warnings are not the point
            f = ncm.fit(ncm.MassObservableRelation(), cat, method="nuts", num_epochs=3, batch_size=64,
                        progress_bar=False, num_warmup=warmup, num_samples=samples, num_chains=1, seed=seed)
        out.append({"seed": seed, "wall_s": time.perf_counter() - t0, "mcmc_s": f.info["mcmc_time_s"],
                    "sampler_compile_s": sum(sampler), "n_train": f.info["n_train"]})
    return out


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fits", type=int, default=3)
    ap.add_argument("--n-halos", type=int, default=300)
    ap.add_argument("--warmup", type=int, default=50)
    ap.add_argument("--samples", type=int, default=50)
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.fits < 1:
        raise SystemExit(f"--fits must be >= 1; got {args.fits}")
    if args.child:
        print(json.dumps(child(args.fits, args.n_halos, args.warmup, args.samples)))
        return 0
    with tempfile.TemporaryDirectory(prefix="ncm_nuts_refit_") as tmp:
        env = {k: v for k, v in os.environ.items()
               if k not in ("JAX_COMPILATION_CACHE_DIR", "NUMPYRO_CLUSTERMASS_COMPILATION_CACHE")}
        env["XDG_CACHE_HOME"] = tmp  # the package's default cache, empty
        cmd = [sys.executable, __file__, "--child", "--fits", str(args.fits), "--n-halos", str(args.n_halos),
               "--warmup", str(args.warmup), "--samples", str(args.samples)]
        run = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if run.returncode:
        sys.stderr.write(run.stderr)
        raise SystemExit(f"the child process failed (exit {run.returncode})")
    rows = json.loads(run.stdout.strip().splitlines()[-1])
    print(f"NUTS M–σ, {args.n_halos} halos a mass, {args.warmup} + {args.samples} draws, one chain; one fresh process, "
          f"the default cache in an empty folder")
    print(f"{'seed':>4} {'n_train':>8} {'fit (s)':>8} {'MCMC.run (s)':>13} {'sampler compile (s)':>20}")
    for r in rows:
        print(f"{r['seed']:>4} {r['n_train']:>8} {r['wall_s']:8.2f} {r['mcmc_s']:13.2f} {r['sampler_compile_s']:20.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
