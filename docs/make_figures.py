"""Regenerate every figure under docs/figures/ from the code the documentation shows.

    python3 docs/make_figures.py                     # every figure, at the sizes its page states
    python3 docs/make_figures.py --only quickstart   # one figure function (a name of FIGURES)
    python3 docs/make_figures.py --small --out DIR   # every figure at a smoke size, into DIR (the slow test)
    python3 docs/make_figures.py --list              # the registry: function, page, files

Each figure is one function below, registered with :func:`figure`. Its body is, character for character, the
python blocks of its page that make the picture (``page`` and ``blocks``: the blocks' numbers as
``tests/test_docs_code.py`` counts them, 1-based), so what a reader copies from the page is what made the image;
``tests/test_figures.py`` checks that, and that every image a page shows is a file registered here.

A figure's body runs in a fresh namespace and a fresh temporary working folder (as the docs runner runs a page);
the files the registry names are then moved into the output folder (``docs/figures/`` by default) under their
registered names, and anything else the body wrote (the quickstart's CSV tables) is dropped. A registered file
that the body did not write is an error. ``--small`` first applies the figure's ``small`` replacements (exact
substrings of the body, each of which must occur) so that the same code runs at a smoke size in seconds; the
committed figures are made without it. Seeds are fixed in the bodies; the time per figure is printed.

Measured on this project's 2-core CPU machine, shared with other jobs, warm JAX compilation cache: mock_catalog
10 s, quickstart 58 s, shift_coverage 8-13 s, tutorial_binned 21 s, tutorial_compare 227 s (NUTS),
population_mass_function 56 s (NUTS); ``--small``
142 s for all five.
"""

from __future__ import annotations

import argparse
import inspect
import os
import shutil
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path

DOCS = Path(__file__).resolve().parent
FIGURES_DIR = DOCS / "figures"


@dataclass(frozen=True)
class FigureSpec:
    """One registered figure function: where its code is shown and what it writes."""

    name: str
    page: str  # relative to docs/
    blocks: tuple[int, ...]  # the page's python blocks (tests/test_docs_code.py's numbering) that are the body
    files: dict[str, str]  # file under docs/figures/ -> the file the body writes (relative to its folder)
    small: dict[str, str] = field(default_factory=dict)  # --small: exact substring of the body -> replacement
    func: object = None

    def body(self) -> str:
        """The function's body, dedented: the code its page shows."""
        lines = inspect.getsource(self.func).splitlines(keepends=True)
        start = next(i for i, line in enumerate(lines) if line.lstrip().startswith("def "))
        return textwrap.dedent("".join(lines[start + 1:]))

    def small_body(self) -> str:
        code = self.body()
        for old, new in self.small.items():
            if old not in code:
                raise ValueError(f"{self.name}: the --small replacement {old!r} is not in the body; "
                                 f"fix the registry's small= to name an exact substring")
            code = code.replace(old, new)
        return code


FIGURES: dict[str, FigureSpec] = {}


def figure(*, page: str, blocks: tuple[int, ...], files: dict[str, str], small: dict[str, str] | None = None):
    """Register a figure function (its arguments must be literals: tests/test_figures.py reads them with ast)."""

    def register(func):
        if func.__name__ in FIGURES:
            raise ValueError(f"two figure functions named {func.__name__}")
        FIGURES[func.__name__] = FigureSpec(func.__name__, page, tuple(blocks), dict(files), dict(small or {}), func)
        return func

    return register


# ------------------------------------------------------------------------------------------------ the figures
@figure(page="mock.md", blocks=(2,), files={"mock_catalog.png": "mock_catalog.png"},
        small={"volume=1.0": "volume=0.01"})
def mock_catalog():
    import numpyro_clustermass as ncm
    from numpyro_clustermass import plots

    big = ncm.simulate.mock_catalog(volume=1.0, seed=0)     # the lecture's size: about 272k mocks
    plots.save_figure(plots.catalog_overview(big), "mock_catalog.png", dpi=100)


@figure(page="quickstart.md", blocks=(1,),
        files={"quickstart_binned.png": "quickstart_output/binned_predictions.png",
               "quickstart_training_prior.png": "quickstart_output/training_prior.png",
               "quickstart_posterior_examples.png": "quickstart_output/posterior_examples.png",
               "quickstart_pit_mdn.png": "quickstart_output/pit_mdn.png",
               "quickstart_pit_reweighted.png": "quickstart_output/pit_reweighted.png",
               "quickstart_coverage.png": "quickstart_output/coverage_reweighted.png"},
        small={"progress_bar=False": "progress_bar=False, fast=True, num_epochs=2"})
