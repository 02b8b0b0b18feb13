"""The package's default MDN beside sbi's default NPE (mixture-density estimator) on the same mock split.

Both learn q(log10 M | 14 features) by maximum likelihood on the same training mocks (a natural-mode
catalogue: Tinker08 masses, seed 0, split by halo with ``cat.split(test_fraction=0.2, seed=1)``). Neither is
told a prior: sbi's NPE is given the simulations directly (``append_simulations(theta, x)``), so, like our
MDN, it learns the posterior under the training set's mass distribution, the implicit prior. sbi needs a
prior object; a ``BoxUniform`` over the training log-mass range is passed, and it matters only through
``DirectPosterior`` (truncation to the box and its leakage normalisation), which is not used here.

* **Ours**: the default MDN of the README and the quickstart, ``ncm.fit(ncm.MDN(16, (128, 128, 64)), train,
  seed=s, learning_rate=3e-4)`` (method "map", fit()'s defaults otherwise: batch 512, at most 150 epochs, the
  plateau schedule on a validation split of 10% of the halos, the MDN's equal-mixture start), posteriors
  ``fit.posterior(test)``.
* **sbi**: ``NPE(prior, density_estimator="mdn")`` with sbi's defaults (10 components, 50 hidden units,
  z-scored theta and x, batch 200, lr 5e-4, gradient clipping at 5, early stopping after 20 epochs on a
  random 10% of the rows), CPU PyTorch, ``torch.manual_seed(s)``, one torch thread (``--torch-threads``):
  on a shared 2-core machine torch's default of one thread per core made an epoch about 7x slower
  (0.75 s against 5.4 s per epoch of 10k synthetic rows, measured while other jobs ran), so sbi's times
  here are its better ones.

The same quantity is scored for both: each network's density is evaluated on our fit's posterior grid
(512 points over the training range with a 0.5-dex margin) and normalised there, a
:class:`~numpyro_clustermass.posterior.MassPosterior`; :func:`numpyro_clustermass.metrics.summary` then gives
the log score (mean log p(true log10 M | x), per dex, linearly interpolated on the grid), the central 68%/95%
coverage, the CRPS and the scatter (std of posterior mean - true over 13.5 <= log M <= 15.3). For sbi the
density is its density estimator's ``log_prob`` (the untruncated mixture, z-score Jacobian included); the
column "sbi raw" is that continuous log-density at the true masses, without the grid, as a check.
"predict s" is the time to compute the grid densities of the whole test set (ours: ``fit.posterior``;
sbi: batched ``density_estimator.log_prob`` over the grid under ``torch.no_grad``; sbi's own
``posterior.sample``/``log_prob`` per observation are not timed). "train s" is the wall time of
``ncm.fit`` and of ``NPE.train``; the first seed of ours includes JAX's compilation.

Needs sbi and torch, in a separate environment (they are not dependencies of the package)::

    python3 -m venv /work/sbi_venv
    /work/sbi_venv/bin/pip install torch --index-url https://download.pytorch.org/whl/cpu   # or any CPU wheel
    /work/sbi_venv/bin/pip install -e ".[sbi]"
    /work/sbi_venv/bin/python benchmarks/vs_sbi.py                     # 5 seeds, 1 (Gpc/h)^3
    /work/sbi_venv/bin/python benchmarks/vs_sbi.py --volume 0.25 --seeds 0 1 2

Measured on 2 shared CPU cores: ``--volume 0.25`` (54.5k training, 13.6k test mocks) with 5 seeds took 9 min
(per seed: ours 7-15 s, sbi 64-126 s); the default volume (218k training, 54k test mocks) took 30 min for 3
seeds (per seed: ours 33-45 s, sbi 388-647 s), so about 50 min for the default 5 seeds. Those were the MDN's
earlier defaults (Flax initialisation, cosine schedule); with today's, ``--skip-sbi`` took 150 s for 5 seeds at
the default volume (ours 22-26 s per seed).

Options for the investigation of issue 12: ``--ours-components/--ours-hidden`` (e.g. 5 and 50 50),
``--ours-weight-decay``, ``--ours-batch-size``, ``--ours-lr``, ``--ours-init flax`` (the lecture's
initialisation; the default is the MDN's, sbi's ``"equal_mixture"``), ``--ours-schedule cosine`` (the default
before the plateau schedule), ``--skip-sbi`` (needs no sbi).
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings

import numpy as np

SBI_INSTALL = 'pip install -e ".[sbi]"  (into a separate environment; see this script\'s docstring)'


def _n_weights(tree) -> int:
    import jax

    return int(sum(np.size(v) for v in jax.tree.leaves(tree)))


def _fit_ours(train, test, seed: int, args):
    import numpyro_clustermass as ncm

    opts = dict(seed=seed, learning_rate=args.ours_lr, progress_bar=False)
    if args.ours_batch_size is not None:
        opts["batch_size"] = args.ours_batch_size
    if args.ours_weight_decay is not None:
        opts["weight_decay"] = args.ours_weight_decay
    if args.ours_schedule is not None:
        opts["schedule"] = args.ours_schedule
    mdn_kw = {} if args.ours_init is None else {"weight_init": args.ours_init}
    t = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        f = ncm.fit(ncm.MDN(args.ours_components, tuple(args.ours_hidden), **mdn_kw), train, **opts)
    t_train = time.perf_counter() - t
    t = time.perf_counter()
    post = f.posterior(test)
    np.asarray(post.log_density)  # wait for the device
    t_pred = time.perf_counter() - t
    info = f"{f.info['epochs_run']} epochs (best {f.info['best_epoch']})"
    return f, post, t_train, t_pred, _n_weights(f.params), info


class _NullTracker:
    """sbi's training tracker that logs nothing (its default writes TensorBoard files to ./sbi-logs)."""

    log_dir = None

    def log_metric(self, *a, **k): ...

    def log_metrics(self, *a, **k): ...

    def log_params(self, *a, **k): ...

    def add_figure(self, *a, **k): ...

    def flush(self): ...


