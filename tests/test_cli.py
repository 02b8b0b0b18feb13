import numpy as np

from numpyro_clustermass.catalog import read_catalog
from numpyro_clustermass.cli import main


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
    assert "lacks required columns" in capsys.readouterr().err
