"""The mock universe of ``MOCK.md``: halos, member galaxies, interlopers and projected cylinders.

Examples
--------
>>> import numpyro_clustermass as ncm
>>> cat = ncm.simulate.mock_catalog(volume=0.01, seed=0)      # natural (Tinker08) masses
>>> flat = ncm.simulate.mock_catalog(mass_sampling="flat", n_halos=2000, seed=1)
"""

from numpyro_clustermass.simulate.mock import mock_catalog
from numpyro_clustermass.simulate.physics import MockPhysics, expected_halo_count, mass_function_table

__all__ = ["mock_catalog", "MockPhysics", "expected_halo_count", "mass_function_table"]
