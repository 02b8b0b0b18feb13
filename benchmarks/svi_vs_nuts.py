"""Benchmark: SVI and the other approximate methods against NUTS, the ArviZ way (issue "SVI against MCMC").

One flat-mass mock (``mock_catalog(volume=1.0, mass_sampling="flat", n_halos=N_HALOS, seed=SEED)``), split by halo
(``split(test_fraction=0.2, seed=1)``: every projection of a halo on one side). One small MDN,
``MDN(num_components=3, hidden=(16, 16))``, fitted with ``map``, ``bbb`` (mean-field over every weight, the method's
default), ``mc_dropout``, ``laplace`` (last layer), ``ensemble`` (5 members) and ``nuts`` (last layer, 2 chains,
trunk at the MAP fit); ``laplace`` and ``nuts`` start from the ``map`` fit (``init=``), so all three share one
trunk. Every fit is then put through :func:`numpyro_clustermass.diagnostics.compare` on the held-out clusters with
``reference="nuts"``, which prints the table (columns: docs/compare.md) and the notes.

Sizes (defaults, sized to finish in about 5 minutes on a shared 2-core CPU): ``--n-halos 500`` (about 1.2k
clusters: about 950 to train, 240 held out), at most ``--epochs 100`` per trained method (early stopping on a 10%
validation split by halo, patience 20), NUTS ``--num-warmup 150 --num-samples 150`` per chain. Times are
wall-clock notes on a noisy machine, not targets; whichever method wins, the numbers are what they are.

Run:  python3 benchmarks/svi_vs_nuts.py [--n-halos 500] [--epochs 100] [--num-warmup 150] [--num-samples 150]
      [--seed 0] [--methods map,bbb,mc_dropout,laplace,ensemble,nuts]
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import pandas as pd

from numpyro_clustermass.diagnostics import compare
from numpyro_clustermass.estimators import MDN
from numpyro_clustermass.inference import fit
from numpyro_clustermass.simulate import mock_catalog

METHODS = ("map", "bbb", "mc_dropout", "laplace", "ensemble", "nuts")
#: Columns printed (compare's table has more: elpd_loo_se, p_loo, ...; docs/compare.md explains each).
SHOWN = ("n_draws", "log_score", "crps", "coverage_68", "coverage_95", "bias_median", "scatter_68", "pred_std",
         "aleatoric_std", "epistemic_std", "elpd_loo", "n_pareto_k_bad", "rhat_max", "ess_bulk_min",
         "mean_abs_diff", "std_ratio", "w1", "epistemic_ratio")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-halos", type=int, default=500, help="flat-mass mock halos (3 projections each)")
    ap.add_argument("--epochs", type=int, default=100, help="maximum epochs of each trained method")
    ap.add_argument("--num-warmup", type=int, default=150, help="NUTS warm-up steps per chain")
    ap.add_argument("--num-samples", type=int, default=150, help="NUTS draws per chain")
    ap.add_argument("--seed", type=int, default=0, help="seed of the mock and of every fit")
    ap.add_argument("--methods", default=",".join(METHODS), help="comma-separated; nuts is the reference")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if "nuts" not in methods:
        ap.error("--methods must include nuts (the reference)")

    t_start = time.perf_counter()
    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s))")
    cat = mock_catalog(volume=1.0, mass_sampling="flat", n_halos=args.n_halos, seed=args.seed)
    train, test = cat.split(test_fraction=0.2, seed=1)
    est = MDN(num_components=3, hidden=(16, 16))
    print(f"mock: {len(cat)} clusters from {args.n_halos} halos (flat in log10 M), split by halo: train {len(train)}, "
          f"held out {len(test)}; MDN(num_components=3, hidden=(16, 16)); at most {args.epochs} epochs\n")

    common = dict(seed=args.seed, num_epochs=args.epochs, progress_bar=False)
    options = {"map": {}, "bbb": {}, "mc_dropout": {}, "ensemble": {},
               "laplace": {"bayesian_layers": "last"},
               "nuts": {"bayesian_layers": "last", "num_warmup": args.num_warmup, "num_samples": args.num_samples,
                        "num_chains": 2}}
    fits, times = {}, {}
    order = ["map"] + [m for m in methods if m != "map"]  # laplace and nuts start from the map fit
    for m in order:
        t0 = time.perf_counter()
        extra = {"init": fits["map"]} if m in ("laplace", "nuts") else {}
        fits[m] = fit(est, train, method=m, **common, **options[m], **extra)
        times[m] = time.perf_counter() - t0
        print(f"{m:10s} fitted in {times[m]:6.1f} s", flush=True)
    fits = {m: fits[m] for m in methods}  # the table in the order asked for (map's fit is kept for init only)
    if "map" not in methods:
        times.pop("map", None)

    t0 = time.perf_counter()
    c = compare(fits, test, reference="nuts")
    t_compare = time.perf_counter() - t0
    info = fits["nuts"].info
    print(f"\nNUTS reference: {info['num_chains']} chains x ({info['num_warmup']} + {info['num_samples']}), "
          f"{info['num_latent']} latent weights (last layer, trunk at MAP), {info['num_divergent']} divergent; "
          f"compare took {t_compare:.1f} s\n")
    table = c.table[list(SHOWN)].copy()
    table.insert(len(table.columns), "fit_s", pd.Series(times))
    with pd.option_context("display.width", 250, "display.max_columns", 40, "display.float_format", "{:.4g}".format):
        print(f"held-out set: {len(test)} clusters; reference nuts")
        print(table.T.to_string())
    print("\nnotes:")
    for note in c.notes:
        print(f"- {note}")
    print(f"\ntotal {time.perf_counter() - t_start:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
