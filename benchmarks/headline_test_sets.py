"""Where the headline's low-mass residual lives: one network's reweighted bias on several test sets and estimators.

The slow headline test and ``benchmarks/headline_seeds.py`` measure the reweighted mode's bias per 0.1-dex bin on
one flat-mass test catalogue (24,000 halos, seed 99). This script trains the same default MDN
(``ncm.MDN(16, (128, 128, 64))``, lr 3e-4, a 1 (Gpc/h)^3 natural-mode mock, 80% of the halos) once per training
seed and prints, for each test set,

* ``flat seed 99`` and ``flat seed 7``: two independent flat-mass catalogues of 24,000 halos x 3 lines of sight;
* ``natural held-out``: the other 20% of the training catalogue's halos (same physics, Tinker08 masses);
* ``natural seed 42``: an independent 1 (Gpc/h)^3 natural-mode catalogue,

the median of (estimate - true) per bin for the mode of the posterior reweighted to ``Flat(13.5, 15.3)``, and on
the first flat set the reweighted median and mean too. A residual that shows on every test set belongs to the
network (or to the estimator); one that moves between test sets of the same physics is the test set's noise; one
in the mode alone would be the likelihood's asymmetry.

    python3 benchmarks/headline_test_sets.py               # seed 0, about 5 minutes on 2 CPU cores
    python3 benchmarks/headline_test_sets.py --seeds 0 1 2
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np

import numpyro_clustermass as ncm
from numpyro_clustermass import metrics, priors

EDGES = np.round(np.arange(14.0, 15.01, 0.1), 2)


def _row(label: str, table) -> str:
    bias = " | ".join(f"{v:+.3f}" for v in table["bias_median"].to_numpy())
    return f"| {label} | {bias} | {int(table['n'].min())}-{int(table['n'].max())} |"


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    cat = ncm.simulate.mock_catalog(volume=1.0, seed=0)
    train, held = cat.split(test_fraction=0.2, seed=1)
    tests = {
        "flat seed 99": ncm.simulate.mock_catalog(mass_sampling="flat", n_halos=24_000, seed=99),
        "flat seed 7": ncm.simulate.mock_catalog(mass_sampling="flat", n_halos=24_000, seed=7),
        "natural held-out": held,
        "natural seed 42": ncm.simulate.mock_catalog(volume=1.0, seed=42),
    }
    print(f"training mocks {len(train)}; {time.perf_counter() - t0:.0f} s to simulate")
    header = "| " + " | ".join(f"{e:.1f}" for e in EDGES[:-1]) + " | mocks per bin |"
    for seed in args.seeds:
        t = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            f = ncm.fit(ncm.MDN(16, (128, 128, 64)), train, seed=seed, learning_rate=3e-4, progress_bar=False)
        print(f"\ntraining seed {seed}: {f.info.epochs_run} epochs, {time.perf_counter() - t:.0f} s")
        print(f"| reweighted to Flat(13.5, 15.3), dex {header}")
        print("|---" * (len(EDGES) + 1) + "|")
        for i, (name, test) in enumerate(tests.items()):
            flat = f.posterior(test).reweight(priors.Flat(13.5, 15.3))
            print(_row(f"mode, {name}", metrics.binned(flat, test, estimator="mode", edges=EDGES)))
            if i == 0:
                for est in ("median", "mean"):
                    print(_row(f"{est}, {name}", metrics.binned(flat, test, estimator=est, edges=EDGES)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
