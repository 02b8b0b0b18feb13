"""Benchmark: the first ``fit`` of each method in a fresh process, cold and with the persistent cache.

``time_to_first_result.py`` times MAP's fit and the posterior step that follows it; this times what a user of
another method waits for first. For each method, fresh Python processes (children) each time ``fit`` of the
lecture MDN (16 components, 128-128-64) for ``--epochs`` epochs on a ``--n``-cluster mock, twice in the same
process (the second is the warm time), and count the programs XLA compiles during the first with the seconds
spent compiling, tracing to jaxprs and lowering them (JAX's ``backend_compile_duration``, ``jaxpr_trace_duration``
and ``jaxpr_to_mlir_module_duration`` events; with the persistent cache a program read back from it still counts,
with its short compile time):

* ``cold``: the persistent compilation cache off (``NUMPYRO_CLUSTERMASS_COMPILATION_CACHE=0``): everything the
  fit runs is compiled;
* ``second process``: the package's default cache in a fresh folder, filled by one child and then read by a
  second, as a user's next session would find it (the second child is timed).

Each method has its own processes and its own cache folder, so no method finds another's programs compiled.

``--model relation`` fits the M–σ relation (``MassObservableRelation``: latent intercept, slope and scatter next to
the likelihood, a MAP fit with NumPyro's ``AutoDelta`` guide) instead of the MDN, with ``--methods map,laplace``
say: a model with several sample sites, whose programs a second process finds in the cache only when they trace
the same in every process (each child has its own string hash seed, as every Python process).

Run:  python3 benchmarks/cold_fit.py  [--methods map,bbb,mc_dropout,ensemble] [--n 3000] [--epochs 2]
                                      [--model mdn|relation]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

METHODS = ("map", "bbb", "mc_dropout", "ensemble")
MODELS = ("mdn", "relation")


def child(data_path: str, method: str, epochs: int, model: str = "mdn") -> dict:
    t0 = time.perf_counter()
    import jax
    import jax.monitoring as mon
    import numpy as np

    import numpyro_clustermass as ncm

    t_import = time.perf_counter() - t0
    d = np.load(data_path)
    if model == "relation":
        train = (d["x_relation"], d["y"], d["g"])
        est = ncm.MassObservableRelation()
    else:
        train = (d["x"], d["y"], d["g"])
        est = ncm.MDN(num_components=16, hidden=(128, 128, 64), dropout_rate=0.1 if method == "mc_dropout" else 0.0)
    compiles, spent = [], {"trace": 0.0, "lower": 0.0}

    def count(event, duration, **kw):
        if event.endswith("backend_compile_duration"):
            compiles.append(duration)
        elif event.endswith("jaxpr_trace_duration"):
            spent["trace"] += duration
        elif event.endswith("jaxpr_to_mlir_module_duration"):
            spent["lower"] += duration

    def do_fit():
        t = time.perf_counter()
        f = ncm.fit(est, train, method=method, num_epochs=epochs, patience=None, progress_bar=False, seed=0)
        jax.block_until_ready(jax.tree.leaves(f.state))
        return time.perf_counter() - t

    mon.register_event_duration_secs_listener(count)
    try:  # counts the first fit only, and leaves no listener behind in a process that calls child() itself
        first = do_fit()
    finally:
        mon.unregister_event_duration_listener(count)
    n_first, t_compile, t_trace, t_lower = len(compiles), float(sum(compiles)), spent["trace"], spent["lower"]
    warm = do_fit()
    dev = jax.devices()[0]
    return dict(method=method, import_s=t_import, first=first, warm=warm, compiles=n_first,
                compile_s=t_compile, trace_s=t_trace, lower_s=t_lower, device=f"{dev.platform}: {dev.device_kind}",
                versions=f"numpyro_clustermass {ncm.__version__}, jax {jax.__version__}")


def run_child(data: Path, method: str, epochs: int, env: dict, model: str = "mdn") -> dict:
    cmd = [sys.executable, __file__, "--child", str(data), "--methods", method, "--epochs", str(epochs),
           "--model", model]
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"the {method} child failed (exit {out.returncode})")
    return json.loads(out.stdout.strip().splitlines()[-1])


def measure(methods=METHODS, n: int = 3000, epochs: int = 2, model: str = "mdn") -> dict:
    """Return ``{method: {"cold": child numbers, "second": child numbers}}``; each child's numbers: ``first``
    and ``warm`` seconds of ``fit``, ``compiles`` and ``compile_s`` (during the first fit), ``import_s``.
    ``model``: ``"mdn"`` (the lecture MDN) or ``"relation"`` (``MassObservableRelation``)."""
    import numpy as np

    from numpyro_clustermass.inference import available_methods
    from numpyro_clustermass.simulate import mock_catalog

    unknown = [m for m in methods if m not in available_methods()]
    if unknown:  # before simulating anything or starting a process
        raise ValueError(f"unknown method(s) {unknown}; registered methods are {available_methods()}")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r}; one of {MODELS}")
    with tempfile.TemporaryDirectory(prefix="ncm_coldfit_") as tmp:
        tmp = Path(tmp)
        cat = mock_catalog(volume=0.02 * n / 5500 + 0.002, seed=0)
        if len(cat) < n:
            raise SystemExit(f"the mock has {len(cat)} clusters < {n}")
        cat = cat.select(np.arange(n))
        data = tmp / "data.npz"
        np.savez(data, x=cat.features(), x_relation=cat.features(("Logsigv",)), y=cat.log_mass,
                 g=np.asarray(cat["halo_id"]))
        base = {k: v for k, v in os.environ.items()
                if k not in ("JAX_COMPILATION_CACHE_DIR", "NUMPYRO_CLUSTERMASS_COMPILATION_CACHE")}
        out = {}
        for method in methods:
            cold = run_child(data, method, epochs, {**base, "NUMPYRO_CLUSTERMASS_COMPILATION_CACHE": "0"}, model)
            cached = {**base, "XDG_CACHE_HOME": str(tmp / f"xdg_{method}")}
            run_child(data, method, epochs, cached, model)  # fills the cache
            out[method] = dict(cold=cold, second=run_child(data, method, epochs, cached, model))
    return dict(runs=out, n=n, epochs=epochs, model=model)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--n", type=int, default=3000, help="training clusters")
    ap.add_argument("--epochs", type=int, default=2)
    ap.add_argument("--model", default="mdn", choices=MODELS,
                    help="mdn: the lecture MDN; relation: the M-sigma relation (latent sites, AutoDelta)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    methods = tuple(args.methods.split(","))
    if args.child:
        print(json.dumps(child(args.child, methods[0], args.epochs, args.model)))
        return 0
    m = measure(methods, args.n, args.epochs, args.model)
    first = next(iter(m["runs"].values()))["cold"]
    print(f"first fit in a fresh process: {first['device']}; {first['versions']}")
    what = ("the M-sigma relation (MassObservableRelation)" if args.model == "relation"
            else "lecture MDN (16 components, 128-128-64)")
    print(f"{what}, {m['epochs']} epochs on {m['n']} clusters")
    print(f"\n{'method':<11} {'process':<15} {'first (s)':>10} {'warm (s)':>9} {'first/warm':>11} {'programs':>9} "
          f"{'compile (s)':>12} {'trace (s)':>10} {'lower (s)':>10}")
    for method, rr in m["runs"].items():
        for label, key in (("cache off", "cold"), ("second process", "second")):
            r = rr[key]
            print(f"{method:<11} {label:<15} {r['first']:10.2f} {r['warm']:9.2f} {r['first'] / r['warm']:10.1f}x "
                  f"{r['compiles']:9d} {r['compile_s']:12.2f} {r['trace_s']:10.2f} {r['lower_s']:10.2f}")
    if args.json:
        Path(args.json).write_text(json.dumps(m, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
