"""Benchmark: time to first result in a cold process, in a second process (persistent cache), and warm.

Target (issue 15 "Benchmarks you can trust", part 2): the first ``fit.posterior(test)`` + mode, mean and
quantiles + ``reweight`` (and the mode of the reweighted posterior) on 61k clusters takes at most 3x its warm
time in a second process with the persistent compilation cache on, and at most 10x in a cold process.

The parent process simulates the data once (a small training mock and a 61k-cluster test mock, written to a
temporary ``.npz``) and then starts child processes, each a fresh Python:

* ``cold``: an empty compilation cache folder (the package's default cache, in a fresh ``XDG_CACHE_HOME``);
  everything is compiled, and written to the cache;
* ``second``: the same cache folder again, as a user's second session would find it;
* ``no cache``: ``NUMPYRO_CLUSTERMASS_COMPILATION_CACHE=0``, for reference (every process pays this).

Each child times ``import numpyro_clustermass``, then ``fit(MDN(16, (128, 128, 64)), train, method="map")``
(the lecture's MDN on the small mock, a few epochs) and the posterior step above, each once as a first call and
then ``--repeats`` more times (the best of these is the warm time, measured in the same child). Last, the
posterior step on catalogues of two sizes not seen before in that process (1,000 and 45,000 clusters), first
call against its warm time: a new catalogue size should not recompile. Ratios are against the warm time of
the same child; the table prints the device and versions.

Run:  python3 benchmarks/time_to_first_result.py  [--n 61000] [--epochs 3] [--repeats 3] [--json out.json]
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

COLD_TARGET, SECOND_TARGET = 10.0, 3.0
QS = (0.16, 0.5, 0.84)
NEW_SIZES = (1_000, 45_000)


# ---------------------------------------------------------------------------------------------- child
def child(data_path: str, epochs: int, repeats: int, new_sizes=NEW_SIZES) -> dict:
    t0 = time.perf_counter()
    import jax
    import numpy as np

    import numpyro_clustermass as ncm

    t_import = time.perf_counter() - t0
    d = np.load(data_path)
    train = (d["x_train"], d["y_train"], d["g_train"])
    test = d["x_test"]
    est = ncm.MDN(num_components=16, hidden=(128, 128, 64))
    flat = ncm.priors.Flat(float(d["flat_lo"]), float(d["flat_hi"]))

    def do_fit():
        return ncm.fit(est, train, method="map", num_epochs=epochs, patience=None, progress_bar=False, seed=0)

    def do_posterior(f, x):
        post = f.posterior(x)
        out = [post.mode(), post.mean(), post.quantiles(QS)]
        rw = post.reweight(flat)
        out.append(rw.mode())
        jax.block_until_ready(out)
        return out

    def timed(fn):
        t = time.perf_counter()
        out = fn()
        jax.block_until_ready(out if not hasattr(out, "state") else jax.tree.leaves(out.state))
        return time.perf_counter() - t, out

    res = {"import": t_import}
    t_first, f = timed(do_fit)
    warm = [timed(do_fit)[0] for _ in range(repeats)]
    res["fit"] = (t_first, min(warm))
    t_first, _ = timed(lambda: do_posterior(f, test))
    warm = [timed(lambda: do_posterior(f, test))[0] for _ in range(repeats)]
    res["posterior"] = (t_first, min(warm))
    for size in new_sizes:
        x = test[:size]
        t_first, _ = timed(lambda: do_posterior(f, x))
        warm = [timed(lambda: do_posterior(f, x))[0] for _ in range(repeats)]
        res[f"posterior_{size}"] = (t_first, min(warm))
    res["device"] = f"{jax.devices()[0].platform}: {jax.devices()[0].device_kind} x{jax.device_count()}"
    import flax
    import numpyro

    res["versions"] = (f"numpyro_clustermass {ncm.__version__}, jax {jax.__version__}, "
                       f"numpyro {numpyro.__version__}, flax {flax.__version__}, python {sys.version.split()[0]}")
    res["cache_dir"] = ncm.compilation_cache_dir()
    return res


# ---------------------------------------------------------------------------------------------- parent
def make_data(path: Path, n_test: int, train_volume: float, new_sizes=NEW_SIZES) -> tuple[int, int]:
    import numpy as np

    from numpyro_clustermass.simulate import mock_catalog

    train = mock_catalog(volume=train_volume, seed=0)
    test_cat = mock_catalog(volume=0.25 * n_test / 60_000 + 0.01, seed=1)
    if len(test_cat) < max(n_test, *new_sizes):
        raise SystemExit(f"the test mock has {len(test_cat)} rows < {n_test}; raise its volume")
    lo, hi = float(train.log_mass.min()), float(train.log_mass.max())
    np.savez(path, x_train=train.features(), y_train=train.log_mass, g_train=np.asarray(train["halo_id"]),
             x_test=test_cat.features()[:n_test], flat_lo=lo, flat_hi=hi)
    return len(train), n_test


def run_child(label: str, data: Path, env: dict, args) -> dict:
    cmd = [sys.executable, __file__, "--child", str(data), "--epochs", str(args.epochs), "--repeats", str(args.repeats),
           "--new-sizes", ",".join(map(str, args.new_sizes))]
    t0 = time.perf_counter()
    out = subprocess.run(cmd, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if out.returncode:
        sys.stderr.write(out.stderr)
        raise SystemExit(f"the {label} child failed (exit {out.returncode})")
    res = json.loads(out.stdout.strip().splitlines()[-1])
    res["process_wall"] = wall
    return res


def measure(n: int = 61_000, train_volume: float = 0.02, epochs: int = 3, repeats: int = 3,
            new_sizes=NEW_SIZES) -> dict:
    """Simulate the data once, then run the ``cold``, ``second`` and ``no cache`` child processes.

    Returns a dict: ``runs`` (label -> the child's numbers: ``import`` seconds, ``fit``/``posterior``/
    ``posterior_<size>`` as (first, warm) seconds, ``process_wall``, ``device``, ``versions``), ``n_train``,
    ``n_test``, ``cache_entries``, ``cache_mb`` and the ratios ``cold`` and ``second`` (first posterior step
    over its warm time in that process).
    """
    args = argparse.Namespace(epochs=epochs, repeats=repeats, new_sizes=tuple(new_sizes))
    with tempfile.TemporaryDirectory(prefix="ncm_ttfr_") as tmp:
        tmp = Path(tmp)
        data = tmp / "data.npz"
        n_train, n_test = make_data(data, n, train_volume, new_sizes)
        base = {k: v for k, v in os.environ.items()
                if k not in ("JAX_COMPILATION_CACHE_DIR", "NUMPYRO_CLUSTERMASS_COMPILATION_CACHE")}
        base["XDG_CACHE_HOME"] = str(tmp / "xdg")
        runs = {}
        runs["cold"] = run_child("cold", data, base, args)
        runs["second"] = run_child("second", data, base, args)
        runs["no cache"] = run_child("no cache", data, {**base, "NUMPYRO_CLUSTERMASS_COMPILATION_CACHE": "0"}, args)
        cache_files = sum(1 for _ in (tmp / "xdg").rglob("*-cache"))
        cache_mb = sum(p.stat().st_size for p in (tmp / "xdg").rglob("*") if p.is_file()) / 2**20
    ratio = {k: runs[k]["posterior"][0] / runs[k]["posterior"][1] for k in ("cold", "second")}
    return dict(runs=runs, n_train=n_train, n_test=n_test, epochs=epochs, repeats=repeats,
                new_sizes=list(new_sizes), cache_entries=cache_files, cache_mb=cache_mb, **ratio)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=int, default=61_000, help="test clusters")
    ap.add_argument("--train-volume", type=float, default=0.02, help="volume of the training mock (0.02: ~5.5k)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=3, help="warm repetitions (the best is the warm time)")
    ap.add_argument("--json", help="also write the results to this JSON file")
    ap.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--new-sizes", default=",".join(map(str, NEW_SIZES)), help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    new_sizes = tuple(int(s) for s in args.new_sizes.split(",") if s)
    if args.child:
        print(json.dumps(child(args.child, args.epochs, args.repeats, new_sizes)))
        return 0

    m = measure(args.n, args.train_volume, args.epochs, args.repeats, new_sizes)
    runs, n_train, n_test = m["runs"], m["n_train"], m["n_test"]
    cache_files, cache_mb = m["cache_entries"], m["cache_mb"]
    first = runs["cold"]
    print(f"time to first result: {first['device']}; {first['versions']}")
    print(f"lecture MDN (16 components, 128-128-64), MAP on {n_train} mocks for {args.epochs} epochs; posterior + "
          f"mode/mean/quantiles{list(QS)} + reweight(Flat) + mode on {n_test} clusters; warm = best of "
          f"{args.repeats} later calls in the same process")
    print(f"persistent cache after the cold run: {cache_files} entries, {cache_mb:.1f} MB")
    print(f"\n{'process':<10} {'step':<22} {'first (s)':>10} {'warm (s)':>10} {'first/warm':>11}")
    rows = [("fit", "fit(map)"), ("posterior", f"posterior {n_test}")] + [
        (f"posterior_{s}", f"new size {s}") for s in new_sizes]
    for label, res in runs.items():
        print(f"{label:<10} {'import':<22} {res['import']:10.2f} {'':>10} {'':>11}")
        for key, name in rows:
            a, b = res[key]
            print(f"{label:<10} {name:<22} {a:10.3f} {b:10.3f} {a / b:10.1f}x")
        print(f"{label:<10} {'whole process':<22} {res['process_wall']:10.2f}")
    r_cold, r_second = m["cold"], m["second"]
    ok = r_cold <= COLD_TARGET and r_second <= SECOND_TARGET
    print(f"\nfirst posterior step / warm: cold {r_cold:.1f}x (target <= {COLD_TARGET:g}x), second process "
          f"{r_second:.1f}x (target <= {SECOND_TARGET:g}x): {'PASS' if ok else 'MISS'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"n_train": n_train, "n_test": n_test, "epochs": args.epochs,
                                               "runs": runs, "cache_entries": cache_files,
                                               "cache_mb": cache_mb}, indent=1))
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
