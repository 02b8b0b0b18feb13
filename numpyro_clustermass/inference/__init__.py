"""Inference: one entry point, :func:`fit`, and a registry of methods (one file per method family).

Registered here: ``"map"`` (:mod:`numpyro_clustermass.inference.svi`). A new method is one new module that
builds an :class:`InferenceMethod` and calls :func:`register_method`; import it below to register it.

Example
-------
>>> from numpyro_clustermass.inference import available_methods
>>> "map" in available_methods()
True
"""

from numpyro_clustermass.inference.base import (
    EarlyStopping,
    Fit,
    FitDivergedError,
    FitFileError,
    FitInterrupted,
    FitWarning,
    InferenceMethod,
    RunResult,
    TrainingData,
    TrainingPlan,
    available_methods,
    clear_cache,
    fit,
    get_method,
    load,
    register_method,
    run_epochs,
    standardize_model,
)
from numpyro_clustermass.inference import svi  # noqa: F401  (registers "map")
from numpyro_clustermass.inference import bbb, ensemble, laplace, mc_dropout, nuts  # noqa: F401,E402  (register)

__all__ = [
    "EarlyStopping",
    "Fit",
    "FitDivergedError",
    "FitFileError",
    "FitInterrupted",
    "FitWarning",
    "InferenceMethod",
    "RunResult",
    "TrainingData",
    "TrainingPlan",
    "available_methods",
    "clear_cache",
    "fit",
    "get_method",
    "load",
    "register_method",
    "run_epochs",
    "standardize_model",
]
