"""Figures of the lecture and of calibration: binned predictions, training prior, posterior examples,
PIT histogram and coverage curve.

Every function builds on :class:`matplotlib.figure.Figure` directly (no ``pyplot`` state, so it is safe
under the Agg backend, in threads and in tests), returns the Figure, draws into ``ax`` when one is given,
and writes the figure atomically to ``path`` when one is given (the format follows the extension).

References
----------
Ho, M., Rau, M. M., Ntampaka, M., et al. 2019, ApJ 887, 25 (arXiv:1902.05950), figs. 4–6: the binned
prediction plot (median and 5–95 / 15–85 percentile bands of predicted against true mass, residuals below).

:func:`compare_to_reference` and :func:`coverage_by_mass` draw the tables of
:func:`numpyro_clustermass.diagnostics.compare`.
"""

from __future__ import annotations

import os
import textwrap
from collections.abc import Mapping, Sequence

import numpy as np
from matplotlib.figure import Figure

from numpyro_clustermass import metrics as _metrics
from numpyro_clustermass import priors as _priors
from numpyro_clustermass.catalog import atomic_target

__all__ = [
    "binned_predictions",
    "catalog_overview",
    "compare_to_reference",
    "coverage_by_mass",
    "coverage_curve",
    "pit_histogram",
    "posterior_examples",
    "save_figure",
    "training_prior",
]

#: Axis range of the lecture's plots (log10 M200c [Msun/h]).
AXIS_RANGE = _metrics.LOG_MASS_RANGE
LOG_MASS_LABEL = r"$\log_{10}\,M_{200c}\ [M_\odot/h]$"
_COLORS = ["C0", "C1", "C2", "C3", "C4", "C5", "C6", "C7", "C8", "C9"]
#: Dash patterns of the lines without bands (a banded line is solid), so that overlaid lines differ in more than hue.
_LINESTYLES = ["--", "-.", (0, (5, 1, 1, 1, 1, 1)), (0, (8, 2))]