def quickstart():
    from numpyro_clustermass.quickstart import run_quickstart

    results = run_quickstart(volume=0.25, seed=0, out="quickstart_output", progress_bar=False)


@figure(page="howto/shift.md", blocks=(1, 2), files={"shift_coverage_by_bin.png": "shift_coverage_by_bin.png"},
        small={"volume=0.05": "volume=0.01", "num_epochs=10": "num_epochs=2",
               "num_permutations=200": "num_permutations=20"})
def shift_coverage():
    import warnings

    import numpy as np

    import numpyro_clustermass as ncm

    train = ncm.simulate.mock_catalog(volume=0.05, seed=0)
    f = ncm.fit(ncm.MDN(4, (32, 32)), train, num_epochs=10, progress_bar=False)

    same = ncm.simulate.mock_catalog(volume=0.05, seed=1)
    busier = ncm.simulate.mock_catalog(volume=0.05, seed=2, nuisance={"n_background": 0.04})

    for name, cat in [("same universe", same), ("twice the background", busier)]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            post = f.posterior(cat)
        shift = ncm.diagnostics.covariate_shift(f, cat, num_permutations=200)
        beyond = float(np.mean(post.ood_score > f.feature_reference.threshold))
        warned = any(issubclass(w.category, ncm.CovariateShiftWarning) for w in caught)
        print(f"{name}: p = {shift.pvalue:.3f}, shifted: {shift.shifted}, drivers: {list(shift.drivers)[:3]}, "
              f"beyond the 0.1% contour: {beyond:.3f}, warned: {warned}")

    from matplotlib.figure import Figure

    from numpyro_clustermass import metrics, plots

    fig = Figure(figsize=(11, 4), layout="constrained")
    axes = fig.subplots(1, 2, sharey=True)
    for ax, (name, cat) in zip(axes, [("same universe", same), ("twice the background", busier)]):
        plots.coverage_by_bin(metrics.coverage_by_bin(f.posterior(cat), cat), ax=ax)
        ax.set_title(f"{name}\n" + ax.get_title(), fontsize="small")
    plots.save_figure(fig, "shift_coverage_by_bin.png", dpi=100)


@figure(page="tutorial.md", blocks=(1, 2, 3, 4),
        files={"tutorial_binned.png": "binned.png", "tutorial_training_prior.png": "training_prior.png"},
        small={"volume=0.05": "volume=0.01", "num_epochs=40": "num_epochs=2"})
def tutorial_binned():
    import numpy as np
    import pandas as pd

    import numpyro_clustermass as ncm
    from numpyro_clustermass import metrics, plots, priors

    cat = ncm.simulate.mock_catalog(volume=0.05, seed=0)   # natural (Tinker08) masses; the lecture's size is 1.0
    train, test = cat.split(test_fraction=0.2, seed=1)     # by halo: a halo's three projections stay together
    print(len(cat), "mocks:", len(train), "to train on and", len(test), "to test on")
    print(train.features().shape, "features:", ", ".join(ncm.catalog.FEATURE_NAMES))
    plots.catalog_overview(cat, path="catalog.png")       # mass histogram, richness and sigma against mass

    from numpyro_clustermass.scaling import fit_power_law

    law = fit_power_law(train.log_mass, train["sigv"])     # log sigma = b + alpha (log M - 15), above 10^14.5
    in_range = (test.log_mass > 14.0) & (test.log_mass < 15.0)
    resid = law.predict_log_mass(test["sigv"])[in_range] - test.log_mass[in_range]
    print(f"slope {law.alpha:.3f}, sigma_15 {law.sigma_pivot:.0f} km/s, mass scatter {np.std(resid):.3f} dex")

    opts = dict(num_epochs=40, learning_rate=3e-4, seed=0, progress_bar=False)
    mse = ncm.fit(ncm.MSE(hidden=(128, 128, 64)), train, **opts)
    mdn = ncm.fit(ncm.MDN(num_components=16, hidden=(128, 128, 64)), train, **opts)
    post_mse, post_mdn = mse.posterior(test), mdn.posterior(test)
    print(f"MDN: {mdn.info.epochs_run} epochs, best validation loss {mdn.info.best_val_loss:.3f}")
    print("first cluster: mean", post_mdn.mean()[0].round(3), "mode", post_mdn.mode()[0].round(3),
          "68% interval", post_mdn.quantiles([0.16, 0.84])[:, 0].round(3), "truth", test.log_mass[0].round(3))

    flat = post_mdn.reweight(priors.Flat(13.5, 15.3))
    edges = np.round(np.arange(13.5, 15.31, 0.3), 2)

    def bias(post, estimator):
        return metrics.binned(post, test, estimator=estimator, edges=edges)["bias_median"].to_numpy()

    table = pd.DataFrame({"MSE": bias(post_mse, "mean"), "MDN mean": bias(post_mdn, "mean"),
                          "reweighted mode": bias(flat, "mode")},
                         index=[f"{a:.1f}-{b:.1f}" for a, b in zip(edges[:-1], edges[1:])])
    print(table.round(3))                                    # an empty bin (no test cluster) is NaN
    plots.training_prior(train.log_mass, post_mdn.prior, path="training_prior.png")
    plots.binned_predictions({"MSE": (post_mse, "mean"), "MDN mean": (post_mdn, "mean"),
                              "reweighted mode": (flat, "mode")}, test, path="binned.png")


