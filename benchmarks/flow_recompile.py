"""Does a second fit in the same process recompile? The Flow against the MDN, same and other training split.

``fit`` keeps compiled methods in a cache keyed by the estimator's configuration. The Flow's interval is
resolved from the training masses (``Flow.bind``) into the estimator, so a fit on another split or other data
is another configuration; the MDN has nothing data-dependent in its configuration. This script times, in one
process, a first tiny fit (400 rows, 3 epochs) with its posterior, then a second with the same seed and one with
another seed (another validation split), for each estimator; a second fit that takes seconds has recompiled.

    python3 benchmarks/flow_recompile.py        # about 30 s
"""

from __future__ import annotations

import time

import numpy as np

import numpyro_clustermass as ncm

NAMES = ("a", "b", "c")
OPTIONS = dict(num_epochs=3, batch_size=128, progress_bar=False)


def timed_fit(est, xy, seed: int) -> tuple[float, float]:
    """Seconds of ``fit`` and of a first ``posterior`` on ten clusters."""
    t0 = time.perf_counter()
    f = ncm.fit(est, xy, seed=seed, **OPTIONS)
    t1 = time.perf_counter()
    f.posterior((xy[0][:10], xy[1][:10]))
    return t1 - t0, time.perf_counter() - t1


def main() -> int:
    rng = np.random.default_rng(0)
    y = rng.uniform(13.5, 15.3, 400)
    xy = (np.stack([y + 0.1 * rng.normal(size=y.size) for _ in NAMES], 1), y)
    print("| estimator | fit | first fit, posterior (s) | same seed again | another seed |")
    print("|---|---|---|---|---|")
    for label, est in (("MDN", ncm.MDN(2, (8,), feature_names=NAMES)),
                       ("Flow", ncm.Flow(num_bins=4, hidden=(8,), feature_names=NAMES))):
        runs = [timed_fit(est, xy, seed) for seed in (0, 0, 1)]
        print(f"| {label} | map | " + " | ".join(f"{a:.2f}, {b:.2f}" for a, b in runs) + " |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
