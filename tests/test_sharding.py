"""Data-parallel fits and NUTS chains across devices (numpyro_clustermass/inference/sharding.py, fit's devices=).

Two virtual CPU devices need ``XLA_FLAGS=--xla_force_host_platform_device_count=2`` before JAX starts, so the tests
that use them run their body in a fresh Python process and read back one JSON line.
"""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import jax
import numpy as np
import pytest

from numpyro_clustermass.inference import sharding

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _run_on_two_devices(code: str, timeout: int = 600) -> dict:
    """Run ``code`` in a fresh process with 2 virtual CPU devices; it prints one JSON line last, returned here."""
    env = dict(os.environ)
    env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=2").strip()
    env["JAX_PLATFORMS"] = "cpu"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT)] + [p for p in [env.get("PYTHONPATH")] if p])
    prelude = "import jax, json, warnings\nassert jax.device_count() == 2, jax.devices()\n"
    res = subprocess.run([sys.executable, "-c", prelude + textwrap.dedent(code)], env=env, capture_output=True,
                         text=True, timeout=timeout, cwd=ROOT)
    assert res.returncode == 0, res.stderr[-4000:]
    return json.loads(res.stdout.strip().splitlines()[-1])


def test_sharded_map_gives_the_single_device_loss_curve_with_replicated_parameters():
    out = _run_on_two_devices(r"""
        import re
        import numpy as np
        import numpyro_clustermass as ncm
        from numpyro_clustermass.estimators import MDN
        from numpyro_clustermass.inference import fit, make_options
        from numpyro_clustermass.inference.epochs import compiled_method
        from numpyro_clustermass.inference.sharding import data_mesh, replicate

        cat = ncm.simulate.mock_catalog(volume=1.0, mass_sampling="flat", n_halos=100, seed=0)
        est = MDN(2, (8,))
        kw = dict(num_epochs=4, batch_size=64, patience=None, progress_bar=False, seed=3)
        one = fit(est, cat, **kw)
        two = fit(est, cat, devices=2, **kw)
        leaves = jax.tree.leaves(two.params) + jax.tree.leaves(two.state)
        replicated = all(a.sharding.is_fully_replicated and len(a.sharding.device_set) == 2
                         for a in leaves if hasattr(a, "sharding"))

        def hlo(f, mesh):  # the compiled epoch of that fit's configuration
            entry = compiled_method(est, "map", make_options("map", None), f.plan)
            x = replicate(np.zeros((f.plan.num_data, f.plan.num_features), np.float32), mesh)
            y = replicate(np.zeros(f.plan.num_data, np.float32), mesh)
            state = replicate(f.state, mesh)
            return entry.epoch.lower(state, jax.random.key(0), 0, x, y, x[:64], y[:64], mesh=mesh).compile().as_text()

        hlos = [hlo(one, None), hlo(two, data_mesh(2))]
        x_test = cat.features(one.feature_names)[:20]
        try:
            fit(est, cat, devices=2, batch_size=63, num_epochs=1, progress_bar=False)
            batch_error = ""
        except ValueError as err:
            batch_error = str(err)
        print(json.dumps({
            "train": [one.history["train_loss"].tolist(), two.history["train_loss"].tolist()],
            "val": [one.history["val_loss"].tolist(), two.history["val_loss"].tolist()],
            "replicated": replicated, "num_leaves": len(leaves),
            "devices_info": two.info.get("data_parallel_devices"), "one_info": "data_parallel_devices" in one.info,
            "all_reduce": ["all-reduce" in hlos[0], "all-reduce" in hlos[1]],
            # the rows of the first layer's matrix product (8 hidden units) in each device's program
            "dot_rows": [sorted({int(m) for m in re.findall(r"f32\[(\d+),8\]\{[^}]*\} dot", h)}) for h in hlos],
            "posterior": [np.asarray(one.posterior(x_test).mean()).tolist(),
                          np.asarray(two.posterior(x_test).mean()).tolist()],
            "batch_error": batch_error,
        }))
    """)
    for key in ("train", "val"):
        one, two = (np.asarray(v) for v in out[key])
        assert one.shape == (4,) and np.all(np.isfinite(one))
        assert one[-1] < one[0]  # it trains
        # measured in this test: 1.3e-7 (train) and 1.1e-7 (val) largest relative difference; only the order of
        # the float32 sums differs (6e-8 / 1.3e-7 on 4000 rows of synthetic data in a separate check)
        np.testing.assert_allclose(two, one, rtol=1e-5, atol=0)
    assert out["replicated"] and out["num_leaves"] > 0
    assert out["devices_info"] == 2 and not out["one_info"]
    # XLA split the batch and summed the gradients across the devices; the single-device epoch has no collective
    assert out["all_reduce"] == [False, True]
    # batch 64: one device multiplies 64 rows at a time, each of the 2 devices its 32 (the other shapes are the
    # weight gradients, (features or hidden, rows) products)
    assert 64 in out["dot_rows"][0] and 32 not in out["dot_rows"][0]
    assert 32 in out["dot_rows"][1] and 64 not in out["dot_rows"][1]
    np.testing.assert_allclose(out["posterior"][1], out["posterior"][0], rtol=1e-5)  # measured: equal (0.0)
    assert "batch_size=63" in out["batch_error"] and "divisible by the number of devices" in out["batch_error"]
    assert "batch_size=62 or 64" in out["batch_error"]