@figure(page="tutorial.md", blocks=(1, 5, 6, 7, 8),
        files={"tutorial_compare_to_reference.png": "compare_to_reference.png",
               "tutorial_coverage_by_mass.png": "coverage_by_mass.png"},
        small={"volume=0.05": "volume=0.01", "num_epochs=100": "num_epochs=2", "num_warmup=150": "num_warmup=5",
               "num_samples=150": "num_samples=5"})
def tutorial_compare():
    import numpy as np
    import pandas as pd

    import numpyro_clustermass as ncm
    from numpyro_clustermass import metrics, plots, priors

    cat = ncm.simulate.mock_catalog(volume=0.05, seed=0)   # natural (Tinker08) masses; the lecture's size is 1.0
    train, test = cat.split(test_fraction=0.2, seed=1)     # by halo: a halo's three projections stay together
    print(len(cat), "mocks:", len(train), "to train on and", len(test), "to test on")
    print(train.features().shape, "features:", ", ".join(ncm.catalog.FEATURE_NAMES))
    plots.catalog_overview(cat, path="catalog.png")       # mass histogram, richness and sigma against mass

    small = ncm.simulate.mock_catalog(mass_sampling="flat", n_halos=400, seed=2)
    s_train, s_test = small.split(test_fraction=0.25, seed=3)
    est = ncm.MDN(num_components=3, hidden=(16, 16))
    few = dict(num_epochs=100, seed=0, progress_bar=False)

    fits = {"map": ncm.fit(est, s_train, **few)}
    fits["bbb"] = ncm.fit(est, s_train, method="bbb", **few)                # mean-field Gaussian over every weight
    fits["mc_dropout"] = ncm.fit(est, s_train, method="mc_dropout", **few)  # dropout kept on at prediction
    p = fits["bbb"].posterior(s_test)
    print(f"{len(s_train)} training clusters; BBB: aleatoric std {np.sqrt(p.aleatoric_variance).mean():.3f}, "
          f"epistemic std {np.sqrt(p.epistemic_variance).mean():.3f} dex (mean over held-out clusters)")

    fits["nuts"] = ncm.fit(est, s_train, method="nuts", init=fits["map"], num_warmup=150, num_samples=150,
                           num_chains=2, **few)
    fs = fits["nuts"].info["function_space"]
    print(f"{fits['nuts'].info['num_latent']} sampled weights; function-space R-hat {fs['max_rhat']:.3f}, "
          f"min bulk ESS {fs['min_ess_bulk']:.0f}, divergences {fits['nuts'].info['num_divergent']}")

    from numpyro_clustermass.diagnostics import compare

    c = compare(fits, s_test, reference="nuts")
    print(c.table[["log_score", "coverage_68", "w1", "epistemic_ratio"]].round(3))
    for note in c.notes:
        print("-", note)

    plots.compare_to_reference(c, path="compare_to_reference.png")
    plots.coverage_by_mass(c, path="coverage_by_mass.png")


@figure(page="population.md", blocks=(1,), files={"population_mass_function.png": "mass_function.png"},
        small={"volume=0.3": "volume=0.03", "num_epochs=40": "num_epochs=2",
               "volume=0.1, seed=1000": "volume=0.01, seed=1000", "volume=0.1, catalog": "volume=0.01, catalog"})
