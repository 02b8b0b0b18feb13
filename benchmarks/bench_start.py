"""Benchmark: the Laplace/NUTS start traced under ``jit`` against NumPyro's ``initialize_model``, in cold processes.

The ``"laplace"`` and ``"nuts"`` methods start from the MAP values of the latent sites: they need those values in
unconstrained space and the potential energy there, then build the Laplace approximation
(:func:`~numpyro_clustermass.inference.laplace.gaussian_at_mode`). NumPyro's ``initialize_model`` runs the model
and its gradient op by op, outside ``jit``, so that a fresh process compiles each of hundreds of small
operations on its own; :func:`~numpyro_clustermass.inference.laplace.start_at_values` traces the model once
under ``jit``. Each is timed in its own fresh process, without the persistent compilation cache
(``NUMPYRO_CLUSTERMASS_COMPILATION_CACHE=0``), on the Bayesian M–σ model (intercept, slope, scatter and
correlation sites, the last two transformed) and synthetic data; then once more in the same process (warm).
The two starts give the same values (``tests/test_bayesian_methods.py``).

Run:  python3 benchmarks/bench_start.py  [--n 2000] [--features 3] [--rounds 2]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time


def child(kind: str, n: int, d: int) -> dict:
    t0 = time.perf_counter()
    import jax
    import jax.numpy as jnp
    import numpy as np
    from numpyro.infer.initialization import init_to_value
    from numpyro.infer.util import initialize_model

    from numpyro_clustermass.inference.laplace import gaussian_at_mode, start_at_values
    from numpyro_clustermass.scaling import mass_observable_model

    t_import = time.perf_counter() - t0
    rng = np.random.default_rng(0)
    y = rng.normal(size=n).astype(np.float32)
    x = (0.6 * y[:, None] + 0.3 * rng.normal(size=(n, d))).astype(np.float32)
    corr = np.full((d, d), 0.2) + 0.8 * np.eye(d)
    values = {"intercept": jnp.zeros(d), "slope": jnp.full(d, 0.6), "scatter": jnp.full(d, 0.3),
              "corr_cholesky": jnp.asarray(np.linalg.cholesky(corr), jnp.float32)}

    def start(key):
        if kind == "initialize_model":
            mi = initialize_model(key, mass_observable_model, init_strategy=init_to_value(values=values),
                                  model_args=(x, y), dynamic_args=False)
            potential_fn, z0 = mi.potential_fn, mi.param_info.z
        else:
            potential_fn, z0 = start_at_values(key, mass_observable_model, values, (x, y))
        jax.block_until_ready(z0)
        t = time.perf_counter()
        lap = gaussian_at_mode(potential_fn, z0, refine_mode=False, absolute=True)
        jax.block_until_ready(lap["scale"])
        return time.perf_counter() - t, float(lap["info"]["potential_at_map"])

    times = []
    for i in range(2):
        t = time.perf_counter()
        t_lap, pe = start(jax.random.key(i))
        times.append((time.perf_counter() - t, t_lap))
    return {"kind": kind, "import": t_import, "first": times[0], "warm": times[1], "potential": pe,
            "device": str(jax.devices()[0].platform), "jax": jax.__version__}


def run_child(kind: str, n: int, d: int) -> dict:
    env = {k: v for k, v in os.environ.items() if k != "JAX_COMPILATION_CACHE_DIR"}
    env["NUMPYRO_CLUSTERMASS_COMPILATION_CACHE"] = "0"
    cmd = [sys.executable, __file__, "--child", kind, "--n", str(n), "--features", str(d)]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"the {kind} child failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(n: int = 2000, d: int = 3, rounds: int = 2) -> dict:
    """Alternate cold child processes of both starts ``rounds`` times; the best first call of each."""
    runs = {"initialize_model": [], "start_at_values": []}
    for _ in range(rounds):
        for kind in runs:
            runs[kind].append(run_child(kind, n, d))
    best = {k: min(r["first"][0] for r in v) for k, v in runs.items()}
    return {"runs": runs, "best_first": best, "ratio": best["initialize_model"] / best["start_at_values"],
            "n": n, "features": d}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=2000, help="clusters of the synthetic data")
    ap.add_argument("--features", type=int, default=3)
    ap.add_argument("--rounds", type=int, default=2, help="alternating cold processes of each start")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.child, args.n, args.features)))
        return 0
    m = measure(args.n, args.features, args.rounds)
    first = m["runs"]["initialize_model"][0]
    print(f"M-sigma model, {m['n']} clusters x {m['features']} features; {first['device']}, jax {first['jax']}; "
          f"cold processes without the persistent cache")
    print(f"{'start':<18} {'first start + Laplace (s)':>26} {'of it Laplace (s)':>18} {'warm (s)':>9}")
    for kind, runs in m["runs"].items():
        for r in runs:
            print(f"{kind:<18} {r['first'][0]:>26.2f} {r['first'][1]:>18.2f} {r['warm'][0]:>9.2f}")
    pes = {r["potential"] for v in m["runs"].values() for r in v}
    print(f"best first call: initialize_model / start_at_values = {m['ratio']:.2f}x; potential at the start "
          f"{'the same' if len(pes) == 1 else sorted(pes)} in every process")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
