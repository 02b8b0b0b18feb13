"""Inference: one entry point, :func:`fit`, and a registry of methods (one file per method family).

Registered here: ``"map"`` (:mod:`numpyro_clustermass.inference.svi`). A new method is one new module that
builds an :class:`InferenceMethod` and calls :func:`register_method`; import it below to register it.

Example
-------
>>> from numpyro_clustermass.inference import available_methods
>>> "map" in available_methods()
True
"""

from numpyro_clustermass.inference.epochs import EarlyStopping, clear_cache, run_epochs
from numpyro_clustermass.inference.fitfile import FitFileError
from numpyro_clustermass.inference.fitting import Fit, fit, load
from numpyro_clustermass.inference.protocol import (
    FitDivergedError,
    FitInterrupted,
    FitWarning,
    InferenceMethod,
    RunResult,
    TrainingData,
    TrainingPlan,
    available_methods,
    get_method,
    register_method,
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
