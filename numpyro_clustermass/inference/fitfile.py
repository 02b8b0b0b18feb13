"""The fit file: what :meth:`Fit.save` writes and :func:`~numpyro_clustermass.inference.load` reads.

A saved fit is one file, a ZIP archive (suffix ``.ncm`` by convention) of plain arrays and a JSON manifest;
no pickle anywhere, so a file from an untrusted source cannot run code when loaded::

    manifest.json          format name and version, package/JAX/NumPyro/Flax versions, estimator config,
                           method name and options, training settings, TrainingPlan, seed, run facts
                           (``Fit.info``), feature names, the *structure* of the method's state pytree
                           (dicts, lists, tuples, NamedTuples named by module and class), and for every
                           array its member name, shape, dtype and SHA-256
    manifest.sha256        SHA-256 of manifest.json
    arrays/<name>.npy      one NumPy ``.npy`` file per array: the state's leaves (PRNG keys as their raw
                           key data), the scalers, the training log-masses (the implicit prior), the grid,
                           the loss history, the feature reference of shift detection
                           (``feature_reference_*``: quantiles, whitening, calibration scores, reservoir;
                           absent from files written before it, which load without it)

On load the estimator is rebuilt from its config, the method from its factory with the same options and
TrainingPlan, and the state from the manifest's structure and the arrays, each checked against its
checksum. The loaded fit gives bitwise the same posterior as the original on the same machine (same seed
of draws, same compiled functions).

The file is written to a temporary file in the target folder and renamed over the target, so a crash never
leaves half a fit under the target's name.

Examples
--------
>>> import numpy as np, tempfile, os
>>> import numpyro_clustermass as ncm
>>> rng = np.random.default_rng(0)
>>> y = rng.uniform(13.5, 15.0, 600); x = y[:, None] + 0.1 * rng.normal(size=(600, 3))
>>> f = ncm.fit(ncm.MDN(2, (8,), feature_names=("a", "b", "c")), (x, y), num_epochs=3, progress_bar=False)
>>> path = f.save(os.path.join(tempfile.mkdtemp(), "mdn.ncm"))
>>> g = ncm.load(path)
>>> bool(np.array_equal(np.asarray(g.posterior(x[:5]).log_density), np.asarray(f.posterior(x[:5]).log_density)))
True
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import importlib
import io
import json
import os
import pathlib
import zipfile
import zlib
from typing import Callable, Mapping

import jax
import jax.numpy as jnp
import numpy as np

from numpyro_clustermass.catalog import atomic_target
from numpyro_clustermass.estimators import MDN, MSE, Flow, ModelEstimator
from numpyro_clustermass.inference.options import MethodOptions, options_dict
from numpyro_clustermass.scaling import MassObservableRelation

__all__ = ["save_fit", "read_fit_file", "jsonable_options", "all_options", "saved_options", "estimator_from_config",
           "decode_state", "FitFileError", "FORMAT", "FORMAT_VERSION"]

#: The ``format`` field of every manifest.
FORMAT = "numpyro_clustermass.fit"
#: Bumped when the layout changes; :func:`load` refuses other versions with a clear error.
FORMAT_VERSION = 1
#: Modules whose NamedTuple classes may appear in a saved state (importing anything else is refused).
_TRUSTED_MODULES = ("numpyro_clustermass.", "numpyro.", "optax.", "flax.", "jax.")
_MANIFEST, _MANIFEST_SUM = "manifest.json", "manifest.sha256"
#: Member-name prefix of the feature reference's arrays (shift detection; absent from older files).
_REFERENCE_PREFIX = "feature_reference_"
_REFERENCE_ARRAYS = ("quantiles", "levels", "center", "whitening", "calibration", "reservoir")


class FitFileError(ValueError):
    """A fit file that cannot be loaded (truncated, corrupted, another format or version) or a fit that
    cannot be saved (an option that is a Python object rather than a value)."""


# ---------------------------------------------------------------------------------------------- pytrees
class _Arrays:
    """Collects arrays under generated member names while a pytree is encoded."""

    def __init__(self):
        self.data: dict[str, np.ndarray] = {}

    def add(self, prefix: str, value) -> str:
        name = f"{prefix}{len(self.data)}"
        self.data[name] = value
        return name


def _is_namedtuple(obj) -> bool:
    return isinstance(obj, tuple) and hasattr(type(obj), "_fields")


def _encode(obj, arrays: _Arrays, where: str) -> dict:
    """A JSON node for ``obj``; arrays go to ``arrays``. Raises FitFileError on anything else."""
    if obj is None:
        return {"t": "none"}
    if isinstance(obj, (bool, np.bool_)) and not isinstance(obj, np.ndarray):
        return {"t": "bool", "v": bool(obj)}
    if isinstance(obj, int) and not isinstance(obj, bool):
        return {"t": "int", "v": int(obj)}
    if isinstance(obj, float):
        return {"t": "float", "v": obj.hex()}  # exact
    if isinstance(obj, str):
        return {"t": "str", "v": obj}
    if isinstance(obj, jax.Array) and jnp.issubdtype(obj.dtype, jax.dtypes.prng_key):
        impl = str(jax.random.key_impl(obj))
        return {"t": "key", "impl": impl, "a": arrays.add("s", np.asarray(jax.random.key_data(obj)))}
    if isinstance(obj, jax.Array):
        return {"t": "jax", "a": arrays.add("s", np.asarray(obj))}
    if isinstance(obj, (np.ndarray, np.generic)):
        if np.asarray(obj).dtype == object:
            raise FitFileError(f"cannot save {where}: an array of Python objects")
        return {"t": "np", "scalar": isinstance(obj, np.generic), "a": arrays.add("s", np.asarray(obj))}
    if _is_namedtuple(obj):
        cls = type(obj)
        return {"t": "namedtuple", "cls": f"{cls.__module__}:{cls.__qualname__}",
                "items": {f: _encode(getattr(obj, f), arrays, f"{where}.{f}") for f in cls._fields}}
    if isinstance(obj, (list, tuple)):
        return {"t": type(obj).__name__, "items": [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(obj)]}
    if isinstance(obj, dict):
        if not all(isinstance(k, str) for k in obj):
            raise FitFileError(f"cannot save {where}: a dict with non-string keys {list(obj)[:5]}")
        return {"t": "dict", "items": [[k, _encode(v, arrays, f"{where}[{k!r}]")] for k, v in obj.items()]}
    raise FitFileError(f"cannot save {where}: a {type(obj).__module__}.{type(obj).__qualname__} is not an array, "
                       f"number, string, dict, list, tuple or NamedTuple")


def _named_tuple_class(spec: str):
    module, _, qualname = spec.partition(":")
    if not module.startswith(_TRUSTED_MODULES) and module not in ("numpyro_clustermass", "numpyro", "optax"):
        raise FitFileError(f"the state names the class {spec!r}, outside the packages a fit may use")
    try:
        obj = importlib.import_module(module)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        raise FitFileError(f"the state's class {spec!r} does not exist in the installed packages ({exc}); "
                           f"load the fit with the versions that saved it (see its manifest)") from None
    if not (isinstance(obj, type) and issubclass(obj, tuple) and hasattr(obj, "_fields")):
        raise FitFileError(f"the state names {spec!r}, which is not a NamedTuple class")
    return obj


def decode_state(node: dict, arrays: Callable[[str], np.ndarray]):
    t = node["t"]
    if t == "none":
        return None
    if t in ("bool", "int", "str"):
        return node["v"]
    if t == "float":
        return float.fromhex(node["v"])
    if t == "key":
        return jax.random.wrap_key_data(jnp.asarray(arrays(node["a"])), impl=node["impl"])
    if t == "jax":
        return jnp.asarray(arrays(node["a"]))
    if t == "np":
        a = arrays(node["a"])
        return a[()] if node.get("scalar") else a
    if t == "namedtuple":
        cls = _named_tuple_class(node["cls"])
        items = node["items"]
        if set(items) != set(cls._fields):
            raise FitFileError(f"the saved {node['cls']} has fields {sorted(items)}, the installed class "
                               f"{sorted(cls._fields)}")
        return cls(**{k: decode_state(v, arrays) for k, v in items.items()})
    if t in ("list", "tuple"):
        values = [decode_state(v, arrays) for v in node["items"]]
        return values if t == "list" else tuple(values)
    if t == "dict":
        return {k: decode_state(v, arrays) for k, v in node["items"]}
    raise FitFileError(f"unknown node type {t!r} in the saved state")


# ---------------------------------------------------------------------------------------------- helpers
def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _npy_bytes(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(a), allow_pickle=False)
    return buf.getvalue()


def _json_value(value, where: str):
    """``value`` if it survives JSON unchanged (tuples become lists), else FitFileError."""
    try:
        text = json.dumps(value, allow_nan=True)
    except (TypeError, ValueError):
        raise FitFileError(
            f"cannot save the fit: {where} = {value!r} is a Python object, not a value a file can hold; pass "
            f"options by value (numbers, strings, lists) to fit() to make the fit saveable") from None
    return json.loads(text)


def jsonable_options(options) -> dict:
    """Method options as they are written to a fit file (tuples as lists): a dict, or an options dataclass as its
    :meth:`~numpyro_clustermass.inference.options.MethodOptions.to_dict` (the options that differ from their
    defaults); FitFileError for an option that is a Python object rather than a value."""
    return {k: _json_value(v, f"method option {k!r}") for k, v in options_dict(options).items()}


def all_options(method: str, values: Mapping | None) -> dict:
    """Every option of ``method`` (defaults included) for the recorded ``values`` (those that differ from their
    defaults): what a fit file holds, so that a later change of a default does not change what a file means. A
    method registered without an options class keeps ``values`` as they are."""
    from numpyro_clustermass.inference.protocol import make_options

    options = make_options(method, dict(values or {}))
    return options.to_dict(defaults=True) if isinstance(options, MethodOptions) else dict(options)


def saved_options(method: str, values: Mapping) -> dict:
    """The options of a fit file as they were when it was saved. Files record every option (:func:`all_options`);
    those saved before held only the options that differed from their defaults, and a ``schedule`` they lack
    (here or in a nested ``map_options``) was then ``"cosine"``, the default of every method that has one. Stating
    it keeps such a file's meaning when a default schedule changes.

    Examples
    --------
    >>> saved_options("map", {"learning_rate": 3e-3})
    {'learning_rate': 0.003, 'schedule': 'cosine'}
    >>> saved_options("nuts", {})["map_options"]
    {'schedule': 'cosine'}
    """
    from numpyro_clustermass.inference.protocol import options_class

    def sparse_file(cls, values):
        out = dict(values)
        for f in dataclasses.fields(cls):
            if f.name == "schedule":
                out.setdefault("schedule", "cosine")
            elif isinstance(f.default_factory, type) and issubclass(f.default_factory, MethodOptions):
                nested = out.get(f.name)  # nested options (map_options): a dict in a file, or absent
                if nested is None or isinstance(nested, Mapping):
                    out[f.name] = sparse_file(f.default_factory, nested or {})
        return out

    cls = options_class(method)
    return dict(values) if cls is None else sparse_file(cls, values)


def _plain(value):
    """JSON-able copy of run facts: NumPy scalars become numbers, tuples lists, other objects their repr."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return repr(value)


