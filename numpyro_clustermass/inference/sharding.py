"""Data parallelism with JAX's own sharding: the minibatch split across devices, parameters replicated.

``fit(..., devices=...)`` (:func:`~numpyro_clustermass.inference.fit`) picks the devices; this module turns the
choice into a one-axis :class:`jax.sharding.Mesh` (:func:`data_mesh`) and places the training arrays on it,
replicated (:func:`replicate`). The placement of the data is the selection: the epoch driver
(:mod:`~numpyro_clustermass.inference.epochs`) reads the mesh back from the training array
(:func:`data_mesh_of`), replicates the method's state, and inside the jit-compiled epoch constrains every step's
minibatch to be split along the batch axis (:func:`shard_batches`) and the state to stay replicated
(:func:`constrain_replicated`). XLA's SPMD partitioner then runs each device on its slice of the batch and inserts
the all-reduce of the gradients; there is no scheduler of ours. The shuffling and the random numbers are the
same as on one device (the permutation is computed replicated, and JAX's threefry is partitionable), so a sharded
fit follows the single-device loss curve up to the order of floating-point sums.

Methods that run once and train a MAP start by epochs (NUTS, Laplace, BBB with ``init="map"``) inherit the data
parallelism of that start through the data they are handed; NUTS spreads its chains over the same devices
(:func:`chain_map`, one or more chains per device with :func:`jax.shard_map`).

Example
-------
>>> import jax, jax.numpy as jnp
>>> from numpyro_clustermass.inference.sharding import data_mesh, data_mesh_of, replicate
>>> mesh = data_mesh(1)                       # the first device; data_mesh("all") takes every device
>>> x = replicate(jnp.ones((8, 3)), mesh)
>>> data_mesh_of(x) == mesh, x.sharding.is_fully_replicated
(True, True)
>>> data_mesh(None) is None                   # no mesh: JAX's default device, no sharding
True
"""

from __future__ import annotations

import numbers
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

__all__ = ["DATA_AXIS", "CHAIN_AXIS", "data_mesh", "data_mesh_of", "mesh_devices", "replicate", "check_batch_size",
           "shard_batches", "shard_rows", "constrain_replicated", "chain_map"]

#: Name of the mesh axis the minibatch is split along.
DATA_AXIS = "data"
#: Name of the mesh axis NUTS's chains are split along (:func:`chain_map`).
CHAIN_AXIS = "chains"


def data_mesh(devices) -> Mesh | None:
    """The one-axis mesh (axis :data:`DATA_AXIS`) of ``fit``'s ``devices`` argument.

    Parameters
    ----------
    devices : None, int, "all" or sequence of jax.Device
        None: no mesh (JAX's default device, nothing sharded). An int ``n >= 1``: the first ``n`` of
        :func:`jax.devices` (with several processes, the global list: use ``"all"`` there). ``"all"``: every device
        of :func:`jax.devices`, of every process. A sequence of distinct :class:`jax.Device` objects: those.

    Returns
    -------
    jax.sharding.Mesh or None

    Raises
    ------
    ValueError
        More devices asked for than JAX sees, an empty or repeated device list, an int below 1.
    TypeError
        Anything else.

    Example
    -------
    >>> import jax
    >>> data_mesh(1).devices.size
    1
    >>> data_mesh(jax.device_count() + 1)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    ValueError: devices=... asks for ... devices; JAX sees ... (...). On CPU, set XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts
    """
    if devices is None:
        return None
    available = jax.devices()
    if isinstance(devices, str):
        if devices != "all":
            raise ValueError(f"devices must be None, an int >= 1, 'all' or a sequence of jax devices; got {devices!r}")
        chosen = list(available)
    elif isinstance(devices, numbers.Integral) and not isinstance(devices, bool):
        n = int(devices)
        if n < 1:
            raise ValueError(f"devices must be None, an int >= 1, 'all' or a sequence of jax devices; got {n}")
        if n > len(available):
            raise ValueError(
                f"devices={n} asks for {n} devices; JAX sees {len(available)} ({_describe(available)}). On CPU, set "
                f"XLA_FLAGS=--xla_force_host_platform_device_count=N before JAX starts")
        chosen = list(available[:n])
    elif isinstance(devices, Sequence) or isinstance(devices, np.ndarray):
        chosen = list(np.asarray(devices, dtype=object).reshape(-1))
        if not chosen:
            raise ValueError("devices: an empty sequence; give at least one jax device, an int or 'all'")
        bad = [d for d in chosen if not isinstance(d, jax.Device)]
        if bad:
            raise TypeError(f"devices: a sequence must hold jax.Device objects (from jax.devices()); got {bad[0]!r}")
        if len(set(chosen)) != len(chosen):
            raise ValueError(f"devices: each device at most once; got {chosen}")
    else:
        raise TypeError(f"devices must be None, an int >= 1, 'all' or a sequence of jax devices; got "
                        f"{type(devices).__name__} {devices!r}")
    return Mesh(np.asarray(chosen, dtype=object), (DATA_AXIS,), axis_types=(AxisType.Auto,))


