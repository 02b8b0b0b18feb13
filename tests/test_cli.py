"""The command line: the two commands' happy paths, and every bad input ending in one line and exit status 2."""

import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from numpyro_clustermass.catalog import REQUIRED_COLUMNS, read_catalog
from numpyro_clustermass.cli import main

ERR = "numpyro-clustermass: error: "


def test_simulate_then_info(tmp_path, capsys):
    path = str(tmp_path / "cat.fits")
    assert main(["simulate", path, "--volume", "0.002", "--seed", "3"]) == 0
    cat = read_catalog(path)
    assert len(cat) > 100 and cat.meta["seed"] == 3
    assert main(["info", path]) == 0
    assert "halos:" in capsys.readouterr().out


def test_info_reports_invalid_file(tmp_path, capsys):
    from astropy.table import Table

    Table({"M200c": np.ones(3)}).write(str(tmp_path / "bad.fits"))
    assert main(["info", str(tmp_path / "bad.fits")]) == 2
    err = capsys.readouterr().err
    assert err.startswith(ERR) and "lacks required columns" in err and err.count("\n") == 1


def _error_line(capsys) -> str:
    """The single stderr line of a failed command (and nothing on stdout, no traceback)."""
    out, err = capsys.readouterr()
    assert err.startswith(ERR), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _empty_fits(path):
    from astropy.table import Table

    Table({c: np.zeros(0) for c in REQUIRED_COLUMNS}).write(str(path))
    return str(path)


@pytest.mark.parametrize("case, pattern", [
    ("missing", r"no such file: '.*nope\.fits'"),
    ("directory", r"is a directory"),
    ("zero_rows", r"0 rows|no rows|empty"),
    ("suffix", r"cannot tell the format of '.*cat\.csv'.*--format fits"),
    ("not_fits", r"(?i)'.*garbage\.fits'.*\bfits\b"),  # read_catalog's error, or the CLI's own
    ("not_parquet", r"(?i)'.*garbage\.parquet'.*\bparquet\b"),
])
def test_info_bad_paths_get_one_line_and_status_2(tmp_path, capsys, case, pattern):
    paths = {
        "missing": str(tmp_path / "nope.fits"),
        "directory": str(tmp_path),
        "zero_rows": _empty_fits(tmp_path / "empty.fits"),
        "suffix": str(tmp_path / "cat.csv"),
        "not_fits": str(tmp_path / "garbage.fits"),
        "not_parquet": str(tmp_path / "garbage.parquet"),
    }
    for name in ("cat.csv", "garbage.fits", "garbage.parquet"):
        (tmp_path / name).write_text("not a catalogue\n")
    assert main(["info", paths[case]]) == 2
    assert re.search(pattern, _error_line(capsys)), case


def test_format_option_reads_and_writes_any_suffix(tmp_path, capsys):
    path = str(tmp_path / "cat.dat")
    assert main(["simulate", path, "--volume", "0.002", "--format", "parquet"]) == 0
    assert len(read_catalog(path, format="parquet")) > 100
    assert main(["info", path, "--format", "parquet"]) == 0
    assert "halos:" in capsys.readouterr().out
    assert main(["info", path, "--format", "fits"]) == 2  # a Parquet file read as FITS: one line, not a traceback
    assert re.search(r"(?i)cat\.dat.*\bfits\b", _error_line(capsys))


@pytest.mark.parametrize("args, pattern", [
    (["--volume", "nan"], r"argument --volume: must be a finite number > 0; got 'nan'"),
    (["--volume", "inf"], r"argument --volume: must be a finite number > 0; got 'inf'"),
    (["--volume", "0"], r"argument --volume: must be a finite number > 0; got '0'"),
    (["--volume", "-1"], r"argument --volume: must be a finite number > 0; got '-1'"),
    (["--volume", "big"], r"argument --volume: not a number: 'big'"),
    (["--mass-sampling", "flat", "--n-halos", "0"], r"argument --n-halos: must be an integer >= 1; got '0'"),
    (["--mass-sampling", "flat", "--n-halos", "-5"], r"argument --n-halos: must be an integer >= 1; got '-5'"),
    (["--seed", "-1"], r"argument --seed: must be an integer >= 0; got '-1'"),
    (["--format", "csv"], r"argument --format: invalid choice: 'csv'"),
])
def test_simulate_bad_option_values_are_usage_errors(tmp_path, capsys, args, pattern):
    with pytest.raises(SystemExit) as exc:
        main(["simulate", str(tmp_path / "cat.fits"), *args])
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: numpyro-clustermass simulate") and re.search(pattern, err), err
    assert "Traceback" not in err
    assert not os.listdir(tmp_path)  # nothing simulated, nothing written


def test_quickstart_bad_volume_is_a_usage_error(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["quickstart", "--volume", "nan", "--out", str(tmp_path / "q")])
    assert exc.value.code == 2 and "argument --volume" in capsys.readouterr().err


def test_quickstart_out_that_is_a_file_fails_before_running(tmp_path, capsys):
    (tmp_path / "q").write_text("")
    assert main(["quickstart", "--fast", "--out", str(tmp_path / "q")]) == 2
    assert "is a file, not a folder" in _error_line(capsys)


@pytest.mark.parametrize("name, extra, pattern", [
    ("no_such_folder/cat.fits", [], r"the output folder '.*no_such_folder' does not exist; create it first"),
    ("cat.csv", [], r"cannot tell the format of '.*cat\.csv'"),
    ("", [], r"is a directory"),
    ("cat.fits", ["--n-halos", "10"], r"--n-halos 10 needs --mass-sampling flat"),
])
def test_simulate_bad_output_fails_before_simulating(tmp_path, capsys, monkeypatch, name, extra, pattern):
    import numpyro_clustermass.simulate as simulate

    def must_not_run(*a, **k):
        raise AssertionError("the simulation ran before the output path was checked")

    monkeypatch.setattr(simulate, "mock_catalog", must_not_run)
    target = str(tmp_path / name) if name else str(tmp_path)
    assert main(["simulate", target, "--volume", "0.002", *extra]) == 2
    assert re.search(pattern, _error_line(capsys))
    assert not os.path.exists(tmp_path / "no_such_folder")


def test_console_entry_point_prints_no_traceback(tmp_path):
    exe = shutil.which("numpyro-clustermass", path=os.path.dirname(sys.executable))
    cmd = [exe] if exe else [sys.executable, "-c", "import sys; from numpyro_clustermass.cli import main; "
                                                   "sys.exit(main())"]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    missing = str(tmp_path / "missing.fits")
    res = subprocess.run(cmd + ["info", missing], capture_output=True, text=True, env=env, timeout=120)
    assert res.returncode == 2
    assert res.stderr == f"{ERR}no such file: {missing!r}\n"
    assert res.stdout == ""
