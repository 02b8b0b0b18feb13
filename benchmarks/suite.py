"""The benchmark suite: every figure of issue 15 against its reference, measured in one run, written as JSON and a
markdown table.

Run from the repository root::

    python -m benchmarks                       # default sizes, writes benchmarks/results/<device>.json and .md
    python -m benchmarks --quick               # tiny sizes (checks that everything runs; the numbers mean little)
    python -m benchmarks --only hpdi,reweight  # some benchmarks (names: python -m benchmarks --list)
    python -m benchmarks --out /tmp/bench      # another folder

Each benchmark calls the measuring function of an existing script in ``benchmarks/`` (``measure``; the script's
command line prints the same numbers) or, for what no script measured, a function of this module; a benchmark
whose point is a fresh process (peak memory, time to first result) runs its script in a child process. Every
entry holds its value, the reference it was compared against *in the same process* (a hand-written loop, plain
NumPy, another method, a warm call, a smaller size), their ratio, what the ratio means, the issue's target where
it has one and whether it is met, and the sizes. The file's header holds the device, the versions, the CPU count,
the date, the git commit and the load average before and after (these machines are shared: compare the ratios of
one run, not absolute times across runs).

Targets (issue 15, "done when"): MAP ``fit()`` >= 0.95x the hand-written loop per whole call and >= 0.97x per
epoch; BBB >= 0.8x MAP on the lecture net; in a second process (persistent cache) the first posterior + statistics
+ reweight on 61k clusters <= 3x warm, in a cold process <= 10x; ``hpdi`` within 3x of ``quantiles``; prediction
time linear within 20% from 100k to 1M clusters (at most 1.2x the per-cluster time at 100k), and its working
memory beyond the result bounded by the chunk size (at 1M at most 1.2x what it is at 100k).
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Callable

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUT = ROOT / "benchmarks" / "results"


#: The header row of the markdown table (``markdown``); README and docs/benchmarks.md show its rows (tests/test_docs.py)
TABLE_HEADER = "| benchmark | value | reference | reference value | ratio | ratio means | target | met |"


# ------------------------------------------------------------------------------------------------ entries
def entry(name: str, value: float, unit: str, reference: str | None, reference_value: float | None,
          ratio: float | None, ratio_means: str, target: tuple[str, float] | None = None, sizes: dict | None = None,
          note: str = "") -> dict:
    """One figure of the suite, with its reference and target.

    Parameters
    ----------
    name : str
        What was measured.
    value, unit : float, str
        The figure and its unit.
    reference, reference_value : str or None, float or None
        What it was compared against in the same process, and that reference's value (same unit unless the note
        says otherwise); None where there is no reference.
    ratio : float or None
        The comparison, as ``ratio_means`` defines it.
    ratio_means : str
        E.g. ``"value / reference"``.
    target : (op, bound), optional
        The issue's target on the ratio, ``op`` one of ``">="``, ``"<="``.
    sizes : dict, optional
    note : str

    Returns
    -------
    dict

    Examples
    --------
    >>> e = entry("x", 2.0, "s", "y", 1.0, 2.0, "value / reference", (">=", 1.5))
    >>> e["met"], e["target"]
    (True, '>= 1.5')
    >>> entry("x", 1.0, "s", None, None, None, "", ("<<", 1.0))
    Traceback (most recent call last):
    ...
    ValueError: target op must be '>=' or '<='; got '<<'
    """
    met = None
    if target is not None:
        op, bound = target
        if op not in (">=", "<="):
            raise ValueError(f"target op must be '>=' or '<='; got {op!r}")
        if ratio is not None:
            met = bool(ratio >= bound) if op == ">=" else bool(ratio <= bound)
    return {"name": name, "value": _num(value), "unit": unit, "reference": reference,
            "reference_value": _num(reference_value), "ratio": _num(ratio), "ratio_means": ratio_means,
            "target": None if target is None else f"{target[0]} {target[1]:g}", "met": met,
            "sizes": sizes or {}, "note": note}


def _num(v):
    return None if v is None else float(v)


# ------------------------------------------------------------------------------------------------ helpers
class PeakRSS:
    """Peak resident memory of this process while the ``with`` block runs, above what it was on entry (bytes),
    sampled every ``interval`` seconds from /proc/self/statm by a thread (Linux; ``peak`` stays None elsewhere).

    >>> with PeakRSS() as m:
    ...     buf = bytearray(50 * 2**20)
    >>> m.peak is None or m.peak >= 0
    True
    """

    def __init__(self, interval: float = 0.002):
        self.interval, self.peak = interval, None
        self._stop = threading.Event()

    @staticmethod
    def rss() -> int | None:
        try:
            with open("/proc/self/statm") as fh:
                return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except (OSError, ValueError, IndexError):
            return None

    def _run(self):
        while not self._stop.is_set():
            r = self.rss()
            if r is not None:
                self._max = max(self._max, r)
            self._stop.wait(self.interval)

    def __enter__(self):
        self._start = self.rss()
        self._max = self._start or 0
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()
        end = self.rss()
        if self._start is not None:
            self.peak = max(self._max, end or 0) - self._start
        return False


def _resample(x, y, n: int, seed: int = 0):
    """``n`` rows drawn with replacement (timing only: the values do not change the cost)."""
    import numpy as np

    idx = np.random.default_rng(seed).integers(0, len(y), n)
    return x[idx], y[idx]


def _release_memory():
    """Collect garbage and hand freed heap back to the OS (glibc ``malloc_trim``), so that a resident-memory
    baseline taken next is not inflated by freed blocks."""
    import ctypes
    import gc

    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _quiet_fit_warnings():
    import warnings

    warnings.filterwarnings("ignore", message=".*outside the training distribution.*")
    warnings.filterwarnings("ignore", message=".*peak in the outer.*")


# ------------------------------------------------------------------------------------------------ benchmarks
def bench_train_map(quick: bool, verbose: bool) -> list[dict]:
    """fit(method="map") on the lecture MDN against the hand-written Flax+Optax loop (bench_train_throughput)."""
    from benchmarks import bench_train_throughput as b

    kw = dict(volume=0.01, epochs=2, rounds=1) if quick else dict(volume=0.25, epochs=5, rounds=3)
    m = b.measure(**kw, verbose=verbose)
    sizes = {"mocks": m["n_mocks"], "samples_per_epoch": m["samples_per_epoch"], "epochs": m["epochs"],
             "rounds": m["rounds"], "batch": m["batch"], "net": "MDN 16 comp., 128-128-64"}
    ref = "hand-written Flax+Optax loop (same schedule, in-jit shuffle, scan per epoch)"
    return [
        entry("train MAP: whole fit() call", m["fit_call"], "samples/s", ref, m["ref"], m["ratio_call"],
              "fit / reference throughput (best round each)", (">=", 0.95), sizes),
        entry("train MAP: fit() epochs", m["fit_epochs"], "samples/s", ref, m["ref"], m["ratio_epochs"],
              "fit / reference throughput (best round each)", (">=", 0.97), sizes,
              "epochs after the first, from fit.history['epoch_time']"),
    ]


def bench_train_bayes(quick: bool, verbose: bool) -> list[dict]:
    """BBB, MC dropout and an ensemble against MAP on the lecture net, alternating rounds (bench_bbb_throughput)."""
    from benchmarks import bench_bbb_throughput as b

    methods = ("map", "bbb", "mc_dropout", "ensemble")
    kw = dict(n_halos=300, epochs=2, rounds=1) if quick else dict(n_halos=6000, epochs=5, rounds=3)
    m = b.measure(**kw, hidden=(128, 128, 64), components=16, methods=methods, verbose=verbose)
    from numpyro_clustermass.inference.ensemble import DEFAULT_NUM_MEMBERS

    sizes = {"mocks": m["n_mocks"], "epochs": m["epochs"], "rounds": m["rounds"], "batch": m["batch"],
             "net": f"MDN 16 comp., 128-128-64 ({m['n_weights']} weights)"}
    ref = "fit(method='map'), same net, data and batches"
    out = []
    for meth, target, note in (
            ("bbb", (">=", 0.8), "mean-field over every weight (the method's default)"),
            ("mc_dropout", None, "the method's default dropout"),
            ("ensemble", None, f"{DEFAULT_NUM_MEMBERS} members trained together: a sample is one row for every "
                               f"member ({DEFAULT_NUM_MEMBERS}x the arithmetic of MAP)")):
        out.append(entry(f"train {meth} (lecture net)", m["best"][meth], "samples/s", ref, m["best"]["map"],
                         m["ratio"][meth], "method / MAP throughput (best round each)", target,
                         {**sizes, "method": meth}, note))
    return out


def bench_train_step(quick: bool, verbose: bool) -> list[dict]:
    """One training step of BBB and MC dropout against MAP's, the package's ``method.step`` in a compiled scan on
    one batch (bench_step): the step alone, without the epoch's held-out evaluation that train_bayes includes."""
    from benchmarks import bench_step as b

    kw = dict(steps=20, rounds=1) if quick else dict(steps=200, rounds=5)
    m = b.measure(**kw)
    sizes = {"steps": m["steps"], "rounds": kw["rounds"], "batch": m["batch"],
             "net": f"MDN 16 comp., 128-128-64 ({m['num_weights']} weights)"}
    ref = "MAP's step, same net and batch"
    return [entry(f"train step {meth} (lecture net)", m["ms_per_step"][meth], "ms/step", ref, m["ms_per_step"]["map"],
                  m["ratio"][meth], "MAP's time / method's time (best round each)", None, {**sizes, "method": meth},
                  note)
            for meth, note in (("bbb", "one weight draw a step (num_particles=1)"),
                               ("mc_dropout", "dropout_rate 0.1, a mask over every hidden unit of every row"))]


