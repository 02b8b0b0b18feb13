"""Flat-trained MDN reweighted to Tinker08: calibration across training seeds (the slow test's numbers).

Trains the default MDN on flat-mass mocks over 13.1-15.7 (120,000 halos, one line of sight each, seed 5)
once per training seed, predicts a natural-mode 0.3 (Gpc/h)^3 catalogue (seed 6), reweights from the flat
generating prior to Tinker08 on 13.5-15.3 and prints, per seed: central and HPD coverage at 68/95%, the
PIT KS distance before and after reweighting, and the KS p-values of the PIT on 1000 independent halos
(one line of sight each). ``tests/test_lecture.py::test_flat_training_reweighted_to_tinker08_is_calibrated``
sets its bounds from this table.

    python3 benchmarks/calibration_seeds.py                 # 5 seeds, about 5 min on 2 CPU cores
    python3 benchmarks/calibration_seeds.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import numpyro_clustermass as ncm
from numpyro_clustermass import metrics, priors


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    args = ap.parse_args(argv)

    t0 = time.perf_counter()
    train = ncm.simulate.mock_catalog(mass_sampling="flat", n_halos=120_000, n_los=1, seed=5, log_mass_min=13.1,
                                      log_mass_max=15.7)
    test = ncm.simulate.mock_catalog(volume=0.3, seed=6)
    rows = np.random.default_rng(0).choice(np.flatnonzero(test["los"] == 0), 1000, replace=False)
    target, source = priors.MassFunction("tinker08", lo=13.5, hi=15.3), priors.Flat(13.1, 15.7)
    print(f"training mocks {len(train)}, test mocks {len(test)} ({time.perf_counter() - t0:.0f} s to simulate)")
    print("| seed | central 68 | central 95 | HPD 68 | HPD 95 | KS after | KS before | ratio | p after | p before |")
    print("|---" * 10 + "|")
    out = []
    for seed in args.seeds:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            f = ncm.fit(ncm.MDN(16, (128, 128, 64)), train, seed=seed, learning_rate=3e-4, progress_bar=False)
        post = f.posterior(test)
        rw = post.reweight(target, source=source)
        s, s_raw = metrics.summary(rw, test), metrics.summary(post, test)
        p_rw = metrics.pit_uniformity(metrics.pit(rw.select(rows), test.log_mass[rows])).ks_pvalue
        p_raw = metrics.pit_uniformity(metrics.pit(post.select(rows), test.log_mass[rows])).ks_pvalue
        r = [s["coverage_central_68"], s["coverage_central_95"], s["coverage_hpd_68"], s["coverage_hpd_95"],
             s["pit_ks_statistic"], s_raw["pit_ks_statistic"], s["pit_ks_statistic"] / s_raw["pit_ks_statistic"],
             p_rw, p_raw]
        out.append(r)
        print(f"| {seed} | " + " | ".join(f"{v:.3f}" for v in r[:7]) + f" | {p_rw:.3g} | {p_raw:.3g} |", flush=True)
    out = np.array(out)
    dev = np.abs(out[:, :4] - np.array([0.68, 0.95, 0.68, 0.95])).max()
    print(f"\nlargest coverage deviation {dev:.3f}; KS ratio up to {out[:, 6].max():.3f}; PIT p after reweighting "
          f">= {out[:, 7].min():.3g}, before <= {out[:, 8].max():.3g}; total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
