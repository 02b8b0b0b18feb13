"""The persistent compilation cache the package switches on at import (numpyro_clustermass.compilation_cache_dir).

Every check runs in a fresh Python process: the cache is configured when the package is imported, and this test
process's own JAX configuration must stay as it is.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

_ENV_DROP = ("JAX_COMPILATION_CACHE_DIR", "NUMPYRO_CLUSTERMASS_COMPILATION_CACHE", "XDG_CACHE_HOME",
             "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS")


def _run(code: str, **env) -> dict:
    """Run ``code`` in a fresh interpreter (this checkout first on the path); return the JSON it prints last."""
    base = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
    root = str(Path(__file__).resolve().parents[1])
    base["PYTHONPATH"] = root + os.pathsep + base.get("PYTHONPATH", "")
    base["JAX_PLATFORMS"] = "cpu"
    base.update({k: str(v) for k, v in env.items()})
    out = subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=base, capture_output=True, text=True,
                         timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_import_points_the_cache_at_the_user_cache_folder_and_caches_small_programs(tmp_path):
    res = _run("""
        import json, jax
        import numpyro_clustermass as ncm
        folder = ncm.compilation_cache_dir()
        jax.jit(lambda x: x * 3.0 + 1.0)(2.0).block_until_ready()  # compiles in milliseconds
        import os
        print(json.dumps({"folder": folder, "min_time": jax.config.jax_persistent_cache_min_compile_time_secs,
                          "entries": sorted(os.listdir(folder))}))
    """, XDG_CACHE_HOME=tmp_path / "xdg", HOME=tmp_path / "home")
    folder = tmp_path / "xdg" / "numpyro_clustermass" / "jax"
    assert res["folder"] == str(folder) and folder.is_dir()
    assert res["min_time"] == 0.0
    # JAX's own threshold (1 s) would have left this millisecond compile out of the cache
    assert any(e.endswith("-cache") for e in res["entries"]), res["entries"]


def test_env_var_turns_it_off_and_a_users_own_setting_wins(tmp_path):
    res = _run("""
        import json, jax
        import numpyro_clustermass as ncm
        print(json.dumps({"folder": ncm.compilation_cache_dir()}))
    """, XDG_CACHE_HOME=tmp_path / "xdg", NUMPYRO_CLUSTERMASS_COMPILATION_CACHE="0")
    assert res["folder"] is None
    assert not (tmp_path / "xdg" / "numpyro_clustermass").exists()  # nothing created when off

    mine = tmp_path / "mine"
    res = _run("""
        import json, jax
        import numpyro_clustermass as ncm
        print(json.dumps({"folder": ncm.compilation_cache_dir(),
                          "min_time": jax.config.jax_persistent_cache_min_compile_time_secs}))
    """, XDG_CACHE_HOME=tmp_path / "xdg", JAX_COMPILATION_CACHE_DIR=mine)
    assert res == {"folder": str(mine), "min_time": 1.0}  # JAX's settings untouched
    assert not (tmp_path / "xdg" / "numpyro_clustermass").exists()


def test_configure_default_cases(tmp_path):
    """The HOME fallback without XDG_CACHE_HOME, the values that turn it off, a folder that cannot be created
    and a folder set through jax.config, each through configure_default() in one fresh process."""
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    values = {"0": False, "off": False, "False": False, " no ": False, "1": True, "": True, "yes": True}
    res = _run(f"""
        import json, os, jax
        import numpyro_clustermass as ncm                      # off at import (env var below)
        from numpyro_clustermass import _compilation_cache as cc
        out = {{"at_import": ncm.compilation_cache_dir()}}
        os.environ.pop("XDG_CACHE_HOME", None)
        for i, value in enumerate({list(values)!r}):
            os.environ["HOME"] = {str(tmp_path)!r} + f"/home{{i}}"
            os.environ["NUMPYRO_CLUSTERMASS_COMPILATION_CACHE"] = value
            out[value] = cc.configure_default()
            jax.config.update("jax_compilation_cache_dir", None)
        os.environ["NUMPYRO_CLUSTERMASS_COMPILATION_CACHE"] = "1"
        os.environ["XDG_CACHE_HOME"] = {str(blocker)!r}           # mkdir fails: silently off
        out["blocked"] = cc.configure_default()
        out["blocked_dir"] = ncm.compilation_cache_dir()
        jax.config.update("jax_compilation_cache_dir", "/somewhere/else")
        out["configured"] = cc.configure_default()
        out["configured_dir"] = ncm.compilation_cache_dir()
        print(json.dumps(out))
    """, NUMPYRO_CLUSTERMASS_COMPILATION_CACHE="0")
    assert res["at_import"] is None
    for i, (value, on) in enumerate(values.items()):
        home = tmp_path / f"home{i}" / ".cache" / "numpyro_clustermass" / "jax"
        assert res[value] == (str(home) if on else None), value
        assert home.is_dir() == on, value
    assert res["blocked"] is None and res["blocked_dir"] is None
    assert res["configured"] is None and res["configured_dir"] == "/somewhere/else"


@pytest.mark.slow  # a cold process compiles everything a NUTS fit runs: 20 s
def test_a_second_nuts_fit_finds_its_sampler_in_the_cache(tmp_path):
    """The sampler's program takes the data and the fixed params as arguments (jit_model_args): another fit of the
    same model and shapes reads it from the persistent cache. With both baked in as constants, every fit compiled
    it again (1.1-1.2 s for the M–σ relation on 897 clusters, each fit)."""
    res = _run("""
        import io, json, logging, warnings
        import numpyro_clustermass as ncm
        log = io.StringIO()
        handler = logging.StreamHandler(log)
        handler.setLevel(logging.DEBUG)
        logger = logging.getLogger("jax._src.compiler")
        logger.setLevel(logging.DEBUG)
        logger.addHandler(handler)
        cat = ncm.simulate.mock_catalog(volume=1.0, mass_sampling="flat", n_halos=100, seed=0)
        lines = []
        for seed in range(3):  # another split, MAP start and chains each time: the same shapes
            log.truncate(0)
            log.seek(0)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # 20 draws do not converge: not the point
                ncm.fit(ncm.MassObservableRelation(), cat, method="nuts", num_epochs=2, batch_size=32,
                        progress_bar=False, num_warmup=20, num_samples=20, num_chains=1, seed=seed)
            lines.append([line.split(" with key")[0] for line in log.getvalue().splitlines()
                          if "'jit__fori_collect_loop'" in line and "cache" in line.lower()])
        print(json.dumps(lines))
    """, XDG_CACHE_HOME=tmp_path / "xdg")
    assert [len(x) for x in res] == [1, 1, 1], res
    assert res[0][0].startswith("PERSISTENT COMPILATION CACHE MISS"), res
    assert all(x[0].startswith("Persistent compilation cache hit") for x in res[1:]), res


@pytest.mark.slow
def test_a_first_bbb_fit_compiles_a_few_programs_not_hundreds_of_eager_operations():
    # In a fresh process every eager operation is compiled on its own: BBB's start (flax init, SVI.init), the
    # prior term and the weight shapes used to be eager: 234 compiles after a MAP fit had compiled the shared ones,
    # and a cold 2-epoch fit of the lecture net took 17.6-20.5 s; compiled, 20 compiles and 6.6-7.4 s.
    res = _run("""
        import json, numpy as np, jax.monitoring as mon
        from numpyro_clustermass.estimators import MDN
        from numpyro_clustermass.inference import fit
        rng = np.random.default_rng(0)
        y = rng.uniform(13.5, 15.0, 600); x = y[:, None] + 0.1 * rng.normal(size=(600, 3))
        est = MDN(2, (8,), feature_names=("a", "b", "c"))
        fit(est, (x, y), method="map", num_epochs=1, batch_size=128, progress_bar=False)  # the shared programs
        compiles = []

        def count(event, duration, **kw):
            if event.endswith("backend_compile_duration"):
                compiles.append(event)

        mon.register_event_duration_secs_listener(count)
        fit(est, (x, y), method="bbb", num_epochs=2, batch_size=128, progress_bar=False)
        print(json.dumps({"compiles": len(compiles)}))
    """, NUMPYRO_CLUSTERMASS_COMPILATION_CACHE="0")
    assert 0 < res["compiles"] <= 40, res
