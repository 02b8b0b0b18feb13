"""Fits that outlive the process: Fit.save / load round trips for every method, damaged files, checkpoints."""

import dataclasses
import json
import os
import zipfile

import numpy as np
import pytest

import numpyro_clustermass as ncm
from numpyro_clustermass.estimators import MDN, MSE, ModelEstimator
from numpyro_clustermass.inference import FitFileError, fit, load
from numpyro_clustermass.inference import fitfile

# the tiny fits here learn little in 3 epochs: their FitWarning is expected, not under test
pytestmark = pytest.mark.filterwarnings("ignore::numpyro_clustermass.FitWarning")

TINY = dict(num_epochs=3, batch_size=128, progress_bar=False)
NAMES = ("a", "b")


@pytest.fixture(scope="module")
def xy():
    rng = np.random.default_rng(0)
    y = rng.uniform(13.5, 15.0, 600)
    x = np.stack([y + 0.2 * rng.normal(size=600), rng.normal(size=600)], 1)
    return x, y


@pytest.fixture(scope="module")
def mock():
    return ncm.simulate.mock_catalog(volume=1.0, mass_sampling="flat", n_halos=300, seed=0)


def _linear_model(x, y=None, num_data=None, deterministic=False):
    import numpyro
    import numpyro.distributions as dist

    w = numpyro.sample("w", dist.Normal(0, 1).expand([x.shape[1]]).to_event(1))
    b = numpyro.sample("b", dist.Normal(0, 1))
    with numpyro.plate("data", x.shape[0], subsample_size=x.shape[0]):
        numpyro.sample("obs", dist.Normal(x @ w + b, 0.3), obs=y)


CASES = {
    "map-mdn": (lambda: MDN(2, (8,), feature_names=NAMES), "map", {}),
    "map-mse": (lambda: MSE((8,), feature_names=NAMES), "map", {"learning_rate": 3e-3}),
    "mc_dropout": (lambda: MDN(2, (8,), feature_names=NAMES), "mc_dropout", {}),
    "bbb": (lambda: MDN(2, (8,), feature_names=NAMES), "bbb", {}),
    "ensemble": (lambda: MDN(2, (8,), feature_names=NAMES), "ensemble", {"num_members": 2}),
    "laplace": (lambda: MDN(2, (8,), feature_names=NAMES), "laplace", {"map_options": {"num_epochs": 3}}),
}


def _same_posterior(f, g, x, **kw):
    a, b = f.posterior(x, **kw), g.posterior(x, **kw)
    assert np.array_equal(np.asarray(a.log_density), np.asarray(b.log_density))
    assert np.array_equal(a.aleatoric_variance, b.aleatoric_variance)
    assert np.array_equal(a.epistemic_variance, b.epistemic_variance)
    assert np.array_equal(a.training_log_mass, b.training_log_mass)
    return a, b


@pytest.mark.parametrize("case", sorted(CASES))
def test_round_trip_is_bitwise(tmp_path, xy, case):
    make, method, options = CASES[case]
    x, y = xy
    f = fit(make(), (x, y), method=method, seed=1, **TINY, **options)
    path = f.save(tmp_path / "f.ncm")
    assert path.exists() and os.listdir(tmp_path) == ["f.ncm"]  # no temporary file left behind
    g = load(path)
    assert (g.method, g.seed, g.estimator, g.feature_names) == (f.method, f.seed, f.estimator, f.feature_names)
    assert g.plan == f.plan and g.config == f.config and g.method_options == f.method_options
    for k in f.history:
        assert np.array_equal(f.history[k], g.history[k], equal_nan=True)
    _same_posterior(f, g, x[:40])
    _same_posterior(f, g, x[:40], num_draws=3, seed=5)


