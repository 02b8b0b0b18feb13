"""Print the mock's M–σ numbers next to Ho et al. (2019)'s (the README's table).

Run: python benchmarks/mock_vs_papers.py [--volume 0.3 --seed 0]
"""

import argparse

import numpy as np

from numpyro_clustermass.scaling import fit_power_law
from numpyro_clustermass.simulate import mock_catalog

#: Ho et al. 2019 (arXiv:1902.05950), section 4.1: slope, sigma15 [km/s], mass scatter [dex].
HO19 = {"sigv_members": (0.366, 1087.0, 0.183), "sigv": (0.241, 1002.0, 0.369)}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--volume", type=float, default=0.3)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    cat = mock_catalog(volume=args.volume, seed=args.seed)
    train, test = cat.split(test_fraction=0.5, seed=3)
    sel = (test.log_mass > 14.0) & (test.log_mass < 15.0)
    print(f"{len(cat)} mocks; fit above 10^14.5 on {len(train)} training mocks, scatter on {sel.sum()} test mocks")
    print("| M–σ power law fitted above 10^14.5 | slope | σ15 [km/s] | mass scatter, 10^14–10^15 |")
    print("|---|---|---|---|")
    for col, label in (("sigv_members", "pure members"), ("sigv", "with interlopers")):
        law = fit_power_law(train.log_mass, train[col])
        scatter = np.std(law.predict_log_mass(test[col][sel]) - test.log_mass[sel])
        print(f"| {label}, this mock | {law.alpha:.3f} | {law.sigma_pivot:.0f} | {scatter:.3f} dex |")
        a, s15, sc = HO19[col]
        print(f"| {label}, Ho et al. 2019 | {a:.3f} | {s15:.0f} | {sc:.3f} dex |")


if __name__ == "__main__":
    main()