def _describe(devs) -> str:
    kinds = sorted({d.platform for d in devs})
    return ", ".join(f"{sum(d.platform == k for d in devs)} {k}" for k in kinds)


def data_mesh_of(tree) -> Mesh | None:
    """The data-parallel mesh an array (the first array leaf of ``tree``) was placed on by :func:`replicate`, or
    None: an array with a :class:`~jax.sharding.NamedSharding` whose mesh has the one axis :data:`DATA_AXIS`.

    >>> import jax.numpy as jnp
    >>> data_mesh_of(jnp.ones(3)) is None
    True
    """
    for leaf in jax.tree.leaves(tree):
        sharding = getattr(leaf, "sharding", None)
        if isinstance(sharding, NamedSharding) and tuple(sharding.mesh.axis_names) == (DATA_AXIS,):
            return sharding.mesh
        return None
    return None


def mesh_devices(mesh: Mesh) -> list:
    """The devices of ``mesh``, in mesh order.

    >>> [d.id for d in mesh_devices(data_mesh(1))]
    [0]
    """
    return list(mesh.devices.reshape(-1))


def replicate(tree, mesh: Mesh | None):
    """``tree``'s arrays placed whole on every device of ``mesh`` (``jax.device_put`` with a replicated
    :class:`~jax.sharding.NamedSharding`); None leaves stay None, and ``mesh=None`` returns ``tree`` as it is.

    With several processes every process must pass the same values (``jax.device_put`` checks it).

    >>> import jax.numpy as jnp
    >>> replicate((jnp.zeros(2), None), data_mesh(1))[1] is None
    True
    """
    if mesh is None:
        return tree
    return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def check_batch_size(batch_size: int, mesh: Mesh | None, num_rows: int | None = None) -> None:
    """A ValueError unless ``batch_size`` splits evenly over ``mesh``'s devices (every device takes the same number
    of rows of each minibatch). ``num_rows``: the training rows, named in the message when the batch size was
    capped at them.

    >>> check_batch_size(512, data_mesh(1))
    >>> check_batch_size(511, None)
    """
    if mesh is None:
        return
    d = int(mesh.devices.size)
    if int(batch_size) % d:
        capped = (f" (batch_size is capped at the {num_rows} training rows)"
                  if num_rows is not None and int(batch_size) == int(num_rows) else "")
        lower, upper = int(batch_size) // d * d, -(-int(batch_size) // d) * d
        near = f"{lower} or {upper}" if lower else f"{upper}"
        raise ValueError(
            f"data-parallel fit on {d} devices: batch_size={batch_size}{capped} must be divisible by the number of "
            f"devices, so that each device takes the same share of every minibatch; use e.g. batch_size={near}")


