"""The command line's compare: saved fits and a catalogue -> a report folder whose tables are diagnostics.compare's
on the loaded fits; every bad input is one line and exit status 2, before any work."""

import os
import subprocess
import sys

import arviz as az
import numpy as np
import pandas as pd
import pytest

import numpyro_clustermass as ncm
from numpyro_clustermass.cli import CLIError, main, parse_fit_specs
from numpyro_clustermass.diagnostics import arviz_groups, compare

pytestmark = [
    # tiny fits and short chains: edge warnings and unconverged chains are expected, not under test
    pytest.mark.filterwarnings("ignore::numpyro_clustermass.FitWarning"),
    pytest.mark.filterwarnings("ignore::numpyro_clustermass.diagnostics.ConvergenceWarning"),
    pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto distribution:UserWarning"),
]

ERR = "numpyro-clustermass: error: "
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NAMES = ("Logsigv", "LogNgal")
TINY = dict(num_epochs=20, batch_size=64, progress_bar=False, seed=1)


def _error_line(capsys) -> str:
    _, err = capsys.readouterr()
    assert err.startswith(ERR), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """A held-out catalogue file and three fits saved by the API (map, mc_dropout, last-layer nuts)."""
    folder = tmp_path_factory.mktemp("cli_compare")
    cat = ncm.simulate.mock_catalog(volume=1.0, mass_sampling="flat", n_halos=120, seed=0)
    train, test = cat.split(test_fraction=0.25, seed=1)
    cat_path = str(folder / "test.fits")
    ncm.write_catalog(test, cat_path)
    est = ncm.MDN(2, (8,), feature_names=NAMES)
    fits = {
        "map": ncm.fit(est, train, **TINY),
        "mc_dropout": ncm.fit(est, train, method="mc_dropout", num_draws=32, **TINY),
        "nuts": ncm.fit(est, train, method="nuts", map_options={"num_epochs": 20}, num_warmup=30, num_samples=30,
                        mass_matrix="adapt", max_tree_depth=4, bayesian_layers="last", **TINY),
    }
    paths = {}
    for name, f in fits.items():
        paths[name] = str(folder / f"{name}.ncm")
        f.save(paths[name])
    return cat_path, paths


def test_compare_writes_the_report_of_diagnostics_compare(saved, tmp_path, capsys):
    cat_path, paths = saved
    out = tmp_path / "report"
    assert main(["compare", paths["map"], paths["mc_dropout"], paths["nuts"], "--catalog", cat_path,
                 "--reference", "nuts", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    loaded = {name: ncm.load(path) for name, path in paths.items()}
    direct = compare(loaded, ncm.read_catalog(cat_path), reference="nuts")

    table = pd.read_csv(out / "comparison.csv", index_col="fit")
    pd.testing.assert_frame_equal(table, direct.table, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_csv(out / "binned.csv"), direct.binned, check_exact=True)
    pd.testing.assert_frame_equal(pd.read_csv(out / "per_cluster.csv"), direct.per_cluster, check_exact=True)
    report = (out / "report.md").read_text()
    assert "| fit | map | mc_dropout | nuts |" in report and "| w1 | " in report
    for note in direct.notes:
        assert f"- {note}" in report and f"- {note}" in printed
    assert "| fit | map | mc_dropout | nuts |" in printed
    for fig in ("compare_to_reference.png", "coverage_by_mass.png"):
        assert f"]({fig})" in report
        assert (out / fig).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for name in paths:  # each fit's ArviZ object as netCDF, the same as compare's
        idata = az.from_netcdf(out / f"{name}.nc")
        assert {"posterior", "posterior_predictive", "log_likelihood", "observed_data"} <= set(arviz_groups(idata))
        np.testing.assert_array_equal(idata["log_likelihood"]["log_mass"].values,
                                      direct.idata[name]["log_likelihood"]["log_mass"].values)
    assert not [p for p in os.listdir(out) if p.startswith(".tmp-")]  # atomic writes leave no temporary file

    # NAME=PATH names a fit; --reference none: no reference columns and no reference figure
    out2 = tmp_path / "no_reference"
    assert main(["compare", f"point={paths['map']}", paths["mc_dropout"], "--catalog", cat_path, "--reference", "none",
                 "--out", str(out2)]) == 0
    table = pd.read_csv(out2 / "comparison.csv", index_col="fit")
    assert list(table.index) == ["point", "mc_dropout"] and "w1" not in table.columns
    assert not (out2 / "compare_to_reference.png").exists() and (out2 / "point.nc").exists()


def test_compare_bad_inputs_are_one_line_before_any_work(saved, tmp_path, capsys):
    cat_path, paths = saved
    out = tmp_path / "never"

    def fails(args, *expected):
        assert main(["compare", *args]) == 2
        err = _error_line(capsys)
        for text in expected:
            assert text in err, err
        assert not out.exists()  # nothing was written

    fails([paths["map"], "--catalog", cat_path, "--out", str(out)],
          "--reference 'nuts' is not among the fits (map)", "--reference none")
    fails([paths["map"], paths["nuts"], "--catalog", cat_path, "--reference", "bbb", "--out", str(out)],
          "--reference 'bbb' is not among the fits (map, nuts)")
    other = tmp_path / "other"
    other.mkdir()
    copy = other / "map.ncm"
    copy.write_bytes(open(paths["map"], "rb").read())
    fails([paths["map"], str(copy), "--catalog", cat_path, "--reference", "none", "--out", str(out)],
          "two fits are named 'map'", "NAME=PATH")
    fails(["bad name=" + paths["map"], "--catalog", cat_path, "--reference", "none", "--out", str(out)],
          "cannot name the fit")
    fails([str(tmp_path / "missing.ncm"), "--catalog", cat_path, "--reference", "none", "--out", str(out)],
          "no such file", "missing.ncm")
    fails([paths["map"], "--catalog", str(tmp_path / "nope.fits"), "--reference", "none", "--out", str(out)],
          "no such file", "nope.fits")
    damaged = tmp_path / "damaged.ncm"
    damaged.write_bytes(b"not a fit file")
    fails([str(damaged), "--catalog", cat_path, "--reference", "none", "--out", str(out)], "cannot load the fit")
    a_file = tmp_path / "a_file"
    a_file.write_text("")
    assert main(["compare", paths["map"], "--catalog", cat_path, "--reference", "none", "--out", str(a_file)]) == 2
    assert "is a file, not a folder" in _error_line(capsys)
    with pytest.raises(CLIError, match="names no file"):
        parse_fit_specs(["x="])
    # through the console module: the same one line
    res = subprocess.run([sys.executable, "-m", "numpyro_clustermass.cli", "compare", paths["map"], "--catalog",
                          cat_path, "--out", str(out)], capture_output=True, text=True, cwd=REPO, timeout=300,
                         env={**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"})
    assert res.returncode == 2 and res.stderr.startswith(ERR) and res.stderr.count("\n") == 1, res.stderr
    assert "is not among the fits" in res.stderr and not out.exists()
