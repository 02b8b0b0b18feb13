"""Method options: one frozen, validated dataclass per inference method, in the style of sbi's ``posterior_parameters``.

Every registered method has an options class (:class:`~numpyro_clustermass.inference.svi.MapOptions` for ``"map"``,
:class:`~numpyro_clustermass.inference.bbb.BBBOptions` for ``"bbb"``, ...) derived from :class:`MethodOptions`: its
fields are typed and documented with their defaults, checked in ``__post_init__`` (a bad value is a ValueError that
names the method, the option, the allowed range and the value) and keyword-only; an instance is frozen. A fit takes
either an instance, ``fit(est, data, method="bbb", options=BBBOptions(init_scale=0.02))``, or the same fields as
keyword arguments, ``fit(est, data, method="bbb", init_scale=0.02)``, which are converted with the class: an unknown
name is an :class:`UnknownOptionError` that lists the accepted names and suggests the closest one.

This module also holds the value checks the options classes share (:func:`check_int`, :func:`check_float`,
:func:`check_choice`, :func:`check_bool`). It imports nothing from the package, so that every layer can use it.

Examples
--------
>>> from numpyro_clustermass.inference import MapOptions
>>> MapOptions(learning_rate=3e-4).to_dict()
{'learning_rate': 0.0003}
>>> MapOptions.from_dict({"learning_rat": 3e-4})
Traceback (most recent call last):
...
numpyro_clustermass.inference.options.UnknownOptionError: method 'map': unknown option 'learning_rat'
(did you mean 'learning_rate'?); the options are b1, b2, clip_norm, ..., weight_decay
"""

from __future__ import annotations

import dataclasses
import difflib
import math
import numbers
from typing import Any, ClassVar, Mapping

__all__ = [
    "MethodOptions",
    "UnknownOptionError",
    "options_dict",
    "nested_options",
    "check_int",
    "check_float",
    "check_choice",
    "check_bool",
]


class UnknownOptionError(ValueError, TypeError):
    """An option name that the method does not have.

    A ValueError; also a TypeError, which is what a method factory raised for an unexpected keyword argument before
    methods had options classes, so that ``except TypeError`` keeps catching it.
    """


# ---------------------------------------------------------------------------------------------- value checks
# The options of a method are checked when its options object is made, i.e. at ``fit(...)`` time, before any
# compilation or training: the error names the method, the option, the value and the allowed range.
def _prefix(method: str | None) -> str:
    return f"method {method!r}: " if method else ""


def check_int(method: str | None, name: str, value, minimum: int, maximum: int | None = None, hint: str = "") -> int:
    """``value`` as an int; a ValueError unless it is an integer (``3`` or ``3.0``, not ``1.5``, ``True`` or NaN)
    in ``[minimum, maximum]``. ``method=None`` leaves the method out of the message.

    Examples
    --------
    >>> check_int("nuts", "num_chains", 2.0, 1)
    2
    >>> check_int("nuts", "num_chains", 1.5, 1)
    Traceback (most recent call last):
    ...
    ValueError: method 'nuts': num_chains must be an integer >= 1; got 1.5
    """
    allowed = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
    ok = (isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
          and float(value).is_integer())
    if ok:
        ok = int(value) >= minimum and (maximum is None or int(value) <= maximum)
    if not ok:
        raise ValueError(f"{_prefix(method)}{name} must be an integer {allowed}{hint}; got {value!r}")
    return int(value)


def check_float(method: str | None, name: str, value, low: float | None = None, high: float | None = None, *,
                low_open: bool = False, high_open: bool = False, hint: str = "") -> float:
    """``value`` as a float; a ValueError unless it is a finite real number in the given (half-)open range.
    ``method=None`` leaves the method out of the message.

    Examples
    --------
    >>> check_float("nuts", "target_accept_prob", 1.5, 0, 1, low_open=True, high_open=True)
    Traceback (most recent call last):
    ...
    ValueError: method 'nuts': target_accept_prob must be a finite number in (0, 1); got 1.5
    """
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(float(value))
    if ok:
        v = float(value)
        ok = ((low is None or (v > low if low_open else v >= low))
              and (high is None or (v < high if high_open else v <= high)))
    if low is not None and high is not None:
        allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
    elif low is not None:
        allowed = f"{'>' if low_open else '>='} {low:g}"
    elif high is not None:
        allowed = f"{'<' if high_open else '<='} {high:g}"
    else:
        allowed = "(any)"
    if not ok:
        raise ValueError(f"{_prefix(method)}{name} must be a finite number {allowed}{hint}; got {value!r}")
    return float(value)


