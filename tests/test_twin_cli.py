"""`nrt twin generate` on the command line: a tree, a manifest, and one-line errors for bad input."""

from __future__ import annotations

import json

import pytest

from nrt.cli import main


def test_generate_writes_a_tree_and_its_manifest(tmp_path, capsys):
    out = tmp_path / "twin"
    code = main([
        "twin", "generate", "--start", "2024-06-01T12:00Z", "--end", "2024-06-01T13:00Z", "--out", str(out),
        "--domain=-94,41,-92,42.5", "--seed", "3", "--no-progress",
    ])
    assert code == 0
    printed = capsys.readouterr().out
    assert "2 imerg" in printed and "IMERG 2024-06-01: bias" in printed
    manifest = json.loads((out / "twin.json").read_text())
    assert manifest["format"] == "nrt-twin/1" and manifest["spec"]["seed"] == 3
    assert manifest["spec"]["domain"] == {"west": -94.0, "south": 41.0, "east": -92.0, "north": 42.5}
    assert manifest["spec"]["imerg"]["error_model"] == "builtin:imerg-early" and manifest["files"]["imerg"] == 2
    assert len(list((out / "pps/imerg/early/202406").glob("*.RT-H5"))) == 2
    assert (out / "pps/radar/DprL2").is_dir() and (out / "dem/nrt_twin_dem.nc").is_file()
    (geosfp_day,) = manifest["geosfp_days"]  # the one forecast hour, 12:30, of the 12 UTC run
    assert geosfp_day["day"] == "2024-06-01" and geosfp_day["leads_h"] == [0.5, 0.5]
    assert f"GEOS-FP 2024-06-01: correlation with the truth {geosfp_day['correlation']:.3f} at 0.05°" in printed


@pytest.mark.parametrize("args, message", [
    (["--domain", "1,2,3"], "--domain: expected W,S,E,N"),
    (["--domain=-90,41,-92,42"], "domain: need -180 <= west < east"),
    (["--end", "2024-06-01T11:00Z"], "must be after start"),
    (["--start", "yesterday"], "--start: not an ISO 8601 time"),
    (["--imerg-error-model", "no-such-model.json"], "no-such-model.json: error model file not found"),
])
def test_bad_input_is_one_line_and_exit_2(tmp_path, capsys, args, message):
    base = {"--start": "2024-06-01T12:00Z", "--end": "2024-06-01T13:00Z", "--out": str(tmp_path / "t")}
    for arg in args:
        key = arg.split("=", 1)[0]
        base.pop(key, None)
    argv = ["twin", "generate", "--no-progress", *[x for kv in base.items() for x in kv], *args]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("nrt: error: ") and message in err and "\n" not in err
    assert not (tmp_path / "t").exists()