def test_nuts_runs_one_chain_per_device():
    out = _run_on_two_devices("""
        import numpy as np
        import numpyro_clustermass as ncm
        from numpyro_clustermass.inference import fit

        cat = ncm.simulate.mock_catalog(volume=1.0, mass_sampling="flat", n_halos=100, seed=0)
        kw = dict(method="nuts", num_epochs=3, batch_size=64, progress_bar=False, num_warmup=40, num_samples=40,
                  num_chains=2, mass_matrix="adapt")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # 40 draws do not converge: the ConvergenceWarning is not the point
            f = fit(ncm.MassObservableRelation(), cat, devices=2, **kw)
        shards = {k: sorted((s.device.id, list(s.data.shape)) for s in v.addressable_shards)
                  for k, v in f.state.samples.items()}
        shapes = {k: list(v.shape) for k, v in f.state.samples.items()}
        chains_differ = all(bool(np.any(np.asarray(v)[0] != np.asarray(v)[1])) for v in f.state.samples.values())
        try:  # checked before the MAP start is trained
            fit(ncm.MassObservableRelation(), cat, devices=2, **{**kw, "num_chains": 3})
            error = ""
        except ValueError as err:
            error = str(err)
        print(json.dumps({"info": {k: f.info[k] for k in ("chain_method", "chain_devices", "num_chains")},
                          "data_parallel": f.info["data_parallel_devices"], "shards": shards, "shapes": shapes,
                          "chains_differ": chains_differ, "error": error}))
    """)
    assert out["info"] == {"chain_method": "parallel", "chain_devices": [0, 1], "num_chains": 2}
    assert out["data_parallel"] == 2
    assert set(out["shapes"]) == {"intercept", "scatter", "slope"}
    for site, shape in out["shapes"].items():
        assert shape[:2] == [2, 40]
        # each device holds one whole chain of every site: one chain per device
        assert out["shards"][site] == [[0, [1] + shape[1:]], [1, [1] + shape[1:]]]
    assert out["chains_differ"]
    assert "num_chains=3 chains cannot be spread evenly over 2 devices" in out["error"]


