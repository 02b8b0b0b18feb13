"""Which nuisance parameters does the survey context identify? A regression of each on the summaries.

A survey-context network (:func:`~numpyro_clustermass.features.survey_context`) can remove a nuisance
parameter's shift of the mass only as far as the survey's summaries pin that parameter down; what they
leave open it marginalises over the family, and on a universe away from the family's centre its mode then
leans toward the centre. This script measures, without training a network, how much of each family
parameter the survey summaries hold: it simulates the family (``mock_catalog(volume=V, seed=S,
nuisance="prior", sub_volume=v)`` for ``--family-seeds`` S, one universe per sub-volume), takes each
universe's summaries and drawn values, and regresses every drawn parameter on the summaries (least squares
with an intercept: linear, and quadratic with all pairwise products), scored by ``--folds``-fold
cross-validation over the universes. It prints, per parameter, the prior standard deviation over the
universes, the cross-validated residual standard deviation of each regression and the fraction of the
variance it explains (R^2, 1 - residual variance / prior variance; negative when the regression predicts
worse than the mean).

    python3 benchmarks/context_identification.py                       # 200 universes of 0.01, 40 s
    python3 benchmarks/context_identification.py --sub-volume 0.1 --family-seeds 100 101 102 103 104

A linear or quadratic regression is a lower bound on what a network could extract from the same summaries,
and a parameter they do not identify can still move the mass (the occupation slope ``alpha_sat`` does).
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import numpyro_clustermass as ncm
from numpyro_clustermass.features import SURVEY_CONTEXT_NAMES, survey_context
from numpyro_clustermass.simulate.nuisance import FAMILY_PARAMETERS, NUISANCE_COLUMN_PREFIX


def universe_table(volume: float, sub_volume: float, seeds) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Per universe: its summaries, (U, len(SURVEY_CONTEXT_NAMES)), and its drawn value of every family
    parameter, {name: (U,)}."""
    summaries, values = [], {name: [] for name in FAMILY_PARAMETERS}
    for seed in seeds:
        cat = survey_context(ncm.simulate.mock_catalog(volume=volume, seed=seed, nuisance="prior",
                                                       sub_volume=sub_volume))
        _, first = np.unique(np.asarray(cat["sub_volume"]), return_index=True)  # one row per universe
        summaries.append(np.stack([np.asarray(cat[c], dtype=np.float64)[first] for c in SURVEY_CONTEXT_NAMES], 1))
        for name in values:
            values[name].append(np.asarray(cat[NUISANCE_COLUMN_PREFIX + name], dtype=np.float64)[first])
    return np.concatenate(summaries), {k: np.concatenate(v) for k, v in values.items()}


def design(x: np.ndarray, degree: int) -> np.ndarray:
    """Standardised summaries with an intercept column; ``degree=2`` adds their squares and pairwise products."""
    z = (x - x.mean(0)) / x.std(0)
    cols = [np.ones(len(z)), *z.T]
    if degree == 2:
        cols += [z[:, i] * z[:, j] for i in range(z.shape[1]) for j in range(i, z.shape[1])]
    return np.column_stack(cols)


def cv_residual_std(features: np.ndarray, y: np.ndarray, folds: int, seed: int = 0) -> float:
    """Standard deviation of ``y`` minus its least-squares prediction from ``features``, each universe
    predicted by the fit to the other folds (universes assigned to folds at random)."""
    fold = np.random.default_rng(seed).permutation(len(y)) % folds
    pred = np.empty_like(y)
    for k in range(folds):
        train, test = fold != k, fold == k
        w, *_ = np.linalg.lstsq(features[train], y[train], rcond=None)
        pred[test] = features[test] @ w
    return float(np.std(y - pred))


def measure(volume: float = 1.0, sub_volume: float = 0.01, seeds=(0, 1), folds: int = 10) -> dict:
    """Prior and cross-validated residual standard deviations of every family parameter given the summaries.

    Returns ``{"n_universes": U, "rows": {name: {"prior_std", "linear_std", "quadratic_std", "linear_r2",
    "quadratic_r2"}}}``; a regression is NaN when its training folds hold fewer than three universes per
    coefficient (the quadratic's 55 for nine summaries need about 184 universes at 10 folds).
    """
    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds must be an int >= 2 (cross-validation needs a held-out fold); got {folds!r}")
    x, values = universe_table(volume, sub_volume, seeds)
    if len(x) < 3 * folds:
        raise ValueError(f"{len(x)} universes are too few for {folds}-fold cross-validation; "
                         f"use more volume, more seeds or a smaller sub_volume")
    # the same design matrices for every parameter; None where the training folds hold fewer than three
    # universes per coefficient (the regression would fit noise)
    designs = {}
    for label, degree in (("linear", 1), ("quadratic", 2)):
        features = design(x, degree)
        designs[label] = None if len(x) * (folds - 1) / folds < 3 * features.shape[1] else features
    rows = {}
    for name, y in values.items():
        prior = float(np.std(y))
        row = {"prior_std": prior}
        for label, features in designs.items():
            r = float("nan") if features is None else cv_residual_std(features, y, folds)
            row[f"{label}_std"] = r
            row[f"{label}_r2"] = 1.0 - r ** 2 / prior ** 2
        rows[name] = row
    return {"n_universes": len(x), "rows": rows}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volume", type=float, default=1.0, help="volume per family catalogue, (Gpc/h)^3")
    ap.add_argument("--sub-volume", type=float, default=0.01, help="universe (survey) size, (Gpc/h)^3")
    ap.add_argument("--family-seeds", type=int, nargs="+", default=[0, 1], help="one family catalogue per seed")
    ap.add_argument("--folds", type=int, default=10)
    args = ap.parse_args(argv)
    t0 = time.perf_counter()
    m = measure(args.volume, args.sub_volume, args.family_seeds, args.folds)
    print(f"{m['n_universes']} universes of {args.sub_volume:g} (Gpc/h)^3 (family seeds {args.family_seeds}); "
          f"each family parameter regressed on the {len(SURVEY_CONTEXT_NAMES)} survey summaries, "
          f"{args.folds}-fold cross-validated")
    print("| parameter | prior std | residual std, linear | R^2 linear | residual std, quadratic | R^2 quadratic |")
    print("|---|---|---|---|---|---|")
    cell = lambda v, spec: "n/a" if np.isnan(v) else format(v, spec)  # noqa: E731
    for name, r in m["rows"].items():
        print(f"| {name} | {r['prior_std']:.4g} | {cell(r['linear_std'], '.4g')} | {cell(r['linear_r2'], '+.2f')} | "
              f"{cell(r['quadratic_std'], '.4g')} | {cell(r['quadratic_r2'], '+.2f')} |")
    if any(np.isnan(r["quadratic_r2"]) for r in m["rows"].values()):
        print("n/a: fewer than three universes per coefficient in the training folds")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