def _npe(prior, log_dir: str):
    """sbi's NPE with a mixture-density estimator and its defaults, logging nowhere in the working tree."""
    import inspect

    from sbi.inference import NPE

    kw = dict(prior=prior, density_estimator="mdn", device="cpu", show_progress_bars=False)
    if "tracker" in inspect.signature(NPE).parameters:  # sbi >= 0.26
        kw["tracker"] = _NullTracker()
    else:
        from torch.utils.tensorboard import SummaryWriter

        kw["summary_writer"] = SummaryWriter(log_dir=log_dir)
    return NPE(**kw)


def _fit_sbi(train, test, grid, seed: int, chunk: int = 4096):
    import tempfile

    import torch
    from sbi.utils import BoxUniform

    from numpyro_clustermass.posterior import MassPosterior

    torch.manual_seed(seed)
    np.random.seed(seed)
    theta = torch.as_tensor(train.log_mass, dtype=torch.float32)[:, None]
    x = torch.as_tensor(train.features(), dtype=torch.float32)
    prior = BoxUniform(low=theta.min(0).values, high=theta.max(0).values)
    with tempfile.TemporaryDirectory() as log_dir:
        t = time.perf_counter()
        inference = _npe(prior, log_dir)
        inference.append_simulations(theta, x)
        de = inference.train()  # sbi's defaults
        t_train = time.perf_counter() - t
    de.eval()
    n_w = int(sum(p.numel() for p in de.parameters()))
    epochs = inference._summary.get("epochs_trained", ["?"])[-1]
    best = inference._summary.get("best_validation_loss", [float("nan")])[-1]

    xt = torch.as_tensor(test.features(), dtype=torch.float32)
    g = torch.as_tensor(grid, dtype=torch.float32)
    t = time.perf_counter()
    parts = []
    with torch.no_grad():
        for s in range(0, xt.shape[0], chunk):
            c = xt[s:s + chunk]
            th = g[:, None, None].expand(g.shape[0], c.shape[0], 1)  # (G, B, 1)
            parts.append(de.log_prob(th, c).T.numpy())  # (B, G)
    ld = np.concatenate(parts)
    post = MassPosterior.from_log_density(grid, ld, training_log_mass=train.log_mass)
    np.asarray(post.log_density)
    t_pred = time.perf_counter() - t
    with torch.no_grad():
        yt = torch.as_tensor(test.log_mass, dtype=torch.float32)[:, None]
        raw = float(np.mean(np.concatenate([de.log_prob(yt[s:s + chunk], xt[s:s + chunk]).numpy()
                                            for s in range(0, xt.shape[0], chunk)])))
    info = f"{epochs} epochs (best validation log prob {-float(best):.4f})"
    return post, t_train, t_pred, n_w, info, raw


COLS = ("log score", "cov 68", "cov 95", "scatter", "CRPS", "train s", "predict s")


