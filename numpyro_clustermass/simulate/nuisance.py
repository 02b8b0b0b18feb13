"""Nuisance parameters of the mock universe: names, literature ranges, and per-sub-volume draws.

A network trained on one simulated universe meets real catalogues that no simulation reproduces exactly.
Training across a *family* of universes (domain randomisation) marginalises the physics it cannot pin
down. :data:`NUISANCE_PARAMETERS` lists that physics, each entry a :class:`MockPhysics` field with a range
from the literature (``docs/nuisance.md`` explains each); :func:`resolve_nuisance` turns the ``nuisance=``
argument of :func:`~numpyro_clustermass.simulate.mock_catalog` into a plan and :meth:`NuisancePlan.draw`
draws the values, one set per sub-volume.

The ``nuisance=`` argument
--------------------------
``None``
    The fiducial universe (``MockPhysics`` with any overrides), bit for bit as without the argument.
``"prior"``
    Every parameter of the family (``in_family=True``) is drawn from its range, independently per
    sub-volume; the others (the clustered interlopers) stay at their fiducial value (off).
``dict``
    ``{name: value}``: a number fixes the parameter in every sub-volume (it must lie in the range);
    the string ``"prior"`` draws it per sub-volume from its range (this is how the clustered interlopers,
    outside the family, are switched on with a drawn strength); a pair ``(lo, hi)`` draws it per sub-volume
    from that part of its range, uniform in the value or its logarithm as the full range is (a family
    centred where the analyst believes the universe is: ``docs/nuisance.md``). The optional key ``"prior"``
    (bool, default
    False) says what happens to the family parameters the dict does not name: ``False`` keeps them
    fiducial, ``True`` draws them. So ``"prior"`` is ``{"prior": True}``.

Examples
--------
>>> plan = resolve_nuisance({"prior": True, "z": 0.1})
>>> plan.fixed, len(plan.drawn)
({'z': 0.1}, 14)
>>> values = plan.draw(np.random.default_rng(0), 3)
>>> values["z"].tolist(), bool(np.all((values["sigma8"] >= 0.76) & (values["sigma8"] <= 0.87)))
([0.1, 0.1, 0.1], True)
>>> narrow = resolve_nuisance({"prior": True, "alpha_sat": (0.95, 1.05)})
>>> narrow.ranges, narrow.range_of("alpha_sat"), narrow.range_of("sigma8")
({'alpha_sat': (0.95, 1.05)}, (0.95, 1.05), (0.76, 0.87))
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from numpyro_clustermass.catalog import NUISANCE_PREFIX
from numpyro_clustermass.simulate.physics import MockPhysics

__all__ = [
    "FAMILY_PARAMETERS",
    "NUISANCE_PARAMETERS",
    "NUISANCE_COLUMN_PREFIX",
    "SUB_VOLUME",
    "NuisanceParameter",
    "NuisancePlan",
    "resolve_nuisance",
]

#: Catalogue columns holding a row's nuisance values are named ``nu_<parameter>`` (the catalogue module's
#: prefix, which ``Catalog.features`` refuses).
NUISANCE_COLUMN_PREFIX = NUISANCE_PREFIX
#: Default size of a sub-volume with its own nuisance draw, in (Gpc/h)^3: a 1 (Gpc/h)^3 catalogue is 10
#: universes of about 9k halos above 10^13.5 Msun/h each.
SUB_VOLUME = 0.1

_LN10 = math.log(10.0)


@dataclass(frozen=True)
class NuisanceParameter:
    """One nuisance parameter: a :class:`MockPhysics` field, its range and how it is drawn.

    Attributes
    ----------
    name : str
        The ``MockPhysics`` field it sets (and the column ``nu_<name>``).
    lo, hi : float
        Range (inclusive): draws lie in it and fixed values must.
    scale : {"linear", "log"}
        Uniform in the value or in its logarithm.
    in_family : bool
        Drawn by ``nuisance="prior"``; ``False`` (the clustered interlopers) keeps the fiducial value
        unless the parameter is named in a dict.
    fiducial : float
        The value of ``MockPhysics()`` (for the cosmology: the named cosmology's value).
    reference : str
        Where the range comes from (``docs/nuisance.md`` has the full story).
    """

    name: str
    lo: float
    hi: float
    scale: str
    in_family: bool
    fiducial: float
    reference: str

    def draw(self, rng: np.random.Generator, n: int, lo: float | None = None, hi: float | None = None) -> np.ndarray:
        """``n`` independent draws, uniform in the value (``linear``) or its logarithm (``log``), on the range
        or on its part ``[lo, hi]`` (:meth:`check_range`)."""
        lo = self.lo if lo is None else lo
        hi = self.hi if hi is None else hi
        if self.scale == "log":
            return np.exp(rng.uniform(math.log(lo), math.log(hi), size=n))
        return rng.uniform(lo, hi, size=n)

    def check_range(self, value) -> tuple[float, float]:
        """``value``, a pair ``(lo, hi)`` with ``lo < hi`` inside the range, as floats; else an error saying why."""
        try:
            lo, hi = (float(v) for v in value)
        except (TypeError, ValueError):
            raise TypeError(
                f"nuisance parameter {self.name!r}: a range is a pair (lo, hi) of numbers; got {value!r}"
            ) from None
        if not (self.lo <= lo < hi <= self.hi):
            raise ValueError(
                f"nuisance parameter {self.name!r}: the range ({lo!r}, {hi!r}) must have lo < hi and lie in "
                f"[{self.lo:g}, {self.hi:g}] ({self.reference})"
            )
        return lo, hi

    def check(self, value) -> float:
        """``value`` as a float, or a ValueError saying the range."""
        try:
            v = float(value)
        except (TypeError, ValueError):
            raise TypeError(f"nuisance parameter {self.name!r}: expected a number, a pair (lo, hi) or 'prior', "
                            f"got {value!r}") from None
        if not (self.lo <= v <= self.hi):
            raise ValueError(
                f"nuisance parameter {self.name!r} = {v!r} is outside its range [{self.lo:g}, {self.hi:g}] "
                f"({self.reference})"
            )
        return v


def _named_cosmology(param: str) -> float:
    from colossus.cosmology import cosmology as cc

    return float(cc.cosmologies[MockPhysics().cosmology][param])


def _table() -> dict[str, NuisanceParameter]:
    f = MockPhysics()
    P = NuisanceParameter
    rows = [
        P("omega_m", 0.26, 0.35, "linear", True, _named_cosmology("Om0"),
          "spans WMAP9 (0.279, Hinshaw et al. 2013) and Planck 2018 (0.315, Planck Collaboration 2020)"),
        P("sigma8", 0.76, 0.87, "linear", True, _named_cosmology("sigma8"),
          "around Planck 2018 (0.811) and WMAP9 (0.821)"),
        P("h", 0.67, 0.72, "linear", True, _named_cosmology("H0") / 100.0,
          "spans Planck 2018 (0.674) and WMAP9 (0.700)"),
        P("z", 0.05, 0.15, "linear", True, f.z, "low-redshift spectroscopic cluster samples; MDPL2 at 0.117"),
        P("lambda0", 0.65 * f.lambda0, 1.35 * f.lambda0, "linear", True, f.lambda0,
          "satellite occupation normalisation +-35% (HOD fits, Zheng et al. 2005)"),
        P("alpha_sat", 0.85, 1.05, "linear", True, f.alpha_sat, "satellite occupation slope (Zheng et al. 2005)"),
        P("richness_scatter_dex", 0.15 / _LN10, 0.35 / _LN10, "linear", True, f.richness_scatter_dex,
          "ln-scatter 0.15-0.35 of richness at fixed mass (optical surveys: 0.2-0.3)"),
        P("c_gal", 2.0, 5.0, "linear", True, f.c_gal,
          "galaxy NFW concentration (Budzynski et al. 2012: 2.6; dark matter about twice, Duffy et al. 2008)"),
        P("velocity_bias_mean", 0.9, 1.1, "linear", True, f.velocity_bias_mean,
          "galaxy velocity bias (Munari et al. 2013; Armitage et al. 2018)"),
        P("velocity_bias_std", 0.03, 0.08, "linear", True, f.velocity_bias_std,
          "halo-to-halo spread of the velocity bias (Munari et al. 2013; Armitage et al. 2018)"),
        P("sigma_15", 1082.9 - 2 * 4.0, 1082.9 + 2 * 4.0, "linear", True, f.sigma_15,
          "Evrard et al. 2008: 1082.9 +- 4.0 km/s, +-2 sigma"),
        P("sigma_alpha", 0.3361 - 2 * 0.0026, 0.3361 + 2 * 0.0026, "linear", True, f.sigma_alpha,
          "Evrard et al. 2008: 0.3361 +- 0.0026, +-2 sigma"),
        P("sigma_ln_scatter", 0.04, 0.08, "linear", True, f.sigma_ln_scatter,
          "sigma-M scatter at fixed mass 4-8% (Evrard et al. 2008: 4.26% for dark matter)"),
        P("n_background", 0.5 * f.n_background, 2.0 * f.n_background, "log", True, f.n_background,
          "uniform background 0.5x-2x the fiducial density (Mamon, Biviano & Murante 2010)"),
        P("infall_fraction", 0.0, 0.2, "linear", True, f.infall_fraction,
          "correlated infall 0-20% of N_sat (Mamon, Biviano & Murante 2010; Wojtak et al. 2007)"),
        P("clustered_excess", 0.0, 6.0, "linear", False, f.clustered_excess,
          "mean excess of neighbour halos in the cylinder: a power-law cross-correlation with r0 = 6-12 Mpc/h "
          "averaged over the cylinder gives 1.7-5.9 (docs/nuisance.md); off in the fiducial and the family"),
    ]
    return {p.name: p for p in rows}


#: The nuisance parameters by name (each a :class:`MockPhysics` field), in column order.
NUISANCE_PARAMETERS: dict[str, NuisanceParameter] = _table()
#: The parameters ``nuisance="prior"`` draws (``in_family=True``), in the table's order.
FAMILY_PARAMETERS: tuple[str, ...] = tuple(n for n, p in NUISANCE_PARAMETERS.items() if p.in_family)


@dataclass(frozen=True)
class NuisancePlan:
    """What ``nuisance=`` asks for: parameters fixed to a value and parameters drawn per sub-volume.

    Attributes
    ----------
    mode : str
        ``"prior"`` or ``"dict"`` (how it was asked for).
    fixed : dict
        ``{name: value}`` used in every sub-volume.
    drawn : tuple of str
        Parameters drawn per sub-volume, in :data:`NUISANCE_PARAMETERS` order.
    ranges : dict
        ``{name: (lo, hi)}`` for drawn parameters given a part of their range; the others are drawn from
        their whole range.
    """

    mode: str
    fixed: dict
    drawn: tuple
    ranges: dict = dataclasses.field(default_factory=dict)

    def range_of(self, name: str) -> tuple[float, float]:
        """The range parameter ``name`` is drawn from under this plan."""
        p = NUISANCE_PARAMETERS[name]
        return self.ranges.get(name, (p.lo, p.hi))

    @property
    def names(self) -> tuple[str, ...]:
        """Every parameter the plan sets (fixed or drawn), in :data:`NUISANCE_PARAMETERS` order."""
        return tuple(n for n in NUISANCE_PARAMETERS if n in self.fixed or n in self.drawn)

    def draw(self, rng: np.random.Generator, n_sub: int) -> dict[str, np.ndarray]:
        """Values for ``n_sub`` sub-volumes: ``{name: array (n_sub,)}`` for every name in :attr:`names`.

        Drawn parameters are drawn one after another in table order, ``n_sub`` values each, from ``rng``.
        """
        out = {}
        for name in self.names:
            if name in self.fixed:
                out[name] = np.full(n_sub, float(self.fixed[name]))
            else:
                out[name] = NUISANCE_PARAMETERS[name].draw(rng, n_sub, *self.range_of(name))
        return out

    def to_dict(self) -> dict:
        return {"mode": self.mode, "fixed": dict(self.fixed), "drawn": list(self.drawn),
                "drawn_ranges": {n: list(r) for n, r in self.ranges.items()}}


def resolve_nuisance(nuisance) -> NuisancePlan | None:
    """Validate the ``nuisance=`` argument of ``mock_catalog`` and turn it into a :class:`NuisancePlan`.

    ``None`` gives ``None`` (the fiducial universe). Unknown names, values outside a range and values of the
    wrong type raise errors that say what is accepted.

    Examples
    --------
    >>> resolve_nuisance(None) is None
    True
    >>> resolve_nuisance("prior").drawn[:3]
    ('omega_m', 'sigma8', 'h')
    >>> resolve_nuisance({"omega_mass": 0.3})
    Traceback (most recent call last):
    ...
    ValueError: unknown nuisance parameter(s) ['omega_mass']; accepted: omega_m, sigma8, h, z, lambda0, alpha_sat, richness_scatter_dex, c_gal, velocity_bias_mean, velocity_bias_std, sigma_15, sigma_alpha, sigma_ln_scatter, n_background, infall_fraction, clustered_excess, and the key 'prior' (bool)
    """
    if nuisance is None:
        return None
    if isinstance(nuisance, str):
        if nuisance != "prior":
            raise ValueError(f"nuisance must be None, 'prior' or a dict of parameter values; got {nuisance!r}")
        return NuisancePlan("prior", {}, FAMILY_PARAMETERS)
    if not isinstance(nuisance, dict):
        raise TypeError(f"nuisance must be None, 'prior' or a dict; got {type(nuisance).__name__}")
    spec = dict(nuisance)
    rest = spec.pop("prior", False)
    if not isinstance(rest, (bool, np.bool_)):
        raise TypeError(f"nuisance['prior'] must be True or False (draw the unnamed family parameters?); got {rest!r}")
    unknown = sorted(set(spec) - set(NUISANCE_PARAMETERS))
    if unknown:
        raise ValueError(
            f"unknown nuisance parameter(s) {unknown}; accepted: {', '.join(NUISANCE_PARAMETERS)}, "
            f"and the key 'prior' (bool)"
        )
    fixed, drawn, ranges = {}, [], {}
    for name in NUISANCE_PARAMETERS:
        if name in spec:
            value = spec[name]
            if isinstance(value, str):
                if value != "prior":
                    raise ValueError(f"nuisance parameter {name!r}: a string value must be 'prior'; got {value!r}")
                drawn.append(name)
            elif isinstance(value, (tuple, list, np.ndarray)):
                ranges[name] = NUISANCE_PARAMETERS[name].check_range(value)
                drawn.append(name)
            else:
                fixed[name] = NUISANCE_PARAMETERS[name].check(value)
        elif rest and name in FAMILY_PARAMETERS:
            drawn.append(name)
    return NuisancePlan("dict", fixed, tuple(drawn), ranges)


def physics_for(base: MockPhysics, values: dict[str, np.ndarray], k: int) -> MockPhysics:
    """The physics of sub-volume ``k``: ``base`` with the nuisance values of that sub-volume."""
    return dataclasses.replace(base, **{name: float(v[k]) for name, v in values.items()})
