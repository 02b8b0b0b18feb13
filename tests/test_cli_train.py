"""The command line's train, predict and evaluate: a whole run through the console entry, Ctrl-C during training,
and every bad input ending in one line."""

import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

import numpyro_clustermass as ncm
from numpyro_clustermass import cli
from numpyro_clustermass.cli import CLIError, main

ERR = "numpyro-clustermass: error: "
REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
#: A tiny MDN trained for a few epochs: enough to give distinct posteriors, cheap to compile.
TINY = ["--components", "2", "--hidden", "8", "--batch-size", "64", "--no-progress"]


def _error_line(capsys) -> str:
    """The single stderr line of a failed command (no traceback)."""
    _, err = capsys.readouterr()
    assert err.startswith(ERR), err
    assert err.count("\n") == 1 and "Traceback" not in err, err
    return err


def _env():
    return {**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}


def _cli_subprocess(args, **kw):
    return subprocess.run([sys.executable, "-m", "numpyro_clustermass.cli", *args], capture_output=True, text=True,
                          env=_env(), cwd=REPO, timeout=300, **kw)


@pytest.fixture(scope="module")
def catalog(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("cli_train") / "cat.fits")
    assert main(["simulate", path, "--volume", "0.002", "--seed", "3"]) == 0
    return path


@pytest.fixture(scope="module")
def fit_file(catalog):
    out = os.path.join(os.path.dirname(catalog), "fit.ncm")
    assert main(["train", catalog, "--out", out, "--epochs", "3", *TINY]) == 0
    return out


