"""TensorFlow Probability on JAX, imported lazily, and the conditional spline flow's density.

Only the flow head (:class:`~numpyro_clustermass.estimators.Flow`) and TFP interop pay for the TFP import:
:func:`import_tfp` imports ``tensorflow_probability.substrates.jax`` on first use and, when the installed build
does not import (the last stable ``tensorflow-probability``, 0.25, fails with current JAX), raises
:class:`TFPImportError` naming the tested build (:data:`TFP_REQUIREMENT`). TensorFlow itself is not needed.

The flow is a density over the standardised log-mass ``z`` on a bounded interval ``[low, high]``:

``z = RQS_L o ... o RQS_1 (u)``, ``u ~ TruncatedNormal(loc, scale; low, high)``

with rational-quadratic splines (Durkan et al. 2019; TFP's ``RationalQuadraticSpline``) of ``K`` bins that map
``[low, high]`` onto itself. The truncated normal is the flow's affine layer (a conditional location and scale);
its truncation gives the density *hard edges*: zero outside ``[low, high]`` and a finite, learnable height at
each edge (TFP's splines have slope 1 at their boundary knots, so the edge heights are the base's). A Gaussian
mixture cannot represent such an edge.

:class:`TFPDistribution` is the thin NumPyro wrapper that lets the TFP distribution be a NumPyro sample site
(``log_prob``, ``sample``, ``support``, batch shape); ``numpyro.contrib.tfp`` still exists in numpyro 0.22, but its
wrappers are generated per TFP class and know nothing of the flow's interval, so the package uses its own.

Examples
--------
>>> import jax, jax.numpy as jnp
>>> from numpyro_clustermass.flows import spline_flow
>>> c, k = 3, 4
>>> d = spline_flow(jnp.zeros(c), jnp.ones(c), jnp.zeros((c, 1, k)), jnp.zeros((c, 1, k)),
...                 jnp.zeros((c, 1, k - 1)), low=-1.0, high=2.0)
>>> d.batch_shape, bool(jnp.isfinite(d.log_prob(jnp.full(c, -0.999))).all())
((3,), True)
>>> bool(jnp.isneginf(d.log_prob(jnp.full(c, 2.01))).all())  # zero density outside the interval
True

References
----------
Durkan, C., Bekasov, A., Murray, I., Papamakarios, G. (2019). Neural spline flows. NeurIPS.
Kodi Ramanah, D., Wojtak, R., Ansari, Z., Gall, C., Hansen, S. H. (2020). Dynamical mass inference of galaxy
clusters with neural flows. MNRAS 499, 1985.
"""

from __future__ import annotations

import contextlib
import importlib
import math
import warnings

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from numpyro.distributions import constraints

__all__ = [
    "TFP_REQUIREMENT",
    "TFPImportError",
    "import_tfp",
    "TFPDistribution",
    "spline_flow",
    "is_tfp_distribution",
    "from_tfp",
    "MIN_BIN_FRACTION",
    "MIN_SLOPE",
]

#: The tested TFP build (pyproject.toml pins the same); never install ``tensorflow-probability`` next to it.
TFP_REQUIREMENT = "tfp-nightly==0.26.0.dev20261027"
#: Smallest bin width and height of a spline, as a fraction of the interval (keeps the Jacobian bounded).
MIN_BIN_FRACTION = 1e-3
#: Floor added to the softplus of the interior knot slopes.
MIN_SLOPE = 1e-3
_TFP_MODULE = "tensorflow_probability.substrates.jax"


@contextlib.contextmanager
def _tfp_context():
    """Where TFP code runs: its int64 requests (truncated to int32 by JAX) do not warn, and shape arithmetic on
    constants is evaluated eagerly. The pinned TFP computes ranks with ``jnp.int32(ndim)``, which current JAX
    turns into a tracer inside ``jit`` (``RationalQuadraticSpline`` then fails with "Shapes must be 1D sequences
    of concrete values"); ``jax.ensure_compile_time_eval`` keeps such constants concrete."""
    with warnings.catch_warnings(), jax.ensure_compile_time_eval():
        warnings.simplefilter("ignore", UserWarning)
        yield


class TFPImportError(ImportError):
    """TensorFlow Probability's JAX substrate is not installed or does not import with this JAX."""