def _versions() -> dict:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist_name in ("numpyro_clustermass", "jax", "jaxlib", "numpyro", "flax", "optax", "numpy"):
        try:
            out[dist_name] = version(dist_name)
        except PackageNotFoundError:
            out[dist_name] = None
    return out


# ---------------------------------------------------------------------------------------------- save
def save_fit(fit, path) -> pathlib.Path:
    """Write ``fit`` to ``path`` (one file; see the module docstring); returns the path.

    Raises
    ------
    FitFileError
        The estimator or a method option is a Python object that cannot be written as a value (a user
        model function, a Distribution as weight prior, a custom optimizer).
    FileNotFoundError, IsADirectoryError
        The folder does not exist, or ``path`` is a folder.
    """
    path = pathlib.Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"cannot save a fit to {str(path)!r}: it is a folder; give a file name such as "
                                f"{str(path / 'fit.ncm')!r}")
    est_config = fit.estimator.config()
    if est_config.get("kind") == "ModelEstimator":
        est_config = {**est_config, "model": None}  # a function: the user passes it again to load()
    est_config = _json_value(est_config, "the estimator's config")
    options = jsonable_options(all_options(fit.method, fit.method_options))

    arrays = _Arrays()
    state_tree = _encode(fit.state, arrays, "the method state")
    named = {
        "x_scaler_mean": np.asarray(fit.x_scaler.mean), "x_scaler_scale": np.asarray(fit.x_scaler.scale),
        "y_scaler_mean": np.asarray(fit.y_scaler.mean), "y_scaler_scale": np.asarray(fit.y_scaler.scale),
        "training_log_mass": np.asarray(fit.training_log_mass), "grid": np.asarray(fit.grid),
    }
    history = {k: np.asarray(v) for k, v in fit.history.items()}
    for k, v in history.items():
        named[f"history_{k}"] = v
    reference = getattr(fit, "feature_reference", None)
    ref_scalars = None
    if reference is not None:
        ref_scalars, ref_arrays = reference.to_arrays()
        for k, v in ref_arrays.items():
            named[f"{_REFERENCE_PREFIX}{k}"] = np.asarray(v)
    members = {**arrays.data, **named}
    blobs = {name: _npy_bytes(a) for name, a in members.items()}

    manifest = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "versions": _versions(),
        "estimator": est_config,
        "method": fit.method,
        "method_options": options,
        "config": _json_value(fit.config, "the training config"),
        "plan": dict(fit.plan._asdict()),
        "seed": int(fit.seed),
        "info": _plain(dict(fit.info)),
        "feature_names": None if fit.feature_names is None else list(fit.feature_names),
        "num_features": int(fit.num_features),
        "history_keys": list(history),
        "feature_reference": ref_scalars,
        "state": state_tree,
        "arrays": {name: {"member": f"arrays/{name}.npy", "sha256": _sha256(b), "shape": list(members[name].shape),
                          "dtype": str(members[name].dtype)} for name, b in blobs.items()},
    }
    text = json.dumps(manifest, indent=1, sort_keys=False).encode()
    tmp, final = atomic_target(str(path))
    try:
        try:
            with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_DEFLATED) as zf:
                zf.writestr(_MANIFEST, text)
                zf.writestr(_MANIFEST_SUM, _sha256(text) + "\n")
                for name, b in blobs.items():
                    zf.writestr(manifest["arrays"][name]["member"], b)
        except ValueError as exc:
            # Ctrl-C while a member is being closed leaves its handle open; closing the archive then raises a
            # ValueError over the KeyboardInterrupt (a SIGINT during a checkpoint made `train` exit 2, not 130)
            if isinstance(exc.__context__, KeyboardInterrupt):
                raise exc.__context__ from None
            raise
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise
    return path