def bench_posterior(quick: bool, verbose: bool) -> list[dict]:
    """Posterior statistics of the lecture MDN against plain NumPy on the same densities (bench_posterior)."""
    from benchmarks import bench_posterior as b

    kw = dict(n=2_000, epochs=1, repeats=1, train_volume=0.01) if quick else dict(n=61_000, epochs=3, repeats=3)
    m = b.measure(**kw, verbose=verbose)
    sizes = {"clusters": m["n"], "grid": m["grid"], "repeats": m["repeats"]}
    return [
        entry("posterior stats: mode+mean+q16/84 (MDN)", m["stats"], "s",
              "the same statistics in plain NumPy (float32, vectorised)", m["numpy_stats"],
              m["numpy_stats"] / m["stats"], "reference time / time (> 1: faster)", None, sizes,
              f"posterior build (net + mixture on the grid) {m['build']:.3f} s"),
        entry("hpdi(0.68), lecture MDN posteriors", m["hpdi"], "s", "quantiles([0.16, 0.84]) on the same posteriors",
              m["quantiles"], m["hpdi"] / m["quantiles"], "time / reference time", ("<=", 3.0), sizes,
              "the posteriors a user gets; the hpdi entry's random 16-component mixtures span the whole grid, "
              "the sweep's worst case"),
    ]