def import_tfp():
    """``tensorflow_probability.substrates.jax``, imported on first use.

    Raises
    ------
    TFPImportError
        It is missing or fails to import; the message names the installed error and the fix.

    Examples
    --------
    >>> import_tfp().bijectors.RationalQuadraticSpline.__name__
    'RationalQuadraticSpline'
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return importlib.import_module(_TFP_MODULE)
    except Exception as exc:  # noqa: BLE001 - any failure of the import is the same problem for the user
        raise TFPImportError(
            f"the normalizing-flow head needs TensorFlow Probability's JAX substrate ({_TFP_MODULE}), which did not "
            f"import ({type(exc).__name__}: {exc}). Install the tested build: pip install '{TFP_REQUIREMENT}' "
            f"(and pip uninstall tensorflow-probability first if it is installed: the two share one folder, and its "
            f"last release, 0.25, does not import with current JAX). TensorFlow itself is not needed."
        ) from exc


class TFPDistribution(dist.Distribution):
    """A TFP (JAX substrate) distribution as a NumPyro distribution: ``log_prob``, ``cdf``, ``sample``, ``support``.

    ``mean`` and ``variance`` are TFP's where TFP has them in closed form, else ``NotImplementedError`` (then
    :meth:`Fit.posterior` computes them on its grid).

    Parameters
    ----------
    tfp_dist : tfp.distributions.Distribution
        Any TFP distribution on the JAX substrate; its batch and event shapes become this one's.
    support : numpyro.distributions.constraints.Constraint
        The support to report (default real; the flow gives its interval).

    Examples
    --------
    >>> tfd = import_tfp().distributions
    >>> d = TFPDistribution(tfd.Normal(jnp.zeros(2), 1.0))
    >>> d.batch_shape, float(d.log_prob(jnp.zeros(2))[0]) == float(-0.5 * jnp.log(2 * jnp.pi))
    ((2,), True)
    >>> d.sample(jax.random.key(0), (5,)).shape
    (5, 2)
    """

    def __init__(self, tfp_dist, support=constraints.real, validate_args=None):
        self.tfp_dist = tfp_dist
        self._support = support
        super().__init__(tuple(tfp_dist.batch_shape), tuple(tfp_dist.event_shape), validate_args=validate_args)

    @property
    def support(self):
        return self._support

    def sample(self, key, sample_shape=()):
        if jnp.issubdtype(getattr(key, "dtype", None), jax.dtypes.prng_key):
            key = jax.random.key_data(key)
        with _tfp_context():
            return self.tfp_dist.sample(sample_shape, seed=key)

    def log_prob(self, value):
        with _tfp_context():
            return self.tfp_dist.log_prob(value)

    def cdf(self, value):
        with _tfp_context():
            return self.tfp_dist.cdf(value)

    def _moment(self, name):
        try:
            with _tfp_context():
                return getattr(self.tfp_dist, name)()
        except NotImplementedError:
            raise NotImplementedError(f"{type(self.tfp_dist).__name__} has no closed-form {name}") from None

    @property
    def mean(self):
        return self._moment("mean")

    @property
    def variance(self):
        return self._moment("variance")


def is_tfp_distribution(obj) -> bool:
    """Whether ``obj`` is a TFP distribution (checked by its class's module: TFP is not imported).

    Examples
    --------
    >>> import numpyro.distributions as dist
    >>> is_tfp_distribution(dist.Normal(0, 1)), is_tfp_distribution(import_tfp().distributions.Normal(0., 1.))
    (False, True)
    """
    return any(c.__module__.startswith("tensorflow_probability.") and c.__name__ == "Distribution"
               for c in type(obj).__mro__)


def from_tfp(tfp_dist) -> TFPDistribution:
    """A TFP distribution as a NumPyro one, with its support read from TFP's default event-space bijector
    (its limits at -inf and +inf: ``Uniform(13.5, 15.3)`` -> ``interval(13.5, 15.3)``, ``Normal`` -> real).

    Examples
    --------
    >>> tfd = import_tfp().distributions
    >>> d = from_tfp(tfd.Uniform(13.5, 15.3))
    >>> type(d.support).__name__, float(d.support.lower_bound), float(d.support.upper_bound)
    ('_Interval', 13.5, 15.3)
    >>> from_tfp(tfd.Normal(14.0, 0.3)).support is constraints.real
    True
    """
    if not is_tfp_distribution(tfp_dist):
        raise TypeError(f"expected a TFP distribution (tensorflow_probability.substrates.jax); got {type(tfp_dist)}")
    support = constraints.real
    try:
        with _tfp_context():
            bij = tfp_dist.experimental_default_event_space_bijector()
            lo, hi = (float(jnp.asarray(bij.forward(jnp.asarray(v, jnp.float32))).reshape(-1)[0])
                      for v in (-jnp.inf, jnp.inf))
    except Exception:  # noqa: BLE001 - no bijector or a non-scalar one: report the real line
        lo, hi = -math.inf, math.inf
    if math.isfinite(lo) and math.isfinite(hi) and hi > lo:
        support = constraints.interval(lo, hi)
    elif math.isfinite(lo) and hi == math.inf:
        support = constraints.greater_than(lo)
    elif lo == -math.inf and math.isfinite(hi):
        support = constraints.less_than(hi)
    return TFPDistribution(tfp_dist, support=support)


def _bins(raw, width):
    k = raw.shape[-1]
    floor = min(MIN_BIN_FRACTION, 0.5 / k)
    return (floor + (1.0 - k * floor) * jax.nn.softmax(raw, axis=-1)) * width


def spline_flow(loc, scale, widths, heights, slopes, low, high) -> TFPDistribution:
    """The conditional spline flow on ``[low, high]`` as a NumPyro distribution of batch shape ``loc.shape``.

    Parameters
    ----------
    loc, scale : array, shape (batch,)
        Location and (positive) scale of the truncated-normal base on ``[low, high]``.
    widths, heights : array, shape (batch, num_layers, num_bins)
        Unnormalised bin widths and heights of each spline (a softmax, floored at :data:`MIN_BIN_FRACTION`,
        scales them to the interval).
    slopes : array, shape (batch, num_layers, num_bins - 1)
        Unconstrained interior knot slopes (``softplus + MIN_SLOPE``; the boundary slopes are 1).
    low, high : float
        The interval, in the units of the variable (the model's standardised log-mass).
    """
    tfp = import_tfp()
    tfd, tfb = tfp.distributions, tfp.bijectors
    low, high = float(low), float(high)
    if not (math.isfinite(low) and math.isfinite(high) and high > low):
        raise ValueError(f"the flow's interval must be finite with high > low; got [{low}, {high}]")
    width = high - low
    with _tfp_context():
        base = tfd.TruncatedNormal(loc, scale, low, high)
        layers = [
            tfb.RationalQuadraticSpline(_bins(widths[..., i, :], width), _bins(heights[..., i, :], width),
                                        jax.nn.softplus(slopes[..., i, :]) + MIN_SLOPE, range_min=low)
            for i in range(widths.shape[-2])
        ]
        flow = tfd.TransformedDistribution(base, tfb.Chain(layers[::-1]))  # Chain applies its last bijector first
    return TFPDistribution(flow, support=constraints.interval(low, high))