def test_round_trip_nuts_and_the_mass_sigma_relation(tmp_path, mock):
    for method, options in (("map", {"learning_rate": 1e-2}),
                            ("nuts", {"num_warmup": 40, "num_samples": 40, "num_chains": 1})):
        f = fit(ncm.MassObservableRelation(), mock, method=method, **TINY, **options)
        g = load(f.save(tmp_path / f"{method}.ncm"))
        _same_posterior(f, g, mock.select(np.arange(len(mock)) < 50))


def test_user_model_needs_its_function_again(tmp_path, xy):
    x, y = xy
    est = ModelEstimator(_linear_model, feature_names=NAMES)
    f = fit(est, (x, y), method="laplace", validation_fraction=0.0, **TINY)
    path = f.save(tmp_path / "user.ncm")
    with pytest.raises(FitFileError, match=r"user model '_linear_model'.*load\(path, model=\.\.\.\)"):
        load(path)
    g = load(path, model=_linear_model)
    _same_posterior(f, g, x[:20], num_draws=8)


def test_options_that_are_objects_cannot_be_saved(tmp_path, xy):
    import optax

    f = fit(MDN(2, (8,), feature_names=NAMES), xy, optimizer=optax.adam(1e-3), **TINY)
    with pytest.raises(FitFileError, match=r"method option 'optimizer' = .* is a Python object"):
        f.save(tmp_path / "f.ncm")
    assert not os.listdir(tmp_path)


@pytest.fixture(scope="module")
def saved(tmp_path_factory, xy):
    f = fit(MDN(2, (8,), feature_names=NAMES), xy, **TINY)
    path = tmp_path_factory.mktemp("saved") / "f.ncm"
    f.save(path)
    return path


