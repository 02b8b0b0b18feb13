"""Benchmark: the Bayesian methods side by side on one held-out set, and the NUTS convergence check.

Targets (issue "Bayesian weights"):

* NUTS, on a flat-mass mock of a few thousand clusters with a small net, reaches function-space split R-hat
  < 1.05 on held-out predictive means within 10 minutes, and its 68% and 95% interval coverage on held-out
  clusters is within 3 points of nominal;
* BBB, MC dropout, Laplace and ensembles report 68/95% coverage and mean log score on the same held-out set
  next to NUTS, in one table (MAP is the reference row).

Every method is run exactly as a user would: ``fit(MDN(3, (16, 16)), train, method=m, seed=0)`` with the method's
defaults, then ``fit.posterior(test)``; nothing method-specific. Coverage is the fraction of held-out true
log-masses inside the central (equal-tailed, ``MassPosterior.quantiles``) and the highest-density
(``MassPosterior.hpdi``) intervals (``metrics.coverage``); the log score is the mean of ``MassPosterior.log_prob``
at the truth (``metrics.log_score``, per unit log10 M; higher is better). ``sd_epi``/``sd_ale`` are the root-mean
epistemic and aleatoric variances (dex). Times are wall-clock on this (shared, noisy) machine: notes, not targets,
except NUTS's 10 minutes.

Run:  python3 benchmarks/bench_bayesian_methods.py [--n-halos 1500] [--methods map,bbb,mc_dropout,laplace,ensemble,nuts]
      [--strict]
"""

from __future__ import annotations

import argparse
import sys
import time

import jax
import numpy as np

from numpyro_clustermass import metrics
from numpyro_clustermass.estimators import MDN
from numpyro_clustermass.inference import fit

NUTS_MAX_RHAT = 1.05
NUTS_MAX_SECONDS = 600.0
COVERAGE_TOLERANCE = 0.03
METHODS = ("map", "bbb", "mc_dropout", "laplace", "ensemble", "nuts")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n-halos", type=int, default=1500, help="flat-mass mock halos (1500: ~3.6k clusters)")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--strict", action="store_true", help="exit 1 if a NUTS target is missed")
    args = ap.parse_args(argv)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]

    from numpyro_clustermass.simulate import mock_catalog

    print(f"jax {jax.__version__} on {jax.devices()[0].platform} ({jax.device_count()} device(s))")
    cat = mock_catalog(volume=1.0, mass_sampling="flat", n_halos=args.n_halos, seed=args.seed)
    train, test = cat.split(test_fraction=0.2, seed=1)
    est = MDN(num_components=3, hidden=(16, 16))
    print(f"mock: {len(cat)} clusters (flat mass), train {len(train)}, held-out test {len(test)}; "
          f"estimator MDN(num_components=3, hidden=(16, 16))\n")
    truth = np.asarray(test.log_mass)

    rows, nuts_info = [], None
    for m in methods:
        t0 = time.perf_counter()
        f = fit(est, train, method=m, seed=args.seed, progress_bar=False)
        t_fit = time.perf_counter() - t0
        t0 = time.perf_counter()
        post = f.posterior(test)
        t_post = time.perf_counter() - t0
        cen = metrics.coverage(post, truth, (0.68, 0.95), kind="central").empirical.to_numpy()
        hpd = metrics.coverage(post, truth, (0.68, 0.95), kind="hpd").empirical.to_numpy()
        ls = metrics.log_score(post, truth)
        rows.append(dict(method=m, c68=cen[0], c95=cen[1], h68=hpd[0], h95=hpd[1], log_score=float(np.mean(ls)),
                         sd_epi=float(np.sqrt(np.mean(post.epistemic_variance))),
                         sd_ale=float(np.sqrt(np.mean(post.aleatoric_variance))),
                         draws=post.meta["num_draws"], fit_s=t_fit, post_s=t_post))
        r = rows[-1]
        print(f"{m:10s} done: fit {t_fit:6.1f} s, posterior {t_post:5.1f} s, central 68/95 {r['c68']:.3f}/"
              f"{r['c95']:.3f}, log score {r['log_score']:.3f}", flush=True)
        if m == "nuts":
            nuts_info = dict(f.info)

    print(f"\nheld-out set: {len(test)} clusters; coverage = fraction of true log10 M inside the interval")
    head = (f"{'method':10s} {'cen68':>6s} {'cen95':>6s} {'hpd68':>6s} {'hpd95':>6s} {'logscore':>8s} "
            f"{'sd_epi':>7s} {'sd_ale':>7s} {'draws':>5s} {'fit_s':>7s} {'post_s':>6s}")
    print(head)
    print("-" * len(head))
    for r in rows:
        print(f"{r['method']:10s} {r['c68']:6.3f} {r['c95']:6.3f} {r['h68']:6.3f} {r['h95']:6.3f} "
              f"{r['log_score']:8.3f} {r['sd_epi']:7.4f} {r['sd_ale']:7.4f} {r['draws']:5d} {r['fit_s']:7.1f} "
              f"{r['post_s']:6.1f}")

    ok = True
    if nuts_info is not None:
        fs = nuts_info["function_space"]
        r = next(r for r in rows if r["method"] == "nuts")
        print(f"\nNUTS: {nuts_info['num_chains']} chains ({nuts_info['chain_method']}) x ({nuts_info['num_warmup']} + "
              f"{nuts_info['num_samples']}), {nuts_info['num_latent']} latent weights (last layer; trunk at MAP), "
              f"{nuts_info['num_divergent']} divergent, mean {nuts_info['mean_num_steps']:.0f} leapfrog steps")
        print(f"  function space ({nuts_info['function_space_clusters']} held-out validation clusters): max split "
              f"R-hat {fs['max_rhat']:.4f} (median {fs['median_rhat']:.4f}), min bulk ESS {fs['min_ess_bulk']:.0f} "
              f"(median {fs['median_ess_bulk']:.0f}), min tail ESS {fs['min_ess_tail']:.0f}")
        print(f"  weight space: max split R-hat {nuts_info['weight_space_max_rhat']:.4f}")
        total = r["fit_s"]
        checks = [
            (f"function-space max R-hat {fs['max_rhat']:.4f} < {NUTS_MAX_RHAT}", fs["max_rhat"] < NUTS_MAX_RHAT),
            (f"fit time {total:.0f} s (MAP {nuts_info['map_time_s']:.0f} s + MCMC {nuts_info['mcmc_time_s']:.0f} s) "
             f"< {NUTS_MAX_SECONDS:.0f} s", total < NUTS_MAX_SECONDS),
            (f"central 68% coverage {r['c68']:.3f} within {COVERAGE_TOLERANCE} of 0.68",
             abs(r["c68"] - 0.68) <= COVERAGE_TOLERANCE),
            (f"central 95% coverage {r['c95']:.3f} within {COVERAGE_TOLERANCE} of 0.95",
             abs(r["c95"] - 0.95) <= COVERAGE_TOLERANCE),
        ]
        for text, passed in checks:
            print(f"  {'PASS' if passed else 'MISS'}: {text}")
            ok &= passed
    return 0 if ok or not args.strict else 1


if __name__ == "__main__":
    sys.exit(main())
