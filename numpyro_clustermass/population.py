"""Population inference from per-cluster posteriors: the halo mass function and the mass–observable relation.

A network trained on a catalogue returns, for cluster ``i``, a density ``q_i(M) ∝ p(x_i | M, selected)
π_train(M)`` on the posterior's log-mass grid, where ``π_train`` is the mass distribution of the (selected)
training mocks, the prior :attr:`MassPosterior.prior` carries. Dividing it out gives each cluster's likelihood
in mass (the interim-prior trick of hierarchical inference, e.g. Hogg, Myers & Bovy 2010)::

    L_i(M) ∝ q_i(M) / π_train(M).

Because the training mocks passed the same ``Ngal >= 10`` cut as the survey, ``π_train`` already holds the
selection: ``L_i(M) ∝ p(x_i | M) / S(M)`` with ``S(M) = p(selected | M)``. The selected clusters of a survey of
volume ``V`` are an inhomogeneous Poisson process in mass with intensity ``V n(M) S(M)``, so with the
population model ``n(M) = dn/dlog10M`` [(Mpc/h)^-3 dex^-1]::

    log p(data | n) = -V ∫ n(M) S(M) dlog10M + Σ_i log ∫ L_i(M) n(M) S(M) dlog10M + const.

The integrals are sums over the posterior's grid, done once per cluster and per *cell* (a fine partition of the
model's mass range, ``cell_width`` dex, refined by the bin and selection edges), so that a NUTS step costs
``O(n_clusters × n_cells)``. Three population models:

* :func:`mass_function` ``model="binned"``: ``log n`` constant per bin, with a Gaussian random-walk smoothness
  prior of order ``order`` (1: on first differences; 2, the default: on second differences, which does not
  pull the steep high-mass end toward a flat mass function) and scale ``smoothness`` (natural log per bin);
* :func:`mass_function` ``model="tinker08"``: ``n(M) = A n_T08(M) 10^(α (log10 M − pivot))`` with free
  ``log A`` (natural log) and tilt ``α``, ``n_T08`` the colossus Tinker et al. 2008 mass function;
* :func:`scaling_relation`: ``log10 obs = a + b (log10 M − pivot) + N(0, s²)`` jointly with a Tinker-shaped
  population (free ``log A``, ``α``); each cluster's mass is a latent variable marginalised exactly on the
  cells. The posterior must not have used that observable (or a feature equivalent to it) as an input,
  or the data would be counted twice.

Selection ``S(M)``: ``"simulate"`` estimates it from a flat-mass mock of this package's simulator with the cut
lowered to ``Ngal >= 3`` (the fraction with ``Ngal >= 10`` per bin, with its binomial uncertainty, which the fit
marginalises over), or pass a :class:`Selection`, a callable of log10 M, an array on the posterior's grid, or
``None`` (no selection).

Example
-------
Exact Gaussian likelihoods of 0.1 dex around masses drawn from a constant mass function (the posterior's
carried prior is flat, so ``L_i = q_i``):

>>> import numpy as np
>>> from numpyro_clustermass.posterior import MassPosterior
>>> from numpyro_clustermass.priors import Flat
>>> rng = np.random.default_rng(0)
>>> true_m = rng.uniform(14.0, 15.0, rng.poisson(2000))          # n = 2e-6 per (Mpc/h)^3 per dex in 1 (Gpc/h)^3
>>> obs = true_m + 0.1 * rng.standard_normal(true_m.size)
>>> grid = np.linspace(13.0, 16.0, 301)
>>> log_q = -0.5 * ((grid[None, :] - obs[:, None]) / 0.1) ** 2
>>> post = MassPosterior.from_log_density(grid, log_q, source_prior=Flat(13.0, 16.0))
>>> res = mass_function(post, volume=1.0, edges=np.linspace(14.0, 15.0, 3), selection=None, num_warmup=200,
...                     num_samples=200, seed=0)
>>> lo, hi = res.interval(0.95)
>>> bool(np.all((lo < 2e-6) & (2e-6 < hi)))
True
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_clustermass.cosmology import DEFAULT_COSMOLOGY, DEFAULT_Z, use_cosmology
from numpyro_clustermass.grid import LOG_MASS_RANGE, check_grid
from numpyro_clustermass.posterior import MassPosterior

__all__ = [
    "DEFAULT_EDGES",
    "OBSERVABLES",
    "PIVOT_LOG_MASS",
    "PopulationFit",
    "Selection",
    "estimate_selection",
    "from_true_masses",
    "mass_function",
    "pool",
    "scaling_relation",
    "tinker08_density",
]

_LN10 = math.log(10.0)
#: Default bins of the binned mass function: 0.1 dex over the mock's mass range 10^13.5–10^15.3 Msun/h.
DEFAULT_EDGES = np.round(np.arange(LOG_MASS_RANGE[0], LOG_MASS_RANGE[1] + 1e-9, 0.1), 6)
#: Pivot log10 mass of the tilt and of the scaling relation.
PIVOT_LOG_MASS = 14.5
#: observable name -> (catalogue column, features that carry the same information and must not be inputs).
OBSERVABLES = {
    "sigma_v": ("sigv", ("Logsigv", "v_std")),
    "sigv": ("sigv", ("Logsigv", "v_std")),
    "richness": ("Ngal", ("LogNgal",)),
    "Ngal": ("Ngal", ("LogNgal",)),
    # the mock's velocity dispersion of the true members alone (no interlopers; simulate.mock_catalog's column)
    "sigv_members": ("sigv_members", ("Logsigv", "v_std")),
}
_SELECTION_EDGES_STEP = 0.05
#: Silent clip (dex) of the model range to the carried prior's support (see _model_range).
_MAX_CLIP = 0.1


# ------------------------------------------------------------------------------------------------ truth
def tinker08_density(log_mass, z: float = DEFAULT_Z, cosmology=DEFAULT_COSMOLOGY, model: str = "tinker08"):
    """dn/dlog10M [(Mpc/h)^-3 dex^-1] of the colossus mass function (M200c) at ``log_mass`` (any shape).

    The mock's natural mode draws halos from exactly this function (``simulate.physics.mass_function_table``).

    >>> round(float(np.log10(tinker08_density(14.0))), 2)
    -4.18
    """
    from colossus.lss import mass_function as cmf

    m = np.asarray(log_mass, dtype=np.float64)
    with use_cosmology(cosmology):
        dndlnm = cmf.massFunction(10.0 ** m.ravel(), z, mdef="200c", model=model, q_out="dndlnM")
    return (np.asarray(dndlnm, dtype=np.float64) * _LN10).reshape(m.shape)


def _bin_average(fn: Callable, edges, per_bin: int = 201) -> np.ndarray:
    edges = np.asarray(edges, dtype=np.float64)
    out = []
    for lo, hi in zip(edges[:-1], edges[1:]):
        x = np.linspace(lo, hi, per_bin)
        out.append(np.trapezoid(fn(x), x) / (hi - lo))
    return np.asarray(out)


# ------------------------------------------------------------------------------------------------ selection
@dataclasses.dataclass
class Selection:
    """A selection function ``S(M) = p(selected | M)``, piecewise constant on bins, from counts.

    Attributes
    ----------
    edges : array (J + 1,)
        log10 M bin edges.
    n_selected, n_total : arrays (J,)
        Halos that pass the cut and halos simulated, per bin. ``fraction = n_selected / n_total``; its binomial
        uncertainty is the Beta(k + 1, n − k + 1) posterior, which :func:`mass_function` marginalises over
        (``selection_uncertainty=True``).

    >>> s = Selection(np.array([13.5, 14.0, 15.3]), np.array([50, 100]), np.array([100, 100]))
    >>> s(np.array([13.7, 14.5])).tolist(), np.round(s.std, 3).tolist()
    ([0.5, 1.0], [0.049, 0.01])
    """

    edges: np.ndarray
    n_selected: np.ndarray
    n_total: np.ndarray

    def __post_init__(self):
        self.edges = np.asarray(self.edges, dtype=np.float64)
        self.n_selected = np.asarray(self.n_selected, dtype=np.float64)
        self.n_total = np.asarray(self.n_total, dtype=np.float64)
        j = self.edges.size - 1
        if self.edges.ndim != 1 or j < 1 or np.any(np.diff(self.edges) <= 0):
            raise ValueError(f"Selection edges must be 1-D and strictly increasing; got {self.edges}")
        if self.n_selected.shape != (j,) or self.n_total.shape != (j,):
            raise ValueError(f"Selection needs {j} counts per array for {j + 1} edges; got "
                             f"{self.n_selected.shape} and {self.n_total.shape}")
        if np.any(self.n_total < 1) or np.any(self.n_selected < 0) or np.any(self.n_selected > self.n_total):
            raise ValueError("Selection counts must satisfy 0 <= n_selected <= n_total and n_total >= 1 in every "
                             "bin (simulate more halos or use wider bins)")

    @property
    def fraction(self) -> np.ndarray:
        """``n_selected / n_total`` per bin."""
        return self.n_selected / self.n_total

    @property
    def std(self) -> np.ndarray:
        """Standard deviation of the Beta(k + 1, n − k + 1) posterior of the fraction, per bin."""
        a, b = self.n_selected + 1, self.n_total - self.n_selected + 1
        return np.sqrt(a * b / ((a + b) ** 2 * (a + b + 1)))

    def __call__(self, log_mass) -> np.ndarray:
        """The fraction of the bin holding each mass; 0 outside the edges."""
        m = np.asarray(log_mass, dtype=np.float64)
        i = np.clip(np.searchsorted(self.edges, m, side="right") - 1, 0, self.fraction.size - 1)
        inside = (m >= self.edges[0]) & (m <= self.edges[-1])
        return np.where(inside, self.fraction[i], 0.0)


def estimate_selection(edges=None, n_halos: int = 20000, ngal_min: int = 10, seed: int = 12345,
                       physics=None, **overrides) -> Selection:
    """Estimate ``S(M) = p(Ngal >= ngal_min | M)`` from a flat-mass mock with the catalogue cut lowered.

    The mock (:func:`~numpyro_clustermass.simulate.mock_catalog`, one line of sight, ``mass_sampling="flat"``
    over the edges' range) is generated with the cut at ``Ngal >= 3`` (the smallest the moments allow), and the
    fraction of those halos with ``Ngal >= ngal_min`` is counted per bin. Halos below 3 galaxies are not in the
    mock; the function warns when they are more than 0.1% of those generated (then the fraction is too high).

    Parameters
    ----------
    edges : array, optional
        Bin edges in log10 M; default 0.05 dex over 10^13.5–10^15.3.
    n_halos : int
        Halos simulated (uniform in log10 M).
    ngal_min : int
        The survey's cut.
    seed : int
    physics : MockPhysics, optional
        The simulator's physics (default the fiducial); ``overrides`` replace single fields.

    Returns
    -------
    Selection

    >>> s = estimate_selection(n_halos=4000, seed=0)
    >>> bool(s.fraction[-1] == 1.0), bool(0.85 < s.fraction[0] < 0.99)
    (True, True)
    """
    from numpyro_clustermass.simulate import mock_catalog

    if edges is None:
        edges = np.round(np.arange(LOG_MASS_RANGE[0], LOG_MASS_RANGE[1] + 1e-9, _SELECTION_EDGES_STEP), 6)
    edges = np.asarray(edges, dtype=np.float64)
    if int(ngal_min) < 3:
        raise ValueError(f"ngal_min must be >= 3 (the simulator's lowest cut); got {ngal_min}")
    cat = mock_catalog(mass_sampling="flat", n_halos=int(n_halos), n_los=1, seed=seed, physics=physics,
                       **{"log_mass_min": float(edges[0]), "log_mass_max": float(edges[-1]), **overrides,
                          "ngal_min": 3})
    lost = cat.meta["n_mocks_cut_ngal_min"] / max(cat.meta["n_mocks_generated"], 1)
    if lost > 1e-3:
        warnings.warn(f"estimate_selection: {100 * lost:.2f}% of the simulated halos have fewer than 3 galaxies and "
                      "are missing from the denominator; the selection fraction is overestimated at low mass",
                      RuntimeWarning, stacklevel=2)
    m = cat.log_mass
    n_tot, _ = np.histogram(m, bins=edges)
    n_sel, _ = np.histogram(m[np.asarray(cat["Ngal"]) >= ngal_min], bins=edges)
    return Selection(edges, n_sel, n_tot)


# ------------------------------------------------------------------------------------------------ helpers
def from_true_masses(log_mass, grid=None) -> MassPosterior:
    """A :class:`MassPosterior` that puts all its mass on the grid point nearest each true mass, under a flat
    carried prior: the "ideal" input for which the population fit uses the true masses.

    >>> p = from_true_masses(np.array([14.0, 14.52]), grid=np.linspace(13.0, 16.0, 301))
    >>> np.round(p.mode(), 2).tolist()
    [14.0, 14.52]
    """
    from numpyro_clustermass.priors import Flat

    m = np.asarray(log_mass, dtype=np.float64).ravel()
    grid = np.linspace(13.0, 16.0, 601) if grid is None else check_grid(grid, min_points=3)
    dx = (grid[-1] - grid[0]) / (grid.size - 1)
    if np.any(~np.isfinite(m)) or np.any(m < grid[0]) or np.any(m > grid[-1]):
        raise ValueError(f"true masses must be finite and inside the grid [{grid[0]}, {grid[-1]}]")
    idx = np.clip(np.rint((m - grid[0]) / dx).astype(int), 0, grid.size - 1)
    ld = np.full((m.size, grid.size), -np.inf, dtype=np.float32)
    ld[np.arange(m.size), idx] = 0.0
    return MassPosterior.from_log_density(grid, ld, source_prior=Flat(grid[0] - dx, grid[-1] + dx))


def _one_projection(catalog, projection, n_rows: int) -> np.ndarray:
    """Boolean mask of the rows to use: one line of sight per halo."""
    if catalog is None:
        if projection is not None:
            raise ValueError("projection= needs catalog= (the catalogue the posterior was computed on)")
        return np.ones(n_rows, dtype=bool)
    if len(catalog) != n_rows:
        raise ValueError(f"catalog has {len(catalog)} rows but the posterior {n_rows} clusters; pass the catalogue "
                         "the posterior was computed on (row i of one is row i of the other)")
    cols = set(catalog.colnames) if hasattr(catalog, "colnames") else set()
    if "halo_id" not in cols:
        if projection not in (None, "first"):
            raise ValueError("projection= needs a halo_id (and los) column in the catalogue")
        return np.ones(n_rows, dtype=bool)
    hid = np.asarray(catalog["halo_id"])
    uniq, first = np.unique(hid, return_index=True)
    if projection is None:
        if uniq.size != n_rows:
            raise ValueError(
                f"the catalogue holds {n_rows} rows of {uniq.size} halos: several lines of sight per halo are the "
                "same halo and must not be counted twice. Choose one: projection=0 (rows with los == 0) or "
                "projection='first' (the first row of each halo_id)"
            )
        return np.ones(n_rows, dtype=bool)
    if projection == "first":
        mask = np.zeros(n_rows, dtype=bool)
        mask[first] = True
        return mask
    if isinstance(projection, (int, np.integer)) and not isinstance(projection, bool):
        if "los" not in cols:
            raise ValueError("projection=<int> needs a los column; use projection='first'")
        mask = np.asarray(catalog["los"]) == int(projection)
        if not mask.any():
            raise ValueError(f"no rows with los == {projection}; the catalogue has los values "
                             f"{sorted(set(np.asarray(catalog['los']).tolist()))}")
        if np.unique(hid[mask]).size != mask.sum():
            raise ValueError(f"rows with los == {projection} repeat halo_id values; use projection='first'")
        return mask
    raise ValueError(f"projection must be None, an int line of sight (e.g. 0) or 'first'; got {projection!r}")


def _log_likelihoods(post: MassPosterior) -> np.ndarray:
    """log L_i(M) = log q_i − log π on the grid (float64), −inf where the carried prior is zero."""
    from numpyro_clustermass.priors import evaluate_on_grid

    logq = np.asarray(post.log_density, dtype=np.float64)
    logpi = np.asarray(evaluate_on_grid(post.prior, np.asarray(post.grid)), dtype=np.float64)
    with np.errstate(invalid="ignore"):
        logl = np.where(np.isfinite(logpi)[None, :], logq - np.where(np.isfinite(logpi), logpi, 0.0)[None, :],
                        -np.inf)
    empty = ~np.isfinite(logl).any(axis=1)
    if empty.any():
        raise ValueError(f"{int(empty.sum())} of {logl.shape[0]} clusters have no posterior mass where the prior "
                         f"the posterior carries ({post.prior!r}) is positive; their likelihood is undefined")
    return logl


def _cell_edges(lo: float, hi: float, width: float, *edge_sets) -> np.ndarray:
    n = max(1, int(math.ceil((hi - lo) / width - 1e-9)))
    pts = [np.linspace(lo, hi, n + 1)]
    for e in edge_sets:
        e = np.asarray(e, dtype=np.float64)
        pts.append(e[(e > lo) & (e < hi)])
    x = np.unique(np.round(np.concatenate(pts), 9))
    return x


def _overlaps(grid: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """W[g, c]: length (dex) of grid cell g (``[g − dx/2, g + dx/2]``) inside cell c."""
    dx = (grid[-1] - grid[0]) / (grid.size - 1)
    glo, ghi = grid - 0.5 * dx, grid + 0.5 * dx
    return np.clip(np.minimum(ghi[:, None], cells[None, 1:]) - np.maximum(glo[:, None], cells[None, :-1]), 0.0, None)


def _selection_on_grid(selection, grid: np.ndarray):
    """(S on the grid or None, Selection or None)."""
    if selection is None:
        return np.ones_like(grid), None
    if isinstance(selection, Selection):
        return None, selection
    if isinstance(selection, str):
        if selection != "simulate":
            raise ValueError(f"selection must be 'simulate', a Selection, a callable, an array on the grid or None; "
                             f"got {selection!r}")
        return None, estimate_selection()
    if callable(selection):
        s = np.asarray(selection(grid), dtype=np.float64)
    else:
        s = np.asarray(selection, dtype=np.float64)
    if s.shape != grid.shape:
        raise ValueError(f"selection on the grid must have shape {grid.shape} (one value per grid point); "
                         f"got {s.shape}")
    if np.any(~np.isfinite(s)) or np.any(s < 0) or np.any(s > 1):
        raise ValueError("selection probabilities must be finite and in [0, 1]")
    return s, None


@dataclasses.dataclass
class _Prepared:
    log_k: np.ndarray        # (N, C) log ∫_c L_i base S_grid dlogM, per cluster and cell
    log_t: np.ndarray        # (C,) log ∫_c base S_grid dlogM
    log_tn: np.ndarray       # (C,) log ∫_c base dlogM (no selection)
    cells: np.ndarray        # (C + 1,)
    sel_index: np.ndarray | None   # (C,) selection bin of each cell
    sel: Selection | None
    s_bins: np.ndarray       # (B,) mean selection per output bin (for the naive estimates)


def _prepare(post, lo, hi, edges, selection, base_fn, cell_width) -> _Prepared:
    grid = np.asarray(post.grid, dtype=np.float64)
    s_grid, sel = _selection_on_grid(selection, grid)
    extra = [edges] + ([sel.edges] if sel is not None else [])
    cells = _cell_edges(lo, hi, cell_width, *extra)
    if sel is not None and (sel.edges[0] > lo + 1e-9 or sel.edges[-1] < hi - 1e-9):
        raise ValueError(f"the selection's edges [{sel.edges[0]}, {sel.edges[-1]}] do not cover the model's mass "
                         f"range [{lo}, {hi}]")
    w = _overlaps(grid, cells)
    base = np.ones_like(grid) if base_fn is None else base_fn(grid)
    sg = np.ones_like(grid) if s_grid is None else s_grid
    logl = _log_likelihoods(post)
    mx = logl.max(axis=1, keepdims=True)
    with np.errstate(divide="ignore"):
        k = np.exp(logl - mx) @ ((base * sg)[:, None] * w)
        log_k = np.log(k) + mx
        log_t = np.log(((base * sg)[:, None] * w).sum(0))
        log_tn = np.log((base[:, None] * w).sum(0))
    no_mass = ~np.isfinite(log_k).any(axis=1)
    if no_mass.any():
        raise ValueError(f"{int(no_mass.sum())} clusters have no likelihood inside the model's mass range "
                         f"[{lo}, {hi}] (where the selection is positive); widen the range (edges=) or check the posteriors")
    centres = 0.5 * (cells[:-1] + cells[1:])
    sel_index = None
    if sel is not None:
        sel_index = np.clip(np.searchsorted(sel.edges, centres, side="right") - 1, 0, sel.fraction.size - 1)
    # mean selection per output bin, for dividing the naive histograms
    ew = _overlaps(grid, np.asarray(edges, dtype=np.float64))
    s_for_bins = sg if sel is None else sel(grid) * sg
    s_bins = (s_for_bins[:, None] * ew).sum(0) / np.maximum(ew.sum(0), 1e-300)
    return _Prepared(log_k, log_t, log_tn, cells, sel_index, sel, s_bins)


# ------------------------------------------------------------------------------------------------ models
# The models take every array as an argument (clusters padded to a multiple of _PAD with a zero mask), so that
# surveys of similar size give the same compiled program (JAX's persistent compilation cache then hits).
_PAD = 512


def _model_data(prep: _Prepared, log_v: float, centres, cell_bin, y=None) -> dict:
    n, c = prep.log_k.shape
    npad = int(math.ceil(n / _PAD) * _PAD)
    log_k = np.zeros((npad, c), np.float32)
    log_k[:n] = prep.log_k
    mask = np.zeros(npad, np.float32)
    mask[:n] = 1.0
    data = {"log_k": log_k, "mask": mask, "log_t": prep.log_t.astype(np.float32), "log_v": np.float32(log_v),
            "centres": np.asarray(centres, np.float32), "cell_bin": np.asarray(cell_bin, np.int32)}
    if prep.sel is not None:
        data["sel_a"] = (prep.sel.n_selected + 1.0).astype(np.float32)
        data["sel_b"] = (prep.sel.n_total - prep.sel.n_selected + 1.0).astype(np.float32)
        with np.errstate(divide="ignore"):
            data["sel_log_fixed"] = np.log(prep.sel.fraction).astype(np.float32)
        data["sel_index"] = prep.sel_index.astype(np.int32)
    if y is not None:
        yp = np.zeros(npad, np.float32)
        yp[:n] = y
        data["y"] = yp
    return {k: jnp.asarray(v) for k, v in data.items()}


def _log_selection_cells(d: dict, uncertain: bool):
    import numpyro
    import numpyro.distributions as dist

    if "sel_a" not in d:
        return jnp.zeros_like(d["log_t"])
    if uncertain:
        s = numpyro.sample("selection", dist.Beta(d["sel_a"], d["sel_b"]))
        return jnp.log(s)[d["sel_index"]]
    return d["sel_log_fixed"][d["sel_index"]]


def _poisson_factor(d, log_w, log_sel, log_sel_expected=None, extra_per_cell=None):
    """-V Σ_c T_c n_c S_c + Σ_i log Σ_c K_ic n_c S_c [× extra_ic]; all per cell, in logs."""
    import numpyro

    log_sel_expected = log_sel if log_sel_expected is None else log_sel_expected
    expected = jnp.exp(d["log_v"] + jax.nn.logsumexp(d["log_t"] + log_w + log_sel_expected))
    terms = d["log_k"] + (log_w + log_sel)[None, :]
    if extra_per_cell is not None:
        terms = terms + extra_per_cell
    numpyro.factor("poisson", jnp.sum(d["mask"] * jax.nn.logsumexp(terms, axis=1)) - expected)


def _binned_model(nbins, order, smoothness, uncertain, **d):
    import numpyro
    import numpyro.distributions as dist
    from numpyro.distributions import constraints

    log_n = numpyro.sample("log_n", dist.ImproperUniform(constraints.real_vector, (), (nbins,)))
    if order > 0 and nbins > order:
        diff = jnp.diff(log_n, n=order)
        numpyro.factor("smoothness", jnp.sum(dist.Normal(0.0, smoothness).log_prob(diff)))
    _poisson_factor(d, log_n[d["cell_bin"]], _log_selection_cells(d, uncertain))


def _tinker_weights(centres, pivot, amplitude_scale, tilt_scale):
    import numpyro
    import numpyro.distributions as dist

    log_a = numpyro.sample("log_A", dist.Normal(0.0, amplitude_scale))
    alpha = numpyro.sample("alpha", dist.Normal(0.0, tilt_scale))
    return log_a + alpha * _LN10 * (centres - pivot)


def _tinker_model(pivot, amplitude_scale, tilt_scale, uncertain, **d):
    log_w = _tinker_weights(d["centres"], pivot, amplitude_scale, tilt_scale)
    _poisson_factor(d, log_w, _log_selection_cells(d, uncertain))


def _relation(d, pivot, scatter_slope):
    """Mean and scatter of log10 obs per mass cell: a + b x and s (× exp(s_slope x)), x = log10 M − pivot."""
    import numpyro
    import numpyro.distributions as dist

    x = d["centres"] - pivot
    a = numpyro.sample("a", dist.Normal(0.0, 10.0))
    b = numpyro.sample("b", dist.Normal(0.0, 10.0))
    mu = a + b * x
    s = numpyro.sample("s", dist.HalfNormal(1.0))
    if scatter_slope:
        s = s * jnp.exp(numpyro.sample("s_slope", dist.Normal(0.0, 3.0)) * x)
    return mu, s


def _scaling_model(pivot, amplitude_scale, tilt_scale, uncertain, y_cut, scatter_slope, **d):
    import numpyro.distributions as dist

    log_w = _tinker_weights(d["centres"], pivot, amplitude_scale, tilt_scale)
    mu, s = _relation(d, pivot, scatter_slope)  # (C,), (C,) or ()
    log_rel = dist.Normal(mu[None, :], s).log_prob(d["y"][:, None])  # (N, C)
    if y_cut is None:
        _poisson_factor(d, log_w, _log_selection_cells(d, uncertain), extra_per_cell=log_rel)
    else:
        # the observable is the selection variable: S(M) = P(log obs >= y_cut | M) under the relation, and a
        # selected cluster's density p(y | M, sel) S(M) = p(y | M): no selection factor per cluster
        log_sel = jax.scipy.stats.norm.logsf(y_cut, mu, s)
        _poisson_factor(d, log_w, jnp.zeros_like(mu), log_sel_expected=log_sel, extra_per_cell=log_rel)


def _run_nuts(model, data, init, num_warmup, num_samples, num_chains, seed, progress_bar):
    """NUTS preconditioned by the Laplace approximation at the posterior mode (as ``fit(method="nuts")``'s default).

    The population posteriors are close to Gaussian in NumPyro's unconstrained space but badly scaled (a
    mass-function amplitude known to 3% beside selection fractions known to a logit unit), so NUTS's own warm-up,
    starting from the identity metric, spends most of its time in trees of hundreds of leapfrog steps. The
    covariance of the Laplace approximation (:func:`~numpyro_clustermass.inference.laplace.gaussian_at_mode`) is
    the fixed dense inverse mass matrix; warm-up adapts the step size only, and each chain starts at its own draw
    from the approximation so that R-hat compares chains started apart.
    """
    from numpyro.infer import MCMC, NUTS, init_to_value

    from numpyro_clustermass.inference.laplace import gaussian_at_mode, nuts_start, start_at_values

    k_init, k_start, k_run = jax.random.split(jax.random.key(int(seed)), 3)
    potential_fn, z0 = start_at_values(k_init, model, init, model_kwargs=data)
    lap = gaussian_at_mode(potential_fn, z0, refine_mode=True, absolute=True)
    init_params, nuts_kw = nuts_start(lap, k_start, num_chains)
    kernel = NUTS(model, init_strategy=init_to_value(values=init), target_accept_prob=0.85, **nuts_kw)
    # the data are arguments of the sampler's program, not constants in it: a fit of another catalogue of the
    # same size finds the program in the persistent compilation cache (jit_model_args)
    mcmc = MCMC(kernel, num_warmup=int(num_warmup), num_samples=int(num_samples), num_chains=int(num_chains),
                chain_method="vectorized", progress_bar=progress_bar, jit_model_args=True)
    mcmc.run(k_run, init_params=init_params, extra_fields=("diverging",), **data)
    samples = {k: np.asarray(v) for k, v in mcmc.get_samples(group_by_chain=True).items()}
    diverging = np.asarray(mcmc.get_extra_fields(group_by_chain=True)["diverging"])
    return samples, diverging


# ------------------------------------------------------------------------------------------------ result
@dataclasses.dataclass
class PopulationFit:
    """The result of :func:`mass_function` or :func:`scaling_relation`.

    Attributes
    ----------
    model : str
        ``"binned"``, ``"tinker08"`` or ``"scaling"``.
    edges : array (B + 1,)
        log10 M bin edges of :attr:`density`.
    samples : dict
        NUTS draws per parameter, shape ``(chains, draws, ...)``: ``log_n`` (binned, natural log of dn/dlog10M);
        ``log_A``, ``alpha`` (Tinker-shaped); ``a``, ``b``, ``s`` (scaling relation); ``selection`` when its
        uncertainty was marginalised.
    density_chains : array (chains, draws, B)
        dn/dlog10M per bin [(Mpc/h)^-3 dex^-1]; :attr:`density` flattens the chains.
    volume : float
        Survey volume, (Gpc/h)^3.
    naive : dict
        ``"point"`` and ``"mode"``: counts per bin of the posterior means and of the modes after reweighting to a
        flat prior; :meth:`naive_density` divides them by ``V Δ S``.
    selection_bins : array (B,)
        Mean selection per bin used for the naive estimates.
    diverging : array (chains, draws)
    members : tuple of PopulationFit
        For a pooled fit (:func:`pool`, or a sequence of posteriors passed to :func:`mass_function` or
        :func:`scaling_relation`), the fits of the members whose chains are concatenated here; else empty.
    """

    model: str
    edges: np.ndarray
    samples: dict
    density_chains: np.ndarray
    volume: float
    n_clusters: int
    naive: dict
    selection_bins: np.ndarray
    diverging: np.ndarray
    pivot: float = PIVOT_LOG_MASS
    observable: str | None = None
    data: dict | None = None
    members: tuple = ()

    @property
    def density(self) -> np.ndarray:
        """Posterior draws of dn/dlog10M per bin, shape (chains × draws, B), (Mpc/h)^-3 dex^-1."""
        c, d, b = self.density_chains.shape
        return self.density_chains.reshape(c * d, b)

    @property
    def centres(self) -> np.ndarray:
        return 0.5 * (self.edges[:-1] + self.edges[1:])

    def interval(self, prob: float = 0.68, name: str = "density") -> np.ndarray:
        """Equal-tailed interval of ``prob`` per bin (``name="density"``) or of a parameter; shape (2, ...)."""
        if not 0 < prob < 1:
            raise ValueError(f"prob must be in (0, 1); got {prob}")
        x = self.density if name == "density" else self.draws(name)
        return np.quantile(x, [0.5 - prob / 2, 0.5 + prob / 2], axis=0)

    def draws(self, name: str) -> np.ndarray:
        """Draws of one parameter with the chains flattened."""
        if name not in self.samples:
            raise KeyError(f"no parameter {name!r}; this fit has {sorted(self.samples)}")
        v = self.samples[name]
        return v.reshape((-1,) + v.shape[2:])

    def naive_density(self, which: str = "point") -> np.ndarray:
        """Histogram estimate counts / (V Δ S) per bin; ``which`` is ``"point"`` or ``"mode"``."""
        if which not in self.naive:
            raise ValueError(f"which must be one of {sorted(self.naive)}; got {which!r}")
        return self.naive[which] / (self.volume * 1e9 * np.diff(self.edges) * self.selection_bins)

    def to_arviz(self):
        """The draws as an ArviZ object (``InferenceData`` or ``DataTree``), with ``density`` per mass bin and the
        divergences in ``sample_stats``: ``az.summary(fit.to_arviz())`` gives R-hat and ESS.

        For a pooled fit the chains of all members are concatenated (attribute ``n_members``): their R-hat then
        measures how much the members disagree, not convergence; :meth:`rhat` reports the members' own."""
        from numpyro_clustermass.diagnostics import to_arviz

        post = {**self.samples, "density": self.density_chains}
        dims = {"density": ["mass_bin"]}
        coords = {"mass_bin": np.round(self.centres, 4)}
        if "log_n" in self.samples:
            dims["log_n"] = ["mass_bin"]
        return to_arviz(post, sample_stats={"diverging": self.diverging}, coords=coords, dims=dims,
                        attrs={"model": self.model, "volume_gpc3_h3": self.volume, "n_clusters": self.n_clusters,
                               "n_members": max(len(self.members), 1)})

    def rhat(self) -> dict:
        """Largest split R-hat per parameter (and of the density over bins), from ArviZ; for a pooled fit the
        largest over its members (each member's chains target that member's posterior)."""
        if self.members:
            per = [m.rhat() for m in self.members]
            return {k: max(r[k] for r in per) for k in per[0]}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import arviz as az
        r = az.rhat(self.to_arviz())
        out = {}
        for k in r.data_vars:
            out[str(k)] = float(np.nanmax(np.asarray(r[k])))
        return out

    def summary(self):
        """A pandas table per bin: the naive estimates, the posterior median and the 68/95% intervals."""
        import pandas as pd

        q = np.quantile(self.density, [0.025, 0.16, 0.5, 0.84, 0.975], axis=0)
        return pd.DataFrame({
            "lo": self.edges[:-1], "hi": self.edges[1:], "naive_point": self.naive_density("point"),
            "naive_mode": self.naive_density("mode"), "q2.5": q[0], "q16": q[1], "median": q[2], "q84": q[3],
            "q97.5": q[4],
        })

    def plot(self, truth="tinker08", ax=None, path=None, mass_range=None, residuals=True):
        """The inferred dn/dlog10M (median, 68% and 95% bands) against the truth and the naive histograms.

        ``truth`` is ``"tinker08"`` (the colossus function the mocks are drawn from, averaged per bin), an array
        per bin, a callable of log10 M, or None. With a truth and ``residuals=True`` (and no ``ax``), a panel
        below shows log10(estimate / truth) for the fit's median and bands and for both histograms, where a
        bias of a few hundredths of a dex shows (on the mass function's own axis, four decades tall, it does
        not). For a scaling fit the figure has a panel on the right with the relation. Returns the figure;
        saved to ``path`` when given.

        >>> import numpy as np
        >>> from numpyro_clustermass import population as pop
        >>> fit = pop.PopulationFit("binned", np.array([14.0, 14.5, 15.0]), {},
        ...                         np.full((1, 4, 2), 1e-5), 0.1, 100, {"point": np.array([500.0, 480.0]),
        ...                         "mode": np.array([520.0, 500.0])}, np.ones(2), np.zeros((1, 4), bool))
        >>> fig = fit.plot(truth=np.array([1e-5, 1e-5]))
        >>> len(fig.axes), fig.axes[1].get_ylabel()
        (2, 'log$_{10}$(estimate / truth)')
        >>> import matplotlib.pyplot as plt; plt.close(fig)
        """
        import matplotlib.pyplot as plt

        t = None
        if truth is not None:
            if isinstance(truth, str):
                if truth != "tinker08":
                    raise ValueError(f"truth must be 'tinker08', an array per bin, a callable or None; got {truth!r}")
                t = _bin_average(tinker08_density, self.edges)
            elif callable(truth):
                t = _bin_average(truth, self.edges)
            else:
                t = np.asarray(truth, dtype=np.float64)
                if t.shape != self.centres.shape:
                    raise ValueError(f"truth must have one value per bin ({self.centres.size}); got shape {t.shape}")
        scaling = self.model == "scaling" and self.data is not None
        a_res = a1 = None
        if ax is None:
            with_res = residuals and t is not None
            layout = [["mf", "rel"], ["res", "rel"]] if scaling else [["mf"], ["res"]]
            if not with_res:
                layout = layout[:1]
            fig, axd = plt.subplot_mosaic(layout, figsize=(5.5 * len(layout[0]), 5.6 if with_res else 4.2),
                                          height_ratios=[3, 1.3] if with_res else None)
            a0, a_res, a1 = axd["mf"], axd.get("res"), axd.get("rel")
            if a_res is not None:
                a_res.sharex(a0)
                a0.tick_params(labelbottom=False)
        else:
            axes = np.atleast_1d(ax)
            a0, fig = axes[0], axes[0].figure
            a1 = axes[1] if scaling and len(axes) > 1 else None
        x = self.centres
        lo95, hi95 = self.interval(0.95)
        lo68, hi68 = self.interval(0.68)
        median = np.median(self.density, 0)
        curves = [(a0, 1.0)] + ([(a_res, t)] if a_res is not None else [])
        for a, ref in curves:  # the mass function, then each estimate over the truth (log10)
            def y(v, a=a, ref=ref):
                return v if a is a0 else np.log10(np.maximum(v, 1e-300) / ref)
            a.fill_between(x, y(lo95), y(hi95), step="mid", alpha=0.2, color="C0", label="95%")
            a.fill_between(x, y(lo68), y(hi68), step="mid", alpha=0.4, color="C0", label="68%")
            a.step(x, y(median), where="mid", color="C0", label=f"population fit ({self.model})")
            with np.errstate(divide="ignore"):
                a.plot(x, y(self.naive_density("point")), "s", mfc="none", color="C1",
                       label="histogram of point estimates")
                a.plot(x, y(self.naive_density("mode")), "^", mfc="none", color="C2",
                       label="histogram of reweighted modes")
        if t is not None:
            a0.step(x, t, where="mid", color="k", ls="--", label="truth")
        a0.set_yscale("log")
        a0.set_ylabel(r"$dn/d\log_{10}M$ [$(h/\mathrm{Mpc})^3$ dex$^{-1}$]")
        xlabel = r"$\log_{10} M_{200c}$ [$M_\odot/h$]"
        if a_res is not None:
            a_res.axhline(0.0, color="k", ls="--", lw=1)
            a_res.set_ylabel("log$_{10}$(estimate / truth)", fontsize="small")
            a_res.set_ylim(-0.3, 0.3)  # the histograms of the few heaviest halos leave it; the fit's bands rarely do
            a_res.set_xlabel(xlabel)
        else:
            a0.set_xlabel(xlabel)
        if mass_range is not None:
            a0.set_xlim(*mass_range)
        a0.legend(fontsize=7)
        if a1 is not None:
            m, yv = self.data["point"], self.data["y"]
            a1.plot(m, yv, ".", ms=1, alpha=0.3, color="0.5", label="clusters (posterior mean mass)")
            xs = np.linspace(self.edges[0], self.edges[-1], 50)
            rel = self.draws("a")[:, None] + self.draws("b")[:, None] * (xs - self.pivot)
            for p, al in ((0.95, 0.2), (0.68, 0.4)):
                q = np.quantile(rel, [0.5 - p / 2, 0.5 + p / 2], axis=0)
                a1.fill_between(xs, q[0], q[1], alpha=al, color="C3")
            a1.plot(xs, np.median(rel, 0), color="C3", label="relation (median, 68/95%)")
            a1.set_xlabel(r"$\log_{10} M$")
            a1.set_ylabel(f"log10 {self.observable}")
            a1.legend(fontsize=7)
        fig.tight_layout()
        if path is not None:
            fig.savefig(path, dpi=120)
        return fig


def pool(fits) -> PopulationFit:
    """Pool population fits of one survey made with different networks: the population posterior marginalised
    over the network, with equal weights.

    One trained network is one draw of its training run (mock, initialisation, batches); its likelihoods carry
    errors of 0.01–0.1 dex that repeat in every cluster, which a fit with that network alone treats as known and
    which the binned mass function amplifies (docs/population.md, Training seeds). Fitting the same survey with the
    posteriors of several independently trained networks and concatenating the draws carries that spread into the
    intervals. Each member's own convergence is kept: :meth:`PopulationFit.rhat` reports the largest over members.

    Parameters
    ----------
    fits : sequence of PopulationFit
        Fits of the same model, bins, volume and parameters, with the same number of draws per chain (as
        :func:`mass_function` and :func:`scaling_relation` give for one set of NUTS settings). A fit that is itself
        pooled contributes its members.

    Returns
    -------
    PopulationFit
        Chains of all members concatenated (``samples``, ``density_chains``, ``diverging``); ``naive`` and
        ``selection_bins`` the members' averages; ``members`` the member fits.

    Examples
    --------
    ``mass_function([fit_a.posterior(survey), fit_b.posterior(survey)], volume=0.1)`` fits with each and calls
    this; by hand::

        res = pool([mass_function(f.posterior(survey), volume=0.1, seed=k) for k, f in enumerate(fits)])
        res.interval(0.68)
    """
    fits = list(fits)
    if not fits or not all(isinstance(f, PopulationFit) for f in fits):
        raise TypeError("pool takes a non-empty sequence of PopulationFit")
    members = tuple(m for f in fits for m in (f.members or (f,)))
    first = members[0]
    for f in members[1:]:
        same = (f.model == first.model and f.observable == first.observable and np.array_equal(f.edges, first.edges)
                and f.volume == first.volume and f.pivot == first.pivot and set(f.samples) == set(first.samples))
        if not same:
            raise ValueError("pool: the fits must share the model, observable, edges, volume, pivot and parameters")
        if f.density_chains.shape[1] != first.density_chains.shape[1]:
            raise ValueError(f"pool: the fits must have the same number of draws per chain (equal weights); got "
                             f"{[m.density_chains.shape[1] for m in members]}")
    if len(members) == 1:
        return first
    return dataclasses.replace(
        first,
        samples={k: np.concatenate([np.asarray(m.samples[k]) for m in members]) for k in first.samples},
        density_chains=np.concatenate([m.density_chains for m in members]),
        diverging=np.concatenate([np.asarray(m.diverging) for m in members]),
        naive={k: np.mean([m.naive[k] for m in members], axis=0) for k in first.naive},
        selection_bins=np.mean([m.selection_bins for m in members], axis=0),
        n_clusters=int(round(np.mean([m.n_clusters for m in members]))),
        members=members,
    )


def _posterior_members(posterior):
    """The posteriors of a list or tuple of MassPosterior (one per network), else None."""
    if isinstance(posterior, (list, tuple)):
        if not posterior or not all(isinstance(p, MassPosterior) for p in posterior):
            raise TypeError("posterior must be a MassPosterior or a non-empty list of MassPosterior (one per network)")
        return list(posterior)
    return None


def _fit_members(fn, posteriors, args):
    """``pool`` of ``fn`` on each posterior (seeds ``seed + k``), the simulated selection estimated once."""
    if isinstance(args.get("selection"), str) and args["selection"] == "simulate":
        args = {**args, "selection": estimate_selection()}
    return pool([fn(p, **{**args, "seed": args["seed"] + k}) for k, p in enumerate(posteriors)])


# ------------------------------------------------------------------------------------------------ public calls
def _check_common(posterior, volume, num_warmup, num_samples, num_chains):
    if not isinstance(posterior, MassPosterior):
        raise TypeError(f"posterior must be a MassPosterior; got {type(posterior).__name__}")
    if isinstance(volume, bool) or not isinstance(volume, (int, float, np.floating, np.integer)) or not volume > 0:
        raise ValueError(f"volume must be a positive number in (Gpc/h)^3 (as mock_catalog takes it); got {volume!r}")
    for name, v in (("num_warmup", num_warmup), ("num_samples", num_samples), ("num_chains", num_chains)):
        if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
            raise ValueError(f"{name} must be a positive int; got {v!r}")


def _model_range(posterior, edges):
    """The model's mass range: the edges' span, clipped to where the likelihoods are defined (the carried prior's
    support and the grid). A training prior ends at the extreme training masses, a little inside the mock's range,
    so a clip of up to ``_MAX_CLIP`` dex is silent; more warns; no overlap raises."""
    lo, hi = float(edges[0]), float(edges[-1])
    plo, phi = posterior.prior.support
    g = np.asarray(posterior.grid, dtype=np.float64)
    dx = (g[-1] - g[0]) / (g.size - 1)
    clo, chi = max(lo, plo, g[0] - dx / 2), min(hi, phi, g[-1] + dx / 2)
    if not chi - clo > dx:
        raise ValueError(
            f"the edges [{lo}, {hi}] do not overlap where the likelihoods are defined: the posterior's carried prior "
            f"{posterior.prior!r} has support [{plo:.4f}, {phi:.4f}] and the grid spans [{g[0]:.4f}, {g[-1]:.4f}]"
        )
    if clo - lo > _MAX_CLIP or hi - chi > _MAX_CLIP:
        warnings.warn(
            f"the population model is limited to [{clo:.4f}, {chi:.4f}] (edges [{lo}, {hi}]): outside it the carried "
            f"prior {posterior.prior!r} is zero, so the likelihoods are undefined there; the outer bins' densities "
            "refer to the part inside", RuntimeWarning, stacklevel=3)
    return clo, chi


def _check_edges(edges):
    e = DEFAULT_EDGES if edges is None else np.asarray(edges, dtype=np.float64)
    if e.ndim != 1 or e.size < 2 or np.any(~np.isfinite(e)) or np.any(np.diff(e) <= 0):
        raise ValueError(f"edges must be a 1-D, finite, strictly increasing array of at least 2 log10 masses; got {e}")
    return e


def _naive_counts(posterior, edges, lo, hi):
    from numpyro_clustermass.priors import Flat

    point = np.histogram(posterior.mean(), bins=edges)[0].astype(float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        flat = posterior.reweight(Flat(lo, hi), on_empty="warn")
    mode = np.histogram(flat.mode(), bins=edges)[0].astype(float)
    return {"point": point, "mode": mode}


def _log_a_start(prep: _Prepared, log_v: float, n: int) -> float:
    """log A where the expected number of clusters at alpha = 0 equals the number observed (NUTS's start)."""
    s = 1.0 if prep.sel is None else np.maximum(prep.sel.fraction[prep.sel_index], 1e-6)
    return float(math.log(n) - log_v - math.log(np.sum(np.exp(prep.log_t) * s)))


def mass_function(
    posterior: MassPosterior | list,
    volume: float,
    edges=None,
    selection="simulate",
    *,
    catalog=None,
    projection=None,
    model: str = "binned",
    smoothness: float = 0.2,
    order: int = 2,
    pivot: float = PIVOT_LOG_MASS,
    amplitude_scale: float = 2.0,
    tilt_scale: float = 1.0,
    cell_width: float = 0.05,
    selection_uncertainty: bool = True,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    seed: int = 0,
    progress_bar: bool = False,
) -> PopulationFit:
    """Infer the halo mass function dn/dlog10M from per-cluster posteriors by NUTS.

    Parameters
    ----------
    posterior : MassPosterior or list of MassPosterior
        One density per selected cluster of the survey; its :attr:`~MassPosterior.prior` (the training prior, or
        the prior it was reweighted to) is divided out. A list (the same survey's posteriors from independently
        trained networks) is fitted member by member (seeds ``seed + k``) and the draws pooled (:func:`pool`).
    volume : float
        Survey volume in (Gpc/h)^3, as :func:`~numpyro_clustermass.simulate.mock_catalog` takes it.
    edges : array, optional
        log10 M bin edges of the result (default :data:`DEFAULT_EDGES`, 0.1 dex over 10^13.5–10^15.3). They
        also bound the population model: n(M) = 0 outside ``[edges[0], edges[-1]]``, so they must span the
        range where the survey's clusters can be and lie inside the carried prior's support.
    selection : "simulate", Selection, callable, array (G,) or None
        ``S(M) = p(selected | M)``: estimated from the simulator (:func:`estimate_selection`, ``Ngal >= 10``),
        given, or none.
    catalog : Catalog, optional
        The catalogue the posterior was computed on, to keep one line of sight per halo; without it every
        cluster is taken to be a different halo.
    projection : None, int or "first"
        With several lines of sight per halo in ``catalog`` (they are the same halo), which to use: ``0`` keeps
        rows with ``los == 0``; ``"first"`` the first row of each ``halo_id``. None raises in that case.
    model : {"binned", "tinker08"}
        Binned log n with a Gaussian random-walk prior, or ``A n_T08(M) 10^(α (log M − pivot))``.
    smoothness : float
        Standard deviation (natural log) of the random walk's steps (``order`` 1) or of its second differences
        (``order`` 2, default) per bin. ``order=0`` removes the prior (a flat prior on each log n). The default
        0.2 is about twice the largest second difference of Tinker08's ln n per 0.1-dex bin below 10^15.3 (0.01 at
        10^13.5 to 0.12 at 10^15.2): loose for the mass function, tight for the bin-to-bin ringing that the
        deconvolution of 0.1–0.2 dex wide posteriors otherwise shows (docs/population.md, Validation). With
        other bin widths scale it as the width squared.
    order : {0, 1, 2}
    pivot, amplitude_scale, tilt_scale : float
        Tinker-shaped model: pivot of the tilt; prior standard deviations of ``log A`` (natural log) and ``α``.
    cell_width : float
        Width (dex) of the cells on which the grid integrals are collected (the tilt is evaluated at their
        centres; cells are refined by ``edges`` and the selection's edges).
    selection_uncertainty : bool
        For a :class:`Selection`, marginalise over each bin's fraction (Beta(k + 1, n − k + 1)); else use k / n.
    num_warmup, num_samples, num_chains, seed, progress_bar
        NUTS settings (chains are vectorised; the fixed dense metric is the Laplace approximation's covariance at
        the posterior mode, each chain starts at its own draw from it; warm-up adapts the step size).

    Returns
    -------
    PopulationFit
        ``.density`` (posterior draws of dn/dlog10M per bin), ``.to_arviz()``, ``.rhat()``, ``.plot()``.

    Examples
    --------
    See the module docstring; on a mock survey::

        cat = mock_catalog(volume=0.1, seed=1, n_los=1)
        res = mass_function(fit_.posterior(cat), volume=0.1, catalog=cat)
        res.plot(path="mass_function.png")
        # marginalised over the training run: networks trained with other seeds, draws pooled (see pool)
        res = mass_function([f.posterior(cat) for f in fits], volume=0.1, catalog=cat)
    """
    members = _posterior_members(posterior)
    if members is not None:
        return _fit_members(mass_function, members, {k: v for k, v in locals().items()
                                                     if k not in ("posterior", "members")})
    _check_common(posterior, volume, num_warmup, num_samples, num_chains)
    if model not in ("binned", "tinker08"):
        raise ValueError(f"model must be 'binned' or 'tinker08'; got {model!r}")
    if order not in (0, 1, 2):
        raise ValueError(f"order must be 0, 1 or 2; got {order!r}")
    if not (np.isfinite(smoothness) and smoothness > 0):
        raise ValueError(f"smoothness must be a positive number (natural log per bin); got {smoothness!r}")
    edges = _check_edges(edges)
    mask = _one_projection(catalog, projection, len(posterior))
    post = posterior if mask.all() else posterior.select(mask)
    lo, hi = _model_range(post, edges)
    base_fn = None if model == "binned" else tinker08_density
    prep = _prepare(post, lo, hi, edges, selection, base_fn, cell_width)
    centres = 0.5 * (prep.cells[:-1] + prep.cells[1:])
    cell_bin = np.clip(np.searchsorted(edges, centres, side="right") - 1, 0, edges.size - 2)
    log_v = math.log(float(volume) * 1e9)
    naive = _naive_counts(post, edges, lo, hi)
    width = np.diff(edges)
    if model == "binned":
        counts = np.maximum(naive["mode"], 0.5)
        init = {"log_n": jnp.asarray(np.log(counts / (float(volume) * 1e9 * width * np.maximum(prep.s_bins, 1e-3))))}
        fn = partial(_binned_model, edges.size - 1, order, float(smoothness), bool(selection_uncertainty))
    else:
        init = {"log_A": jnp.asarray(_log_a_start(prep, log_v, len(post))), "alpha": jnp.asarray(0.0)}
        fn = partial(_tinker_model, float(pivot), float(amplitude_scale), float(tilt_scale),
                     bool(selection_uncertainty))
    if prep.sel is not None and selection_uncertainty:
        init["selection"] = jnp.asarray(np.clip(prep.sel.fraction, 1e-3, 1 - 1e-6))
    data = _model_data(prep, log_v, centres, cell_bin)
    samples, div = _run_nuts(fn, data, init, num_warmup, num_samples, num_chains, seed, progress_bar)
    if model == "binned":
        dens = np.exp(samples["log_n"])
    else:
        dens = _tinker_bins(samples, prep, centres, cell_bin, edges, pivot)
    return PopulationFit(model, edges, samples, dens, float(volume), len(post), naive, prep.s_bins, div, pivot)


def _tinker_bins(samples, prep, centres, cell_bin, edges, pivot):
    """dn/dlog10M averaged per output bin for each draw of (log A, α): Σ_cells ∫ n_model / Δ."""
    log_w = samples["log_A"][..., None] + samples["alpha"][..., None] * _LN10 * (centres - pivot)
    per_cell = np.exp(log_w + prep.log_tn)  # (c, d, C): ∫_cell A n_T08 10^(α ...) dlogM
    out = np.zeros(per_cell.shape[:2] + (edges.size - 1,))
    for b in range(edges.size - 1):
        out[..., b] = per_cell[..., cell_bin == b].sum(-1) / (edges[b + 1] - edges[b])
    return out


def scaling_relation(
    posterior: MassPosterior | list,
    catalog,
    observable: str = "sigma_v",
    *,
    volume: float,
    edges=None,
    selection="simulate",
    feature_names=None,
    projection=None,
    pivot: float = PIVOT_LOG_MASS,
    scatter_slope: bool = False,
    amplitude_scale: float = 2.0,
    tilt_scale: float = 1.0,
    ngal_min: int = 10,
    cell_width: float = 0.02,
    selection_uncertainty: bool = True,
    num_warmup: int = 500,
    num_samples: int = 500,
    num_chains: int = 2,
    seed: int = 0,
    progress_bar: bool = False,
) -> PopulationFit:
    """Fit ``log10 obs = a + b (log10 M − pivot) + N(0, s²)`` with each cluster's mass latent.

    With ``scatter_slope=True`` the scatter is ``s exp(s_slope (log10 M − pivot))`` (a dispersion measured from
    fewer galaxies at low mass scatters more).

    The mass of cluster ``i`` has the population prior (a Tinker-shaped ``n(M) S(M)`` with free ``log A`` and
    ``α``, fitted jointly) times its likelihood ``L_i(M)`` from the posterior, and is marginalised exactly on
    cells of ``cell_width`` dex. The posterior must come from a fit that did not use the observable:
    for ``sigma_v`` neither ``Logsigv`` nor ``v_std`` (the same dispersion), for richness not ``LogNgal``
    (``v_mean``, whose spread scales with σ/√Ngal, carries a little of σ_v too: leave it out as well). It is
    assumed that the remaining features and the observable are independent at fixed mass.

    For ``observable="richness"`` the ``Ngal >= ngal_min`` cut acts on the observable itself, so the selection is
    the relation's own ``P(log10 Ngal >= log10 ngal_min | M)`` (``selection`` is then ignored); this treats
    log10 Ngal as continuous and the remaining features as independent of Ngal at fixed mass (not validated).

    The relation must describe the data: with the masses latent, a misspecified scatter is absorbed by moving
    masses, and the intervals then miss the truth by many standard deviations (measured in docs/population.md).
    In the mock universe the observed ``sigv`` is not linear in log M (interlopers dominate it at low mass) and at
    fixed mass it correlates with the interloper fraction, hence with ``Ngal``; the interloper-free
    ``"sigv_members"`` (a truth column of the mock) is a near power law, but the log of a dispersion of a few
    members is skewed and heavy-tailed. The calibration of this step is therefore measured on an observable drawn
    from the relation itself (``benchmarks/population_sbc.py``).

    Parameters
    ----------
    posterior : MassPosterior or list of MassPosterior
        A list is fitted member by member and pooled, as in :func:`mass_function`.
    catalog : Catalog
        The catalogue the posterior was computed on (row for row); holds the observable's column.
    observable : {"sigma_v", "richness", "sigv_members"} (or the column names "sigv", "Ngal")
    volume : float
        Survey volume in (Gpc/h)^3.
    edges : array, optional
        Output bins of the population's density and the model's mass range (default :data:`DEFAULT_EDGES`).
    selection : as in :func:`mass_function`
    feature_names : sequence of str, optional
        The features the posterior's fit used; default ``posterior.meta["feature_names"]`` (set by
        ``Fit.posterior``). Without either, this raises: double counting cannot be ruled out.
    projection : None, int or "first"
        As in :func:`mass_function`.
    scatter_slope : bool
        Add ``s_slope`` (d ln s / d log10 M, prior N(0, 3)) to the relation.
    pivot, amplitude_scale, tilt_scale, ngal_min, cell_width, selection_uncertainty, num_warmup, num_samples,
    num_chains, seed, progress_bar
        As in :func:`mass_function`; priors ``a, b ~ N(0, 10)``, ``s ~ HalfNormal(1)`` (dex).

    Returns
    -------
    PopulationFit
        ``samples["a"]``, ``["b"]``, ``["s"]``, ``["log_A"]``, ``["alpha"]`` (and ``["s_slope"]``);
        ``.plot()`` adds the relation.

    Examples
    --------
    ::

        f = fit(MDN(feature_names=tuple(n for n in FEATURE_NAMES if n not in ("Logsigv", "v_std", "v_mean"))), train)
        res = scaling_relation(f.posterior(survey), survey, "sigma_v", volume=0.1)
        res.interval(0.68, "b")
    """
    members = _posterior_members(posterior)
    if members is not None:
        return _fit_members(scaling_relation, members, {k: v for k, v in locals().items()
                                                        if k not in ("posterior", "members")})
    _check_common(posterior, volume, num_warmup, num_samples, num_chains)
    if observable not in OBSERVABLES:
        raise ValueError(f"observable must be one of {sorted(OBSERVABLES)}; got {observable!r}")
    column, forbidden = OBSERVABLES[observable]
    names = feature_names if feature_names is not None else posterior.meta.get("feature_names")
    if names is None:
        raise ValueError(
            "scaling_relation cannot tell which features the posterior was computed from (its meta has no "
            "feature_names); pass feature_names=fit.feature_names so that double counting of the observable "
            f"({column}) can be ruled out"
        )
    used = [n for n in forbidden if n in tuple(names)]
    if used:
        raise ValueError(
            f"the posterior used {used} as input features, which carry the observable {observable!r} itself: fitting "
            f"its relation to mass would count the data twice. Train the mass model without {list(forbidden)} "
            "(e.g. MDN(feature_names=...)) and pass that posterior"
        )
    if catalog is None or column not in catalog.colnames:
        raise ValueError(f"catalog must be the posterior's catalogue with a {column!r} column")
    edges = _check_edges(edges)
    mask = _one_projection(catalog, projection, len(posterior))
    post = posterior if mask.all() else posterior.select(mask)
    obs = np.asarray(catalog[column], dtype=np.float64)[mask]
    if np.any(~np.isfinite(obs)) or np.any(obs <= 0):
        raise ValueError(f"{column} must be positive and finite for every cluster used")
    y = np.log10(obs)
    lo, hi = _model_range(post, edges)
    is_sel_var = column == "Ngal"
    prep = _prepare(post, lo, hi, edges, None if is_sel_var else selection, tinker08_density, cell_width)
    centres = 0.5 * (prep.cells[:-1] + prep.cells[1:])
    cell_bin = np.clip(np.searchsorted(edges, centres, side="right") - 1, 0, edges.size - 2)
    log_v = math.log(float(volume) * 1e9)
    naive = _naive_counts(post, edges, lo, hi)
    point = post.mean()
    b0, a0 = np.polyfit(point - pivot, y, 1)
    s0 = float(np.std(y - (a0 + b0 * (point - pivot))))
    init = {"log_A": jnp.asarray(_log_a_start(prep, log_v, len(post))), "alpha": jnp.asarray(0.0),
            "a": jnp.asarray(a0), "b": jnp.asarray(b0),
            "s": jnp.asarray(max(s0, 1e-3))}
    if scatter_slope:
        init["s_slope"] = jnp.asarray(0.0)
    if prep.sel is not None and selection_uncertainty:
        init["selection"] = jnp.asarray(np.clip(prep.sel.fraction, 1e-3, 1 - 1e-6))
    y_cut = math.log10(ngal_min) if is_sel_var else None
    fn = partial(_scaling_model, float(pivot), float(amplitude_scale), float(tilt_scale), bool(selection_uncertainty),
                 y_cut, bool(scatter_slope))
    data = _model_data(prep, log_v, centres, cell_bin, y=y)
    samples, div = _run_nuts(fn, data, init, num_warmup, num_samples, num_chains, seed, progress_bar)
    dens = _tinker_bins(samples, prep, centres, cell_bin, edges, pivot)
    return PopulationFit("scaling", edges, samples, dens, float(volume), len(post), naive, prep.s_bins, div, pivot,
                         observable=observable, data={"point": point, "y": y})
