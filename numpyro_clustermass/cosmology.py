"""Cosmology for the mocks and the priors: MDPL2's Planck 2013 parameters at the lecture's redshift.

colossus keeps one global "current" cosmology. :func:`use_cosmology` sets it for the duration of a
``with`` block and restores whatever was set before, so that this package never changes a user's global
colossus state behind their back.

Examples
--------
>>> from numpyro_clustermass.cosmology import use_cosmology, DEFAULT_Z
>>> with use_cosmology("planck13") as cosmo:
...     round(float(cosmo.Ez(DEFAULT_Z)), 4)
1.0587
"""

from __future__ import annotations

import contextlib
from typing import Iterator

__all__ = ["DEFAULT_COSMOLOGY", "DEFAULT_Z", "use_cosmology"]

#: MultiDark Planck 2 (Klypin et al. 2016) uses Planck 2013 parameters: h = 0.6777, Omega_m = 0.307115.
DEFAULT_COSMOLOGY = "planck13"
#: Redshift of the Ho et al. (2019) catalogue (MDPL2 snapshot at z = 0.117).
DEFAULT_Z = 0.117


@contextlib.contextmanager
def use_cosmology(name: str = DEFAULT_COSMOLOGY) -> Iterator[object]:
    """Set colossus's current cosmology to ``name`` inside the block, then restore the previous one."""
    from colossus.cosmology import cosmology as _cc

    previous = getattr(_cc, "current_cosmo", None)
    try:
        cosmo = _cc.setCosmology(name, persistence="r")
    except Exception as exc:  # colossus raises bare Exception for unknown names
        raise ValueError(f"unknown colossus cosmology {name!r}: {exc}") from exc
    try:
        yield cosmo
    finally:
        if previous is not None:
            _cc.setCurrent(previous)
        else:
            _cc.current_cosmo = None