def bench_pipeline(quick: bool, verbose: bool) -> list[dict]:
    """posterior + reweight + mode/mean/quantiles throughput: MDN (MAP) against NumPy statistics on the same
    densities, and a Bayesian fit (BBB) with 100 draws against the MAP fit, in one process (new here)."""
    import jax
    import numpy as np

    from benchmarks import bench_posterior as bp
    from benchmarks import bench_reweight as br
    from numpyro_clustermass import priors as P
    from numpyro_clustermass.estimators import MDN
    from numpyro_clustermass.inference import fit

    _quiet_fit_warnings()
    n, n_bayes, epochs, repeats, vol = (2_000, 256, 1, 1, 0.01) if quick else (61_000, 2_048, 2, 3, 0.05)
    train, test = bp.make_data(n, vol)
    est = MDN(num_components=16, hidden=(128, 128, 64))
    kw = dict(num_epochs=epochs, patience=None, progress_bar=False, seed=0)
    f_map = fit(est, train, method="map", **kw)
    f_bbb = fit(est, train, method="bbb", **kw)
    prior = P.MassFunction("tinker08", z=0.117, cosmology="planck13", mdef="200c")

    t_map, t_build, t_rw, post = bp.pipeline_time(f_map, test, prior, repeats)
    # reference: the same densities, then reweighting + the same statistics in plain NumPy (the priors evaluated
    # on the grid once, outside the timing)
    g32 = post.grid.astype(np.float32)
    lt = np.asarray(P.evaluate_on_grid(prior, g32))
    ls = np.asarray(P.evaluate_on_grid(post.prior, g32))
    ld = np.asarray(post.log_density)
    t_np = br.best_of(lambda: br.numpy_path(post.grid, ld, lt, ls), repeats)[0]
    t_ref = t_build + t_np
    test_b = test.select(np.arange(n_bayes))
    # one timed call after the warm-up: 100 draws of the lecture net cost about 100 MAP posteriors
    t_bbb, t_build_b, t_rw_b, post_b = bp.pipeline_time(f_bbb, test_b, prior, 1, num_draws=100)
    assert post_b.meta["num_draws"] == 100
    sizes = {"clusters": n, "grid": int(post.grid.size), "repeats": repeats, "train_mocks": len(train),
             "net": "MDN 16 comp., 128-128-64", "prior": "Tinker08 mass function"}
    return [
        entry("posterior+reweight+stats: MDN (MAP)", n / t_map, "clusters/s",
              "the same posterior build, then reweight + statistics in plain NumPy", n / t_ref, t_ref / t_map,
              "value / reference throughput", None, sizes,
              f"of {t_map:.3f} s: posterior build {t_build:.3f} s, reweight {t_rw:.3f} s (it fits the training "
              f"prior of every new posterior again), statistics the rest; the NumPy reweight + statistics {t_np:.3f} s"),
        entry("posterior+reweight+stats: BBB, 100 draws", n_bayes / t_bbb, "clusters/s",
              "the MDN (MAP) pipeline above, same process", n / t_map, (n_bayes / t_bbb) / (n / t_map),
              "value / reference throughput", None, {**sizes, "clusters": n_bayes, "num_draws": 100, "repeats": 1},
              f"of {t_bbb:.3f} s: posterior build {t_build_b:.3f} s, reweight {t_rw_b:.3f} s"),
    ]


def bench_reweight(quick: bool, verbose: bool) -> list[dict]:
    """Reweighting to Tinker08 + mode/mean/q16/84 against plain NumPy (bench_reweight)."""
    from benchmarks import bench_reweight as b

    m = b.measure(**(dict(n=2_000, repeats=1) if quick else dict(n=61_000, repeats=3)), verbose=verbose)
    return [entry("reweight + mode+mean+q16/84", m["jax_best"], "s", "the same computation in plain NumPy",
                  m["numpy_best"], m["numpy_best"] / m["jax_best"], "reference time / time (> 1: faster)", None,
                  {"clusters": m["n"], "grid": m["grid"], "repeats": m["repeats"]},
                  f"max |jax - numpy| over the estimates {m['agree']:.1e} dex")]


