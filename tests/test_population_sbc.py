"""The coverage table of ``benchmarks/population_sbc.py`` (issue 9), on hand-made records whose answer is known.

The script's NUTS fits take minutes per survey; its bookkeeping (which interval holds which truth, the Gaussian
intervals of the naive fits, the pooled M-sigma truth) is checked here on records shaped like the ones it builds.
"""

import argparse
import importlib.util
import pathlib
import time

import numpy as np
import pytest


@pytest.fixture(scope="module")
def sbc():
    path = pathlib.Path(__file__).resolve().parents[1] / "benchmarks" / "population_sbc.py"
    spec = importlib.util.spec_from_file_location("population_sbc", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _records(sbc, n_surveys=4):
    rng = np.random.default_rng(0)
    rec = {k: [] for k in ("bins", "tinker", "scaling", "rhat")}
    pooled_m, pooled_y = [], []
    for s in range(n_surveys):
        row = {"survey": s}
        for method in ("pop", "point", "mode", "ideal"):
            # survey s: its first s of the ten bins miss the truth at 68%, none at 95%
            row[f"{method}_0.68"] = np.arange(10) >= s
            row[f"{method}_0.95"] = np.ones(10, bool)
            row[f"{method}_bias"] = np.full(10, 0.01 * s)
        rec["bins"].append(row)
        # the population fit's log A interval misses its truth (0) in survey 0 only
        lo = 0.05 if s == 0 else -0.1
        rec["tinker"].append({"pop": {k: (lo + 0.02, [[lo, 0.1], [-0.2, 0.2]]) for k in ("log_A", "alpha")},
                              **{n: (np.array([0.0, 3.0]), np.array([1.0, 1.0])) for n in ("point", "mode", "ideal")}})
        m = rng.uniform(14.0, 15.0, 400)
        y = 2.9 + 0.3 * (m - 14.5) + 0.05 * rng.standard_normal(m.size)
        pooled_m.append(m)
        pooled_y.append(y)
        fits = {n: sbc.relation_mle(m, y) for n in ("point", "mode", "ideal")}
        rec["scaling"].append({"pop": {k: (0.0, [[-1.0, 10.0], [-1.0, 10.0]]) for k in ("a", "b", "s")}, **fits})
        rec["rhat"].append({"log_n": 1.0 + 0.001 * s})
    return rec, pooled_m, pooled_y


def test_report_counts_coverage_and_bias(sbc, capsys):
    rec, pm, py = _records(sbc)
    args = argparse.Namespace(observable="sigv", scatter_slope=False, relation=(2.9, 0.3, 0.05))
    rows, max_rhat = sbc.report(rec, pm, py, args, time.perf_counter())
    table = {(q, m): (n, c68, c95, b) for q, m, n, c68, c95, b in rows}
    # bins: misses 0 + 1 + 2 + 3 of 40 at 68%; median of the biases 0, 0.01, 0.02, 0.03 (ten each)
    n, c68, c95, b = table[("dn/dlogM, 10 bins 14-15", "pop")]
    assert (n, c68, c95) == (40, 34 / 40, 1.0) and b == pytest.approx(0.015)
    # Tinker log A: the population interval misses in 1 of 4; the naive estimate 0 +- 1 covers 0, alpha 3 +- 1 not
    assert table[("tinker log_A", "pop")][1:3] == (0.75, 1.0)
    assert table[("tinker log_A", "point")][1:3] == (1.0, 1.0)
    assert table[("tinker alpha", "ideal")][1:3] == (0.0, 0.0)
    # M-sigma: per-survey least squares against the pooled least squares covers it (a, b at the 95% level)
    assert table[("scaling b", "ideal")][2] == 1.0
    assert abs(table[("scaling b", "ideal")][3]) < 0.01
    assert max_rhat == pytest.approx(1.003)
    assert "population fit (this module)" in capsys.readouterr().out
    # a synthetic observable's truth is the relation it was drawn from (here b = 20, outside the population
    # intervals [-1, 10] that hold a = 2.9), not the pooled fit
    args.observable = "synthetic"
    args.relation = (2.9, 20.0, 0.05)
    rows, _ = sbc.report(rec, pm, py, args, time.perf_counter())
    table = {(q, m): (n, c68, c95, b) for q, m, n, c68, c95, b in rows}
    assert table[("scaling b", "pop")][1:3] == (0.0, 0.0)
    assert table[("scaling a", "pop")][1:3] == (1.0, 1.0)
    assert table[("scaling b", "ideal")][3] == pytest.approx(0.3 - 20.0, abs=0.01)


def test_relation_mle_standard_errors_match_their_scatter(sbc):
    """relation_mle's Laplace errors: the slope's over 400 replicates scatters as quoted, and with a constant
    scatter it is least squares."""
    rng = np.random.default_rng(1)
    m = rng.uniform(14.0, 15.0, 200)
    y0 = 2.9 + 0.3 * (m - 14.5) + 0.05 * rng.standard_normal(m.size)
    assert sbc.relation_mle(m, y0)[0][:2] == pytest.approx(np.polyfit(m - 14.5, y0, 1)[::-1], abs=1e-6)
    b = [sbc.relation_mle(m, 2.9 + 0.3 * (m - 14.5) + 0.05 * rng.standard_normal(m.size)) for _ in range(400)]
    est = np.array([e[0][1] for e in b])
    se = np.median([e[1][1] for e in b])
    assert est.std() == pytest.approx(se, rel=0.12)
    assert np.mean(sbc.gauss_cover(est, np.array([e[1][1] for e in b]), 0.3, 0.68)) == pytest.approx(0.68, abs=0.06)


def test_relation_mle_recovers_a_scatter_that_falls_with_mass(sbc):
    rng = np.random.default_rng(2)
    m = rng.uniform(13.5, 15.0, 20000)
    x = m - 14.5
    y = 2.87 + 0.36 * x + 0.04 * np.exp(-1.2 * x) * rng.standard_normal(m.size)
    est, se = sbc.relation_mle(m, y, scatter_slope=True)
    assert sbc.relation_params(True) == ("a", "b", "s", "s_slope")
    assert np.all(np.abs(est - [2.87, 0.36, 0.04, -1.2]) < 4 * se), (est, se)
    assert se[3] < 0.05
