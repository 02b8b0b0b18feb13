"""Simulation-based calibration of the population step (issue 9).

One MDN is trained on a natural (Tinker08) mock with every feature, and one without the velocity features
(``Logsigv``, ``v_std``, ``v_mean``: they carry σ_v) for the M–σ relation. Then, over ``--surveys`` independent mock
surveys (one line of sight per halo, different seeds), this script fits

* the binned mass function (0.1-dex bins; coverage counted in the ten bins 10^14–10^15) with
  :func:`numpyro_clustermass.population.mass_function`;
* the Tinker08-shaped mass function's amplitude ``log A`` and tilt ``alpha`` (truth 0 and 0: the mocks are drawn
  from Tinker08);
* the M–σ relation ``log10 sigv = a + b (log M - 14.5) + N(0, s^2)`` with
  :func:`numpyro_clustermass.population.scaling_relation` (truth: least squares on the true masses of all
  surveys pooled);

and counts how often the 68% and 95% intervals hold the truth, beside (i) a histogram of the posterior means
(point estimates), (ii) a histogram of the modes after reweighting to a flat prior, (iii) the ideal fit to the
true masses. Binned: Poisson (Garwood) intervals of the histogram counts divided by V Δ S (for the ideal fit the
exact posterior of a flat prior on log n). Tinker: the same Poisson likelihood with the masses taken as exact
(Laplace approximation). M–σ: least squares with its standard errors. Everything printed is measured here.

Run: ``python benchmarks/population_sbc.py`` (defaults sized for about 20 min on two shared CPU cores);
``--quick`` for a smoke run.
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
from scipy import optimize, stats

from numpyro_clustermass import population as pop
from numpyro_clustermass.catalog import FEATURE_NAMES
from numpyro_clustermass.estimators import MDN
from numpyro_clustermass.inference import fit
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

        res = optimize.minimize(nlp, np.zeros(2), method="BFGS")
        h = np.zeros((2, 2))
        eps = 1e-4
        for i in range(2):
            for j in range(2):
                e_i, e_j = np.eye(2)[i] * eps, np.eye(2)[j] * eps
                h[i, j] = (nlp(res.x + e_i + e_j) - nlp(res.x + e_i - e_j) - nlp(res.x - e_i + e_j)
                           + nlp(res.x - e_i - e_j)) / (4 * eps**2)
        return res.x, np.sqrt(np.diag(np.linalg.inv(h)))


def ols(m, y, pivot=14.5):
    """Least squares of y on m - pivot: (a, b, s) and their standard errors."""
    x = m - pivot
    n = x.size
    design = np.stack([np.ones(n), x], 1)
    coef, *_ = np.linalg.lstsq(design, y, rcond=None)
    resid = y - design @ coef
    s = np.sqrt(np.sum(resid**2) / (n - 2))
    cov = s**2 * np.linalg.inv(design.T @ design)
    return np.array([coef[0], coef[1], s]), np.array([np.sqrt(cov[0, 0]), np.sqrt(cov[1, 1]), s / np.sqrt(2 * (n - 2))])


def gauss_cover(est, se, truth, prob):
    z = stats.norm.ppf(0.5 + prob / 2)
    return np.abs(est - truth) <= z * se


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--surveys", type=int, default=20)
    ap.add_argument("--survey-volume", type=float, default=0.1)
    ap.add_argument("--train-volume", type=float, default=0.3)
    ap.add_argument("--epochs", type=int, default=40)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--samples", type=int, default=300)
    ap.add_argument("--selection-halos", type=int, default=20000)
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
    inner = (edges[:-1] >= 14.0 - 1e-9) & (edges[1:] <= 15.0 + 1e-9)
    truth = pop._bin_average(pop.tinker08_density, edges)
    width = np.diff(edges)
    tp = TinkerPoints(sel)
    nuts = dict(num_warmup=args.warmup, num_samples=args.samples, num_chains=2)

    rec = {k: [] for k in ("bins", "tinker", "scaling", "rhat")}
    pooled_m, pooled_y = [], []
    for s in range(args.surveys):
        ts = time.perf_counter()
        v = args.survey_volume
        cat = mock_catalog(volume=v, seed=1000 + s, n_los=1)
        post = f_all.posterior(cat)
        post_nv = f_nov.posterior(cat)
        true_m = cat.log_mass
        y = np.log10(np.asarray(cat["sigv"], dtype=np.float64))
        pooled_m.append(true_m)
        pooled_y.append(y)
        seed = 10 + s
        # --- binned
        res = pop.mass_function(post, volume=v, edges=edges, selection=sel, seed=seed, **nuts)
        exposure = v * 1e9 * width * res.selection_bins
        row = {"survey": s}
        for p in (0.68, 0.95):
            lo, hi = res.interval(p)
            row[f"pop_{p}"] = ((lo <= truth) & (truth <= hi))[inner]
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
        if s == 0:
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
        rs = pop.scaling_relation(post_nv, cat, "sigma_v", volume=v, edges=edges, selection=sel, seed=seed, **nuts)
        rh.update({f"scaling.{k}": x for k, x in rs.rhat().items()})
        srow = {"pop": {k: (np.median(rs.draws(k)), [rs.interval(p, k).tolist() for p in (0.68, 0.95)])
                        for k in ("a", "b", "s")}}
        flat_nv = post_nv.reweight(Flat(13.5, 15.3), on_empty="warn")
        for name, masses in (("point", post_nv.mean()), ("mode", flat_nv.mode()), ("ideal", true_m)):
            srow[name] = ols(masses, y)
        rec["scaling"].append(srow)
        rec["rhat"].append(rh)
        ndiv = int(res.diverging.sum() + rt.diverging.sum() + rs.diverging.sum())
        print(f"survey {s:2d}: {len(cat)} clusters, max R-hat {max(rh.values()):.3f}, {ndiv} divergences, "
              f"{time.perf_counter() - ts:.0f} s", flush=True)

        if s >= 1:  # the table and its JSON after every survey, so that a stopped run keeps what it measured
            rows, max_rhat = report(rec, pooled_m, pooled_y, args, t0)
            with open(os.path.join(args.out, "population_sbc.json"), "w") as fh:
                json.dump({"args": vars(args), "surveys": s + 1,
                           "table": [dict(zip(("quantity", "method", "cases", "cov68", "cov95", "median_bias"),
                                              map(_py, r))) for r in rows],
                           "max_rhat": max_rhat}, fh, indent=1)


def report(rec, pooled_m, pooled_y, args, t0):
    """Print the coverage table over the surveys done so far; return its rows and the largest R-hat."""
    a_true, b_true, s_true = ols(np.concatenate(pooled_m), np.concatenate(pooled_y))[0]
    param_truth = {"log_A": 0.0, "alpha": 0.0, "a": a_true, "b": b_true, "s": s_true}
    rows = []
    bins = rec["bins"]
    for method in ("pop", "point", "mode", "ideal"):
        c68 = np.concatenate([r[f"{method}_0.68"] for r in bins])
        c95 = np.concatenate([r[f"{method}_0.95"] for r in bins])
        bias = np.median(np.concatenate([r[f"{method}_bias"] for r in bins]))
        rows.append(("dn/dlogM, 10 bins 14-15", method, c68.size, c68.mean(), c95.mean(), bias))
    for group, params in (("tinker", ("log_A", "alpha")), ("scaling", ("a", "b", "s"))):
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
    print(f"\nafter {len(rec['bins'])} surveys. M-sigma truth (least squares on the true masses of these surveys): a = {a_true:.4f}, "
          f"b = {b_true:.4f}, s = {s_true:.4f}; Tinker truth log A = 0, alpha = 0")
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