def save_figure(fig: Figure, path, dpi: int = 120) -> None:
    """Write ``fig`` to ``path`` atomically (temporary file in the same folder, then rename), creating the folder;
    the file gets the mode the umask gives new files."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1] or ".png"
    tmp, path = atomic_target(path)  # the mode the umask gives new files (mkstemp alone gives 0600)
    try:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=suffix.lstrip(".") or "png")
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def _finish(fig, path):
    if path is not None:
        save_figure(fig, path)
    return fig


def _new_axes(ax, figsize, nrows=1, ncols=1, **kw):
    if ax is not None:
        return ax.figure, ax
    fig = Figure(figsize=figsize, layout="constrained")
    axes = fig.subplots(nrows, ncols, **kw)
    return fig, axes


# --------------------------------------------------------------------------------------------------------
def binned_predictions(
    estimates,
    truth_log_mass,
    *,
    estimator: str = "mode",
    edges=None,
    bands=True,
    ax=None,
    path=None,
    title: str | None = None,
    min_count: int = 1,
) -> Figure:
    """The lecture's binned plot: median prediction per bin of true mass with 5–95 and 15–85 percentile
    bands, the 1:1 line, and the residuals (predicted − true) in a panel below; axes 13.5–15.3.

    Each estimator's median is a line of its own colour and dash pattern (solid for the banded one); the
    bands are drawn for one estimator only, so that they stay readable, and the legend names them. Bins
    with fewer than ``min_count`` clusters are left out as gaps (the lines break there instead of jumping
    across).

    Parameters
    ----------
    estimates : MassPosterior, array_like (n,), or mapping label -> either
        One or several estimators to overlay (each gets a colour and a legend entry). A posterior gives
        its ``estimator`` point estimate; a value may also be a ``(posterior, "mean")`` pair.
    truth_log_mass : array_like (n,) or Catalog
    estimator : {"mode", "mean", "median"}
        Default point estimate of posteriors.
    edges : array_like, optional
        Bin edges (default 0.1 dex over 13.5–15.3).
    bands : bool, str or sequence of str
        Which estimators get the 5–95 and 15–85 percentile bands of their predictions per bin: ``True``
        the last one of ``estimates`` (the only one when there is one), ``False`` none, or the label(s) of
        ``estimates`` to band (several overlapping bands are hard to tell apart). The median line is always
        drawn.
    ax : Axes or (Axes, Axes), optional
        Draw into these: a pair (main, residual), or a single Axes (main panel only).
    path : str or PathLike, optional
        Write the figure there.
    title : str, optional
        Title of the main panel.
    min_count : int
        Bins with fewer clusters than this are drawn as gaps (default 1: only empty bins).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> y = np.random.default_rng(0).uniform(13.5, 15.3, 2000)
    >>> fig = binned_predictions({"biased": 0.8 * y + 2.9, "good": y + 0.05}, y)
    >>> len(fig.axes), [t.get_text() for t in fig.axes[0].get_legend().get_texts()]
    (2, ['1:1', 'biased: median', 'good: median', 'good: 15–85% of predictions per bin', 'good: 5–95%'])
    """
    if not isinstance(estimates, Mapping):
        estimates = {"prediction" if not _metrics.is_posterior(estimates) else estimator: estimates}
    if len(estimates) == 0:
        raise ValueError("no estimates to plot")
    names = [str(k) for k in estimates]
    if bands is True:
        banded = {names[-1]}
    elif bands is False or bands is None:
        banded = set()
    elif isinstance(bands, str):
        banded = {bands}
    else:
        banded = {str(b) for b in bands}
    unknown = sorted(banded - set(names))
    if unknown:
        raise ValueError(f"bands names {unknown}, which are not labels of estimates ({names}); "
                         "pass True, False, or labels of estimates")
    if int(min_count) < 1:
        raise ValueError(f"min_count must be >= 1, got {min_count}")
    if ax is None:
        fig = Figure(figsize=(6.0, 6.5), layout="constrained")
        main, resid = fig.subplots(2, 1, sharex=True, gridspec_kw={"height_ratios": [3, 1]})
    elif isinstance(ax, (tuple, list, np.ndarray)):
        main, resid = ax
        fig = main.figure
    else:
        main, resid = ax, None
        fig = main.figure
    lo, hi = AXIS_RANGE
    main.plot([lo, hi], [lo, hi], color="0.4", ls=":", lw=1, label="1:1")
    if resid is not None:
        resid.axhline(0.0, color="0.4", ls=":", lw=1)
    band_handles = []
    for k, (label, value) in enumerate(estimates.items()):
        est = estimator
        if isinstance(value, tuple):
            value, est = value
        df = _metrics.binned(value, truth_log_mass, estimator=est, edges=edges)
        x = df.bin_mid.to_numpy()
        few = df.n.to_numpy() < int(min_count)

        def col(name, few=few, df=df):
            v = df[name].to_numpy(dtype=np.float64, copy=True)
            v[few] = np.nan  # a gap: the line breaks instead of joining the neighbouring bins
            return v

        c = _COLORS[k % len(_COLORS)]
        with_bands = str(label) in banded
        ls = "-" if with_bands else _LINESTYLES[k % len(_LINESTYLES)]
        lw = 2.2 if with_bands else 1.6
        main.plot(x, col("pred_p50"), color=c, ls=ls, lw=lw, marker="o", ms=2.5, label=f"{label}: median")
        if with_bands:
            outer = main.fill_between(x, col("pred_p05"), col("pred_p95"), color=c, alpha=0.15, lw=0,
                                      label=f"{label}: 5–95%")
            inner = main.fill_between(x, col("pred_p15"), col("pred_p85"), color=c, alpha=0.35, lw=0,
                                      label=f"{label}: 15–85% of predictions per bin")
            band_handles += [inner, outer]
        if resid is not None:
            resid.plot(x, col("resid_p50"), color=c, ls=ls, lw=lw, marker="o", ms=2.5)
            if with_bands:
                resid.fill_between(x, col("resid_p05"), col("resid_p95"), color=c, alpha=0.15, lw=0)
                resid.fill_between(x, col("resid_p15"), col("resid_p85"), color=c, alpha=0.35, lw=0)
    main.set_xlim(lo, hi)
    main.set_ylim(lo, hi)
    main.set_ylabel("predicted " + LOG_MASS_LABEL)
    handles, labels = main.get_legend_handles_labels()
    lines = [(h, t) for h, t in zip(handles, labels) if h not in band_handles]
    order = lines + [(h, h.get_label()) for h in band_handles]
    main.legend([h for h, _ in order], [t for _, t in order], loc="upper left", frameon=False,
                fontsize="small")
    if title:
        main.set_title(title)
    if resid is not None:
        resid.set_xlim(lo, hi)
        resid.set_xlabel("true " + LOG_MASS_LABEL)
        resid.set_ylabel("pred. − true [dex]")
    else:
        main.set_xlabel("true " + LOG_MASS_LABEL)
    return _finish(fig, path)


def training_prior(
    log_masses,
    prior=None,
    *,
    bins: int = 64,
    range=None,  # noqa: A002 - as numpy.histogram
    ax=None,
    path=None,
) -> Figure:
    """Histogram (density) of the training set's log10 masses with a fitted prior's curve over it.

    Parameters
    ----------
    log_masses : array_like (N,) or Catalog
    prior : Prior, optional
        Default ``TrainingPrior.from_samples(log_masses, bins, range)``.
    bins, range
        Histogram binning.

    Examples
    --------
    >>> import numpy as np
    >>> fig = training_prior(np.random.default_rng(0).uniform(13.5, 15.3, 5000))
    >>> len(fig.axes[0].lines)
    1
    """
    x = _metrics.true_log_mass(log_masses)
    if range is None:
        range = (float(x.min()), float(x.max()))
    if prior is None:
        prior = _priors.TrainingPrior.from_samples(x, bins=bins, range=range)
    fig, a = _new_axes(ax, (6.0, 4.0))
    a.hist(x, bins=bins, range=range, density=True, color="0.75", label=f"training set (N={x.size})")
    lo, hi = prior.support
    lo = range[0] - 0.05 * (range[1] - range[0]) if not np.isfinite(lo) else lo
    hi = range[1] + 0.05 * (range[1] - range[0]) if not np.isfinite(hi) else hi
    t = np.linspace(lo, hi, 1000)
    a.plot(t, np.exp(np.asarray(prior.log_prob(t), dtype=np.float64)), color="C3", lw=2, label=type(prior).__name__)
    a.set_xlabel(LOG_MASS_LABEL)
    a.set_ylabel(r"density [dex$^{-1}$]")
    a.legend(frameon=False)
    return _finish(fig, path)


def _prior_name(post) -> str | None:
    """A short name of the prior a posterior is conditioned on (for legends), or None when it is unknown.

    Reads ``source_prior`` (set by :meth:`MassPosterior.reweight`) and never fits a training prior."""
    prior = getattr(post, "source_prior", None)
    if prior is None:
        return "implicit, of the training set" if getattr(post, "training_log_mass", None) is not None else None
    if isinstance(prior, _priors.Flat):
        return f"flat {prior.lo:g}–{prior.hi:g}"
    if isinstance(prior, _priors.TrainingPrior):
        return "implicit, of the training set"
    if isinstance(prior, _priors.MassFunction):
        return f"{prior.model} mass function"
    return type(prior).__name__


def _spread_over_mass(values: np.ndarray, n: int) -> list[int]:
    """Indices of ``n`` distinct clusters whose ``values`` lie nearest to the centres of ``n`` equal-width
    bins between the smallest and largest value, in increasing order of value (ties: the lowest index)."""
    finite = np.flatnonzero(np.isfinite(values))
    if finite.size == 0:
        return []
    v = values[finite]
    lo, hi = float(v.min()), float(v.max())
    targets = lo + (np.arange(n) + 0.5) / n * (hi - lo)
    free = np.ones(v.size, dtype=bool)
    chosen = []
    for t in targets:
        if not free.any():
            break
        d = np.where(free, np.abs(v - t), np.inf)
        j = int(np.argmin(d))
        free[j] = False
        chosen.append(int(finite[j]))
    return sorted(chosen, key=lambda i: (values[i], i))


def _mass_range(grid: np.ndarray, density: np.ndarray, lo_q: float = 0.005, hi_q: float = 0.995):
    """The ``lo_q``–``hi_q`` quantile range of a density on a grid (trapezoid CDF)."""
    d = np.clip(np.nan_to_num(np.asarray(density, dtype=np.float64)), 0.0, None)
    cdf = np.concatenate([[0.0], np.cumsum(0.5 * (d[1:] + d[:-1]) * np.diff(grid))])
    if cdf[-1] <= 0:
        return float(grid[0]), float(grid[-1])
    cdf /= cdf[-1]
    return float(np.interp(lo_q, cdf, grid)), float(np.interp(hi_q, cdf, grid))


def posterior_examples(
    post,
    truth_log_mass=None,
    *,
    reweighted=None,
    indices: Sequence[int] | None = None,
    n: int = 4,
    labels: tuple[str, str] = ("before reweighting", "after reweighting"),
    ax=None,
    path=None,
    prior_names: tuple[str | None, str | None] | None = None,
    zoom: bool = True,
) -> Figure:
    """Example posteriors, before and (optionally) after reweighting, with the true mass marked.

    By default the clusters are spread over the range of true masses (or, without them, of posterior
    medians): the ``n`` clusters nearest to the centres of ``n`` equal-width bins between the smallest and
    largest mass, so that rare high-mass clusters are shown next to the common low-mass ones; the choice is
    deterministic. Each panel is zoomed on where its posteriors have their mass (the 0.5–99.5% range of
    the widest curve, with the truth, plus a margin), has its own axis labels, and its title gives the
    cluster's index and true mass. The legend names the prior of each curve.

    Parameters
    ----------
    post : MassPosterior
    truth_log_mass : array_like (n_clusters,) or Catalog, optional
        Drawn as a vertical line in each panel.
    reweighted : MassPosterior, optional
        Same clusters after reweighting, overlaid.
    indices : sequence of int, optional
        Clusters to show; default ``n`` clusters spread over the mass range (see above).
    n : int
        Number of clusters when ``indices`` is not given.
    labels : (str, str)
        Legend labels of ``post`` and ``reweighted``.
    ax : array of Axes, optional
        One Axes per example.
    path : str or PathLike, optional
        Write the figure there.
    prior_names : (str or None, str or None), optional
        The priors of ``post`` and ``reweighted``, appended to their labels ("before reweighting (prior:
        ...)"). Default: read from the posteriors (``source_prior``, else the training set's implicit prior); a None
        entry leaves that label as it is.
    zoom : bool
        Zoom each panel on its posteriors (else the whole grid).

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from numpyro_clustermass.posterior import MassPosterior
    >>> g = np.linspace(13.0, 16.0, 256)
    >>> p = MassPosterior.from_mixture(g, np.zeros((3, 1)), np.array([[14.0], [14.5], [15.0]]), np.full((3, 1), 0.2))
    >>> fig = posterior_examples(p, [14.1, 14.4, 15.2], n=3)
    >>> len(fig.axes), [a.get_title() for a in fig.axes]
    (3, ['cluster 0: true 14.10', 'cluster 1: true 14.40', 'cluster 2: true 15.20'])
    """
    total = int(np.shape(post.log_density)[0])
    y = None if truth_log_mass is None else _metrics.true_log_mass(truth_log_mass, total)
    if indices is None:
        if int(n) < 1:
            raise ValueError(f"n must be >= 1, got {n}")
        order_by = y if y is not None else np.asarray(post.median(), dtype=np.float64)
        indices = _spread_over_mass(np.asarray(order_by, dtype=np.float64), min(int(n), total))
    indices = [int(i) for i in indices]
    if not indices:
        raise ValueError("no clusters to show")
    if any(i < 0 or i >= total for i in indices):
        raise ValueError(f"indices must lie in [0, {total}), got {indices}")
    if reweighted is not None and np.shape(reweighted.log_density)[0] != total:
        raise ValueError("reweighted must hold the same clusters as post")
    if prior_names is None:
        prior_names = (_prior_name(post), None if reweighted is None else _prior_name(reweighted))
    if len(prior_names) != 2:
        raise ValueError(f"prior_names must be a pair (prior of post, prior of reweighted), got {prior_names!r}")
    names = [lab if pn is None else f"{lab} (prior: {pn})" for lab, pn in zip(labels, prior_names)]
    if ax is None:
        ncol = min(len(indices), 4)
        nrow = -(-len(indices) // ncol)
        fig = Figure(figsize=(3.4 * ncol, 3.0 * nrow + 0.5), layout="constrained")
        axes = np.atleast_1d(fig.subplots(nrow, ncol, squeeze=False)).ravel()
        for extra in axes[len(indices):]:
            fig.delaxes(extra)
        axes = axes[: len(indices)]
    else:
        axes = np.atleast_1d(np.asarray(ax, dtype=object)).ravel()
        if axes.size < len(indices):
            raise ValueError(f"need {len(indices)} axes, got {axes.size}")
        fig = axes[0].figure
    grid = np.asarray(post.grid, dtype=np.float64)
    dens = np.exp(np.asarray(post.log_density[np.asarray(indices)], dtype=np.float64))
    dens_rw = None
    if reweighted is not None:
        dens_rw = np.exp(np.asarray(reweighted.log_density[np.asarray(indices)], dtype=np.float64))
        grid_rw = np.asarray(reweighted.grid, dtype=np.float64)
    for k, (a, i) in enumerate(zip(axes, indices)):
        a.plot(grid, dens[k], color="C0", lw=1.5, label=names[0])
        ranges = [_mass_range(grid, dens[k])]
        if dens_rw is not None:
            a.plot(grid_rw, dens_rw[k], color="C1", lw=1.5, ls="--", label=names[1])
            ranges.append(_mass_range(grid_rw, dens_rw[k]))
        if y is not None:
            a.axvline(y[i], color="k", ls=":", lw=1.2, label="true mass")
            a.set_title(f"cluster {i}: true {y[i]:.2f}", fontsize="small")
        else:
            a.set_title(f"cluster {i}", fontsize="small")
        if zoom:
            lo = min(r[0] for r in ranges)
            hi = max(r[1] for r in ranges)
            if y is not None and np.isfinite(y[i]):
                lo, hi = min(lo, float(y[i])), max(hi, float(y[i]))
            margin = max(0.15 * (hi - lo), 0.05)
            full = (min(grid[0], grid_rw[0]) if dens_rw is not None else grid[0],
                    max(grid[-1], grid_rw[-1]) if dens_rw is not None else grid[-1])
            a.set_xlim(max(lo - margin, full[0]), min(hi + margin, full[1]))
        else:
            a.set_xlim(grid[0], grid[-1])
        a.set_ylim(bottom=0.0)
        a.set_xlabel(LOG_MASS_LABEL, fontsize="small")
        a.set_ylabel(r"$p(\log_{10} M\,|\,x)$ [dex$^{-1}$]", fontsize="small")
        a.tick_params(labelsize="small")
    handles, texts = axes[0].get_legend_handles_labels()
    if ax is None:
        fig.legend(handles, texts, loc="outside lower center", ncol=len(texts), frameon=False, fontsize="small")
    else:
        axes[0].legend(frameon=False, fontsize="small")
    return _finish(fig, path)


def _p_text(p: float) -> str:
    """``"= 0.016"``, ``"= 5.5e-248"``, or ``"< 1e-300"`` for a p-value that underflowed to 0."""
    return f"= {p:.2g}" if p >= 1e-3 else (f"= {p:.1e}" if p > 0 else "< 1e-300")


def pit_histogram(
    post_or_pit,
    truth_log_mass=None,
    *,
    bins: int = 10,
    ax=None,
    path=None,
    label: str | None = None,
    prior_name: str | None = None,
    truth_name: str | None = None,
    caption: bool = True,
) -> Figure:
    """Histogram of PIT values with the uniform level and its ±1σ (binomial) band; the KS and
    chi-square p-values in the title, and a caption under the axes saying what they test.

    The PIT (the posterior CDF at the true mass) is uniform when the posteriors are calibrated for clusters
    drawn like the test set, which needs the posterior's mass prior to be the distribution the test masses
    were drawn from. A posterior under another prior (a flat prior, on a test set drawn from the mass
    function) is expected to fail the tests: that is a statement about the prior, not a bug.

    Parameters
    ----------
    post_or_pit : MassPosterior or array_like
        A posterior (then ``truth_log_mass`` is required) or PIT values in [0, 1].
    truth_log_mass : array_like or Catalog, optional
    bins : int
        Histogram bins (also the chi-square test's).
    ax : Axes, optional
    path : str or PathLike, optional
        Write the figure there.
    label : str, optional
        Which posterior this is, for the title ("PIT of LABEL").
    prior_name : str, optional
        The posterior's mass prior; default read from a posterior's ``source_prior`` (else the training
        set's implicit prior when it was fitted on a training set).
    truth_name : str, optional
        What the test masses were drawn from (e.g. "the Tinker08 mass function").
    caption : bool
        Write the caption under the axes.

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> fig = pit_histogram(np.random.default_rng(0).uniform(size=1000), label="toy")
    >>> len(fig.axes[0].patches) >= 10, fig.axes[0].get_title().splitlines()[0]
    (True, 'PIT of toy (n = 1000)')
    """
    if _metrics.is_posterior(post_or_pit):
        if truth_log_mass is None:
            raise ValueError("pit_histogram of a posterior needs truth_log_mass")
        u = _metrics.pit(post_or_pit, truth_log_mass)
        if prior_name is None:
            prior_name = _prior_name(post_or_pit)
    else:
        u = np.asarray(post_or_pit, dtype=np.float64)
    t = _metrics.pit_uniformity(u, bins=bins)
    fig, a = _new_axes(ax, (5.0, 4.2))
    a.hist(u, bins=bins, range=(0.0, 1.0), density=True, color="C0", alpha=0.7, label="PIT")
    p = 1.0 / bins
    err = np.sqrt(p * (1 - p) / t.n) / p  # in density units (level 1)
    a.axhline(1.0, color="k", lw=1, label="uniform (calibrated)")
    a.axhspan(1 - err, 1 + err, color="0.8", alpha=0.6, lw=0, label=r"$\pm1\sigma$ of a uniform sample")
    a.set_xlim(0, 1)
    a.set_xlabel("PIT")
    a.set_ylabel("density")
    verdict = "uniformity rejected at 5%" if min(t.ks_pvalue, t.chi2_pvalue) < 0.05 else "consistent with uniform"
    head = f"PIT of {label} (n = {t.n})" if label else f"PIT (n = {t.n})"
    a.set_title(f"{head}\nKS p {_p_text(t.ks_pvalue)}, $\\chi^2$ p {_p_text(t.chi2_pvalue)}: {verdict}",
                fontsize="small")
    a.legend(frameon=False, fontsize="small")
    if caption:
        text = ("KS and $\\chi^2$ test whether the PIT values are uniform, i.e. whether the posteriors are "
                "calibrated for clusters drawn like these. That needs the posterior's prior to be the test "
                "masses' distribution: under any other prior, failing is expected.")
        here = []
        if prior_name:
            here.append(f"posterior's prior: {prior_name}")
        if truth_name:
            here.append(f"test masses drawn from: {truth_name}")
        lines = textwrap.wrap(text, 78) + (textwrap.wrap("Here " + "; ".join(here) + ".", 78) if here else [])
        a.text(0.0, -0.16, "\n".join(lines), transform=a.transAxes, ha="left", va="top", fontsize="x-small",
               color="0.25")
    return _finish(fig, path)


def coverage_curve(
    post,
    truth_log_mass,
    *,
    kinds: Sequence[str] = ("central", "hpd"),
    probs=None,
    ax=None,
    path=None,
    label: str | None = None,
) -> Figure:
    """Empirical against nominal coverage of credible intervals (central and/or HPD), with the diagonal
    and a ±2σ binomial band around it; the title says which posterior it is (``label``) and how many
    clusters, and the two sides of the diagonal are named (below: intervals too narrow).

    Parameters
    ----------
    post : MassPosterior
    truth_log_mass : array_like or Catalog
    kinds : sequence of {"central", "hpd"}
    probs : array_like, optional
        Nominal probabilities (default those of :func:`numpyro_clustermass.metrics.coverage_curve`).
    ax : Axes, optional
    path : str or PathLike, optional
        Write the figure there.
    label : str, optional
        Which posterior this is, for the title ("coverage of LABEL").

    Returns
    -------
    matplotlib.figure.Figure

    Examples
    --------
    >>> import numpy as np
    >>> from numpyro_clustermass.posterior import MassPosterior
    >>> rng = np.random.default_rng(0); mu = rng.uniform(14, 15, 300)
    >>> p = MassPosterior.from_mixture(np.linspace(13, 16, 256), np.zeros((300, 1)), mu[:, None], np.full((300, 1), 0.2))
    >>> fig = coverage_curve(p, mu + 0.2 * rng.standard_normal(300), label="toy")
    >>> len(fig.axes[0].lines), fig.axes[0].get_title()
    (3, 'coverage of toy (n = 300)')
    """
    fig, a = _new_axes(ax, (4.5, 4.5))
    a.plot([0, 1], [0, 1], color="k", ls="--", lw=1, label="ideal")
    first = None
    for k, kind in enumerate(kinds):
        cc = _metrics.coverage_curve(post, truth_log_mass, probs=probs, kind=kind)
        a.plot(cc.nominal, cc.empirical, marker="o", ms=3, color=_COLORS[k % len(_COLORS)],
               label={"central": "central intervals", "hpd": "HPD intervals"}.get(kind, kind))
        first = cc if first is None else first
    if first is not None:
        nom = np.linspace(0.0, 1.0, 101)
        err = 2 * np.sqrt(nom * (1 - nom) / int(first.n.iloc[0]))
        a.fill_between(nom, nom - err, nom + err, color="0.85", lw=0, label=r"$\pm2\sigma$ (binomial)")
    a.text(0.97, 0.03, "below: intervals too narrow\n(overconfident)", transform=a.transAxes, ha="right",
           va="bottom", fontsize="x-small", color="0.35")
    a.text(0.04, 0.62, "above: intervals too wide\n(underconfident)", transform=a.transAxes, ha="left",
           va="top", fontsize="x-small", color="0.35")
    a.set_xlim(0, 1)
    a.set_ylim(0, 1)
    a.set_aspect("equal")
    a.set_xlabel("nominal coverage")
    a.set_ylabel("empirical coverage")
    n_txt = f" (n = {int(first.n.iloc[0])})" if first is not None else ""
    a.set_title(f"coverage of {label}{n_txt}" if label else f"coverage{n_txt}", fontsize="small")
    a.legend(frameon=False, loc="upper left", fontsize="small")
    return _finish(fig, path)


# --------------------------------------------------------------------------------------------------------
def compare_to_reference(per_cluster, reference: str | None = None, *, path=None) -> Figure:
    """Each fit's per-cluster predictive mean and standard deviation against the reference fit's.

    Left: the predictive mean minus the reference's against the reference's mean; right: the predictive standard
    deviation against the reference's, with the 1:1 line. One colour per fit other than the reference.

    Parameters
    ----------
    per_cluster : Comparison or pandas.DataFrame
        :func:`numpyro_clustermass.diagnostics.compare`'s result (its ``per_cluster`` and ``reference``), or a
        table with the columns ``fit``, ``mean``, ``std``, ``ref_mean``, ``ref_std``.
    reference : str, optional
        The reference's name (taken from a Comparison when not given).
    path : str or PathLike, optional
        Write the figure there.

    Examples
    --------
    >>> import numpy as np, pandas as pd
    >>> m = np.linspace(13.6, 15.2, 50)
    >>> df = pd.DataFrame({"fit": ["nuts"] * 50 + ["bbb"] * 50, "mean": np.r_[m, m + 0.02],
    ...                    "std": np.r_[np.full(50, 0.2), np.full(50, 0.15)], "ref_mean": np.r_[m, m],
    ...                    "ref_std": np.full(100, 0.2)})
    >>> fig = compare_to_reference(df, "nuts")
    >>> [t.get_text() for t in fig.axes[1].get_legend().get_texts()]
    ['1:1', 'bbb']
    """
    if hasattr(per_cluster, "per_cluster"):
        reference = per_cluster.reference if reference is None else reference
        per_cluster = per_cluster.per_cluster
    if reference is None or "ref_mean" not in getattr(per_cluster, "columns", ()):
        raise ValueError("this comparison has no reference fit; call compare(..., reference=NAME)")
    fig, (ax_m, ax_s) = _new_axes(None, (10.0, 4.2), 1, 2)
    lo = float(np.nanmin(per_cluster["ref_std"]))
    hi = float(np.nanmax(per_cluster[["std", "ref_std"]].to_numpy()))
    ax_s.plot([0.0, 1.1 * hi], [0.0, 1.1 * hi], color="k", ls="--", lw=1, label="1:1")
    ax_m.axhline(0.0, color="k", ls="--", lw=1)
    k = 0
    for name, part in per_cluster.groupby("fit", sort=False):
        if name == reference:
            continue
        color = _COLORS[k % len(_COLORS)]
        k += 1
        ax_m.scatter(part["ref_mean"], part["mean"] - part["ref_mean"], s=6, alpha=0.6, color=color, label=name)
        ax_s.scatter(part["ref_std"], part["std"], s=6, alpha=0.6, color=color, label=name)
    ax_m.set_xlabel(f"predictive mean of {reference}  " + LOG_MASS_LABEL)
    ax_m.set_ylabel(f"mean $-$ mean of {reference} [dex]")
    ax_s.set_xlabel(f"predictive std of {reference} [dex]")
    ax_s.set_ylabel("predictive std [dex]")
    ax_s.set_xlim(0.9 * lo, 1.05 * hi)
    ax_s.set_ylim(0.0, 1.1 * hi)
    for a in (ax_m, ax_s):
        a.legend(frameon=False, fontsize="small")
    return _finish(fig, path)


def coverage_by_mass(binned, *, path=None) -> Figure:
    """Central-interval coverage per bin of true mass, one line per fit and one panel per probability, with the
    nominal level (a fit can cover well overall and badly in every bin: DESIGN.md's lesson).

    Parameters
    ----------
    binned : Comparison or pandas.DataFrame
        :func:`numpyro_clustermass.diagnostics.compare`'s result (its ``binned``), or a table with the columns
        ``fit``, ``bin_mid`` and ``coverage_XX`` (XX the probability in percent).
    path : str or PathLike, optional
        Write the figure there.

    Examples
    --------
    >>> import pandas as pd
    >>> df = pd.DataFrame({"fit": ["map", "map", "nuts", "nuts"], "bin_mid": [14.0, 14.5] * 2,
    ...                    "coverage_68": [0.6, 0.7, 0.66, 0.69], "coverage_95": [0.9, 0.93, 0.95, 0.96]})
    >>> fig = coverage_by_mass(df)
    >>> [a.get_title() for a in fig.axes]
    ['68% intervals', '95% intervals']
    """
    if hasattr(binned, "binned"):
        binned = binned.binned
    columns = [c for c in binned.columns if str(c).startswith("coverage_")]
    if len(binned) == 0 or not columns:
        raise ValueError("no coverage per mass bin to draw: the catalogue compared had no true masses")
    fig, axes = _new_axes(None, (4.6 * len(columns), 3.8), 1, len(columns), squeeze=False)
    for a, col in zip(axes[0], columns):
        nominal = float(col[len("coverage_"):]) / 100.0
        a.axhline(nominal, color="k", ls="--", lw=1, label="nominal")
        for k, (name, part) in enumerate(binned.groupby("fit", sort=False)):
            a.plot(part["bin_mid"], part[col], marker="o", ms=3, color=_COLORS[k % len(_COLORS)], label=name)
        a.set_title(f"{col[len('coverage_'):]}% intervals")
        a.set_xlabel("true " + LOG_MASS_LABEL)
        a.set_ylabel("coverage")
        a.set_ylim(0.0, 1.02)
        a.legend(frameon=False, fontsize="small")
    return _finish(fig, path)


# --------------------------------------------------------------------------------------------------------
def catalog_overview(cat, *, bins: int = 45, max_points: int = 20_000, seed: int = 0, path=None) -> Figure:
    """The lecture's look at the data: the mass histogram, and log Ngal and log σ_v against log M.

    Parameters
    ----------
    cat : Catalog
        Any catalogue with ``M200c``, ``Ngal`` and ``sigv`` (mock or the lecture's file).
    bins : int
        Histogram bins over 13.5–15.3.
    max_points : int
        Scatter panels show at most this many mocks (a random subset), with the binned median on top.
    path : str or PathLike, optional
        Write the figure there.

    Examples
    --------
    >>> from numpyro_clustermass.simulate import mock_catalog
    >>> fig = catalog_overview(mock_catalog(volume=0.005, seed=0))
    >>> [ax.get_ylabel() for ax in fig.axes]
    ['mocks per bin', '$\\\\log_{10} N_{\\\\rm gal}$', '$\\\\log_{10}\\\\,\\\\sigma_v$ [km/s]']
    """
    log_m = np.asarray(cat["log_mass"], dtype=np.float64)
    log_n = np.asarray(cat["LogNgal"], dtype=np.float64)
    log_s = np.asarray(cat["Logsigv"], dtype=np.float64)
    fig, axes = _new_axes(None, (13, 3.8), 1, 3)
    edges = np.linspace(AXIS_RANGE[0], AXIS_RANGE[1], bins + 1)
    axes[0].hist(log_m, edges, color="C0")
    axes[0].set_yscale("log")
    axes[0].set_ylabel("mocks per bin")
    axes[0].set_title(f"{len(cat)} mocks")
    rng = np.random.default_rng(seed)
    show = rng.permutation(log_m.size)[:max_points]
    centres = 0.5 * (edges[1:] + edges[:-1])
    idx = np.clip(np.searchsorted(edges, log_m) - 1, 0, bins - 1)
    for ax, values, label in (
        (axes[1], log_n, r"$\log_{10} N_{\rm gal}$"),
        (axes[2], log_s, r"$\log_{10}\,\sigma_v$ [km/s]"),
    ):
        ax.scatter(log_m[show], values[show], s=1, alpha=0.15, color="C0", rasterized=True)
        med = np.array([np.median(values[idx == b]) if np.any(idx == b) else np.nan for b in range(bins)])
        ax.plot(centres, med, color="C3", lw=2, label="binned median")
        ax.set_ylabel(label)
        ax.legend(loc="upper left")
    if "sigv_members" in cat:
        pure = np.log10(np.asarray(cat["sigv_members"], dtype=np.float64))
        med = np.array([np.nanmedian(pure[idx == b]) if np.any(idx == b) else np.nan for b in range(bins)])
        axes[2].plot(centres, med, color="C2", lw=2, ls="--", label="true members only")
        axes[2].legend(loc="upper left")
    for ax in axes:
        ax.set_xlim(*AXIS_RANGE)
        ax.set_xlabel(LOG_MASS_LABEL)
    return _finish(fig, path)


# --------------------------------------------------------------------------------------------------------
def coverage_by_bin(table, *, ax=None, path=None) -> Figure:
    """Interval coverage per bin (:func:`numpyro_clustermass.metrics.coverage_by_bin`'s table): one line per
    probability with its binomial error bars, and the band a calibrated posterior stays in (nominal ± 2 standard
    errors); bins are labelled with their counts.

    Parameters
    ----------
    table : pandas.DataFrame
        With ``bin_mid``, ``n`` and ``coverage_XX`` / ``stderr_XX`` columns (``table.attrs["by"]`` names the
        x axis).
    ax : matplotlib Axes, optional
    path : str or PathLike, optional
        Write the figure there.

    Examples
    --------
    >>> import pandas as pd
    >>> t = pd.DataFrame({"bin_lo": [14.0, 14.1], "bin_hi": [14.1, 14.2], "bin_mid": [14.05, 14.15], "n": [90, 40],
    ...                   "coverage_68": [0.6, 0.7], "stderr_68": [0.049, 0.074]})
    >>> fig = coverage_by_bin(t)
    >>> fig.axes[0].get_ylabel()
    'coverage'
    """
    columns = [c for c in table.columns if str(c).startswith("coverage_")]
    if len(table) == 0 or not columns or "bin_mid" not in table:
        raise ValueError("coverage_by_bin needs a table with bin_mid and coverage_XX columns "
                         "(numpyro_clustermass.metrics.coverage_by_bin)")
    fig, ax = _new_axes(ax, (6.4, 4.0))
    x = np.asarray(table["bin_mid"], dtype=np.float64)
    for k, col in enumerate(columns):
        lab = col[len("coverage_"):]
        nominal = float(lab) / 100.0
        color = _COLORS[k % len(_COLORS)]
        n = np.asarray(table["n"], dtype=np.float64)
        with np.errstate(divide="ignore", invalid="ignore"):
            band = 2.0 * np.sqrt(nominal * (1 - nominal) / n)
        ax.fill_between(x, nominal - band, nominal + band, color=color, alpha=0.15, lw=0)
        ax.axhline(nominal, color=color, ls="--", lw=1)
        err = table[f"stderr_{lab}"] if f"stderr_{lab}" in table else None
        ax.errorbar(x, table[col], yerr=err, marker="o", ms=3, color=color, lw=1, capsize=2,
                    label=f"{lab}% intervals")
    for xi, ni in zip(x, table["n"]):
        ax.annotate(str(int(ni)), (xi, 0.02), ha="center", fontsize="x-small", color="0.4")
    by = table.attrs.get("by", "log_mass")
    ax.set_xlabel("true " + LOG_MASS_LABEL if by == "log_mass" else str(by))
    ax.set_ylabel("coverage")
    ax.set_ylim(0.0, 1.02)
    ax.set_title("coverage per bin (band: nominal ± 2 binomial s.e.; counts at the bottom)", fontsize="small")
    ax.legend(frameon=False, fontsize="small", loc="best")
    return _finish(fig, path)


__all__.append("coverage_by_bin")
