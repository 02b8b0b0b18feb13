"""The conditional spline flow (``ncm.Flow``) against the 16-component MDN on natural-mode mocks.

Both are trained (MAP, lr 3e-4, the same trunk) on a natural-mode mock (Tinker08 masses, seed 0, split by halo
with ``cat.split(test_fraction=0.2, seed=1)``) once per training seed, and scored on the held-out 20%:
mean log score overall and per 0.1-dex bin of true log M (the lowest and highest bins are the training range's
edges), scatter and 68%/95% coverage; the mode reweighted to ``Flat(13.5, 15.3)`` is scored on a flat-mass
test catalogue (bias per 0.1-dex bin from 14 to 15). Training cost: compile time (a cold 1-epoch fit minus a
warm one of the same configuration) and throughput (training rows per second of the warm 1-epoch fit, which
includes fit()'s per-call overhead), measured in this process on a shared machine: compare the two columns,
the absolute numbers are a note.

    python3 benchmarks/flow_vs_mdn.py --volume 0.1 --seeds 0 1 2 --num-epochs 30   # about 2 min on 2 CPU cores
    python3 benchmarks/flow_vs_mdn.py --volume 1.0 --seeds 0 1 2 --num-epochs 30   # the lecture's size, 4 min
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import numpyro_clustermass as ncm
from numpyro_clustermass import metrics, priors

EDGES = np.round(np.arange(13.5, 15.31, 0.1), 2)
#: The mock's generating mass range (MOCK.md): the prior's support, given to the flow as its bounds (a held-out
#: halo heavier than every training halo must not get zero density)
GENERATING_RANGE = (13.5, 15.3)
FLAT_EDGES = np.round(np.arange(14.0, 15.01, 0.1), 2)


def _fit(est, train, seed, epochs):
    """The full fit, the compile time (first 1-epoch fit minus a second, warm one) and the warm throughput."""
    kw = dict(seed=seed, learning_rate=3e-4, progress_bar=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        t = time.perf_counter()
        first = ncm.fit(est, train, num_epochs=1, **kw)
        t_cold = time.perf_counter() - t
        t = time.perf_counter()
        ncm.fit(est, train, num_epochs=1, **kw)  # the same configuration: compiled once, reused
        t_warm = time.perf_counter() - t
        f = ncm.fit(est, train, num_epochs=epochs, **kw)
    return f, t_cold - t_warm, first.info["n_train"] / t_warm, f.info["epochs_run"]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--volume", type=float, default=0.1)
    ap.add_argument("--test-halos", type=int, default=2000)
    ap.add_argument("--num-epochs", type=int, default=30)
    ap.add_argument("--num-bins", type=int, default=16)
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    cat = ncm.simulate.mock_catalog(volume=args.volume, seed=0)
    train, test = cat.split(test_fraction=0.2, seed=1)
    flat_test = ncm.simulate.mock_catalog(mass_sampling="flat", n_halos=args.test_halos, seed=99)
    print(f"training mocks {len(train)}, natural test mocks {len(test)}, flat test mocks {len(flat_test)}; "
          f"seeds {args.seeds} ({len(args.seeds)} run{'s' if len(args.seeds) > 1 else ''} each)")
    ests = {"MDN16": ncm.MDN(16, (128, 128, 64)), "Flow": ncm.Flow(num_bins=args.num_bins, hidden=(128, 128, 64), bounds=GENERATING_RANGE)}
    rows = {k: [] for k in ests}
    y = test.log_mass
    for seed in args.seeds:
        for name, est in ests.items():
            f, t_one, rate, e = _fit(est, train, seed, args.num_epochs)
            post = f.posterior(test)
            ls = metrics.log_score(post, test)
            b = np.digitize(y, EDGES) - 1
            per_bin = [float(np.mean(ls[b == i])) if (b == i).any() else np.nan for i in range(EDGES.size - 1)]
            cov = metrics.coverage(post, test)
            mode = post.mode()
            flat = f.posterior(flat_test).reweight(priors.Flat(13.5, 15.3))
            bias = metrics.binned(flat, flat_test, estimator="mode", edges=FLAT_EDGES)["bias_median"].to_numpy()
            rows[name].append(dict(
                mean_ls=float(np.mean(ls)), n_neginf=int(np.isneginf(ls).sum()), per_bin=per_bin,
                scatter=float(np.std(mode - y)), cov=cov.iloc[:, -1].to_numpy() if cov.shape[1] else None,
                cov_df=cov, bias=bias, t_one=t_one, rate=rate, epochs=e, n_bin=np.bincount(b, minlength=EDGES.size)))
            print(f"seed {seed} {name}: {e} epochs, mean log score {np.mean(ls):.3f}, "
                  f"compile {t_one:.1f} s, {rate:.0f} rows/s", flush=True)

    print("\n| | " + " | ".join(ests) + " |\n|---|---|---|")
    def stat(key, fmt="{:.3f}"):
        out = []
        for name in ests:
            # later seeds reuse the compiled configuration: the compile time is the first seed's
            v = np.array([r[key] for r in rows[name]][: 1 if key == "t_one" else None], dtype=float)
            out.append(fmt.format(v.mean()) + (f" ± {v.std():.3f}" if v.size > 1 else ""))
        return out
    for label, key in [("mean log score", "mean_ls"), ("-inf log scores", "n_neginf"), ("scatter of mode (dex)", "scatter"),
                       ("compile time (s), first seed", "t_one"), ("throughput (training rows/s)", "rate"),
                       ("epochs run", "epochs")]:
        print(f"| {label} | " + " | ".join(stat(key)) + " |")
    for name in ests:
        print(f"\ncoverage, {name} (last seed):\n{rows[name][-1]['cov_df'].to_string()}")
    print("\nmean log score per 0.1-dex bin of true log M (mean ± std over seeds; empty bins left out)")
    print("| bin | test rows | " + " | ".join(ests) + " |\n|---|---|---|---|")
    first = rows[next(iter(ests))][0]
    for i, lo in enumerate(EDGES[:-1]):
        if first["n_bin"][i] == 0:
            continue
        cells = []
        for n in ests:
            v = np.array([r["per_bin"][i] for r in rows[n]])
            cells.append(f"{v.mean():.3f}" + (f" ± {v.std():.3f}" if v.size > 1 else ""))
        print(f"| {lo:.1f} | {first['n_bin'][i]} | " + " | ".join(cells) + " |")
    print("\nreweighted-mode bias (dex) on the flat test set, median of (mode - true) per bin (mean ± std over seeds)")
    print("| bin | " + " | ".join(ests) + " |\n|---|---|---|")
    for i, lo in enumerate(FLAT_EDGES[:-1]):
        cells = []
        for n in ests:
            v = np.array([r["bias"][i] for r in rows[n]])
            cells.append(f"{v.mean():+.3f}" + (f" ± {v.std():.3f}" if v.size > 1 else ""))
        print(f"| {lo:.1f} | " + " | ".join(cells) + " |")
    print(f"\ntotal {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
