"""The main job: the lecture's workflow on default mock data, in one call.

Run from the shell with ``numpyro-clustermass quickstart``.
"""

from __future__ import annotations

import os
import time

import numpy as np

from numpyro_clustermass.scaling import fit_power_law
from numpyro_clustermass.simulate import mock_catalog


def run_quickstart(volume: float = 0.25, seed: int = 0, out: str = "quickstart_output", fast: bool = False) -> dict:
    """Simulate a natural-mode catalogue, summarise it and fit the classical M–σ baseline.

    Returns a dict of the numbers it printed (for tests and notebooks).
    """
    if fast:
        volume = min(volume, 0.02)
    os.makedirs(out, exist_ok=True)
    t0 = time.perf_counter()
    print(f"[1/2] simulating a natural-mode (Tinker08) catalogue in {volume} (Gpc/h)^3, seed {seed}")
    cat = mock_catalog(volume=volume, seed=seed)
    print(cat.summary())
    train, test = cat.split(test_fraction=0.2, seed=seed + 1)
    print(f"      split by halo: {len(train)} training and {len(test)} test mocks")

    print("[2/2] classical M-sigma power law (Ho et al. 2019), fitted above 10^14.5 on the training side")
    results = {"n_mocks": len(cat), "n_train": len(train), "n_test": len(test)}
    sel = (test.log_mass > 14.0) & (test.log_mass < 15.0)
    for label, col in (("pure members", "sigv_members"), ("with interlopers", "sigv")):
        law = fit_power_law(train.log_mass, train[col])
        resid = law.predict_log_mass(test[col][sel]) - test.log_mass[sel]
        scatter = float(np.std(resid))
        print(f"      {label:17s} slope {law.alpha:.3f}  sigma15 {law.sigma_pivot:6.0f} km/s  "
              f"mass scatter (10^14-10^15) {scatter:.3f} dex")
        results[label] = {"alpha": law.alpha, "sigma15": law.sigma_pivot, "scatter": scatter}
    print(f"done in {time.perf_counter() - t0:.1f} s; outputs in {out}/")
    return results