# ---------------------------------------------------------------------------------------------- load
def read_fit_file(path) -> tuple[dict, Callable[[str], np.ndarray]]:
    """The manifest of the fit file at ``path`` and a function returning its arrays by name, each checked
    against its checksum; FitFileError if the file is not a fit file of this format version or is corrupted.
    The file is read whole and closed before this returns."""
    path = pathlib.Path(path)
    where = f"{str(path)!r}"
    if not path.exists():
        raise FileNotFoundError(f"no fit file at {where}")
    if path.is_dir():
        raise IsADirectoryError(f"{where} is a folder, not a fit file")
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, UnicodeDecodeError, ValueError, EOFError, zlib.error,
            NotImplementedError):  # a damaged directory (a flipped version byte: 'zip file version 7.8')
        size = path.stat().st_size
        raise FitFileError(f"{where} is not a fit file, or it is truncated ({size} bytes; a fit file is a ZIP "
                           f"archive written by Fit.save)") from None
    with zf:
        names = set(zf.namelist())
        if _MANIFEST not in names or _MANIFEST_SUM not in names:
            raise FitFileError(f"{where} is a ZIP archive but not a fit file (no {_MANIFEST})")

        def member(name: str) -> bytes:
            try:
                return zf.read(name)
            except (zipfile.BadZipFile, zlib.error, OSError, EOFError, KeyError, ValueError,
                    NotImplementedError) as exc:  # bad CRC, truncated, missing, a damaged header
                raise FitFileError(f"{where} is corrupted: cannot read {name} ({type(exc).__name__}: {exc})") \
                    from None

        manifest = _checked_manifest(member(_MANIFEST), member(_MANIFEST_SUM), where)
        table = manifest["arrays"]
        blobs = {name: member(entry["member"]) for name, entry in table.items()}

    def array(name: str) -> np.ndarray:
        if name not in table:
            raise FitFileError(f"{where} is corrupted: the manifest names no array {name!r}")
        entry, blob = table[name], blobs[name]
        if _sha256(blob) != entry["sha256"]:
            raise FitFileError(f"{where} is corrupted: the checksum of {entry['member']} does not match")
        a = np.load(io.BytesIO(blob), allow_pickle=False)
        if list(a.shape) != entry["shape"] or str(a.dtype) != entry["dtype"]:
            raise FitFileError(f"{where} is corrupted: {entry['member']} has shape {a.shape} and dtype {a.dtype}, "
                               f"the manifest says {entry['shape']} and {entry['dtype']}")
        return a

    return manifest, array


