"""Extract the HDF5 layouts of the real GPM fixture files into the JSON tables the twin's writers follow.

    python scripts/extract_twin_layouts.py ../shared/data/gpm

Writes nrt/twin/layouts/imerg_v07.json (from the IMERG V07 half-hour file) and dpr_v07_fs.json (root
attributes and the FS group of the DPR 2A V07 file). Each table lists every group with its attributes and
every dataset with its dtype, DimensionNames, attributes and, for dimension scales, the scale NAME.
Dimension sizes come from the files except the cut axes (IMERG time/lon/lat, DPR nscan/nray), which the
writers size to the real products.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import h5py
import numpy as np

LAYOUT_DIR = Path(__file__).resolve().parents[1] / "nrt" / "twin" / "layouts"
IMERG_FILE = "3B-HHR.MS.MRG.3IMERG.20000601-S000000-E002959.0000.V07A.HDF5"
DPR_FILE = "2A.GPM.DPR.V9-20211125.20140308-S220950-E234217.000144.V07A.HDF5"
# Written by HDF5's dimension-scale API, not copied as plain attributes.
SCALE_ATTRS = {"DIMENSION_LIST", "REFERENCE_LIST", "CLASS", "NAME"}


def encode_attr(value) -> dict:
    if isinstance(value, bytes):
        return {"kind": "bytes", "value": value.decode("ascii")}
    value = np.asarray(value)
    if value.shape == ():
        return {"kind": "scalar", "dtype": value.dtype.str, "value": value.item()}
    return {"kind": "array", "dtype": value.dtype.str, "value": value.tolist()}


def attrs_of(obj) -> dict:
    return {key: encode_attr(obj.attrs[key]) for key in sorted(obj.attrs) if key not in SCALE_ATTRS}


def extract(path: Path, keep) -> dict:
    layout = {"source": path.name, "root_attrs": {}, "groups": {}, "datasets": {}, "dim_sizes": {}}
    with h5py.File(path, "r") as f:
        layout["root_attrs"] = attrs_of(f)

        def visit(name, obj):
            if not keep(name):
                return
            if isinstance(obj, h5py.Group):
                layout["groups"][name] = attrs_of(obj)
                return
            entry = {"dtype": obj.dtype.str, "attrs": attrs_of(obj)}
            if obj.attrs.get("CLASS") == b"DIMENSION_SCALE":
                entry["scale_name"] = obj.attrs["NAME"].decode("ascii")
            if obj.dtype.kind == "S":
                entry["value"] = obj[0].decode("ascii")
            dims = obj.attrs.get("DimensionNames")
            if dims is None:
                entry["shape"] = list(obj.shape)
            else:
                entry["dims"] = dims.decode("ascii").split(",")
                for dim, size in zip(entry["dims"], obj.shape):
                    layout["dim_sizes"][dim] = size
            layout["datasets"][name] = entry

        f.visititems(visit)
    return layout


def main(gpm_dir: str) -> None:
    gpm = Path(gpm_dir)
    imerg = extract(gpm / IMERG_FILE, lambda name: True)
    imerg["dim_sizes"].update(time=1, lon=3600, lat=1800)
    dpr = extract(gpm / DPR_FILE, lambda name: name == "AlgorithmRuntimeInfo" or name == "FS" or name.startswith("FS/"))
    dpr["dim_sizes"].pop("nscan")
    dpr["dim_sizes"]["nray"] = 49
    LAYOUT_DIR.mkdir(parents=True, exist_ok=True)
    for name, layout in (("imerg_v07.json", imerg), ("dpr_v07_fs.json", dpr)):
        (LAYOUT_DIR / name).write_text(json.dumps(layout, indent=1, sort_keys=True) + "\n")
        print(f"wrote {LAYOUT_DIR / name}: {len(layout['groups'])} groups, {len(layout['datasets'])} datasets")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else str(Path(__file__).resolve().parents[2] / "shared" / "data" / "gpm"))
