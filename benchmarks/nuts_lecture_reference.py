"""The NUTS reference on the net people use: the lecture's MDN (16 components, trunk 128-128-64), last layer Bayesian.

Issue "SVI against MCMC the ArviZ way", item 4: how large a Bayesian part of the lecture's MDN still converges in
function space within minutes, with chains ``"vectorized"`` on one device and ``"parallel"`` across devices.

For each setting it runs what a user would run::

    fit(MDN(16, (128, 128, 64)), train, method="nuts", bayesian_layers=LAYERS, num_chains=C,
        chain_method=CHAIN_METHOD, init=map_fit, num_warmup=W, num_samples=S)

starting every setting from one MAP fit of the same training set (``init=map_fit``), and prints per setting: the
number of Bayesian weights, the sampler's wall time (not counting the MAP fit), divergences, mean leapfrog steps per
draw, the function-space max split R-hat and min bulk/tail ESS over the held-out clusters' predictive means
(``fit.info["function_space"]``), the weight-space max R-hat for comparison, and the test set's 68/95% coverage and
mean log score against the MAP fit's.

``--devices N`` sets ``XLA_FLAGS=--xla_force_host_platform_device_count=N`` before JAX starts, so that
``chain_method="parallel"`` runs one chain per (virtual) CPU device; on a machine with N accelerators the same
command runs one chain per accelerator. On a 2-core CPU the two virtual devices share the cores: the figure to read
there is that parallel and vectorized chains give the same posterior quality, not their speed.

    python3 benchmarks/nuts_lecture_reference.py                        # last layer, 0.1 (Gpc/h)^3 mock
    python3 benchmarks/nuts_lecture_reference.py --layers last head.locs --chain-methods vectorized parallel
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings


def _parse(argv):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--volume", type=float, default=0.1, help="training mock volume, (Gpc/h)^3 (default 0.1)")
    ap.add_argument("--layers", nargs="+", default=["last"],
                    help="bayesian_layers settings to try, e.g. last head.locs trunk.Dense_2 (default: last)")
    ap.add_argument("--chain-methods", nargs="+", default=["vectorized", "parallel"],
                    choices=["vectorized", "parallel", "sequential"])
    ap.add_argument("--num-chains", type=int, default=2)
    ap.add_argument("--num-warmup", type=int, default=300)
    ap.add_argument("--num-samples", type=int, default=300)
    ap.add_argument("--max-tree-depth", type=int, default=8)
    ap.add_argument("--devices", type=int, default=2, help="virtual CPU devices (XLA flag), default 2")
    ap.add_argument("--seed", type=int, default=0)
    return ap.parse_args(argv)


def main(argv=None) -> int:
    args = _parse(argv)
    if args.devices > 1 and "jax" not in sys.modules:
        os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "")
                                   + f" --xla_force_host_platform_device_count={args.devices}").strip()
    import jax
    import numpy as np

    import numpyro_clustermass as ncm
    from numpyro_clustermass import metrics
    from numpyro_clustermass.bnn import param_shapes, select_layers

    print(f"jax {jax.__version__}, devices: {jax.devices()}")
    cat = ncm.simulate.mock_catalog(volume=args.volume, seed=0)
    train, test = cat.split(test_fraction=0.2, seed=1)
    est = ncm.MDN(16, (128, 128, 64))
    t = time.perf_counter()
    map_fit = ncm.fit(est, train, seed=args.seed, learning_rate=3e-4, progress_bar=False)
    t_map = time.perf_counter() - t
    post = map_fit.posterior(test)

    def scores(p):
        cov = metrics.coverage(p, test, (0.68, 0.95))["empirical"].to_numpy()
        return float(cov[0]), float(cov[1]), float(np.mean(metrics.log_score(p, test)))

    rows = [("map", "-", 0, t_map, "", "", "", "", "", "", *scores(post))]
    print(f"training mocks {len(train)}, test mocks {len(test)}; MAP fit {t_map:.0f} s, "
          f"{map_fit.info['epochs_run']} epochs")
    paths = list(param_shapes(est.net, map_fit.num_features))
    shapes = param_shapes(est.net, map_fit.num_features)
    for layers in args.layers:
        n_weights = sum(int(np.prod(shapes[p])) for p in select_layers(paths, layers))
        for cm in args.chain_methods:
            t = time.perf_counter()
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                f = ncm.fit(est, train, method="nuts", seed=args.seed, init=map_fit, bayesian_layers=layers,
                            num_chains=args.num_chains, chain_method=cm, num_warmup=args.num_warmup,
                            num_samples=args.num_samples, max_tree_depth=args.max_tree_depth, progress_bar=False)
            elapsed = time.perf_counter() - t
            fs = f.info["function_space"]
            steps = np.asarray(f.history.get("num_steps", np.nan), dtype=float)
            post = f.posterior(test)
            rows.append((f"nuts {cm}", layers, n_weights, elapsed, int(f.info["num_divergent"]),
                         f"{np.nanmean(steps):.0f}", f"{fs['max_rhat']:.3f}", f"{fs['min_ess_bulk']:.0f}",
                         f"{fs['min_ess_tail']:.0f}", f"{f.info['weight_space_max_rhat']:.2f}", *scores(post)))
            for w in caught:
                if "Convergence" in type(w.message).__name__:
                    print(f"  {cm} {layers}: {w.message}")

    print()
    print(f"| fit | bayesian_layers | weights | time s | divergent | steps/draw | f-space max R-hat | min ESS bulk "
          f"| min ESS tail | weight-space max R-hat | cov68 | cov95 | log score |")
    print("|---" * 13 + "|")
    for r in rows:
        print("| " + " | ".join([r[0], str(r[1]), str(r[2]), f"{r[3]:.0f}", *map(str, r[4:10]),
                                 f"{r[10]:.3f}", f"{r[11]:.3f}", f"{r[12]:.4f}"]) + " |")
    print(f"\n{args.num_chains} chains x ({args.num_warmup} warmup + {args.num_samples} draws), max_tree_depth "
          f"{args.max_tree_depth}, on {len(jax.devices())} device(s); MAP fit shared by every NUTS row")
    return 0


if __name__ == "__main__":
    sys.exit(main())
