"""`nrt inspect` on every real GPM file, pinned against statistics computed here with h5py."""

from __future__ import annotations

import json

import h5py
import numpy as np
import pytest

from nrt.cli import main

MAIN_FIELD = {"3B-HHR": ("Grid/precipitation", "Grid/precipitationCal"), "2A.GPM.DPR": ("FS/SLV/precipRateNearSurface", "NS/SLV/precipRateNearSurface")}


def independent_facts(path):
    prefix = next(p for p in MAIN_FIELD if path.name.startswith(p))
    with h5py.File(path, "r") as h5:
        dataset = next(h5[name] for name in MAIN_FIELD[prefix] if name in h5)
        values = dataset[...].astype(np.float64)
        fill = float(dataset.attrs["_FillValue"])
    good = values[(values != np.float32(fill)) & (values >= 0)]
    return values.shape, good


def test_inspect_reports_every_real_file(gpm_dir, capsys):
    paths = sorted(gpm_dir.glob("*.HDF5"))
    assert len(paths) == 4
    for path in paths:
        assert main(["inspect", str(path)]) == 0
        facts = json.loads(capsys.readouterr().out)
        shape, good = independent_facts(path)
        assert facts["source"] == ("imerg" if path.name.startswith("3B") else "dpr")
        assert facts["version"] == path.name.split(".")[-2]
        assert facts["shape"] == list(shape)
        assert facts["valid_fraction"] == pytest.approx(good.size / np.prod(shape))
        if good.size:
            assert (facts["min"], facts["max"]) == (pytest.approx(good.min()), pytest.approx(good.max()))
            assert facts["mean"] == pytest.approx(good.mean(), rel=1e-6)
        else:
            assert facts["min"] is facts["max"] is facts["mean"] is None
        assert facts["start"].startswith("2000-06-01T00:00:00" if path.name.startswith("3B") else "2014-03-08T22:09:50")


def test_inspect_refuses_bad_files_with_one_line(tmp_path, capsys):
    html = tmp_path / "3B-HHR-E.MS.MRG.3IMERG.20240601-S120000-E122959.0720.V07B.RT-H5"
    html.write_text("<html><body>Sign in to Earthdata</body></html>")
    unknown = tmp_path / "notes.txt"
    unknown.write_text("hello")
    for path, reason in ((html, "HTML page saved as data"), (unknown, "matches no supported source"), (tmp_path / "absent.nc", "no such file")):
        assert main(["inspect", str(path)]) == 2
        err = capsys.readouterr().err.strip()
        assert err.startswith(f"nrt: error: {path}") and reason in err and "\n" not in err