def _row(label, r) -> str:
    return (f"| {label} | {r[0]:.4f} | {r[1]:.3f} | {r[2]:.3f} | {r[3]:.4f} | {r[4]:.4f} | "
            f"{r[5]:.0f} | {r[6]:.2f} |")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    ap.add_argument("--volume", type=float, default=1.0, help="(Gpc/h)^3 of the natural-mode mock")
    ap.add_argument("--torch-threads", type=int, default=1,
                    help="torch.set_num_threads (0: torch's default, one per core)")
    ap.add_argument("--skip-sbi", action="store_true", help="only our MDN (no sbi needed)")
    ap.add_argument("--ours-components", type=int, default=16)
    ap.add_argument("--ours-hidden", type=int, nargs="+", default=[128, 128, 64])
    ap.add_argument("--ours-lr", type=float, default=3e-4)
    ap.add_argument("--ours-init", choices=["flax", "equal_mixture"], default=None,
                    help="MDN weight initialisation (numpyro_clustermass.nets.INITS; default: the MDN's)")
    ap.add_argument("--ours-schedule", choices=["plateau", "cosine", "exponential", "constant"], default=None,
                    help="learning-rate schedule of the map method (default: fit()'s)")
    ap.add_argument("--ours-batch-size", type=int, default=None, help="default: fit()'s")
    ap.add_argument("--ours-weight-decay", type=float, default=None, help="map method's weight_decay")
    args = ap.parse_args(argv)

    if not args.skip_sbi:
        try:
            import sbi  # noqa: F401
            import torch
        except ImportError:
            print(f"vs_sbi.py needs sbi and torch: {SBI_INSTALL}", file=sys.stderr)
            return 2
        if args.torch_threads:
            torch.set_num_threads(args.torch_threads)
        print(f"sbi {sbi.__version__}, torch {torch.__version__} ({torch.get_num_threads()} threads)")

    import jax

    import numpyro_clustermass as ncm
    from numpyro_clustermass import metrics

    t0 = time.perf_counter()
    cat = ncm.simulate.mock_catalog(volume=args.volume, seed=0)
    train, test = cat.split(test_fraction=0.2, seed=1)
    y = test.log_mass
    print(f"jax {jax.__version__} on {jax.devices()[0].platform}; volume {args.volume} (Gpc/h)^3: "
          f"{len(train)} training, {len(test)} test mocks ({time.perf_counter() - t0:.0f} s to simulate)")
    init = args.ours_init or ncm.MDN().weight_init
    ours_label = (f"ours MDN({args.ours_components}, {tuple(args.ours_hidden)}, weight_init={init!r}) "
                  f"lr {args.ours_lr:g}" + (f" schedule {args.ours_schedule}" if args.ours_schedule else "")
                  + (f" batch {args.ours_batch_size}" if args.ours_batch_size else "")
                  + (f" wd {args.ours_weight_decay:g}" if args.ours_weight_decay is not None else ""))

    def scores(post, t_train, t_pred):
        s = metrics.summary(post, y, estimator="mean")
        return [s["log_score_mean"], s["coverage_central_68"], s["coverage_central_95"], s["scatter_std"],
                s["crps_mean"], t_train, t_pred]

    res = {"ours": [], "sbi": []}
    weights = {}
    raws = []
    for seed in args.seeds:
        f, post, tt, tp, nw, info = _fit_ours(train, test, seed, args)
        weights["ours"] = nw
        res["ours"].append(scores(post, tt, tp))
        print(f"seed {seed} ours: {info}, {tt:.0f} s; " + _row("", res["ours"][-1]), flush=True)
        if not args.skip_sbi:
            spost, tt, tp, nw, info, raw = _fit_sbi(train, test, f.grid, seed)
            weights["sbi"] = nw
            raws.append(raw)
            res["sbi"].append(scores(spost, tt, tp))
            print(f"seed {seed} sbi:  {info}, {tt:.0f} s, raw log_prob {raw:.4f}; " + _row("", res["sbi"][-1]),
                  flush=True)

    print(f"\nweights: {ours_label}: {weights['ours']}"
          + (f"; sbi NPE mdn (defaults): {weights['sbi']}" if "sbi" in weights else ""))
    print("| seed | " + " | ".join(COLS) + " |")
    print("|---" * (len(COLS) + 1) + "|")
    for k, seed in enumerate(args.seeds):
        print(_row(f"{seed} ours", res["ours"][k]))
        if res["sbi"]:
            print(_row(f"{seed} sbi", res["sbi"][k]))
    for name in ("ours", "sbi"):
        if res[name]:
            print(_row(f"median {name}", np.median(np.array(res[name]), axis=0)))
    if res["sbi"]:
        d = np.array(res["ours"])[:, 0] - np.array(res["sbi"])[:, 0]
        print(f"\nlog score ours - sbi per seed: {' '.join(f'{v:+.4f}' for v in d)}; median {np.median(d):+.4f}"
              f"; sbi raw (continuous) log_prob per seed: {' '.join(f'{v:.4f}' for v in raws)}")
    print(f"total {time.perf_counter() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
