"""Inference: one entry point, :func:`fit`, and a registry of methods (one file per method family).

Registered here: ``"map"`` (:mod:`numpyro_clustermass.inference.svi`), ``"mc_dropout"``, ``"ensemble"``, ``"bbb"``,
``"laplace"`` and ``"nuts"``, each with its options class (:class:`MapOptions`, :class:`MCDropoutOptions`,
:class:`EnsembleOptions`, :class:`BBBOptions`, :class:`LaplaceOptions`, :class:`NUTSOptions`: frozen, validated
dataclasses, :mod:`~numpyro_clustermass.inference.options`). A new method is one new module whose factory builds an
:class:`IterativeMethod` (trained by epochs) or a :class:`OneShotMethod` (runs once) and calls
:func:`register_method` with its options class; import it below to register it.

The layout: :mod:`~numpyro_clustermass.inference.protocol` (the method types, the registry, the errors),
:mod:`~numpyro_clustermass.inference.epochs` (the epoch driver and the cache of compiled methods),
:mod:`~numpyro_clustermass.inference.fitting` (:func:`fit`, :class:`Fit`, :class:`FitInfo`, :func:`load`),
:mod:`~numpyro_clustermass.inference.fitfile` (the file format), and one module per method family.

Examples
--------
>>> from numpyro_clustermass.inference import available_methods, options_class
>>> "map" in available_methods()
True
>>> options_class("bbb")(init_scale=0.02).init_scale
0.02
"""

from numpyro_clustermass.inference.epochs import EarlyStopping, clear_cache, run_epochs
from numpyro_clustermass.inference.fitfile import FitFileError
from numpyro_clustermass.inference.fitting import Fit, FitInfo, fit, load
from numpyro_clustermass.inference.options import MethodOptions, UnknownOptionError
from numpyro_clustermass.inference.protocol import (
    CovariateShiftWarning,
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
    build_method,
    get_method,
    make_options,
    options_class,
    register_method,
    standardize_model,
)
from numpyro_clustermass.inference import svi  # noqa: F401  (registers "map")
from numpyro_clustermass.inference import bbb, ensemble, laplace, mc_dropout, nuts  # noqa: F401,E402  (register)
from numpyro_clustermass.inference.bbb import BBBOptions  # noqa: E402
from numpyro_clustermass.inference.ensemble import EnsembleOptions  # noqa: E402
from numpyro_clustermass.inference.laplace import LaplaceOptions  # noqa: E402
from numpyro_clustermass.inference.mc_dropout import MCDropoutOptions  # noqa: E402
from numpyro_clustermass.inference.nuts import NUTSOptions  # noqa: E402
from numpyro_clustermass.inference.svi import MapOptions, MapStartOptions  # noqa: E402

__all__ = [
    "BBBOptions",
    "EarlyStopping",
    "EnsembleOptions",
    "Fit",
    "FitDivergedError",
    "FitFileError",
    "FitInfo",
    "FitInterrupted",
    "FitWarning",
    "CovariateShiftWarning",
    "InferenceMethod",
    "IterativeMethod",
    "LaplaceOptions",
    "MCDropoutOptions",
    "MapOptions",
    "MapStartOptions",
    "MethodOptions",
    "NUTSOptions",
    "OneShotMethod",
    "RunResult",
    "TrainingData",
    "TrainingPlan",
    "UnknownOptionError",
    "available_methods",
    "build_method",
    "clear_cache",
    "fit",
    "get_method",
    "load",
    "make_options",
    "options_class",
    "register_method",
    "run_epochs",
    "standardize_model",
]