def bench_hpdi(quick: bool, verbose: bool) -> list[dict]:
    """MassPosterior.hpdi against quantiles on the same posteriors (bench_hpdi)."""
    from benchmarks import bench_hpdi as b

    m = b.measure(**(dict(n=2_000, repeats=2) if quick else dict(n=61_000, repeats=3)))
    used = m[m["used"]]
    sizes = {"clusters": m["n"], "grid": m["grid"], "components": m["components"], "repeats": m["repeats"],
             "algorithm": m["used"]}
    return [
        entry("hpdi(0.68) wall time, random wide mixtures", used[0], "s", "quantiles([0.16, 0.84]) wall time",
              m["quantiles"][0],
              used[0] / m["quantiles"][0], "time / reference time", ("<=", 3.0), sizes),
        entry("hpdi(0.68) CPU time, random wide mixtures", used[1], "s", "quantiles([0.16, 0.84]) CPU time",
              m["quantiles"][1],
              used[1] / m["quantiles"][1], "time / reference time", ("<=", 3.0), sizes,
              "process CPU time: steadier than wall time on a shared machine"),
    ]


def bench_simulate(quick: bool, verbose: bool) -> list[dict]:
    """A mock catalogue with members and features in a fresh process (peak memory), and the feature kernel
    against np.bincount (bench_simulate, child process)."""
    volume = 0.005 if quick else 1.0  # 1.0: the lecture's catalogue (issue "Foundation": < 90 s, < 6 GB)
    with tempfile.TemporaryDirectory(prefix="ncm_bench_sim_") as tmp:
        out = Path(tmp) / "sim.json"
        proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "bench_simulate.py"), "--volume",
                               str(volume), "--json", str(out)], capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"bench_simulate.py failed (exit {proc.returncode}):\n{proc.stderr[-2000:]}")
        if verbose:
            print(proc.stdout)
        m = json.loads(out.read_text())
    sizes = {"volume_Gpc3_h3": volume, "mocks": m["n_mocks"], "galaxies": m["n_galaxies"]}
    return [
        entry("simulate + features (fresh process)", m["n_mocks"] / m["total_s"], "mocks/s", None, None, None, "",
              None, {**sizes, "peak_memory_gb": round(m["peak_gb"], 3), "total_s": round(m["total_s"], 2)},
              f"mock_catalog(volume={volume}, with_members=True) {m['total_s']:.1f} s, peak resident memory "
              f"{m['peak_gb']:.2f} GB (the child process's ru_maxrss)"),
        entry("features: jit segment kernel", m["features_s"], "s", "np.bincount two-pass moments (same members)",
              m["numpy_s"], m["numpy_s"] / m["features_s"], "reference time / time (> 1: faster)", None, sizes,
              f"max relative difference {m['max_rel_diff']:.1e}"),
    ]


def bench_first_result(quick: bool, verbose: bool) -> list[dict]:
    """Time to first result in cold, second (persistent cache) and no-cache processes (time_to_first_result)."""
    from benchmarks import time_to_first_result as b

    kw = (dict(n=2_000, train_volume=0.005, epochs=1, repeats=1, new_sizes=(500, 1_000)) if quick
          else dict(n=61_000, train_volume=0.02, epochs=3, repeats=3))
    m = b.measure(**kw)
    runs = m["runs"]
    sizes = {"test_clusters": m["n_test"], "train_mocks": m["n_train"], "epochs": m["epochs"], "repeats": m["repeats"],
             "cache_entries": m["cache_entries"], "cache_mb": round(m["cache_mb"], 1)}
    out = []
    for label, target in (("cold", ("<=", 10.0)), ("second", ("<=", 3.0)), ("no cache", None)):
        a, w = runs[label]["posterior"]
        out.append(entry(f"first posterior+stats+reweight: {label} process", a, "s",
                         "the same step, warm (best later call, same process)", w, a / w, "first / warm time", target,
                         sizes, f"import {runs[label]['import']:.1f} s; whole process {runs[label]['process_wall']:.1f} s"))
    for label in ("cold", "second"):
        a, w = runs[label]["fit"]
        out.append(entry(f"first fit(map): {label} process", a, "s", "the same fit, warm (same process)", w, a / w,
                         "first / warm time", None, sizes))
    return out


def _nuts_ess(fit_obj) -> tuple[float, float]:
    fs = fit_obj.info["function_space"]
    return float(fs["min_ess_bulk"]), float(fit_obj.info["mcmc_time_s"])