def _checked_manifest(text: bytes, checksum: bytes, where: str) -> dict:
    """The manifest, after its checksum, JSON, format name and format version are checked."""
    expected = checksum.decode(errors="replace").strip()
    if _sha256(text) != expected:
        raise FitFileError(f"{where} is corrupted: the manifest's checksum does not match")
    try:
        manifest = json.loads(text)
    except ValueError as exc:
        raise FitFileError(f"{where} is corrupted: its manifest is not JSON ({exc})") from None
    if manifest.get("format") != FORMAT:
        raise FitFileError(f"{where} is not a numpyro_clustermass fit (format {manifest.get('format')!r})")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise FitFileError(f"{where} is a fit file of format version {version!r}; this numpyro_clustermass "
                           f"reads version {FORMAT_VERSION} (saved with {manifest.get('versions')}); load it with "
                           f"that version of the package")
    return manifest


def feature_reference(manifest: dict, array: Callable[[str], np.ndarray]):
    """The fit's :class:`~numpyro_clustermass.shift.FeatureReference` from a read fit file, or None for a file
    written before fits kept one (the manifest has no ``feature_reference``)."""
    from numpyro_clustermass.shift import FeatureReference

    scalars = manifest.get("feature_reference")
    if scalars is None:
        return None
    try:
        return FeatureReference.from_arrays(scalars, {k: array(f"{_REFERENCE_PREFIX}{k}") for k in _REFERENCE_ARRAYS})
    except (KeyError, TypeError, ValueError) as exc:
        if isinstance(exc, FitFileError):
            raise
        raise FitFileError(f"the fit file's feature reference is malformed ({type(exc).__name__}: {exc})") from None


