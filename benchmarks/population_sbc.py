"""Simulation-based calibration of the population step (issue 9).

One MDN is trained on a natural (Tinker08) mock with every feature, and one without the velocity features
(``Logsigv``, ``v_std``, ``v_mean``: they carry σ_v) for the M–σ relation. Then, over ``--surveys`` independent mock
surveys (one line of sight per halo, different seeds), this script fits

* the binned mass function (0.1-dex bins; coverage counted in the ten bins 10^14–10^15) with
  :func:`numpyro_clustermass.population.mass_function`;
* the Tinker08-shaped mass function's amplitude ``log A`` and tilt ``alpha`` (truth 0 and 0: the mocks are drawn
  from Tinker08);
* the M–σ relation ``log10 sigma = a + b (log M - 14.5) + N(0, s^2)`` with
  :func:`numpyro_clustermass.population.scaling_relation`. By default (``--observable synthetic``) sigma is drawn
  from that relation at each cluster's true mass with ``--relation a b s`` (default 2.87 0.36 0.06: about the
  slope and normalisation of the mock's member dispersions), so that the data follow the model and the
  intervals can be checked against a known truth; the mass posteriors still come from the mock's features.
  ``--observable sigv`` (as observed, interlopers included) or ``sigv_members`` (the members' dispersion) fit
  the mock's own dispersions, which the linear-Gaussian relation does not describe; the truth is then maximum
  likelihood of the same relation on the true masses of all surveys pooled (``--scatter-slope`` lets the
  scatter vary with mass);

and counts how often the 68% and 95% intervals hold the truth, beside (i) a histogram of the posterior means
(point estimates), (ii) a histogram of the modes after reweighting to a flat prior, (iii) the ideal fit to the
true masses. Binned: Poisson (Garwood) intervals of the histogram counts divided by V Δ S (for the ideal fit the
exact posterior of a flat prior on log n). Tinker: the same Poisson likelihood with the masses taken as exact
(Laplace approximation). M–σ: maximum likelihood with Laplace errors. Everything printed is measured here.

Run: ``python benchmarks/population_sbc.py`` (defaults sized for about 20 min on two shared CPU cores);
``--quick`` for a smoke run; ``--first-survey 20`` measures the next 20 surveys (disjoint seeds), whose counts
add to a first run's.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from scipy import optimize, stats

from numpyro_clustermass import population as pop
from numpyro_clustermass.catalog import FEATURE_NAMES, Catalog
from numpyro_clustermass.estimators import MDN
from numpyro_clustermass.inference import fit
from numpyro_clustermass.posterior import MassPosterior
from numpyro_clustermass.priors import Flat
from numpyro_clustermass.simulate import mock_catalog

LN10 = np.log(10.0)
VELOCITY_FEATURES = ("Logsigv", "v_std", "v_mean")


def garwood(k, prob):
    """Central Poisson interval for counts k (Garwood 1936)."""
    a = 1.0 - prob
    lo = np.where(k > 0, stats.chi2.ppf(a / 2, 2 * k) / 2, 0.0)
    hi = stats.chi2.ppf(1 - a / 2, 2 * k + 2) / 2
    return lo, hi


def gamma_interval(k, exposure, prob):
    """Posterior interval of a Poisson rate under a flat prior on log n: Gamma(k, exposure)."""
    a = 1.0 - prob
    k = np.maximum(k, 1e-3)
    return stats.gamma.ppf(a / 2, k) / exposure, stats.gamma.ppf(1 - a / 2, k) / exposure


def laplace_fit(nlp, x0):
    """Minimum of a negative log posterior and its Laplace standard errors (central-difference Hessian)."""
    res = optimize.minimize(nlp, np.asarray(x0, dtype=np.float64), method="BFGS")
    k = res.x.size
    h = np.zeros((k, k))
    eps = 1e-4
    for i in range(k):
        for j in range(k):
            e_i, e_j = np.eye(k)[i] * eps, np.eye(k)[j] * eps
            h[i, j] = (nlp(res.x + e_i + e_j) - nlp(res.x + e_i - e_j) - nlp(res.x - e_i + e_j)
                       + nlp(res.x - e_i - e_j)) / (4 * eps**2)
    return res.x, np.sqrt(np.diag(np.linalg.inv(h)))


class TinkerPoints:
    """Laplace posterior of (log A, alpha) for masses taken as exact (naive or ideal), same model as
    population.mass_function(model="tinker08") and the same N(0, 2), N(0, 1) priors."""

    def __init__(self, selection, lo=13.5, hi=15.3, pivot=14.5):
        self.m = np.linspace(lo, hi, 4001)
        self.base = pop.tinker08_density(self.m) * selection(self.m)
        self.lo, self.hi, self.pivot = lo, hi, pivot

    def fit(self, masses, volume):
        m = masses[(masses >= self.lo) & (masses <= self.hi)]
        n, sx = m.size, np.sum(m - self.pivot)
        v = volume * 1e9
        dm = self.m - self.pivot

        def nlp(p):
            la, al = p
            integral = np.trapezoid(self.base * np.exp(al * LN10 * dm), self.m)
            return -(n * la + al * LN10 * sx - v * np.exp(la) * integral - la**2 / 8 - al**2 / 2)

        return laplace_fit(nlp, np.zeros(2))


def relation_params(scatter_slope=False):
    """Names of population.scaling_relation's parameters, in relation_mle's order."""
    return ("a", "b", "s") + (("s_slope",) if scatter_slope else ())


def relation_mle(m, y, scatter_slope=False, pivot=14.5):
    """Maximum likelihood of scaling_relation's Gaussian relation for masses taken as exact, with Laplace errors.

    Returns (estimates, standard errors) in the order of :func:`relation_params`; ``s`` is fitted as ln s and its
    error carried by the delta method. With a constant scatter this is least squares (s with divisor n)."""
    x = m - pivot
    b0, a0 = np.polyfit(x, y, 1)
    x0 = [a0, b0, np.log(np.std(y - a0 - b0 * x))] + ([0.0] if scatter_slope else [])

    def nlp(p):
        log_s = p[2] + (p[3] * x if scatter_slope else 0.0)
        return np.sum(0.5 * ((y - p[0] - p[1] * x) / np.exp(log_s)) ** 2 + log_s)

    est, se = laplace_fit(nlp, x0)
    est, se = est.copy(), se.copy()
    est[2] = np.exp(est[2])
    se[2] *= est[2]
    return est, se


def binned_truth(edges):
    """The ten bins 10^14-10^15 whose coverage is counted (a mask over ``edges``' bins) and Tinker08 per bin."""
    inner = (edges[:-1] >= 14.0 - 1e-9) & (edges[1:] <= 15.0 + 1e-9)
    return inner, pop._bin_average(pop.tinker08_density, edges)


def bin_covered(res, truth, inner, prob):
    """Whether each counted bin's equal-tailed ``prob`` interval of a population fit holds the truth."""
    lo, hi = res.interval(prob)
    return ((lo <= truth) & (truth <= hi))[inner]


def gaussian_likelihoods(log_mass, sigma, grid, seed):
    """Mass posteriors that are exact Gaussian likelihoods of ``sigma`` dex about noisy masses, flat carried prior."""
    obs = log_mass + sigma * np.random.default_rng(seed).standard_normal(log_mass.size)
    log_l = -0.5 * ((grid[None, :] - obs[:, None]) / sigma) ** 2
    return MassPosterior.from_log_density(grid, log_l, source_prior=Flat(grid[0], grid[-1]))


def gauss_cover(est, se, truth, prob):
    z = stats.norm.ppf(0.5 + prob / 2)
    return np.abs(est - truth) <= z * se


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--surveys", type=int, default=20)
    ap.add_argument("--first-survey", type=int, default=0,
                    help="index of the first survey (its seeds 1000 + i, 2000 + i, ...): runs that start at 0, 20, "
                         "... measure disjoint surveys whose counts add up")
    ap.add_argument("--survey-volume", type=float, default=0.1)
    ap.add_argument("--train-volume", type=float, default=0.3)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--selection-halos", type=int, default=20000)
    ap.add_argument("--observable", default="synthetic", choices=("synthetic", "sigv", "sigv_members"),
                    help="the M-sigma fit's data: drawn from the relation (synthetic) or the mock's dispersions")
    ap.add_argument("--relation", type=float, nargs=3, default=(2.87, 0.36, 0.06), metavar=("A", "B", "S"),
                    help="a, b, s of the synthetic observable")
    ap.add_argument("--scatter-slope", action="store_true", help="fit s exp(s_slope x) instead of a constant s")
    ap.add_argument("--exact-likelihood", type=float, default=None, metavar="SIGMA",
                    help="diagnostic: the M-sigma fit gets exact Gaussian mass likelihoods of SIGMA dex about the true "
                         "masses instead of the MDN's posteriors")
    ap.add_argument("--out", default="population_sbc_output")
    ap.add_argument("--quick", action="store_true", help="smoke run: 3 small surveys, few epochs")
    args = ap.parse_args()
    if args.quick:
        args.surveys, args.survey_volume, args.train_volume, args.epochs = 3, 0.03, 0.05, 10
        args.warmup, args.samples, args.selection_halos = 100, 100, 4000
    os.makedirs(args.out, exist_ok=True)
    t0 = time.perf_counter()

    train = mock_catalog(volume=args.train_volume, seed=0)
    est_opts = dict(num_components=8, hidden=(64, 64))
    fit_opts = dict(method="map", seed=0, num_epochs=args.epochs, learning_rate=1e-3, progress_bar=False)
    f_all = fit(MDN(**est_opts), train, **fit_opts)
    no_v = tuple(n for n in FEATURE_NAMES if n not in VELOCITY_FEATURES)
    f_nov = fit(MDN(feature_names=no_v, **est_opts), train, **fit_opts)
    print(f"trained 2 MDNs on {len(train)} mocks (volume {args.train_volume}, seed 0) in "
          f"{time.perf_counter() - t0:.0f} s; epochs {f_all.info.epochs_run}, {f_nov.info.epochs_run}", flush=True)
    sel = pop.estimate_selection(n_halos=args.selection_halos, seed=1)
    edges = pop.DEFAULT_EDGES
    inner, truth = binned_truth(edges)
    width = np.diff(edges)
    tp = TinkerPoints(sel)
    nuts = dict(num_warmup=args.warmup, num_samples=args.samples, num_chains=2)

    rec = {k: [] for k in ("bins", "tinker", "scaling", "rhat")}
    pooled_m, pooled_y = [], []
    for s in range(args.first_survey, args.first_survey + args.surveys):
        ts = time.perf_counter()
        v = args.survey_volume
        cat = mock_catalog(volume=v, seed=1000 + s, n_los=1)
        post = f_all.posterior(cat)
        post_nv = f_nov.posterior(cat)
        true_m = cat.log_mass
        # the M-sigma fit's clusters: those with the observable (sigv_members needs two true members: 2 in 9000 lack it)
        if args.observable == "synthetic":
            a, b, sc = args.relation
            y_syn = a + b * (true_m - 14.5) + sc * np.random.default_rng(2000 + s).standard_normal(true_m.size)
            cat_y = Catalog({**{k: cat[k] for k in cat.colnames}, "sigv": 10**y_syn}, meta=cat.meta, validate=False)
            has_y, column = np.ones(true_m.size, bool), "sigv"
        else:
            column = args.observable
            has_y = np.isfinite(np.asarray(cat[column], dtype=np.float64))
            cat_y = cat.select(has_y)
        post_y = post_nv.select(has_y)
        if args.exact_likelihood is not None:
            post_y = gaussian_likelihoods(true_m[has_y], args.exact_likelihood, post_nv.grid, seed=3000 + s)
            post_y.meta["feature_names"] = list(no_v)
        y = np.log10(np.asarray(cat_y[column], dtype=np.float64))
        pooled_m.append(true_m[has_y])
        pooled_y.append(y)
        seed = 10 + s
        # --- binned
        res = pop.mass_function(post, volume=v, edges=edges, selection=sel, seed=seed, **nuts)
        exposure = v * 1e9 * width * res.selection_bins
        row = {"survey": s}
        for p in (0.68, 0.95):
            row[f"pop_{p}"] = bin_covered(res, truth, inner, p)
            for which in ("point", "mode"):
                glo, ghi = garwood(res.naive[which], p)
                row[f"{which}_{p}"] = ((glo / exposure <= truth) & (truth <= ghi / exposure))[inner]
            k_true = np.histogram(true_m, bins=edges)[0]
            ilo, ihi = gamma_interval(k_true, exposure, p)
            row[f"ideal_{p}"] = ((ilo <= truth) & (truth <= ihi))[inner]
        k_true = np.histogram(true_m, bins=edges)[0]
        row["pop_bias"] = np.log10(np.median(res.density, 0) / truth)[inner]
        row["point_bias"] = np.log10(np.maximum(res.naive_density("point"), 1e-30) / truth)[inner]
        row["mode_bias"] = np.log10(np.maximum(res.naive_density("mode"), 1e-30) / truth)[inner]
        row["ideal_bias"] = np.log10(np.maximum(k_true / exposure, 1e-30) / truth)[inner]
        rec["bins"].append(row)
        rh = res.rhat()
        if s == args.first_survey:
            res.plot(path=os.path.join(args.out, "mass_function_survey0.png"), mass_range=(13.5, 15.3))
        # --- Tinker amplitude and tilt
        rt = pop.mass_function(post, volume=v, edges=edges, selection=sel, model="tinker08", seed=seed, **nuts)
        rh.update({f"tinker.{k}": x for k, x in rt.rhat().items()})
        trow = {"pop": {k: (np.median(rt.draws(k)), [rt.interval(p, k).tolist() for p in (0.68, 0.95)])
                        for k in ("log_A", "alpha")}}
        flat = post.reweight(Flat(13.5, 15.3), on_empty="warn")
        for name, masses in (("point", post.mean()), ("mode", flat.mode()), ("ideal", true_m)):
            est, se = tp.fit(masses, v)
            trow[name] = (est, se)
        rec["tinker"].append(trow)
        # --- M-sigma relation (posterior without the velocity features)
        rel = dict(scatter_slope=args.scatter_slope)
        rs = pop.scaling_relation(post_y, cat_y, column, volume=v, edges=edges, selection=sel, seed=seed,
                                  **rel, **nuts)
        rh.update({f"scaling.{k}": x for k, x in rs.rhat().items()})
        srow = {"pop": {k: (np.median(rs.draws(k)), [rs.interval(p, k).tolist() for p in (0.68, 0.95)])
                        for k in relation_params(**rel)}}
        flat_y = post_y.reweight(Flat(13.5, 15.3), on_empty="warn")
        for name, masses in (("point", post_y.mean()), ("mode", flat_y.mode()), ("ideal", true_m[has_y])):
            srow[name] = relation_mle(masses, y, **rel)
        rec["scaling"].append(srow)
        rec["rhat"].append(rh)
        ndiv = int(res.diverging.sum() + rt.diverging.sum() + rs.diverging.sum())
        print(f"survey {s:2d}: {len(cat)} clusters, max R-hat {max(rh.values()):.3f}, {ndiv} divergences, "
              f"{time.perf_counter() - ts:.0f} s", flush=True)

        if s > args.first_survey:  # the table and its JSON after every survey: a stopped run keeps what it measured
            rows, max_rhat = report(rec, pooled_m, pooled_y, args, t0)
            with open(os.path.join(args.out, "population_sbc.json"), "w") as fh:
                json.dump({"args": vars(args), "surveys": s + 1 - args.first_survey,
                           "table": [dict(zip(("quantity", "method", "cases", "cov68", "cov95", "median_bias"),
                                              map(_py, r))) for r in rows],
                           "max_rhat": max_rhat}, fh, indent=1)


def report(rec, pooled_m, pooled_y, args, t0):
    """Print the coverage table over the surveys done so far; return its rows and the largest R-hat."""
    rel_names = relation_params(args.scatter_slope)
    if args.observable == "synthetic" and not args.scatter_slope:
        rel_truth = np.asarray(args.relation)
    else:
        rel_truth = relation_mle(np.concatenate(pooled_m), np.concatenate(pooled_y), args.scatter_slope)[0]
    param_truth = {"log_A": 0.0, "alpha": 0.0, **dict(zip(rel_names, rel_truth))}
    rows = []
    bins = rec["bins"]
    for method in ("pop", "point", "mode", "ideal"):
        c68 = np.concatenate([r[f"{method}_0.68"] for r in bins])
        c95 = np.concatenate([r[f"{method}_0.95"] for r in bins])
        bias = np.median(np.concatenate([r[f"{method}_bias"] for r in bins]))
        rows.append(("dn/dlogM, 10 bins 14-15", method, c68.size, c68.mean(), c95.mean(), bias))
    for group, params in (("tinker", ("log_A", "alpha")), ("scaling", rel_names)):
        for i, k in enumerate(params):
            t = param_truth[k]
            for method in ("pop", "point", "mode", "ideal"):
                if method == "pop":
                    c68 = [iv[0][0] <= t <= iv[0][1] for iv in (r["pop"][k][1] for r in rec[group])]
                    c95 = [iv[1][0] <= t <= iv[1][1] for iv in (r["pop"][k][1] for r in rec[group])]
                    bias = np.median([r["pop"][k][0] - t for r in rec[group]])
                else:
                    est = np.array([r[method][0][i] for r in rec[group]])
                    se = np.array([r[method][1][i] for r in rec[group]])
                    c68, c95 = gauss_cover(est, se, t, 0.68), gauss_cover(est, se, t, 0.95)
                    bias = np.median(est - t)
                rows.append((f"{group} {k}", method, len(rec[group]), np.mean(c68), np.mean(c95), bias))
    labels = {"pop": "population fit (this module)", "point": "(i) histogram/fit of point estimates",
              "mode": "(ii) histogram/fit of reweighted modes", "ideal": "(iii) ideal fit to true masses"}
    truth_text = ", ".join(f"{k} = {x:.4f}" for k, x in zip(rel_names, rel_truth))
    how = ("drawn from" if args.observable == "synthetic" and not args.scatter_slope else
           "maximum likelihood of the same relation on the true masses of these surveys")
    print(f"\nafter {len(rec['bins'])} surveys. M-sigma ({args.observable}) truth ({how}): {truth_text}; "
          f"Tinker truth log A = 0, alpha = 0")
    print(f"{'quantity':26s} {'method':40s} {'cases':>5s} {'cov68':>6s} {'cov95':>6s} {'median bias':>12s}")
    for q, m, n, c68, c95, bias in rows:
        unit = " dex" if q.startswith("dn") else ""
        print(f"{q:26s} {labels[m]:40s} {n:5d} {100 * c68:5.1f}% {100 * c95:5.1f}% {bias:+11.4f}{unit}")
    # per bin: where a bias sits (a mass-posterior bias of b dex moves log n by about -slope * b, so the steep
    # end shows it first) and how often each bin's intervals hold the truth
    lo = 14.0 + 0.1 * np.arange(bins[0]["pop_bias"].size)
    print("per bin (log10 M from):      " + " ".join(f"{x:6.1f}" for x in lo))
    for method in ("pop", "point", "mode", "ideal"):
        med = np.median(np.stack([r[f"{method}_bias"] for r in bins]), 0)
        print(f"  median bias, {method:6s} (dex) " + " ".join(f"{x:+6.3f}" for x in med))
    for p in ("0.68", "0.95"):
        cov = np.mean(np.stack([r[f"pop_{p}"] for r in bins]), 0)
        print(f"  coverage {p}, pop        " + " ".join(f"{100 * x:5.0f}%" for x in cov))
    max_rhat = max(max(r.values()) for r in rec["rhat"])
    print(f"largest split R-hat over all fits and parameters: {max_rhat:.3f}; "
          f"time so far {time.perf_counter() - t0:.0f} s", flush=True)
    return rows, max_rhat


def _py(x):
    return x.item() if isinstance(x, np.generic) else x


if __name__ == "__main__":
    main()