def bench_nuts(quick: bool, verbose: bool) -> list[dict]:
    """NUTS function-space ESS per second of sampling: a small BNN (last layer) and the Bayesian M–σ relation,
    the latter against plain ``numpyro.infer.MCMC(NUTS(model))`` on the same standardised data (new here)."""
    import warnings

    import jax
    import numpy as np
    from numpyro.infer import MCMC, NUTS

    from numpyro_clustermass.catalog import StandardScaler
    from numpyro_clustermass.diagnostics import function_space_convergence
    from numpyro_clustermass.estimators import MDN
    from numpyro_clustermass.inference import fit
    from numpyro_clustermass.inference.nuts import predictive_means
    from numpyro_clustermass.scaling import MassObservableRelation, mass_observable_model
    from numpyro_clustermass.simulate import mock_catalog

    warmup, samples, n_halos, vol = (20, 20, 100, 0.02) if quick else (150, 150, 500, 0.1)
    # the small BNN's sampler hits NumPyro's default depth cap (10: 1023 leapfrog steps per draw; R-hat 1.35 at
    # 150 + 150 draws in the run of commit c3e4a6b, 73 s of the suite): depth 8 bounds its cost at 255 steps a draw
    # (the M–σ sampler's trees are shallower than either cap)
    depth = {"max_tree_depth": 5} if quick else {"max_tree_depth": 8}
    chains = 2
    out = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cat = mock_catalog(volume=1.0, mass_sampling="flat", n_halos=n_halos, seed=0)
        train, _ = cat.split(test_fraction=0.2, seed=1)
        est = MDN(num_components=3, hidden=(16, 16))
        f_map = fit(est, train, method="map", seed=0, num_epochs=30 if quick else 100, progress_bar=False)
        f = fit(est, train, method="nuts", seed=0, init=f_map, bayesian_layers="last", num_warmup=warmup,
                num_samples=samples, num_chains=chains, progress_bar=False, **depth)
    ess, t = _nuts_ess(f)
    out.append(entry("NUTS small BNN: function-space ESS/s", ess / t, "ESS/s", None, None, None, "", None,
                     {"train_clusters": len(train), "net": "MDN 3 comp., 16-16, last layer Bayesian",
                      "latent": f.info["num_latent"], "chains": chains, "warmup": warmup, "samples": samples,
                      "mean_leapfrog_steps": round(f.info["mean_num_steps"], 1), **depth},
                     f"min bulk ESS {ess:.0f} over {f.info['function_space_clusters']} validation clusters' "
                     f"predictive means in {t:.1f} s of sampling; max R-hat {f.info['function_space']['max_rhat']:.3f}"
                     f"; {f.info['num_divergent']} divergent; no in-process reference (no other sampler here)"))

    # M–sigma: the package's fit against the plain NumPyro sampler on the same model and the same data, in
    # alternating rounds (plain first), the best time of each: whichever ran first in the process paid for the
    # small eager programs both use (ours first read 10.5 s against plain's 4.1 s; plain first, 7.7 against 8.8 s;
    # a second round 3.4-3.6 against 4.0-4.4 s, without the persistent cache). Each round builds and compiles its
    # sampler anew, as a user's fit does; the draws, and so the ESS, are the same in every round (fixed seeds).
    cat = mock_catalog(volume=vol, seed=0)
    sel = cat.select(np.asarray(cat.log_mass) > 14.5)
    rel = MassObservableRelation()
    x_raw = sel.features(tuple(rel.feature_names))
    xs = np.asarray(StandardScaler.fit(x_raw).transform(x_raw), np.float32)
    y_raw = np.asarray(sel.log_mass, np.float64)
    ys = np.asarray(StandardScaler.fit(y_raw).transform(y_raw), np.float32).reshape(-1)
    t_refs, t_ps = [], []
    for _ in range(2):
        mcmc = MCMC(NUTS(mass_observable_model, **depth), num_warmup=warmup, num_samples=samples, num_chains=chains,
                    chain_method="vectorized", progress_bar=False)
        t0 = time.perf_counter()
        mcmc.run(jax.random.key(0), xs, ys)
        draws = mcmc.get_samples(group_by_chain=True)
        jax.block_until_ready(draws)
        t_refs.append(time.perf_counter() - t0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            f_ms = fit(rel, sel, method="nuts", seed=0, num_warmup=warmup, num_samples=samples, num_chains=chains,
                       validation_fraction=0.0, progress_bar=False, **depth)
        ess_p, t_p = _nuts_ess(f_ms)
        t_ps.append(t_p)
    t_ref, t_p = min(t_refs), min(t_ps)
    flat = jax.tree.map(lambda a: a.reshape((chains * samples,) + a.shape[2:]), draws)
    means = np.asarray(predictive_means(mass_observable_model)(flat, xs[:2000])).reshape(chains, samples, -1)
    ess_ref = float(function_space_convergence(means)["min_ess_bulk"])
    out.append(entry("NUTS M–σ: function-space ESS/s", ess_p / t_p, "ESS/s",
                     "numpyro.infer.MCMC(NUTS(mass_observable_model)) on the same standardised data",
                     ess_ref / t_ref, (ess_p / t_p) / (ess_ref / t_ref), "value / reference", None,
                     {"clusters": len(sel), "chains": chains, "warmup": warmup, "samples": samples, "rounds": 2},
                     f"fit: min bulk ESS {ess_p:.0f} in {t_p:.2f} s; plain MCMC: {ess_ref:.0f} in {t_ref:.2f} s "
                     f"(sampler compilation included, as in fit's mcmc_time_s; best of 2 alternating rounds, plain "
                     f"first: {', '.join(f'{a:.2f}' for a in t_refs)} s against "
                     f"{', '.join(f'{b:.2f}' for b in t_ps)} s)"))
    return out


def bench_scaling(quick: bool, verbose: bool) -> list[dict]:
    """One MAP epoch and one prediction (posterior + mode) of the lecture MDN from 10k to 1M clusters, each size
    against the smallest (epochs) or against 100k (prediction, the issue's target), with the working memory of the
    prediction beyond its result (new here)."""
    import jax
    import numpy as np

    from numpyro_clustermass.estimators import MDN
    from numpyro_clustermass.inference import fit
    from numpyro_clustermass.inference.fitting import POSTERIOR_CHUNK_SIZE
    from numpyro_clustermass.simulate import mock_catalog

    _quiet_fit_warnings()
    sizes = (2_000, 8_000, 32_000) if quick else (10_000, 100_000, 1_000_000)
    cat = mock_catalog(volume=0.01 if quick else 0.05, seed=0)
    x0, y0 = cat.features(), np.asarray(cat.log_mass)
    est = MDN(num_components=16, hidden=(128, 128, 64))
    kw = dict(method="map", batch_size=512, validation_fraction=0.0, patience=None, progress_bar=False, seed=0)
    epoch = {}
    f = None
    for n in sizes:
        x, y = _resample(x0, y0, n)
        f = fit(est, (x, y), num_epochs=2, **kw)
        epoch[n] = float(f.history["epoch_time"][1])  # epoch 0 compiles
    out = []
    base = sizes[0]
    for n in sizes:
        per, per0 = epoch[n] / n, epoch[base] / base
        out.append(entry(f"one MAP epoch, {n} clusters", epoch[n], "s",
                         f"one epoch at {base} clusters, scaled by size", epoch[base] * n / base, per / per0,
                         "per-sample time / reference per-sample time", None,
                         {"clusters": n, "batch": 512, "net": "MDN 16 comp., 128-128-64"},
                         "rows resampled from a mock (timing only); the second epoch of a 2-epoch fit"))

    pred, mem, result = {}, {}, {}
    grid_n = int(f.grid.size)
    for n in sizes:
        x, _ = _resample(x0, y0, n, seed=1)

        def predict():
            post = f.posterior(x)
            return post, jax.block_until_ready(post.mode())

        # a warm-up call at every size: without it the 1M call ran 1.19x the 100k per-cluster time instead of
        # 0.97x (runs of 2026-12-02), more than its new programs' compilation explains
        predict()  # the result is dropped at once
        _release_memory()
        with PeakRSS() as m:
            t0 = time.perf_counter()
            post, mode = predict()
            pred[n] = time.perf_counter() - t0
        # the result: the (n, grid) float32 log-density and the per-cluster arrays the posterior holds (variances,
        # out-of-distribution score) and the modes
        held = [post.log_density, post.aleatoric_variance, post.epistemic_variance, post.ood_score, mode]
        result[n] = sum(int(np.asarray(a).nbytes) for a in held if a is not None)
        mem[n] = None if m.peak is None else (m.peak - result[n])
        del post, mode, held
    mid, top = sizes[1], sizes[2]
    for n in sizes:
        note = (f"peak resident memory during the call above the start {(mem[n] + result[n]) / 2**20:.0f} MiB, "
                f"of which the result {result[n] / 2**20:.0f} MiB (the (n, {grid_n}) float32 log-density, "
                f"{n * grid_n * 4 / 2**20:.0f} MiB, and per-cluster variances, shift scores and modes)"
                if mem[n] is not None else "no /proc/self/statm: memory not measured")
        out.append(entry(f"predict (posterior + mode), {n} clusters", pred[n], "s",
                         f"prediction at {mid} clusters, scaled by size", pred[mid] * n / mid,
                         (pred[n] / n) / (pred[mid] / mid), "per-cluster time / reference per-cluster time",
                         ("<=", 1.2) if n == top else None,
                         {"clusters": n, "grid": grid_n, "chunk_size": POSTERIOR_CHUNK_SIZE}, note))
    if all(mem[n] is not None for n in sizes):
        out.append(entry(f"prediction working memory beyond the result, {top} clusters", mem[top] / 2**20, "MiB",
                         f"the same at {mid} clusters", mem[mid] / 2**20,
                         mem[top] / mem[mid] if mem[mid] > 0 else None, "value / reference", ("<=", 1.2),
                         {"clusters": top, "chunk_size": POSTERIOR_CHUNK_SIZE},
                         "peak RSS during the warm call minus RSS before, minus the result's size (the posterior's "
                         "arrays and the modes); "
                         "bounded by the chunk size if it does not grow with the catalogue"))
    return out


#: name -> (function, what it measures); the order is the run order.
BENCHMARKS: dict[str, Callable[[bool, bool], list[dict]]] = {
    "hpdi": bench_hpdi,
    "reweight": bench_reweight,
    "posterior": bench_posterior,
    "pipeline": bench_pipeline,
    "train_map": bench_train_map,
    "train_bayes": bench_train_bayes,
    "train_step": bench_train_step,
    "nuts": bench_nuts,
    "simulate": bench_simulate,
    "scaling": bench_scaling,
    "first_result": bench_first_result,
}


def peak_resident_mib() -> float:
    """This process's peak resident memory, MiB (:func:`benchmarks.bench_simulate.peak_resident_mib`)."""
    from benchmarks.bench_simulate import peak_resident_mib as peak

    return peak()


#: Benchmarks run in a child process of their own: what they allocate (a million clusters' posterior, NUTS's
#: trajectories) neither raises the suite's peak memory nor stays in its heap to blur the benchmarks after them,
#: and the prediction's working memory is measured on a clean heap.
IN_CHILD = ("nuts", "scaling")


def _run_in_child(name: str, quick: bool, verbose: bool) -> tuple[list[dict], float]:
    """Run one benchmark in a fresh Python process; return its entries and the child's peak resident MiB."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "entries.json"
        code = ("import json, sys; from benchmarks.suite import BENCHMARKS, peak_resident_mib; "
                f"e = BENCHMARKS[{name!r}]({bool(quick)!r}, {bool(verbose)!r}); "
                f"json.dump({{'entries': e, 'peak_mib': peak_resident_mib()}}, open({str(out)!r}, 'w'))")
        proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=not verbose, text=True)
        if proc.returncode != 0:
            tail = (proc.stderr or "")[-2000:]
            raise RuntimeError(f"the child process of {name!r} failed (exit {proc.returncode}):\n{tail}")
        got = json.loads(out.read_text())
    return got["entries"], got["peak_mib"]


# ------------------------------------------------------------------------------------------------ output
def _cpu_model() -> str | None:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def header(names: list[str], quick: bool) -> dict:
    """Device, versions, CPU count, date, git commit and load of this run."""
    import flax
    import jax
    import numpy as np
    import numpyro

    import numpyro_clustermass as ncm

    d = jax.devices()[0]
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                                check=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=ROOT,
                                    capture_output=True, text=True).stdout.strip())
    except (OSError, subprocess.CalledProcessError):
        commit, dirty = None, None
    return {"device": f"{d.platform}: {d.device_kind} x{jax.device_count()}", "platform": d.platform,
            "versions": {"numpyro_clustermass": ncm.__version__, "jax": jax.__version__,
                         "jaxlib": getattr(__import__("jaxlib"), "__version__", None), "numpyro": numpyro.__version__,
                         "flax": flax.__version__, "numpy": np.__version__, "python": platform.python_version()},
            "cpu_count": os.cpu_count(), "machine": platform.machine(), "cpu_model": _cpu_model(),
            "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M:%S UTC"),
            "git_commit": commit, "git_dirty": dirty, "quick": quick, "benchmarks": names,
            "load_average_start": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def _fmt(v) -> str:
    if v is None:
        return "–"
    a = abs(v)
    if a == 0:
        return "0"
    if a >= 1e5:
        return f"{v:.3g}"
    if a >= 100:
        return f"{v:.0f}"
    if a >= 1:
        return f"{v:.3g}"
    return f"{v:.3g}"


def markdown(result: dict) -> str:
    """The results as a markdown table under a short header.

    >>> md = markdown({"header": {"device": "cpu: cpu x1", "versions": {"jax": "0"}, "cpu_count": 2, "date": "d",
    ...                 "git_commit": "abc", "quick": True, "wall_s": 1.0},
    ...                "entries": [entry("x", 2.0, "s", "y", 1.0, 2.0, "value / reference", (">=", 1.5))]})
    >>> "| x | 2 s | y | 1 s | 2 | value / reference | >= 1.5 | yes |" in md
    True
    """
    h = result["header"]
    vers = ", ".join(f"{k} {v}" for k, v in h["versions"].items())
    lines = [f"# Benchmark suite: {h['device']}", "",
             f"{h['date']}, commit {str(h.get('git_commit'))[:10]}{' (uncommitted changes)' if h.get('git_dirty') else ''}"
             f", {h['cpu_count']} CPUs{' (' + h['cpu_model'] + ')' if h.get('cpu_model') else ''}; {vers}; "
             f"{'quick sizes' if h['quick'] else 'default sizes'}; the whole run {h.get('wall_s', float('nan')):.0f} s"
             + (f"; load average {h['load_average_start']:.2f} at the start, {h['load_average_end']:.2f} at the end"
                if h.get("load_average_start") is not None and h.get("load_average_end") is not None else "")
             + ". Made by `python -m benchmarks`; each value against its reference in the same process.", ""]
    if h.get("seconds"):
        peak = h.get("peak_rss_mib") or {}
        lines += ["Seconds per benchmark: " + ", ".join(f"{k} {v:.0f}" for k, v in h["seconds"].items())
                  + (f"; peak resident memory of the suite's process {peak['process']:.0f} MiB" if peak.get("process")
                     else "")
                  + (f", of its largest child process {peak['largest_child']:.0f} MiB" if peak.get("largest_child")
                     else "")
                  + (f" (benchmarks run in a child process: {', '.join(h['in_child'])})" if h.get("in_child") else "")
                  + ".", ""]
    lines += [TABLE_HEADER, "|---|---|---|---|---|---|---|---|"]
    for e in result["entries"]:
        met = {True: "yes", False: "**no**", None: "–"}[e["met"]]
        ref_val = "–" if e["reference_value"] is None else f"{_fmt(e['reference_value'])} {e['unit']}"
        lines.append(f"| {e['name']} | {_fmt(e['value'])} {e['unit']} | {e['reference'] or '–'} | {ref_val} | "
                     f"{_fmt(e['ratio'])} | {e['ratio_means'] or '–'} | {e['target'] or '–'} | {met} |")
    errors = result.get("errors") or {}
    if errors:
        lines += ["", "Failed: " + "; ".join(f"{k}: {v}" for k, v in errors.items())]
    lines += ["", "Sizes and notes per entry: the JSON file next to this one."]
    return "\n".join(lines) + "\n"


def run(names: list[str], quick: bool = False, verbose: bool = False, log=print) -> dict:
    """Run the named benchmarks in order; return ``{"header", "entries", "errors"}``.

    A benchmark that raises is recorded in ``errors`` (its message) and the others still run.
    """
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown:
        raise ValueError(f"unknown benchmark(s) {unknown}; choose from {list(BENCHMARKS)}")
    t_start = time.perf_counter()
    head = header(names, quick)
    entries, errors, seconds, peak_after = [], {}, {}, {}
    child_peaks = []  # MiB: the IN_CHILD processes' and any a benchmark reports (the simulator's child)
    head["in_child"] = [n for n in names if n in IN_CHILD]
    for i, name in enumerate(names):
        log(f"[{i + 1}/{len(names)}] {name}: {BENCHMARKS[name].__doc__.splitlines()[0]}", flush=True)
        t0 = time.perf_counter()
        try:
            if name in IN_CHILD:
                got, peak = _run_in_child(name, quick, verbose)
                child_peaks.append(peak)
            else:
                got = BENCHMARKS[name](quick, verbose)
                peak = peak_resident_mib()
                child_peaks += [e["sizes"]["peak_memory_gb"] * 1e9 / 2**20 for e in got
                                if "peak_memory_gb" in (e.get("sizes") or {})]
        except Exception as exc:  # noqa: BLE001 - one failing benchmark must not lose the others
            seconds[name] = time.perf_counter() - t0
            errors[name] = f"{type(exc).__name__}: {exc}"
            log(f"    FAILED after {time.perf_counter() - t0:.0f} s: {errors[name]}", flush=True)
            continue
        seconds[name] = time.perf_counter() - t0
        peak_after[name] = peak
        for e in got:
            e["benchmark"] = name
        entries += got
        summary = "; ".join(f"{e['name']}: ratio {_fmt(e['ratio'])}"
                            + (f" (target {e['target']}: {'met' if e['met'] else 'MISSED'})" if e["target"] else "")
                            for e in got if e["ratio"] is not None)
        log(f"    {time.perf_counter() - t0:.0f} s; {summary or 'no ratio'}", flush=True)
    head["wall_s"] = time.perf_counter() - t_start
    head["seconds"] = seconds
    # after each benchmark, the suite's peak so far (or the child's peak, for IN_CHILD): which one raised it
    head["peak_rss_after_mib"] = peak_after
    head["peak_rss_mib"] = {"process": peak_resident_mib(), "largest_child": max(child_peaks, default=None)}
    head["load_average_end"] = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"header": head, "entries": entries, "errors": errors}


def write(result: dict, out: Path) -> tuple[Path, Path]:
    """Write ``<out>/<platform>.json`` and ``<out>/<platform>.md``; return their paths."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    stem = result["header"]["platform"]
    pj, pm = out / f"{stem}.json", out / f"{stem}.md"
    pj.write_text(json.dumps(result, indent=1) + "\n")
    pm.write_text(markdown(result))
    return pj, pm


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="tiny sizes: checks that the suite runs")
    ap.add_argument("--only", default=None, help="comma-separated benchmark names (default: all)")
    ap.add_argument("--out", default=str(DEFAULT_OUT), help=f"output folder (default {DEFAULT_OUT})")
    ap.add_argument("--list", action="store_true", help="list the benchmarks and exit")
    ap.add_argument("--verbose", action="store_true", help="also print the scripts' own output")
    args = ap.parse_args(argv)
    if args.list:
        for name, fn in BENCHMARKS.items():
            print(f"{name:<13} {fn.__doc__.splitlines()[0]}")
        return 0
    names = list(BENCHMARKS) if args.only is None else [n.strip() for n in args.only.split(",") if n.strip()]
    unknown = [n for n in names if n not in BENCHMARKS]
    if unknown or not names:
        ap.error(f"--only: unknown benchmark(s) {unknown or names}; choose from {', '.join(BENCHMARKS)}")
    result = run(names, quick=args.quick, verbose=args.verbose)
    pj, pm = write(result, Path(args.out))
    print(f"wrote {pj} and {pm} ({result['header']['wall_s']:.0f} s)")
    missed = [e["name"] for e in result["entries"] if e["met"] is False]
    if missed:
        print("targets missed: " + "; ".join(missed))
    return 1 if result["errors"] else 0


if __name__ == "__main__":
    sys.exit(main())
