"""numpyro_clustermass: galaxy-cluster dynamical masses with probabilistic neural networks in NumPyro.

The data flow is one way: simulate (or load) -> catalog -> features -> fit -> MassPosterior -> reweight ->
metrics, plots, ArviZ. See ``docs/`` and the README for the lecture this package grows from.
"""

from numpyro_clustermass import catalog, features, simulate
from numpyro_clustermass.catalog import Catalog, CatalogError, read_catalog, write_catalog

__version__ = "0.1.0"

__all__ = [
    "Catalog",
    "CatalogError",
    "catalog",
    "features",
    "read_catalog",
    "simulate",
    "write_catalog",
]
