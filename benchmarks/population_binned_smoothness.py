"""Diagnostic of the binned population fit (issue 9): its bias per 0.1-dex bin and its coverage, by smoothness.

Trains MDNs (8 components, (64, 64); ``fit(method="map")``, lr 1e-3, early stopping) on natural mocks of the given
training volumes, then fits :func:`numpyro_clustermass.population.mass_function` (binned, simulated selection)
on ``--surveys`` mock surveys of 0.1 (Gpc/h)^3 (seeds 1000, 1001, ...: the first surveys of
``population_sbc.py``) and prints, per training volume, the median over surveys of log10(fit / truth) in each bin
of 10^14-10^15, its overall median, the 68/95% coverage of the bins and the median posterior-mean bias of the
clusters' masses. A bias that repeats from survey to survey and alternates in sign from bin to bin is the
deconvolution amplifying a systematic error of the likelihoods; the smoothness prior is what damps it.

Run: ``python benchmarks/population_binned_smoothness.py --train-volumes 0.3 1.0 --surveys 6 --smoothness 0.2``
(about 8 min here); ``--train-seeds 0 1 2`` repeats each training volume with other training seeds (the mock
and the network's initialisation and batches). With several training seeds the script also prints the pooled fit:
per survey, the population draws of every seed's network put together, i.e. the population posterior
marginalised over the training run (equal weights), which carries the network's own error (the spread between
training runs) into the intervals that one network's fit leaves out (``population.pool``, which
``population.mass_function`` applies to a list of posteriors).

``--exact-likelihood SIGMA`` (diagnostic) replaces the MDN's posteriors by exact Gaussian likelihoods of SIGMA dex
about noisy true masses (flat carried prior; one noise draw per training seed, no training): what is left is the
deconvolution's own error on these surveys.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from numpyro_clustermass import population as pop
from numpyro_clustermass.estimators import MDN
from numpyro_clustermass.grid import LOG_MASS_RANGE, default_grid
from numpyro_clustermass.inference import fit
from numpyro_clustermass.simulate import mock_catalog
from population_sbc import bin_covered, binned_truth, gaussian_likelihoods  # the sibling script (run as a script)


def score(r, truth, inner, bias, cov68, cov95):
    """Append one fit's per-bin log10(fit / truth) and its 68/95% coverage of the counted bins."""
    bias.append(np.log10(np.median(r.density, 0) / truth)[inner])
    for p, out in ((0.68, cov68), (0.95, cov95)):
        out.append(bin_covered(r, truth, inner, p))


def summarise(label, bias, cov68, cov95, extra=""):
    print(f"  {label} per-bin median bias (dex)", " ".join(f"{x:+.3f}" for x in np.median(bias, 0)))
    print(f"  {label} overall median bias {np.median(bias):+.4f}, cov68 {np.mean(cov68):.3f}, "
          f"cov95 {np.mean(cov95):.3f} ({np.size(cov68)} cases){extra}", flush=True)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--train-volumes", type=float, nargs="+", default=[0.3, 1.0])
    ap.add_argument("--epochs", type=int, default=100)
    ap.add_argument("--surveys", type=int, default=6)
    ap.add_argument("--smoothness", type=float, default=0.2)
    ap.add_argument("--train-seeds", type=int, nargs="+", default=[0])
    ap.add_argument("--exact-likelihood", type=float, default=None, metavar="SIGMA",
                    help="diagnostic: exact Gaussian likelihoods of SIGMA dex about the true masses, no MDN")
    args = ap.parse_args(argv)
    if args.exact_likelihood is not None:
        args.train_volumes = [0.0]  # no training: one configuration per seed (the noise draw)
    grid = default_grid(np.asarray(LOG_MASS_RANGE))
    sel = pop.estimate_selection(n_halos=20000, seed=1)
    edges = pop.DEFAULT_EDGES
    inner, truth = binned_truth(edges)
    surveys = [mock_catalog(volume=0.1, seed=1000 + s, n_los=1) for s in range(args.surveys)]
    pooled = {}  # (volume, survey index) -> the population fits of every training seed
    ideal = {}  # survey index -> per-bin bias of the histogram of true masses, counts / (V Δ S), against the truth
    for v, seed in [(v, seed) for v in args.train_volumes for seed in args.train_seeds]:
        t = time.perf_counter()
        if args.exact_likelihood is None:
            train = mock_catalog(volume=v, seed=seed)
            f = fit(MDN(num_components=8, hidden=(64, 64)), train, method="map", seed=seed, num_epochs=args.epochs,
                    learning_rate=1e-3, progress_bar=False)
            print(f"train volume {v}, seed {seed}: {len(train)} mocks, epochs {f.info.epochs_run}, "
                  f"{time.perf_counter() - t:.0f} s; smoothness {args.smoothness}", flush=True)
        else:
            print(f"exact Gaussian likelihoods of {args.exact_likelihood} dex, noise seed {seed}; smoothness "
                  f"{args.smoothness}", flush=True)
        bias, cov68, cov95, mbias = [], [], [], []
        for k, cat in enumerate(surveys):
            if args.exact_likelihood is None:
                post = f.posterior(cat)
            else:
                post = gaussian_likelihoods(cat.log_mass, args.exact_likelihood, grid, seed=3000 + 100 * seed + k)
            r = pop.mass_function(post, volume=0.1, edges=edges, selection=sel, seed=10, num_warmup=200,
                                  num_samples=300, smoothness=args.smoothness)
            pooled.setdefault((v, k), []).append(r)
            if k not in ideal:  # the surveys' own Poisson fluctuations, common to every network fitted to them
                n_true = np.histogram(cat.log_mass, bins=edges)[0]
                ideal[k] = np.log10(np.maximum(n_true / (0.1e9 * np.diff(edges) * r.selection_bins), 1e-30)
                                    / truth)[inner]
            score(r, truth, inner, bias, cov68, cov95)
            m = cat.log_mass
            in_range = (m >= 14.0) & (m < 15.0)
            mbias.append(np.median(post.mean()[in_range] - m[in_range]))
        summarise("", bias, cov68, cov95, f"; median (posterior mean - true) 10^14-10^15: {np.median(mbias):+.4f}")
    print("ideal (histogram of the true masses) per-bin median bias (dex)",
          " ".join(f"{x:+.3f}" for x in np.median(list(ideal.values()), 0)))
    if len(args.train_seeds) > 1:
        for v in args.train_volumes:
            print(f"train volume {v}, pooled over training seeds {args.train_seeds} (equal weights):")
            bias, cov68, cov95 = [], [], []
            for k in range(args.surveys):
                # what pop.mass_function([post_seed0, post_seed1, ...]) returns
                score(pop.pool(pooled[(v, k)]), truth, inner, bias, cov68, cov95)
            summarise("pooled", bias, cov68, cov95)


if __name__ == "__main__":
    main()