def check_choice(method: str | None, name: str, value, choices) -> str:
    """``value`` if it is one of the strings ``choices``, else a ValueError listing them.

    Examples
    --------
    >>> check_choice("nuts", "on_convergence", "ignore", ("warn", "raise"))
    Traceback (most recent call last):
    ...
    ValueError: method 'nuts': on_convergence must be 'warn' or 'raise'; got 'ignore'
    """
    if isinstance(value, str) and value in choices:
        return value
    names = [repr(c) for c in choices]
    listed = names[0] if len(names) == 1 else f"{', '.join(names[:-1])} or {names[-1]}"
    raise ValueError(f"{_prefix(method)}{name} must be {listed}; got {value!r}")


def check_bool(method: str | None, name: str, value) -> bool:
    """``value`` as a bool; a ValueError unless it is True or False (a NumPy bool included).

    Examples
    --------
    >>> check_bool("nuts", "dense_mass", "yes")
    Traceback (most recent call last):
    ...
    ValueError: method 'nuts': dense_mass must be True or False; got 'yes'
    """
    if isinstance(value, bool) or type(value).__name__ == "bool_":  # numpy.bool_ without importing NumPy
        return bool(value)
    raise ValueError(f"{_prefix(method)}{name} must be True or False; got {value!r}")


# ---------------------------------------------------------------------------------------------- options
def _same(a, b) -> bool:
    """``a == b`` for option values, without failing on values whose ``==`` is not a bool (arrays)."""
    if a is b:
        return True
    try:
        return bool(a == b)
    except Exception:  # noqa: BLE001 - an array's ambiguous truth value: not the same
        return False


def _unknown_message(where: str, unknown, known, hints: Mapping[str, str]) -> str:
    parts = []
    for key in unknown:
        text = repr(key)
        close = difflib.get_close_matches(str(key), list(known), n=1)
        if key in hints:
            text += f" ({hints[key]})"
        elif close:
            text += f" (did you mean {close[0]!r}?)"
        parts.append(text)
    noun = "option" if len(parts) == 1 else "options"
    return f"{where}: unknown {noun} {', '.join(parts)}; the options are {', '.join(sorted(known))}"


