"""The mock universe of ``MOCK.md``: halos, member galaxies, interlopers and projected cylinders.

Examples
--------
>>> import numpyro_clustermass as ncm
>>> cat = ncm.simulate.mock_catalog(volume=0.01, seed=0)      # natural (Tinker08) masses
>>> flat = ncm.simulate.mock_catalog(mass_sampling="flat", n_halos=2000, seed=1)
>>> family = ncm.simulate.mock_catalog(volume=0.01, seed=0, nuisance="prior")   # one drawn universe
>>> sorted(ncm.simulate.NUISANCE_PARAMETERS)[:3]
['alpha_sat', 'c_gal', 'clustered_excess']
"""

from numpyro_clustermass.simulate.mock import mock_catalog
from numpyro_clustermass.simulate.nuisance import NUISANCE_PARAMETERS, SUB_VOLUME, NuisanceParameter
from numpyro_clustermass.simulate.physics import MockPhysics, expected_halo_count, mass_function_table

__all__ = [
    "mock_catalog",
    "MockPhysics",
    "NUISANCE_PARAMETERS",
    "NuisanceParameter",
    "SUB_VOLUME",
    "expected_halo_count",
    "mass_function_table",
]
