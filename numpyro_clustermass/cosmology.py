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

__all__ = ["DEFAULT_COSMOLOGY", "DEFAULT_Z", "OVERRIDABLE", "use_cosmology"]

#: MultiDark Planck 2 (Klypin et al. 2016) uses Planck 2013 parameters: h = 0.6777, Omega_m = 0.307115.
DEFAULT_COSMOLOGY = "planck13"
#: Redshift of the Ho et al. (2019) catalogue (MDPL2 snapshot at z = 0.117).
DEFAULT_Z = 0.117


#: Parameters of a named cosmology that :func:`use_cosmology` lets a caller replace (colossus names).
OVERRIDABLE = ("Om0", "sigma8", "H0")


@contextlib.contextmanager
def use_cosmology(name: str = DEFAULT_COSMOLOGY, overrides: dict | None = None) -> Iterator[object]:
    """Set colossus's current cosmology to ``name`` inside the block, then restore the previous one.

    Parameters
    ----------
    name : str
        A colossus cosmology name (``"planck13"``, ``"planck18"``, ``"WMAP9"``, ...).
    overrides : dict, optional
        Replace some of the named cosmology's parameters (keys in :data:`OVERRIDABLE`: ``Om0``, ``sigma8``,
        ``H0`` in km/s/Mpc); the others (flatness, ``Ob0``, ``ns``) stay the named cosmology's. A flat
        cosmology keeps Omega_Lambda = 1 - Omega_m (colossus adds radiation as it does for the named one).

    Examples
    --------
    >>> with use_cosmology("planck13", {"Om0": 0.28, "sigma8": 0.80}) as c:
    ...     round(c.Om0, 2), round(c.sigma8, 2), round(c.H0, 2)
    (0.28, 0.8, 67.77)
    """
    from colossus.cosmology import cosmology as _cc

    previous = getattr(_cc, "current_cosmo", None)
    try:
        if overrides:
            bad = sorted(set(overrides) - set(OVERRIDABLE))
            if bad:
                raise ValueError(f"cannot override {bad}; overridable parameters are {list(OVERRIDABLE)}")
            if name not in _cc.cosmologies:
                raise ValueError(f"overrides need a named colossus cosmology; {name!r} is not one")
            params = {**_cc.cosmologies[name], **{k: float(v) for k, v in overrides.items()}}
            label = name + "[" + ",".join(f"{k}={float(overrides[k])!r}" for k in sorted(overrides)) + "]"
            cosmo = _cc.setCosmology(label, params=params, persistence="r")
        else:
            cosmo = _cc.setCosmology(name, persistence="r")
    except ValueError:
        raise
    except Exception as exc:  # colossus raises bare Exception for unknown names
        raise ValueError(f"unknown colossus cosmology {name!r}: {exc}") from exc
    try:
        yield cosmo
    finally:
        if previous is not None:
            _cc.setCurrent(previous)
        else:
            _cc.current_cosmo = None
