"""Build nrt/products/borders/borders.npz from the TopoJSON of the npm packages us-atlas 3.0.1 and world-atlas 2.0.2.

The quicklooks draw borders from this file and never download anything at run time. Each layer is every
arc of one TopoJSON file (arcs are the shared edges, so each border is drawn once), decoded to lon/lat
and joined into one float32 (n, 2) array with NaN rows between arcs, as matplotlib draws them in one call.

    npm pack us-atlas@3.0.1 world-atlas@2.0.2 && for f in *.tgz; do tar xzf $f --one-top-level=${f%.tgz}; done
    python scripts/make_borders.py --us us-atlas-3.0.1/package --world world-atlas-2.0.2/package
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).resolve().parents[1] / "nrt" / "products" / "borders" / "borders.npz"
LAYERS = {  # layer -> (package, file)
    "countries": ("world", "countries-50m.json"),
    "coast": ("world", "land-50m.json"),
    "states": ("us", "states-10m.json"),
    "counties": ("us", "counties-10m.json"),
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


def joined(arcs: list[np.ndarray]) -> np.ndarray:
    gap = np.full((1, 2), np.nan)
    return np.concatenate([part for arc in arcs for part in (arc, gap)]).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--us", type=Path, required=True, help="unpacked us-atlas package folder")
    parser.add_argument("--world", type=Path, required=True, help="unpacked world-atlas package folder")
    args = parser.parse_args()
    folders = {"us": args.us, "world": args.world}
    layers = {name: joined(decode_arcs(json.loads((folders[pkg] / file).read_text()))) for name, (pkg, file) in LAYERS.items()}
    np.savez_compressed(OUT, **layers)
    print(f"wrote {OUT} ({OUT.stat().st_size / 1e6:.1f} MB): " + ", ".join(f"{k} {len(v)} points" for k, v in layers.items()))


if __name__ == "__main__":
    main()