@dataclasses.dataclass(frozen=True)
class MethodOptions:
    """Base of the options classes: frozen dataclasses whose fields are a method's options.

    A subclass sets :attr:`method_name` (used in error messages), may set :attr:`hints` (``{name: advice}`` for
    names users try that are not options), declares its fields with defaults (``kw_only=True``), and checks and
    normalises them in ``__post_init__`` with :func:`check_int`, :func:`check_float`, ...

    Examples
    --------
    >>> from numpyro_clustermass.inference import NUTSOptions
    >>> opts = NUTSOptions(num_chains=4, map_options={"num_epochs": 50})
    >>> opts.num_chains, opts.map_options.num_epochs
    (4, 50)
    >>> opts.to_dict()
    {'num_chains': 4, 'map_options': {'num_epochs': 50}}
    >>> opts.replace(num_chains=1).num_chains
    1
    """

    #: The registered name of the method these are the options of (in error messages).
    method_name: ClassVar[str] = ""
    #: Advice for names that are not options of this method but are often tried (``{"num_draws": "..."}``).
    hints: ClassVar[Mapping[str, str]] = {}

    @classmethod
    def field_names(cls) -> tuple[str, ...]:
        """Names of the options, in declaration order."""
        return tuple(f.name for f in dataclasses.fields(cls))

    @classmethod
    def from_dict(cls, values: Mapping | None = None, *, where: str | None = None):
        """The options from ``{name: value}`` (what ``fit(**options)``, a fit file or ``--option`` give).

        An unknown name is an :class:`UnknownOptionError` naming the method (or ``where``), the name, the closest
        accepted one and all of them.
        """
        values = {} if values is None else values
        if not isinstance(values, Mapping):
            raise TypeError(f"{where or _prefix(cls.method_name)[:-2]}: options must be a dict of "
                            f"{cls.__name__} fields; got {values!r}")
        known = cls.field_names()
        unknown = [k for k in values if k not in known]
        if unknown:
            raise UnknownOptionError(_unknown_message(where or f"method {cls.method_name!r}", unknown, known,
                                                      cls.hints))
        return cls(**values)

    @classmethod
    def coerce(cls, options=None, kwargs: Mapping | None = None):
        """The options as an instance of exactly this class: ``options`` itself, ``options`` as a dict of fields,
        or ``kwargs`` (keyword arguments), which cannot be given together with ``options``.

        Examples
        --------
        >>> from numpyro_clustermass.inference import MapOptions
        >>> MapOptions.coerce(None, {"learning_rate": 1e-2}) == MapOptions(learning_rate=1e-2)
        True
        """
        if options is not None and kwargs:
            raise TypeError(f"method {cls.method_name!r}: give the options either as a {cls.__name__} (options=) or "
                            f"as keyword arguments, not both (got options= and {sorted(kwargs)})")
        if options is None:
            return cls.from_dict(kwargs or {})
        if type(options) is cls:
            return options
        if isinstance(options, MethodOptions):
            raise TypeError(f"method {cls.method_name!r} takes {cls.__name__}; got a {type(options).__name__} (the "
                            f"options of method {options.method_name!r})")
        if isinstance(options, Mapping):
            return cls.from_dict(options)
        raise TypeError(f"method {cls.method_name!r}: options must be a {cls.__name__} or a dict of its fields; "
                        f"got {options!r}")

    def replace(self, **changes):
        """A copy with ``changes`` (checked like a new instance; an unknown name is an :class:`UnknownOptionError`)."""
        known = self.field_names()
        unknown = [k for k in changes if k not in known]
        if unknown:
            raise UnknownOptionError(_unknown_message(f"method {self.method_name!r}", unknown, known, self.hints))
        return dataclasses.replace(self, **changes)

    def to_dict(self, defaults: bool = False) -> dict:
        """The options as ``{name: value}``: those that differ from their defaults (what a fit records as
        ``Fit.method_options`` and writes to its file), or all of them with ``defaults=True``. Nested options
        (``map_options``) become dicts the same way. Values are not copied."""
        out = {}
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if not defaults:
                default = (f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default)
                if _same(value, default):
                    continue
            out[f.name] = value.to_dict(defaults) if isinstance(value, MethodOptions) else value
        return out


def nested_options(owner: str, name: str, cls: type[MethodOptions], value) -> MethodOptions:
    """The value of an option of method ``owner`` that holds the options of another (``map_options``): an instance
    of ``cls``, or a dict of its fields, or None (its defaults). Errors name ``owner`` and ``name``.

    Examples
    --------
    >>> from numpyro_clustermass.inference import MapStartOptions
    >>> nested_options("nuts", "map_options", MapStartOptions, {"num_epochs": 0})
    Traceback (most recent call last):
    ...
    ValueError: method 'nuts': map_options: num_epochs must be an integer >= 1; got 0
    """
    where = f"method {owner!r}: {name}"
    if value is None:
        return cls()
    if type(value) is cls:
        return value
    if not isinstance(value, Mapping):
        raise TypeError(f"{where} must be a dict (e.g. {{'num_epochs': 50}}) or a {cls.__name__}; got {value!r}")
    try:
        return cls.from_dict(value, where=where)
    except UnknownOptionError:
        raise
    except ValueError as exc:  # a bad value: the message of cls, with the owner's name in front
        text, own = str(exc), _prefix(cls.method_name)
        raise ValueError(f"{where}: {text[len(own):] if text.startswith(own) else text}") from None


def options_dict(options) -> dict:
    """``options`` as the dict a fit records (:meth:`MethodOptions.to_dict`); a plain dict (a method registered
    without an options class) is copied."""
    if isinstance(options, MethodOptions):
        return options.to_dict()
    return dict(options or {})
