"""Inference: one entry point, :func:`fit`, and a registry of methods (one file per method family).

Registered here: ``"map"`` (:mod:`numpyro_clustermass.inference.svi`), ``"mc_dropout"``, ``"ensemble"``, ``"bbb"``,
``"laplace"`` and ``"nuts"``. A new method is one new module whose factory builds an :class:`IterativeMethod`
(trained by epochs) or a :class:`OneShotMethod` (runs once) and calls :func:`register_method`; import it below to
register it.

The layout: :mod:`~numpyro_clustermass.inference.protocol` (the method types, the registry, the errors),
:mod:`~numpyro_clustermass.inference.epochs` (the epoch driver and the cache of compiled methods),
:mod:`~numpyro_clustermass.inference.fitting` (:func:`fit`, :class:`Fit`, :func:`load`),
:mod:`~numpyro_clustermass.inference.fitfile` (the file format), and one module per method family.

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
    IterativeMethod,
    OneShotMethod,
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
    "IterativeMethod",
    "OneShotMethod",
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