@pytest.mark.slow  # BBB's step compiles for most of a minute on two busy cores
def test_sharded_bbb_mc_dropout_ensemble_and_map_start_give_the_single_device_loss_curves():
    out = _run_on_two_devices("""
        import numpy as np
        import numpyro_clustermass as ncm
        from numpyro_clustermass.estimators import MDN
        from numpyro_clustermass.inference import fit

        cat = ncm.simulate.mock_catalog(volume=1.0, mass_sampling="flat", n_halos=100, seed=0)
        out = {}
        for name, method, opts in [("bbb", "bbb", {}), ("mc_dropout", "mc_dropout", {}),
                                   ("ensemble", "ensemble", {"num_members": 2}),
                                   ("bbb_from_map", "bbb", {"init": "map", "map_options": {"num_epochs": 2}})]:
            kw = dict(method=method, num_epochs=3, batch_size=64, patience=None, progress_bar=False, seed=3, **opts)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # 3 epochs of a tiny net may warn that it learned little
                a = fit(MDN(2, (8,)), cat, **kw)
                b = fit(MDN(2, (8,)), cat, devices=2, **kw)
            leaf = jax.tree.leaves(b.params)[0]
            out[name] = {"one": [a.history["train_loss"].tolist(), a.history["val_loss"].tolist()],
                         "two": [b.history["train_loss"].tolist(), b.history["val_loss"].tolist()],
                         "replicated": leaf.sharding.is_fully_replicated and len(leaf.sharding.device_set) == 2}
        print(json.dumps(out))
    """)
    assert set(out) == {"bbb", "mc_dropout", "ensemble", "bbb_from_map"}
    for name, r in out.items():
        # measured in this test: at most 2.2e-7 relative (BBB; mc_dropout 9.1e-8, ensemble 8.2e-8, BBB from a MAP
        # start 1.2e-7): the dropout masks and BBB's weight noise are the same on 1 and 2 devices (partitionable
        # threefry), only the order of the float32 sums differs
        np.testing.assert_allclose(r["two"], r["one"], rtol=1e-5, atol=0, err_msg=name)
        assert np.all(np.isfinite(r["one"])) and r["replicated"], name


# ------------------------------------------------------------------------------------ in this process (one device)
def test_devices_argument_is_checked():
    n = jax.device_count()
    with pytest.raises(ValueError, match=rf"devices={n + 1} asks for {n + 1} devices; JAX sees {n} .*"
                                         r"xla_force_host_platform_device_count"):
        sharding.data_mesh(n + 1)
    for bad in (0, -1):
        with pytest.raises(ValueError, match=r"devices must be None, an int >= 1, 'all' or a sequence"):
            sharding.data_mesh(bad)
    with pytest.raises(ValueError, match=r"'gpu'"):
        sharding.data_mesh("gpu")
    with pytest.raises(TypeError, match=r"got bool True"):
        sharding.data_mesh(True)
    with pytest.raises(TypeError, match=r"jax.Device objects"):
        sharding.data_mesh([0, 1])
    with pytest.raises(ValueError, match=r"empty"):
        sharding.data_mesh([])
    with pytest.raises(ValueError, match=r"at most once"):
        sharding.data_mesh([jax.devices()[0]] * 2)
    mesh = sharding.data_mesh("all")
    assert mesh.axis_names == (sharding.DATA_AXIS,) and mesh.devices.size == n
    assert sharding.mesh_devices(sharding.data_mesh([jax.devices()[-1]])) == [jax.devices()[-1]]


def test_fit_checks_devices_before_reading_the_data():
    from numpyro_clustermass.estimators import MSE
    from numpyro_clustermass.inference import fit

    with pytest.raises(ValueError, match=r"asks for 999 devices"):
        fit(MSE((4,), feature_names=("a",)), "not data", devices=999)


def test_one_device_mesh_trains_as_without_one():
    """devices=1 runs the same program on a one-device mesh: the same losses as devices=None."""
    from numpyro_clustermass.estimators import MSE
    from numpyro_clustermass.inference import fit

    rng = np.random.default_rng(0)
    x = rng.normal(size=(400, 2))
    y = 14.0 + 0.3 * x[:, 0] + 0.1 * rng.normal(size=400)
    kw = dict(num_epochs=2, batch_size=100, progress_bar=False, learning_rate=3e-3)
    a = fit(MSE((4,), feature_names=("a", "b")), (x, y), **kw)
    b = fit(MSE((4,), feature_names=("a", "b")), (x, y), devices=1, **kw)
    # one device, the same program but for the no-op sharding constraints: equal to float32 rounding
    np.testing.assert_allclose(b.history["train_loss"], a.history["train_loss"], rtol=1e-6)
    assert b.info["data_parallel_devices"] == 1
    leaf = jax.tree.leaves(b.params)[0]
    assert leaf.sharding.device_set == {jax.devices()[0]}
