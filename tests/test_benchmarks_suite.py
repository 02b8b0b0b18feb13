"""The benchmark suite (``python -m benchmarks``): one cheap run at quick sizes writes its JSON and markdown.

No wall-clock thresholds: the test checks the files, the header and that each entry's ratio is finite and
consistent with its target flag, not how fast anything is.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks import suite  # noqa: E402

HEADER_FIELDS = ("device", "platform", "versions", "cpu_count", "date", "git_commit", "quick", "benchmarks",
                 "wall_s")
ENTRY_FIELDS = ("name", "value", "unit", "reference", "reference_value", "ratio", "ratio_means", "target", "met",
                "sizes", "note", "benchmark")


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--only", "hpdi,reweight", "--out",
                           str(out)], cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return out, proc.stdout


def test_quick_run_writes_json_and_markdown(quick_run):
    out, stdout = quick_run
    platform = json.loads((out / next(p.name for p in out.glob("*.json"))).read_text())["header"]["platform"]
    data = json.loads((out / f"{platform}.json").read_text())
    md = (out / f"{platform}.md").read_text()
    h = data["header"]
    for k in HEADER_FIELDS:
        assert k in h, k
    for k in ("jax", "numpyro", "flax", "numpy", "numpyro_clustermass"):
        assert h["versions"][k], k
    assert h["quick"] is True and h["benchmarks"] == ["hpdi", "reweight"]
    assert h["cpu_count"] >= 1 and data["errors"] == {}
    assert {e["benchmark"] for e in data["entries"]} == {"hpdi", "reweight"}
    for e in data["entries"]:
        for k in ENTRY_FIELDS:
            assert k in e, (e["name"], k)
        assert e["reference"] and math.isfinite(e["ratio"]) and e["ratio"] > 0
        assert math.isfinite(e["value"]) and math.isfinite(e["reference_value"])
        if e["target"] is not None:
            op, bound = e["target"].split()
            assert e["met"] == (e["ratio"] >= float(bound) if op == ">=" else e["ratio"] <= float(bound))
        # the table has one row per entry, with its ratio
        assert f"| {e['name']} |" in md
    assert h["device"] in md and "| benchmark | value | reference |" in md
    assert "[1/2] hpdi" in stdout and "[2/2] reweight" in stdout
    assert set(h["seconds"]) == {"hpdi", "reweight"} and all(v > 0 for v in h["seconds"].values())
    assert h["peak_rss_mib"]["process"] > 0 and "Seconds per benchmark: hpdi" in md


def test_a_benchmark_in_a_child_process_reports_its_entries_and_its_own_peak():
    """What IN_CHILD runs (nuts, scaling) goes through _run_in_child; reweight at quick sizes stands in for them."""
    entries, peak = suite._run_in_child("reweight", True, False)
    assert [e["name"] for e in entries] == [e["name"] for e in suite.bench_reweight(True, False)]
    assert all(math.isfinite(e["ratio"]) for e in entries)
    assert peak is not None and peak > 0
    assert set(suite.IN_CHILD) <= set(suite.BENCHMARKS)


def test_unknown_benchmark_is_an_error(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--only", "nope", "--out", str(tmp_path)], cwd=ROOT,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and "unknown benchmark" in proc.stderr and "hpdi" in proc.stderr
    with pytest.raises(ValueError, match="unknown benchmark"):
        suite.run(["nope"])


def test_entry_target_and_markdown():
    e = suite.entry("a", 1.0, "s", "b", 2.0, 0.5, "time / reference time", ("<=", 3.0), {"n": 1})
    assert e["met"] is True and e["target"] == "<= 3"
    e = suite.entry("a", 1.0, "s", "b", 2.0, 0.5, "value / reference", (">=", 0.95))
    assert e["met"] is False
    assert suite.entry("a", 1.0, "s", None, None, None, "")["met"] is None
    md = suite.markdown({"header": {"device": "cpu: x", "versions": {"jax": "0"}, "cpu_count": 1, "date": "d",
                                    "git_commit": None, "quick": False, "wall_s": 2.0},
                         "entries": [e], "errors": {"x": "RuntimeError: boom"}})
    assert "| a | 1 s | b | 2 s | 0.5 | value / reference | >= 0.95 | **no** |" in md
    assert "Failed: x: RuntimeError: boom" in md


def test_headline_seeds_refuses_flow_options_for_the_mdn(capsys):
    from benchmarks import headline_seeds

    with pytest.raises(SystemExit) as exc:
        headline_seeds.main(["--num-bins", "8"])
    assert exc.value.code == 2
    assert "--num-bins applies to --estimator flow only" in capsys.readouterr().err


def test_bench_step_times_the_package_steps_of_each_method():
    """benchmarks/bench_step.py at a tiny size: every method's step runs and is compared with MAP's."""
    from benchmarks import bench_step

    m = bench_step.measure(hidden=(8,), components=2, batch=32, steps=3, rounds=2, eval_rows=40)
    assert set(m["ms_per_step"]) == {"map", "bbb", "mc_dropout"} and m["ratio"]["map"] == 1.0
    assert set(m["ms_per_eval"]) == set(m["ms_per_step"]) and min(m["ms_per_eval"].values()) > 0
    assert all(len(v) == 2 and min(v) > 0 for v in m["rounds"].values())
    assert all(math.isfinite(r) and r > 0 for r in m["ratio"].values())
    assert m["num_weights"] == 14 * 8 + 8 + 8 * 6 + 6  # trunk and the head's 3 x 2 mixture parameters
    with pytest.raises(ValueError, match=r"eval_rows must be >= 1; got 0"):
        bench_step.measure(eval_rows=0)
    with pytest.raises(ValueError, match="must be 'map'"):
        bench_step.measure(methods=("bbb", "map"))
    with pytest.raises(ValueError, match=r"unknown inference method 'nope'"):
        bench_step.measure(hidden=(8,), components=2, batch=32, steps=1, rounds=1, methods=("map", "nope"))


def test_bench_bbb_throughput_times_fits_with_and_without_validation_data():
    """benchmarks/bench_bbb_throughput.py at a tiny size, without validation data (the suite's entry) and with
    fit's default 10%: samples/s count the training rows either way."""
    from benchmarks import bench_bbb_throughput as b

    kw = dict(n_halos=200, hidden=(8,), components=2, batch=32, epochs=2, rounds=1, verbose=False)
    for fraction in (0.0, 0.1):
        m = b.measure(**kw, validation_fraction=fraction)
        assert m["validation_fraction"] == fraction and m["ratio"]["map"] == 1.0
        assert all(len(v) == 1 and v[0] > 0 for v in m["rates"].values()) and m["ratio"]["bbb"] > 0
    with pytest.raises(ValueError, match=r"validation_fraction must be in \[0, 1\); got 1.0"):
        b.measure(**kw, validation_fraction=1.0)


def test_cold_fit_refuses_an_unknown_method_before_starting_anything():
    from benchmarks import cold_fit

    with pytest.raises(ValueError, match=r"unknown method\(s\) \['nope'\]; registered methods are"):
        cold_fit.measure(("map", "nope"))
    with pytest.raises(ValueError, match=r"unknown model 'mlp'; one of \('mdn', 'relation'\)"):
        cold_fit.measure(("map",), model="mlp")


def test_cold_fit_child_fits_the_mass_sigma_relation(tmp_path):
    import numpy as np

    from benchmarks import cold_fit
    from numpyro_clustermass.simulate import mock_catalog

    cat = mock_catalog(volume=1.0, mass_sampling="flat", n_halos=200, seed=0)
    path = tmp_path / "data.npz"
    np.savez(path, x=cat.features(), x_relation=cat.features(("Logsigv",)), y=cat.log_mass,
             g=np.asarray(cat["halo_id"]))
    from jax._src import monitoring as mon  # the listener list is not public (jax.monitoring only registers)

    listeners = len(mon.get_event_duration_listeners())
    r = cold_fit.child(str(path), "map", 2, "relation")
    assert r["method"] == "map" and r["first"] > 0 and r["warm"] > 0 and r["compiles"] >= 0
    assert len(mon.get_event_duration_listeners()) == listeners  # its compile counter is gone after the first fit


def test_nuts_refit_refuses_fewer_than_one_fit():
    from benchmarks import nuts_refit

    with pytest.raises(SystemExit, match=r"--fits must be >= 1; got 0"):
        nuts_refit.main(["--fits", "0"])
