"""numpyro_clustermass: galaxy-cluster dynamical masses with probabilistic neural networks in NumPyro.

The data flow is one way: simulate (or load) -> catalog -> features -> fit -> MassPosterior -> reweight ->
metrics, plots, ArviZ.

Examples
--------
>>> import numpyro_clustermass as ncm
>>> cat = ncm.simulate.mock_catalog(volume=0.02, seed=0)                       # doctest: +SKIP
>>> train, test = cat.split(test_fraction=0.2, seed=1)                          # doctest: +SKIP
>>> fit = ncm.fit(ncm.MDN(num_components=16, hidden=(128, 128, 64)), train)    # doctest: +SKIP
>>> post = fit.posterior(test).reweight(ncm.priors.Flat(13.5, 15.3))           # doctest: +SKIP
>>> ncm.metrics.binned(post, test)                                              # doctest: +SKIP
"""

from numpyro_clustermass import _compilation_cache

_compilation_cache.configure_default()  # before anything compiles: see compilation_cache_dir()

from numpyro_clustermass import (  # noqa: E402
    bnn,
    catalog,
    diagnostics,
    estimators,
    features,
    flows,
    grid,
    inference,
    metrics,
    models,
    nets,
    posterior,
    priors,
    scaling,
    shift,
    simulate,
    weight_priors,
)
from numpyro_clustermass._compilation_cache import compilation_cache_dir  # noqa: E402
from numpyro_clustermass.catalog import Catalog, CatalogError, read_catalog, write_catalog
from numpyro_clustermass.diagnostics import ConvergenceError, ConvergenceWarning
from numpyro_clustermass.estimators import MDN, MSE, Flow, ModelEstimator
from numpyro_clustermass.inference import (
    BBBOptions,
    CovariateShiftWarning,
    EnsembleOptions,
    Fit,
    FitDivergedError,
    FitFileError,
    FitInfo,
    FitInterrupted,
    FitWarning,
    LaplaceOptions,
    MapOptions,
    MCDropoutOptions,
    NUTSOptions,
    available_methods,
    fit,
    load,
    register_method,
)
from numpyro_clustermass.posterior import MassPosterior
from numpyro_clustermass.scaling import MassObservableRelation

__version__ = "0.1.0"

__all__ = [
    "MDN",
    "Flow",
    "MSE",
    "BBBOptions",
    "Catalog",
    "CatalogError",
    "EnsembleOptions",
    "Fit",
    "FitInfo",
    "ConvergenceError",
    "ConvergenceWarning",
    "FitDivergedError",
    "FitFileError",
    "FitInterrupted",
    "FitWarning",
    "CovariateShiftWarning",
    "LaplaceOptions",
    "MCDropoutOptions",
    "MapOptions",
    "NUTSOptions",
    "MassObservableRelation",
    "MassPosterior",
    "ModelEstimator",
    "available_methods",
    "bnn",
    "catalog",
    "compilation_cache_dir",
    "diagnostics",
    "estimators",
    "features",
    "fit",
    "grid",
    "inference",
    "load",
    "metrics",
    "models",
    "nets",
    "plots",
    "posterior",
    "priors",
    "read_catalog",
    "register_method",
    "scaling",
    "simulate",
    "weight_priors",
    "write_catalog",
]


def __getattr__(name: str):
    """``ncm.plots`` is imported on first use: Matplotlib takes 0.3 s to import, and a fit, a posterior or the
    CLI's ``--help`` does not need it."""
    if name == "plots":
        import importlib

        return importlib.import_module(f"{__name__}.plots")
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    """The module's names with ``plots`` among them before its first use (tab completion lists it)."""
    return sorted(set(globals()) | {"plots"})
