"""Would another survey summary identify more of the family? Candidate summaries scored against the context's.

:func:`~numpyro_clustermass.features.survey_context` gives a network nine summaries of its survey;
``context_identification.py`` measures how much of each nuisance parameter they pin down. This script asks
what a candidate tenth summary would add: it simulates the family (``--volume`` per family seed, one universe
per ``--sub-volume``), computes the nine summaries and each candidate per universe, and prints, per
parameter, the 10-fold cross-validated linear R^2 of the nine, the gain of the nine plus each candidate (the
four largest) and of the nine plus all candidates.

    python3 benchmarks/context_candidates.py                 # 200 universes of 0.01 (Gpc/h)^3, about 35 s

Measured (docs/nuisance.md): the median of R_std / R_mean (the radial profile's relative spread) raises the
galaxies' concentration from R^2 0.40 to 0.92 and the infall fraction from 0.42 to 0.79, and nothing here
raises the occupation slope alpha_sat above 0.50; a summary that identifies more does not by itself make the
network less biased (robustness_matrix.py with it added: no better).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import numpyro_clustermass as ncm
from numpyro_clustermass.features import SURVEY_CONTEXT_NAMES, survey_context
from numpyro_clustermass.simulate.nuisance import NUISANCE_COLUMN_PREFIX

try:  # run as a script (python3 benchmarks/context_candidates.py) or imported as benchmarks.context_candidates
    from context_identification import cv_residual_std, design
except ImportError:  # pragma: no cover
    from benchmarks.context_identification import cv_residual_std, design

TARGETS = ("alpha_sat", "velocity_bias_mean", "infall_fraction", "c_gal", "richness_scatter_dex", "lambda0",
           "sigma8", "omega_m")


def candidates(cat) -> dict[str, float]:
    """Candidate summaries of one survey (a natural-mass, Ngal-cut catalogue)."""
    n, s = (np.asarray(cat[c], dtype=np.float64) for c in ("LogNgal", "Logsigv"))
    r_mean, r_std = (np.asarray(cat[c], dtype=np.float64) for c in ("R_mean", "R_std"))
    lr = np.log10(r_mean)
    top_s, top_n = s > np.percentile(s, 80), n > np.percentile(n, 80)
    spread = {p: (np.percentile(n, p) - np.median(n)) / (np.percentile(s, p) - np.median(s)) for p in (90, 99)}
    return {
        "R_std/R_mean median": np.median(r_std / r_mean),
        "R_std/R_mean median, richest 20%": np.median((r_std / r_mean)[top_n]),
        "R_skew median": np.median(np.asarray(cat["R_skew"], dtype=np.float64)),
        "R_kurt median": np.median(np.asarray(cat["R_kurt"], dtype=np.float64)),
        "LogNgal on Logsigv slope, top 20% in sigma": np.polyfit(s[top_s], n[top_s], 1)[0],
        "LogNgal on log R_mean slope": np.polyfit(lr, n, 1)[0],
        "LogNgal on log R_mean slope, richest 20%": np.polyfit(lr[top_n], n[top_n], 1)[0],
        "Logsigv on log R_mean slope": np.polyfit(lr, s, 1)[0],
        "p99-p50 spread ratio LogNgal/Logsigv": spread[99],
        "p90-p50 spread ratio LogNgal/Logsigv": spread[90],
        "m_mean median": np.median(np.asarray(cat["m_mean"], dtype=np.float64)),
        "m_std median": np.median(np.asarray(cat["m_std"], dtype=np.float64)),
        "v_skew median": np.median(np.asarray(cat["v_skew"], dtype=np.float64)),
    }


def r2(x: np.ndarray, y: np.ndarray, folds: int = 10) -> float:
    """Cross-validated linear R^2 of ``y`` on the columns of ``x``."""
    return 1.0 - cv_residual_std(design(x, 1), y, folds) ** 2 / np.var(y)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volume", type=float, default=1.0, help="volume per family catalogue, (Gpc/h)^3")
    ap.add_argument("--sub-volume", type=float, default=0.01, help="universe (survey) size, (Gpc/h)^3")
    ap.add_argument("--family-seeds", type=int, nargs="+", default=[0, 1])
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    base, extra, values = [], [], {k: [] for k in TARGETS}
    for seed in args.family_seeds:
        cat = survey_context(ncm.simulate.mock_catalog(volume=args.volume, seed=seed, nuisance="prior",
                                                       sub_volume=args.sub_volume))
        universe = np.asarray(cat["sub_volume"])
        for u in np.unique(universe):
            rows = universe == u
            first = np.flatnonzero(rows)[0]
            base.append([float(cat[c][first]) for c in SURVEY_CONTEXT_NAMES])
            extra.append(candidates(cat.select(rows)))
            for k in TARGETS:
                values[k].append(float(cat[NUISANCE_COLUMN_PREFIX + k][first]))
    base, names = np.array(base), list(extra[0])
    ex = np.array([[e[k] for k in names] for e in extra])
    bad = ~np.isfinite(ex)
    if bad.any():  # a slope over too few distinct rows; counted, and set to the column's median
        print("non-finite candidate values (set to the median): "
              + ", ".join(f"{k} {int(c)}" for k, c in zip(names, bad.sum(0)) if c))
        ex = np.where(bad, np.nanmedian(ex, 0), ex)
    print(f"{len(base)} universes of {args.sub_volume} (Gpc/h)^3 in {time.perf_counter() - t0:.0f} s; "
          "10-fold cross-validated linear R^2")
    print("| parameter | nine summaries | nine + one candidate: the four largest gains | nine + all |")
    print("|---|---|---|---|")
    for k in TARGETS:
        y = np.asarray(values[k])
        b = r2(base, y)
        gains = sorted(((r2(np.column_stack([base, ex[:, j]]), y) - b, n) for j, n in enumerate(names)),
                       reverse=True)[:4]
        print(f"| {k} | {b:+.2f} | " + ", ".join(f"{n} {g:+.2f}" for g, n in gains)
              + f" | {r2(np.column_stack([base, ex]), y):+.2f} |")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
