"""A STAC catalog of the current products, written beside them (`<product_dir>/stac/`), built with pystac.

`stac/catalog.json` is the root; one Collection per product kind (`ensemble`, `summary`,
`accumulation_3h`, ...) holds an Item per current (best-available) product of the last `hours` before the
newest valid time, as `latest.json` lists them (which stays, for compatibility). Each Item carries:
- its time: `start_datetime`/`end_datetime` the half hour (an accumulation: its whole window) and
  `datetime` the valid time; `nrt:cycle_time`, `nrt:lead` (half hours), `nrt:members`;
- the projection extension: EPSG:4326, the grid's shape and affine transform, from the file itself;
- the datacube extension: the file's dimensions and variables (units, dimensions);
- one asset, the file (relative href, `file:size` and `file:checksum` as a multihash of the SHA-256).

Atomic updates: every JSON file is written to a temp name and renamed (`nrt.io.atomic_path`), Items
first, then their Collections, then the root, so the root never links to a half-written file. Items of
products no longer current are deleted after the Collections stop linking them.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import os
from pathlib import Path

import netCDF4
import numpy as np

from nrt.io import atomic_path
from nrt.timeline import HALF_HOUR, isoformat, utc

log = logging.getLogger("nrt.products")

STAC_DIR = "stac"
SHA256_MULTIHASH_PREFIX = "1220"  # multihash: 0x12 = sha2-256, 0x20 = 32 bytes
MEDIA_TYPE = {".nc": "application/netcdf", ".png": "image/png"}


def _window(kind: str, valid: dt.datetime) -> tuple[dt.datetime, dt.datetime]:
    end = valid + HALF_HOUR
    if kind.startswith("accumulation_") and kind.endswith("h"):
        return end - dt.timedelta(hours=int(kind.removeprefix("accumulation_").removesuffix("h"))), end
    return valid, end


def _grid_and_cube(path: Path) -> tuple[list[float] | None, dict, dict]:
    """bbox, projection fields and datacube fields of a NetCDF product, read from its header and coordinates."""
    with netCDF4.Dataset(path) as nc:
        lat_b, lon_b = nc["lat_bnds"][:], nc["lon_bnds"][:]
        west, east, south, north = float(lon_b.min()), float(lon_b.max()), float(lat_b.min()), float(lat_b.max())
        nlat, nlon = nc.dimensions["lat"].size, nc.dimensions["lon"].size
        res_lon, res_lat = (east - west) / nlon, (north - south) / nlat
        dims = {}
        for name, dim in nc.dimensions.items():
            if name == "bnds":
                continue
            kind = {"lat": "spatial", "lon": "spatial", "time": "temporal"}.get(name)
            entry = {"type": kind} if kind else {"type": name, "values": [float(v) for v in np.asarray(nc[name][:])] if name in nc.variables else None}
            if name == "lat":
                entry.update(axis="y", extent=[south, north], step=res_lat, reference_system=4326)
            elif name == "lon":
                entry.update(axis="x", extent=[west, east], step=res_lon, reference_system=4326)
            elif name == "time":
                entry.update(step="PT30M")
            dims[name] = {k: v for k, v in entry.items() if v is not None}
        variables = {
            name: {"type": "data", "dimensions": list(var.dimensions), **({"unit": var.units} if "units" in var.ncattrs() else {}),
                   **({"description": var.long_name} if "long_name" in var.ncattrs() else {})}
            for name, var in nc.variables.items() if var.ndim >= 2 and not name.endswith("_bnds")
        }
    bbox = [west, south, east, north]
    projection = {"code": "EPSG:4326", "shape": [nlat, nlon], "transform": [res_lon, 0.0, west, 0.0, -res_lat, north]}
    return bbox, projection, {"dimensions": dims, "variables": variables}


def product_item(row, href: str):
    """A pystac Item for one catalog product row (ProductRow); `href` locates the file from the Item's folder."""
    import pystac
    from pystac.extensions.datacube import DatacubeExtension
    from pystac.extensions.projection import ProjectionExtension

    path = Path(row.path)
    valid = utc(row.valid_time)
    start, end = _window(row.kind, valid)
    bbox, projection, cube = _grid_and_cube(path) if path.suffix == ".nc" else (None, None, None)
    geometry = None
    if bbox is not None:
        w, s, e, n = bbox
        geometry = {"type": "Polygon", "coordinates": [[[w, s], [e, s], [e, n], [w, n], [w, s]]]}
    item = pystac.Item(
        id=path.stem, geometry=geometry, bbox=bbox, datetime=valid,
        properties={"start_datetime": isoformat(start), "end_datetime": isoformat(end), "nrt:kind": row.kind,
                    "nrt:cycle_time": isoformat(row.cycle_time), "nrt:lead": int(row.lead), "nrt:members": int(row.members)},
    )
    item.add_asset("data", pystac.Asset(
        href=href, media_type=MEDIA_TYPE.get(path.suffix), roles=["data"],
        extra_fields={"file:size": int(row.size), "file:checksum": SHA256_MULTIHASH_PREFIX + row.sha256},
    ))
    if projection is not None:
        proj = ProjectionExtension.ext(item, add_if_missing=True)
        proj.code, proj.shape, proj.transform = projection["code"], projection["shape"], projection["transform"]
        DatacubeExtension.ext(item, add_if_missing=True)  # declares the extension; the fields follow its schema
        item.properties["cube:dimensions"] = cube["dimensions"]
        item.properties["cube:variables"] = cube["variables"]
    return item