# ---------------------------------------------------------------------------------------------- the whole run
def test_simulate_train_predict_evaluate(catalog, fit_file, tmp_path, capsys):
    """simulate -> train (fixtures, through main) -> predict (a subprocess of the console module, and main) ->
    evaluate; the tables hold exactly what the loaded fit's posterior gives."""
    assert os.path.isfile(fit_file)
    assert not os.path.exists(cli.checkpoint_path(fit_file))  # the finished fit supersedes its checkpoints
    f = ncm.load(fit_file)
    assert f.estimator.config() == ncm.MDN(num_components=2, hidden=(8,)).config() and f.method == "map"
    assert len(f.history["train_loss"]) == 3
    cat = ncm.read_catalog(catalog)

    table = str(tmp_path / "masses.csv")
    res = _cli_subprocess(["predict", fit_file, catalog, "--out", table, "--prior", "flat:13.5,15.3"])
    assert res.returncode == 0, res.stderr
    assert "Traceback" not in res.stderr
    df = pd.read_csv(table)
    post = f.posterior(cat).reweight(ncm.priors.Flat(13.5, 15.3))
    assert len(df) == len(cat)
    np.testing.assert_array_equal(df.halo_id, cat["halo_id"])
    np.testing.assert_array_equal(df.los, cat["los"])
    np.testing.assert_array_equal(df.log_mass, cat.log_mass)
    q = post.quantiles([0.16, 0.84, 0.025, 0.975])
    expected = {"mean": post.mean(), "median": post.median(), "mode": post.mode(), "q16": q[0], "q84": q[1],
                "q025": q[2], "q975": q[3], "std": post.std(),
                "epistemic_std": np.sqrt(post.epistemic_variance)}
    for name, values in expected.items():  # float32 written as its shortest round-trip repr: exact
        np.testing.assert_array_equal(df[name].to_numpy().astype(np.float32), values, err_msg=name)
    assert (df.q025 <= df.q16).all() and (df.q16 <= df["median"]).all() and (df["median"] <= df.q84).all()
    assert df.epistemic_std.eq(0).all()  # a point fit

    # no reweighting, Parquet and FITS: the fit's own posterior
    raw = f.posterior(cat)
    for name in ("masses.parquet", "masses.fits"):
        path = str(tmp_path / name)
        assert main(["predict", fit_file, catalog, "--out", path]) == 0
        got = pd.read_parquet(path) if name.endswith("parquet") else _read_fits_table(path)
        np.testing.assert_array_equal(got["mode"].to_numpy(), raw.mode())
        np.testing.assert_array_equal(got["mean"].to_numpy(), raw.mean())
    assert not np.array_equal(raw.mode(), post.mode())  # the prior changed something

    folder = tmp_path / "report"
    assert main(["evaluate", fit_file, catalog, "--out", str(folder), "--prior", "tinker08"]) == 0
    out = capsys.readouterr().out
    assert "## Per mass bin (reweighted posterior, mode)" in out
    for name in ("binned_predictions", "training_prior", "posterior_examples", "pit_histogram", "coverage_curve"):
        with open(folder / f"{name}.png", "rb") as fh:
            assert fh.read(8) == b"\x89PNG\r\n\x1a\n", name
    summary = pd.read_csv(folder / "metrics.csv")
    assert list(zip(summary.posterior, summary.estimate)) == [
        ("posterior", "mean"), ("posterior", "mode"), ("reweighted", "mean"), ("reweighted", "mode")]
    rw = raw.reweight(ncm.priors.MassFunction("tinker08"))
    truth = cat.log_mass
    row = summary[(summary.posterior == "reweighted") & (summary.estimate == "mode")].iloc[0]
    assert row.bias_median == pytest.approx(np.median(rw.mode() - truth), abs=1e-6)
    assert row.coverage_central_68 == pytest.approx(ncm.metrics.coverage(rw, truth, [0.68]).empirical[0], abs=1e-6)
    binned = pd.read_csv(folder / "binned.csv")
    mode_rows = binned[(binned.posterior == "reweighted") & (binned.estimate == "mode")]
    assert mode_rows.n.sum() == len(cat)  # every truth of the mock lies in 13.5-15.3
    assert mode_rows.bias_median.dropna().size > 5 and mode_rows.cov_central_68.dropna().between(0, 1).all()
    coverage = pd.read_csv(folder / "coverage.csv")
    assert set(coverage.kind) == {"central", "hpd"} and 0.68 in set(coverage.nominal.round(2))
    assert "| posterior | estimate |" in (folder / "metrics.md").read_text()
    by_bin = pd.read_csv(folder / "coverage_by_bin.csv")
    expected_bins = ncm.metrics.coverage_by_bin(rw, truth)
    got = by_bin[by_bin.posterior == "reweighted"].reset_index(drop=True)
    np.testing.assert_allclose(got.coverage_68, expected_bins.coverage_68, rtol=1e-6)
    assert got.n.sum() == len(cat)
    md = (folder / "metrics.md").read_text()
    assert "## Coverage per mass bin" in md and "## Covariate shift" in md
    with open(folder / "coverage_by_bin.png", "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"


def _read_fits_table(path):
    from astropy.table import Table

    return Table.read(path, hdu="MASSES").to_pandas()


def test_train_sigint_saves_the_best_state_and_resume_continues_it(catalog, tmp_path):
    out = str(tmp_path / "fit.ncm")
    ckpt = cli.checkpoint_path(out)
    # a constant learning rate: the default plateau schedule ends this tiny fit after its last reduction (77 epochs
    # in 2.2 s), which a SIGINT sent 0.5 s after the first checkpoint could miss on a loaded machine (it did once)
    args = ["train", catalog, "--out", out, "--epochs", "100000", "--patience", "none", "--checkpoint-every", "1",
            "--learning-rate", "0.003", "--option", "schedule=constant", *TINY]
    # a shell's background job ignores SIGINT, and Python then keeps ignoring it: the child restores the
    # KeyboardInterrupt handler (in the child, not with preexec_fn, which forks a multithreaded JAX process)
    boot = ("import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
            "from numpyro_clustermass.cli import main; sys.exit(main(sys.argv[1:]))")
    proc = subprocess.Popen([sys.executable, "-c", boot, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=_env(), cwd=REPO)
    try:
        deadline = time.monotonic() + 240
        while not os.path.exists(ckpt):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.2)
        time.sleep(0.5)
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    lines = [line for line in stderr.splitlines() if line.startswith("numpyro-clustermass:")]
    assert len(lines) == 1 and lines[0].startswith("numpyro-clustermass: interrupted;"), stderr
    assert repr(ckpt) in lines[0] and f"--resume {ckpt}" in lines[0]
    assert not os.path.exists(out)
    saved = ncm.load(ckpt)
    epochs = len(saved.history["train_loss"])
    assert epochs >= 1 and saved.method == "map"
    assert saved.method_options == {"learning_rate": 0.003, "schedule": "constant"}

    # --resume continues the saved fit for --epochs more (its estimator, method and options: learning_rate,
    # schedule)
    assert main(["train", catalog, "--out", out, "--resume", ckpt, "--epochs", "2", "--patience", "none",
                 "--no-progress"]) == 0
    resumed = ncm.load(out)
    assert len(resumed.history["train_loss"]) == epochs + 2
    np.testing.assert_array_equal(resumed.history["train_loss"][:epochs], saved.history["train_loss"])
    assert not os.path.exists(ckpt)


# ---------------------------------------------------------------------------------------------- bad inputs
def test_missing_and_corrupt_fit_files_are_one_line(fit_file, catalog, tmp_path, capsys):
    table = str(tmp_path / "m.csv")
    assert main(["predict", str(tmp_path / "nope.ncm"), catalog, "--out", table]) == 2
    assert re.search(r"no such file: '.*nope\.ncm'", _error_line(capsys))

    data = bytearray(open(fit_file, "rb").read())
    flipped = bytearray(data)
    for k in range(len(data) // 3, len(data) // 3 + 64):
        flipped[k] ^= 0xFF
    truncated = data[: len(data) // 2]
    for name, content in (("flipped.ncm", flipped), ("truncated.ncm", truncated), ("text.ncm", b"not a fit\n")):
        bad = tmp_path / name
        bad.write_bytes(bytes(content))
        for cmd in (["predict", str(bad), catalog, "--out", table], ["evaluate", str(bad), catalog, "--out",
                                                                      str(tmp_path / "rep")]):
            assert main(cmd) == 2, (name, cmd[0])
            assert re.search(rf"cannot load the fit:? '.*{name}'", _error_line(capsys)), name
    assert not os.path.exists(table) and not os.path.exists(tmp_path / "rep")


@pytest.mark.parametrize("spec, pattern", [
    ("tinker99", r"unknown --prior 'tinker99'; use flat, flat:LO,HI.*colossus models: .*tinker08"),
    ("flat:15.3,13.5", r"--prior 'flat:15.3,13.5': the range must be finite with LO < HI"),
    ("flat:13.5", r"--prior 'flat:13.5': the range must be two numbers LO,HI"),
    ("tinker08:a,b", r"the range must be two numbers"),
    (":13,15", r"names no prior"),
])
def test_bad_prior_specs_fail_before_loading_the_fit(fit_file, catalog, tmp_path, capsys, monkeypatch, spec,
                                                     pattern):
    def must_not_run(*a, **k):
        raise AssertionError("the fit was loaded before --prior was checked")

    monkeypatch.setattr(ncm, "load", must_not_run)
    assert main(["predict", fit_file, catalog, "--out", str(tmp_path / "m.csv"), "--prior", spec]) == 2
    assert re.search(pattern, _error_line(capsys))


@pytest.mark.parametrize("out, extra, pattern", [
    ("no_such_folder/fit.ncm", [], r"the output folder '.*no_such_folder' does not exist; create it first"),
    ("", [], r"is a directory; give a file name inside it, such as '.*fit\.ncm'"),
    ("fit.ncm", ["--estimator", "msigma", "--hidden", "8"], r"--hidden does not apply to --estimator msigma"),
    ("fit.ncm", ["--estimator", "mse", "--components", "4"], r"--components applies to --estimator mdn only"),
    ("fit.ncm", ["--method", "nope"], r"unknown --method 'nope'; the registered methods are .*\bmap\b.*nuts"),
    ("fit.ncm", ["--option", "a=1", "--option", "a=2"], r"--option a is given twice"),
    ("fit.ncm", ["--learning-rate", "0.01", "--option", "learning_rate=0.1"], r"both set the learning rate"),
    ("fit.ncm", ["--resume", "missing.ncm"], r"no such file: '.*missing\.ncm'"),
])
def test_train_bad_setup_fails_before_training(catalog, tmp_path, capsys, monkeypatch, out, extra, pattern):
    import numpyro_clustermass.inference as inference

    def must_not_run(*a, **k):
        raise AssertionError("training started before the setup was checked")

    monkeypatch.setattr(inference, "fit", must_not_run)
    target = str(tmp_path / out) if out else str(tmp_path)
    extra = [str(tmp_path / e) if e.endswith(".ncm") else e for e in extra]
    assert main(["train", catalog, "--out", target, *extra]) == 2
    assert re.search(pattern, _error_line(capsys))
    assert not os.path.exists(tmp_path / "no_such_folder")


def test_output_checks_of_predict_and_evaluate(fit_file, catalog, tmp_path, capsys):
    assert main(["predict", fit_file, catalog, "--out", str(tmp_path / "none" / "m.csv")]) == 2
    assert "the output folder" in _error_line(capsys)
    assert main(["predict", fit_file, catalog, "--out", str(tmp_path / "m.txt")]) == 2
    assert re.search(r"cannot tell the table format of '.*m\.txt'.*--format fits, parquet or csv", _error_line(capsys))
    (tmp_path / "afile").write_text("")
    assert main(["evaluate", fit_file, catalog, "--out", str(tmp_path / "afile")]) == 2
    assert "is a file, not a folder" in _error_line(capsys)


def test_unknown_option_key_is_one_line_naming_the_accepted_keys(catalog, tmp_path, capsys, monkeypatch):
    """An --option key that is not a field of the method's options class: one line (exit 2) with the method, the
    key, the closest accepted key and all of them, before the catalogue is read or anything trains."""
    import numpyro_clustermass.inference as inference
    from numpyro_clustermass.inference import BBBOptions, MapOptions

    out = tmp_path / "fit.ncm"
    assert main(["train", catalog, "--out", str(out), "--epochs", "1", "--option", "bogus_option=3", *TINY]) == 2
    line = _error_line(capsys)
    assert line == (f"{ERR}--option: method 'map': unknown option 'bogus_option'; the options are "
                    f"{', '.join(sorted(MapOptions.field_names()))}\n")
    assert not out.exists() and not os.path.exists(cli.checkpoint_path(str(out)))

    def must_not_run(*a, **k):
        raise AssertionError("the catalogue was read or training started before the options were checked")

    monkeypatch.setattr(cli, "_read_catalog", must_not_run)
    monkeypatch.setattr(inference, "fit", must_not_run)
    assert main(["train", catalog, "--out", str(out), "--method", "bbb", "--option", "init_scal=0.02"]) == 2
    line = _error_line(capsys)
    assert "method 'bbb': unknown option 'init_scal' (did you mean 'init_scale'?); the options are " in line
    assert all(name in line for name in BBBOptions.field_names())
    # a bad value of a known key is the options class's message, also before anything is read
    assert main(["train", catalog, "--out", str(out), "--method", "nuts", "--option", "num_chains=0"]) == 2
    assert "method 'nuts': num_chains must be an integer >= 1" in _error_line(capsys)


def test_diverged_training_is_one_line_and_keeps_the_last_acceptable_state(catalog, tmp_path, capsys):
    out = str(tmp_path / "fit.ncm")
    assert main(["train", catalog, "--out", out, "--epochs", "5", "--learning-rate", "1000", *TINY]) == 1
    line = _error_line(capsys)
    ckpt = cli.checkpoint_path(out)
    assert "training diverged" in line and f"the last acceptable state is saved in {ckpt!r}" in line
    assert not os.path.exists(out)
    assert ncm.load(ckpt).info.diverged_at_epoch == 0


def test_bad_option_syntax_is_a_usage_error(catalog, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        main(["train", catalog, "--out", str(tmp_path / "f.ncm"), "--option", "no_equals_sign"])
    assert exc.value.code == 2
    assert re.search(r"argument --option: must be KEY=VALUE", capsys.readouterr().err)


def test_debug_shows_the_traceback_and_other_failures_are_one_line(fit_file, catalog, tmp_path, capsys,
                                                                   monkeypatch):
    missing = str(tmp_path / "nope.ncm")
    with pytest.raises(CLIError, match="no such file"):
        main(["--debug", "predict", missing, catalog, "--out", str(tmp_path / "m.csv")])
    with pytest.raises(CLIError, match="no such file"):
        main(["predict", missing, catalog, "--out", str(tmp_path / "m.csv"), "--debug"])

    def broken(*args, **kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(cli, "posterior_table", broken)  # a failure that is not the input's
    assert main(["predict", fit_file, catalog, "--out", str(tmp_path / "m.csv")]) == 1
    assert _error_line(capsys) == f"{ERR}RuntimeError: disk on fire (rerun with --debug for the traceback)\n"
    with pytest.raises(RuntimeError, match="disk on fire"):
        main(["--debug", "predict", fit_file, catalog, "--out", str(tmp_path / "m.csv")])


def test_version(capsys):
    import flax
    import jax
    import numpyro

    with pytest.raises(SystemExit) as exc:
        main(["--version"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"numpyro-clustermass {ncm.__version__} (")
    for name, mod in (("jax", jax), ("numpyro", numpyro), ("flax", flax)):
        assert f"{name} {mod.__version__}" in out


# ---------------------------------------------------------------------------------------------- parsers
def test_option_values_are_json_when_they_are_json():
    parse = cli._key_value
    assert parse("learning_rate=3e-4") == ("learning_rate", 3e-4)
    assert parse("num_draws=200") == ("num_draws", 200)
    assert parse("clip_norm=null") == ("clip_norm", None)
    assert parse("dense_mass=true") == ("dense_mass", True)
    assert parse("bayesian_layers=last") == ("bayesian_layers", "last")
    assert parse('map_options={"num_epochs": 5}') == ("map_options", {"num_epochs": 5})
    assert parse("schedule=") == ("schedule", "")
    assert cli.parse_options([("a", 1)], learning_rate=0.5) == {"a": 1, "learning_rate": 0.5}


def test_prior_specs():
    from numpyro_clustermass.priors import Flat, MassFunction

    assert cli.parse_prior("none") is None and cli.parse_prior("training") is None
    flat = cli.parse_prior("flat:13.0,15.0")
    assert isinstance(flat, Flat) and (flat.lo, flat.hi) == (13.0, 15.0)
    assert (cli.parse_prior("flat").lo, cli.parse_prior("flat").hi) == (13.5, 15.3)
    mf = cli.parse_prior("Tinker08:13.6,15.0")
    assert isinstance(mf, MassFunction) and (mf.model, mf.lo, mf.hi) == ("tinker08", 13.6, 15.0)


def test_estimator_specs():
    assert cli.build_estimator("mdn").config() == ncm.MDN().config()
    assert cli.build_estimator("mse", hidden=(16, 8), dropout=0.1).config() == \
        ncm.MSE(hidden=(16, 8), dropout_rate=0.1).config()
    assert cli.build_estimator("msigma").config() == ncm.MassObservableRelation().config()
    with pytest.raises(CLIError, match="--components, --dropout do not apply to --estimator msigma"):
        cli.build_estimator("msigma", components=2, dropout=0.1)
    assert cli.checkpoint_path("a/fit.ncm") == "a/fit.checkpoint.ncm" and cli.checkpoint_path("f") == "f.checkpoint"