def estimator_from_config(cfg: dict, model: Callable | None = None):
    """Rebuild the estimator from ``Estimator.config()`` (a user model function is passed as ``model``). An MDN
    or a Flow saved before its ``weight_init`` existed was initialised as Flax does (``"flax"``, then the default);
    a Flow's file holds its ``margin`` and ``z_bounds`` (so one saved under the earlier 0.01-dex margin keeps it)."""
    kind = cfg.get("kind")
    kwargs = {k: v for k, v in cfg.items() if k not in ("kind", "name")}
    if kind in ("MDN", "Flow"):
        kwargs.setdefault("weight_init", "flax")
    if kind in ("MDN", "MSE", "Flow"):
        for k in ("hidden", "activations", "feature_names", "bounds", "z_bounds"):
            if kwargs.get(k) is not None:
                kwargs[k] = tuple(kwargs[k])
        return {"MDN": MDN, "MSE": MSE, "Flow": Flow}[kind](**kwargs)
    if kind == "MassObservableRelation":
        return MassObservableRelation(feature_names=tuple(kwargs["feature_names"]))
    if kind == "ModelEstimator":
        if model is None:
            raise FitFileError(f"this fit was trained with the user model {cfg.get('name')!r}, which a file cannot "
                               f"hold: pass the same function, load(path, model=...)")
        names = kwargs.get("feature_names")
        return ModelEstimator(model, feature_names=None if names is None else tuple(names),
                              obs_site=cfg.get("obs_site", "obs"), name=cfg.get("name", ""))
    raise FitFileError(f"unknown estimator kind {kind!r} in the fit file")