def _written_item(item_path: Path, row, href: str) -> dict | None:
    """The Item written earlier for this very product (same file, checksum and catalog fields), or None.

    Every valid time rewrites the catalog of the last `hours`; reusing the unchanged Items spares reopening
    each product file and rewriting (and syncing) its JSON, which grew with the number of current products."""
    try:
        data = json.loads(item_path.read_text())
        asset, properties = data["assets"]["data"], data["properties"]
        same = (asset["href"] == href and asset["file:checksum"] == SHA256_MULTIHASH_PREFIX + row.sha256
                and asset["file:size"] == int(row.size) and properties["nrt:kind"] == row.kind
                and properties["nrt:cycle_time"] == isoformat(row.cycle_time) and properties["nrt:lead"] == int(row.lead)
                and properties["nrt:members"] == int(row.members) and properties["datetime"] == isoformat(utc(row.valid_time)))
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return data if same else None


def _write_json(path: Path, data: dict) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(data, indent=1) + "\n")


def update_stac(catalog, product_dir: Path, hours: float = 24.0) -> Path:
    """Rewrite `<product_dir>/stac/` from the catalog's current products; returns the root catalog.json path."""
    import pystac

    product_dir = Path(product_dir)
    root_dir = product_dir / STAC_DIR
    current = catalog.products(current_only=True)
    rows = []
    if current:
        newest = max(row.valid_time for row in current)
        rows = [r for r in catalog.products(since=newest - dt.timedelta(hours=hours), current_only=True) if Path(r.path).is_file()]
    by_kind: dict[str, list] = {}
    for row in rows:
        by_kind.setdefault(row.kind, []).append(row)

    root = {"type": "Catalog", "stac_version": pystac.get_stac_version(), "id": "nrt",
            "description": "nrt near-real-time precipitation products: best available per valid time", "links": [
                {"rel": "root", "href": "./catalog.json", "type": "application/json"}]}
    kept: set[Path] = set()
    for kind, kind_rows in sorted(by_kind.items()):
        kind_dir = root_dir / kind
        items = []
        for row in kind_rows:
            href = os.path.relpath(Path(row.path).resolve(), kind_dir.resolve())
            item_path = kind_dir / f"item_{Path(row.path).stem}.json"  # not nrt_*: only product files carry that prefix
            data = _written_item(item_path, row, href)
            if data is None:
                data = product_item(row, href).to_dict(include_self_link=False, transform_hrefs=False)
                data["links"] = [{"rel": "root", "href": "../catalog.json", "type": "application/json"},
                                 {"rel": "collection", "href": "./collection.json", "type": "application/json"},
                                 {"rel": "parent", "href": "./collection.json", "type": "application/json"}]
                data["collection"] = f"nrt-{kind}"
                _write_json(item_path, data)
            kept.add(item_path)
            items.append(data)
        bboxes = np.array([i["bbox"] for i in items if i.get("bbox")]) if any(i.get("bbox") for i in items) else None
        spatial = [[float(bboxes[:, 0].min()), float(bboxes[:, 1].min()), float(bboxes[:, 2].max()), float(bboxes[:, 3].max())]] if bboxes is not None else [[-180, -90, 180, 90]]
        times = sorted(pystac.utils.str_to_datetime(i["properties"]["datetime"]) for i in items)
        collection = pystac.Collection(
            id=f"nrt-{kind}", description=f"nrt {kind} products, best available per valid time",
            extent=pystac.Extent(pystac.SpatialExtent(spatial), pystac.TemporalExtent([[times[0], times[-1]]])), license="other",
        )
        data = collection.to_dict(include_self_link=False, transform_hrefs=False)
        data["links"] = [{"rel": "root", "href": "../catalog.json", "type": "application/json"},
                         {"rel": "parent", "href": "../catalog.json", "type": "application/json"}]
        data["links"] += [{"rel": "item", "href": f"./item_{i['id']}.json", "type": "application/geo+json"} for i in items]
        _write_json(kind_dir / "collection.json", data)
        kept.add(kind_dir / "collection.json")
        root["links"].append({"rel": "child", "href": f"./{kind}/collection.json", "type": "application/json", "title": kind})
    _write_json(root_dir / "catalog.json", root)
    for stale in root_dir.glob("*/*.json"):  # after nothing links them any more
        if stale not in kept:
            stale.unlink(missing_ok=True)
    return root_dir / "catalog.json"