def test_truncated_file_is_named(tmp_path, saved):
    data = saved.read_bytes()
    bad = tmp_path / "cut.ncm"
    bad.write_bytes(data[: len(data) // 2])
    with pytest.raises(FitFileError, match=r"'.*cut\.ncm' is not a fit file, or it is truncated \(\d+ bytes"):
        load(bad)


def test_flipped_bytes_are_found(tmp_path, saved):
    with zipfile.ZipFile(saved) as zf:
        info = zf.getinfo("manifest.json")
        member = [i for i in zf.infolist() if i.filename.startswith("arrays/")][0]
    data = bytearray(saved.read_bytes())
    for offset in (member.header_offset + 30 + len(member.filename) + 5,  # inside an array member's data
                   info.header_offset + 30 + len(info.filename) + 40):    # inside the manifest
        broken = bytearray(data)
        broken[offset] ^= 0xFF
        bad = tmp_path / "flipped.ncm"
        bad.write_bytes(bytes(broken))
        with pytest.raises(FitFileError, match=r"'.*flipped\.ncm' is corrupted"):
            load(bad).posterior(np.zeros((1, 2)))


def test_checksums_catch_a_consistent_rewrite(tmp_path, saved):
    """A member replaced inside a valid ZIP (so the ZIP's own CRC passes) fails the manifest's SHA-256."""
    with zipfile.ZipFile(saved) as zf:
        members = {i.filename: zf.read(i.filename) for i in zf.infolist()}
    name = sorted(n for n in members if n.startswith("arrays/"))[0]
    import io

    a = np.load(io.BytesIO(members[name]))
    buf = io.BytesIO()
    np.save(buf, a + 1 if a.dtype.kind in "fiu" else a)
    members[name] = buf.getvalue()
    bad = tmp_path / "rewritten.ncm"
    with zipfile.ZipFile(bad, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    with pytest.raises(FitFileError, match=r"corrupted: the checksum of arrays/.* does not match"):
        load(bad)


def test_other_format_version_is_refused(tmp_path, saved):
    with zipfile.ZipFile(saved) as zf:
        members = {i.filename: zf.read(i.filename) for i in zf.infolist()}
    manifest = json.loads(members["manifest.json"])
    manifest["format_version"] = fitfile.FORMAT_VERSION + 1
    text = json.dumps(manifest).encode()
    members["manifest.json"], members["manifest.sha256"] = text, fitfile._sha256(text).encode()
    bad = tmp_path / "v2.ncm"
    with zipfile.ZipFile(bad, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    with pytest.raises(FitFileError, match=rf"format version {fitfile.FORMAT_VERSION + 1}; this numpyro_clustermass "
                                           rf"reads version {fitfile.FORMAT_VERSION}"):
        load(bad)


def _rewrite_manifest(saved, target, change):
    """A copy of the fit file ``saved`` at ``target`` with ``change(manifest)`` applied and its checksum renewed."""
    with zipfile.ZipFile(saved) as zf:
        members = {i.filename: zf.read(i.filename) for i in zf.infolist()}
    manifest = json.loads(members["manifest.json"])
    change(manifest)
    text = json.dumps(manifest).encode()
    members["manifest.json"], members["manifest.sha256"] = text, fitfile._sha256(text).encode()
    with zipfile.ZipFile(target, "w") as zf:
        for n, b in members.items():
            zf.writestr(n, b)
    return target


def test_a_file_saved_before_options_classes_and_fit_info_loads(tmp_path, xy):
    """Before MapOptions and FitInfo a manifest held the options exactly as given to fit (defaults included) and
    only the run facts a fit had: such a file loads, with the same posterior and the missing facts at their
    defaults."""
    x, y = xy
    f = fit(MDN(2, (8,), feature_names=NAMES), (x, y), learning_rate=3e-3, **TINY)
    assert f.method_options == {"learning_rate": 3e-3}

    def as_before(manifest):
        manifest["method_options"] = {"learning_rate": 3e-3, "schedule": "cosine", "b1": 0.9}  # defaults given
        for key in ("interrupted", "checkpoint", "diverged_at_epoch"):  # facts an old fit did not record
            del manifest["info"][key]

    g = load(_rewrite_manifest(f.save(tmp_path / "new.ncm"), tmp_path / "old.ncm", as_before))
    _same_posterior(f, g, x[:40])
    # the schedule of that time, "cosine", is no longer the default: it now shows as an option that differs
    assert g.method_options == {"learning_rate": 3e-3, "schedule": "cosine"}
    assert g.options == dataclasses.replace(f.options, schedule="cosine")
    assert g.info.interrupted is False and g.info.diverged_at_epoch is None
    assert g.info.epochs_run == f.info.epochs_run == 3 and g.info.best_val_loss == f.info.best_val_loss


def test_a_file_records_every_option_and_a_sparse_one_means_the_schedule_of_its_time(tmp_path, xy):
    """A file holds every option, defaults included, so a later change of a default does not change what it
    means. Files saved before held only the options that differed from their defaults: a schedule they lack was
    "cosine", for "map" as for the MAP start of another method, and loads as "cosine" whatever the default is."""
    x, y = xy
    f = fit(MDN(2, (8,), feature_names=NAMES), (x, y), learning_rate=3e-3, schedule="constant", **TINY)
    path = f.save(tmp_path / "new.ncm")
    with zipfile.ZipFile(path) as zf:
        saved = json.loads(zf.read("manifest.json"))["method_options"]
    assert saved["schedule"] == "constant" and saved["learning_rate"] == 3e-3 and saved["b1"] == 0.9
    assert saved["plateau_patience"] == 3 and saved["guide"] is None
    assert load(path).options == f.options and load(path).method_options == f.method_options

    def sparse(manifest):
        manifest["method_options"] = {"learning_rate": 3e-3, "plateau_patience": 5}

    g = load(_rewrite_manifest(path, tmp_path / "sparse.ncm", sparse))
    assert g.options.schedule == "cosine" and g.options.plateau_patience == 5
    assert fitfile.saved_options("laplace", {"map_options": {"num_epochs": 5}})["map_options"] == {
        "num_epochs": 5, "schedule": "cosine"}
    assert fitfile.saved_options("bbb", {}) == {"schedule": "cosine", "map_options": {"schedule": "cosine"}}
    assert fitfile.saved_options("map", {"schedule": "constant"}) == {"schedule": "constant"}


def test_saved_options_the_installed_method_lacks_are_named(tmp_path, saved):
    def unknown(manifest):
        manifest["method_options"] = {"learning_rat": 1e-3}

    bad = _rewrite_manifest(saved, tmp_path / "unknown.ncm", unknown)
    with pytest.raises(FitFileError, match=r"the saved options of method 'map' do not fit the method as installed "
                                           r"\(method 'map': unknown option 'learning_rat' \(did you mean "
                                           r"'learning_rate'\?\)"):
        load(bad)


def test_info_is_saved_under_the_same_keys(tmp_path, saved):
    with zipfile.ZipFile(saved) as zf:
        info = json.loads(zf.read("manifest.json"))["info"]
    for key in ("n_rows", "n_train", "n_val", "steps_per_epoch", "epochs_run", "best_epoch", "stopped_early",
                "best_loss", "best_val_loss", "initial_loss", "baseline_loss", "traces", "time_s"):
        assert key in info, key
    assert "extras" not in info  # method facts are keys of their own, as before
    g = load(saved)
    assert {k: g.info[k] for k in info} == info and set(g.info) == set(info)


def test_paths_that_are_not_fit_files(tmp_path):
    with pytest.raises(FileNotFoundError, match="no fit file"):
        load(tmp_path / "nope.ncm")
    with pytest.raises(IsADirectoryError):
        load(tmp_path)
    (tmp_path / "text.ncm").write_text("hello")
    with pytest.raises(FitFileError, match="not a fit file"):
        load(tmp_path / "text.ncm")
    with zipfile.ZipFile(tmp_path / "other.zip", "w") as zf:
        zf.writestr("readme.txt", "x")
    with pytest.raises(FitFileError, match=r"ZIP archive but not a fit file"):
        load(tmp_path / "other.zip")


def test_state_classes_outside_the_trusted_packages_are_refused():
    node = {"t": "namedtuple", "cls": "os:stat_result", "items": {}}
    with pytest.raises(FitFileError, match="outside the packages a fit may use"):
        fitfile.decode_state(node, lambda name: None)


def test_file_follows_the_umask(tmp_path, saved, xy):
    old = os.umask(0o027)
    try:
        load(saved).save(tmp_path / "g.ncm")
    finally:
        os.umask(old)
    assert (os.stat(tmp_path / "g.ncm").st_mode & 0o777) == 0o640


# ------------------------------------------------------------------------------------------ checkpoints, resume
def test_checkpoint_every_n_epochs_and_resume(tmp_path, xy):
    x, y = xy
    est = MDN(2, (8,), feature_names=NAMES)
    ck = tmp_path / "ck.ncm"
    f = fit(est, (x, y), num_epochs=4, batch_size=128, progress_bar=False, patience=None, checkpoint=ck,
            checkpoint_every=2)
    saved = load(ck)
    assert saved.info["epochs_run"] == 4 and len(saved.history["train_loss"]) == 4
    _same_posterior(f, saved, x[:20])
    g = fit(est, (x, y), num_epochs=3, batch_size=128, progress_bar=False, patience=None, resume=saved)
    assert len(g.history["train_loss"]) == 7 and g.info["epochs_run"] == 7
    np.testing.assert_array_equal(g.history["train_loss"][:4], f.history["train_loss"])
    assert g.history["val_loss"][-1] < f.history["val_loss"][0]
    np.testing.assert_array_equal(g.x_scaler.mean, f.x_scaler.mean)
    with pytest.raises(ValueError, match=r"resume: the fit to continue differs from this call: method options"):
        fit(est, (x, y), num_epochs=1, batch_size=128, progress_bar=False, resume=saved, learning_rate=0.1)
    with pytest.raises(ValueError, match=r"checkpoint_every must be an integer >= 1"):
        fit(est, (x, y), checkpoint=ck, checkpoint_every=0, **TINY)


def test_ctrl_c_saves_the_checkpoint(tmp_path, xy, monkeypatch):
    from numpyro_clustermass.inference import epochs

    x, y = xy
    est = MDN(2, (8,), feature_names=NAMES)
    kw = dict(num_epochs=6, batch_size=128, progress_bar=False, seed=4)
    fit(est, (x, y), **kw)  # compile this configuration once, then interrupt its epoch 3
    (entry,) = [c for c in epochs._COMPILED.data.values() if c.plan.num_epochs == 6 and c.plan.batch_size == 128
                and c.impl.name == "map"][-1:]
    real, calls = entry.epoch, []

    def interrupted(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(entry, "epoch", interrupted)
    ck = tmp_path / "ck.ncm"
    with pytest.raises(ncm.FitInterrupted, match=r"and saved to '.*ck\.ncm'") as err:
        fit(est, (x, y), checkpoint=ck, checkpoint_every=100, **kw)
    assert err.value.checkpoint == ck
    g = load(ck)
    assert g.info["interrupted"] and g.info["epochs_run"] == 2
    _same_posterior(err.value.fit, g, x[:10])


def test_ctrl_c_while_a_member_closes_is_a_keyboard_interrupt_and_leaves_no_file(tmp_path, saved, monkeypatch):
    """A SIGINT inside a member's close leaves the zip's write handle open, and closing the archive raised a
    ValueError over the interrupt (`train` exited 2, not 130, once in CI): the interrupt comes through."""
    f = load(saved)
    original = zipfile._ZipWriteFile.close
    calls = {"n": 0}

    def interrupted_close(self):
        calls["n"] += 1
        if calls["n"] == 2:  # the second member: the manifest is written, its checksum is not
            raise KeyboardInterrupt
        return original(self)

    monkeypatch.setattr(zipfile._ZipWriteFile, "close", interrupted_close)
    path = tmp_path / "f.ncm"
    with pytest.raises(KeyboardInterrupt):
        fitfile.save_fit(f, path)
    assert calls["n"] == 2
    assert not path.exists() and os.listdir(tmp_path) == []  # neither the fit nor its temporary file


def test_a_damaged_zip_version_field_is_a_fit_file_error(tmp_path, saved):
    """zipfile raises NotImplementedError ('zip file version 7.8') for a flipped 'version needed' byte of the
    central directory; the byte-flipping test below hits it only when the file's length puts an offset there."""
    data = bytearray(saved.read_bytes())
    data[data.rfind(b"PK\x01\x02") + 6] ^= 0x5A
    bad = tmp_path / "version.ncm"
    bad.write_bytes(bytes(data))
    with pytest.raises(FitFileError, match="is not a fit file, or it is truncated"):
        load(bad)


def test_every_flipped_byte_gives_a_fit_file_error_or_loads_the_same_fit(tmp_path, saved, xy):
    """Flip one byte at a time over the whole file: load either refuses with FitFileError or, where the byte
    does not matter (a ZIP header's timestamp, the manifest's creation time is checksummed), gives the same
    posterior; never another exception."""
    data = saved.read_bytes()
    x = xy[0][:5]
    reference = np.asarray(load(saved).posterior(x).log_density)
    bad = tmp_path / "flip.ncm"
    outcomes = {"refused": 0, "same": 0}
    for offset in range(0, len(data), max(1, len(data) // 150)):
        broken = bytearray(data)
        broken[offset] ^= 0x5A
        bad.write_bytes(bytes(broken))
        try:
            g = load(bad)
        except FitFileError:
            outcomes["refused"] += 1
            continue
        assert np.array_equal(np.asarray(g.posterior(x).log_density), reference), offset
        outcomes["same"] += 1
    assert outcomes["refused"] > 100, outcomes