def population_mass_function():
    import numpy as np
    import numpyro_clustermass as ncm
    from numpyro_clustermass import population as pop

    train = ncm.simulate.mock_catalog(volume=0.3, seed=0)                 # the network's training universe
    net = ncm.fit(ncm.MDN(num_components=8, hidden=(64, 64)), train, num_epochs=40, learning_rate=1e-3,
                  seed=0, progress_bar=False)
    survey = ncm.simulate.mock_catalog(volume=0.1, seed=1000, n_los=1)    # a survey: one line of sight per halo
    res = pop.mass_function(net.posterior(survey), volume=0.1, catalog=survey, seed=10)  # binned; selection simulated
    print(f"{res.n_clusters} clusters; largest split R-hat {max(res.rhat().values()):.3f}")

    t = res.summary()                                                     # per bin: naive estimates, quantiles
    t["truth"] = [pop.tinker08_density(np.linspace(lo, hi, 201)).mean() for lo, hi in zip(t.lo, t.hi)]
    inner = t[(t.lo > 13.99) & (t.hi < 15.01)]                           # the ten 0.1-dex bins from 10^14 to 10^15
    in68 = ((inner.q16 <= inner.truth) & (inner.truth <= inner.q84)).sum()
    in95 = ((inner["q2.5"] <= inner.truth) & (inner.truth <= inner["q97.5"])).sum()
    def bias(column):
        return np.median(np.log10(inner[column] / inner.truth))
    print(f"truth inside the 68% interval in {in68} of 10 bins, inside the 95% interval in {in95}")
    print(f"median bias (dex): population fit {bias('median'):+.3f}, histogram of point estimates "
          f"{bias('naive_point'):+.3f}, of reweighted modes {bias('naive_mode'):+.3f}")
    res.plot(path="mass_function.png", mass_range=(13.5, 15.3))


# --------------------------------------------------------------------------------------------------- running
def run(spec: FigureSpec, out: Path, small: bool = False) -> list[Path]:
    """Run ``spec``'s body in a temporary folder and move its registered files into ``out``."""
    code = spec.small_body() if small else spec.body()
    compiled = compile(code, f"<make_figures.py: {spec.name}>", "exec")
    out.mkdir(parents=True, exist_ok=True)
    here = os.getcwd()
    with tempfile.TemporaryDirectory(prefix=f"figure-{spec.name}-") as tmp:
        os.chdir(tmp)
        try:
            exec(compiled, {"__name__": "__figure__"})
        finally:
            os.chdir(here)
            from matplotlib import pyplot as plt

            plt.close("all")
        missing = [src for src in spec.files.values() if not (Path(tmp) / src).is_file()]
        if missing:
            raise RuntimeError(f"{spec.name} did not write {missing} (its registry names them)")
        written = []
        for dest, src in spec.files.items():
            shutil.move(str(Path(tmp) / src), out / dest)
            os.chmod(out / dest, 0o644)  # plots.save_figure's temporary file is private (0600)
            written.append(out / dest)
    return written


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="every figure at a smoke size (for tests)")
    parser.add_argument("--only", action="append", metavar="NAME", choices=sorted(FIGURES),
                        help="make only this figure function (repeatable)")
    parser.add_argument("--out", type=Path, default=FIGURES_DIR, help="output folder (default docs/figures)")
    parser.add_argument("--list", action="store_true", help="print the registry and exit")
    args = parser.parse_args(argv)
    if args.list:
        for spec in FIGURES.values():
            print(f"{spec.name}: docs/{spec.page} blocks {list(spec.blocks)} -> {', '.join(spec.files)}")
        return 0
    os.environ.setdefault("MPLBACKEND", "Agg")
    names = args.only or list(FIGURES)
    t_all = time.perf_counter()
    for name in names:
        t0 = time.perf_counter()
        written = run(FIGURES[name], args.out, small=args.small)
        sizes = ", ".join(f"{p.name} {p.stat().st_size / 1024:.0f} kB" for p in written)
        print(f"{name}{' (small)' if args.small else ''}: {time.perf_counter() - t0:.1f} s: {sizes}", flush=True)
    print(f"{len(names)} figure function(s) in {time.perf_counter() - t_all:.1f} s, into {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