def shard_batches(tree, mesh: Mesh | None, axis: int = 1):
    """Inside a jit-compiled function: constrain ``tree``'s arrays to be split along ``axis`` (the batch axis of
    stacked ``(steps, batch, ...)`` minibatches) over ``mesh``'s :data:`DATA_AXIS`, the rest replicated.

    >>> import jax, jax.numpy as jnp
    >>> mesh = data_mesh(1)
    >>> jax.jit(lambda b: shard_batches(b, mesh))(jnp.ones((2, 4, 3))).shape
    (2, 4, 3)
    """
    if mesh is None:
        return tree

    def one(a):
        spec = [None] * a.ndim
        spec[axis] = DATA_AXIS
        return jax.lax.with_sharding_constraint(a, NamedSharding(mesh, PartitionSpec(*spec)))

    return jax.tree.map(one, tree)


def shard_rows(x, mesh: Mesh | None):
    """Inside a jit-compiled function: ``x`` split along its first axis over ``mesh`` when its length is divisible
    by the number of devices (a validation set evaluated in parallel), else left as it is (replicated).

    >>> import jax, jax.numpy as jnp
    >>> float(jax.jit(lambda v: shard_rows(v, data_mesh(1)).sum())(jnp.ones(5)))
    5.0
    """
    if mesh is None or x.shape[0] % int(mesh.devices.size):
        return x
    return shard_batches(x, mesh, axis=0)


def constrain_replicated(tree, mesh: Mesh | None):
    """Inside a jit-compiled function: ``tree``'s arrays (parameters, optimiser state) replicated over ``mesh``.

    >>> import jax, jax.numpy as jnp
    >>> jax.jit(lambda s: constrain_replicated(s, data_mesh(1)))({"w": jnp.ones(2)})["w"].shape
    (2,)
    """
    if mesh is None:
        return tree
    rep = NamedSharding(mesh, PartitionSpec())
    return jax.tree.map(lambda a: jax.lax.with_sharding_constraint(a, rep), tree)


def chain_map(mesh: Mesh, num_chains: int) -> Callable:
    """A ``chain_method`` for NumPyro's :class:`~numpyro.infer.MCMC`: ``num_chains`` chains spread evenly over
    ``mesh``'s devices, each device running its ``num_chains / devices`` chains vectorised, with
    :func:`jax.shard_map` (one chain per device when the counts are equal).

    NumPyro calls ``chain_method(f)(args)`` with ``f`` the single-chain sampler and ``args`` stacked over the
    chains; each device runs its own while-loops, as with ``chain_method="parallel"`` (``jax.pmap``), but on the
    devices asked for. All the mesh's devices must belong to this process.

    Raises
    ------
    ValueError
        ``num_chains`` not a multiple of the number of devices, or devices of another process.

    >>> import jax, jax.numpy as jnp
    >>> run = chain_map(data_mesh(1), 2)(lambda a: a * 2.0)
    >>> run(jnp.arange(2.0)).tolist()
    [0.0, 2.0]
    """
    devs = mesh_devices(mesh)
    d = len(devs)
    if int(num_chains) % d:
        raise ValueError(f"nuts: num_chains={num_chains} chains cannot be spread evenly over {d} devices; use a "
                         f"multiple of {d} (one chain per device: num_chains={d}) or fewer devices")
    here = jax.process_index()
    if any(dev.process_index != here for dev in devs):
        raise ValueError("nuts: chains run on this process's devices only (jax.local_devices()); the devices given "
                         "include devices of other processes")
    chains_mesh = Mesh(np.asarray(devs, dtype=object), (CHAIN_AXIS,), axis_types=(AxisType.Auto,))
    spec = PartitionSpec(CHAIN_AXIS)

    def method(f):
        # one positional argument (the chains' stacked keys, states and initial values), split along its leading axis
        return jax.jit(jax.shard_map(jax.vmap(f), mesh=chains_mesh, in_specs=(spec,), out_specs=spec,
                                     check_vma=False))

    return method
