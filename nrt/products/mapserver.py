"""The live map page: a small read-only web server over the best-available products.

`nrt serve` (loopback by default) serves one page: a Leaflet map (vendored in `web/vendor/`, never
fetched from a CDN) of the recent valid times, with PNG overlays of the ensemble mean, P(rate > threshold)
and spread made from the products, a time slider, state/county borders and rivers (the quicklooks' shipped
data as GeoJSON), the configured basins, the alert areas with their current probabilities, and the newest
cycle's state and degraded flags. Routes (GET only; anything else is 404, other methods 405):

    /                              the page            /static/<leaflet.js|leaflet.css|app.js>
    /api/state.json                valid times, bounds, cycle status, alert areas and probabilities
    /api/borders.geojson           border and river lines around the domain, and the basin outlines
    /api/overlay/<kind>/<ISO>.png  kind mean|prob|spread; ISO a valid time with a product (else 404)
"""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
import threading
from functools import partial
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np

from nrt.products.netcdf import ENSEMBLE, grid_of, read_ensemble
from nrt.products.quicklook import PROB_LEVELS, RATE_LEVELS, area_probabilities, border_lines, ensemble_fields
from nrt.timeline import isoformat, utc

log = logging.getLogger("nrt.products")

WEB = Path(__file__).with_name("web")
STATIC = {  # name -> (file, content type): a fixed list, so no request path ever reaches the file system
    "leaflet.js": (WEB / "vendor" / "leaflet.js", "text/javascript"),
    "leaflet.css": (WEB / "vendor" / "leaflet.css", "text/css"),
    "app.js": (WEB / "app.js", "text/javascript"),
}
OVERLAY = re.compile(r"^/api/overlay/(mean|prob|spread)/(\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(?::\d{2})?Z)\.png$")


class MapData:
    """What the page shows, read from the catalog per request (products change under a running server)."""

    def __init__(self, catalog, areas, threshold: float = 10.0, hours: float = 6.0, basins=()):
        self.catalog, self.areas, self.threshold, self.hours = catalog, list(areas), threshold, hours
        self.basins = list(basins)
        self.lock = threading.Lock()  # one catalog session at a time

    def best_rows(self) -> list:
        with self.lock:
            current = self.catalog.products(kind=ENSEMBLE, current_only=True)
            if not current:
                return []
            newest = max(r.valid_time for r in current)
            return [r for r in current if r.valid_time >= newest - dt.timedelta(hours=self.hours) and Path(r.path).is_file()]

    def state(self) -> dict:
        rows = self.best_rows()
        with self.lock:
            runs = self.catalog.runs(limit=1)
        run = runs[0] if runs else None
        out = {"valid_times": [isoformat(r.valid_time) for r in rows], "threshold": self.threshold, "bounds": None,
               "cycle": None if run is None else {"cycle_time": isoformat(run.cycle_time), "state": run.state, "degraded": list(run.degraded)},
               "leads": {isoformat(r.valid_time): r.lead for r in rows}, "alerts": []}
        if rows:
            ensemble = read_ensemble(rows[-1].path)
            grid = grid_of(ensemble)
            w, s, e, n = grid.extent
            out["bounds"] = [[s, w], [n, e]]
            probabilities = area_probabilities(ensemble.values[:, 0], grid, self.areas)
            out["alerts"] = [{"name": a.name, "bounds": [[a.south, a.west], [a.north, a.east]], "threshold": a.threshold_mmh,
                              "level": a.probability, "probability": _finite(probabilities.get(a.name)),
                              "valid_time": isoformat(rows[-1].valid_time)} for a in self.areas]
        return out

    def overlay(self, kind: str, valid: dt.datetime) -> bytes | None:
        row = next((r for r in self.best_rows() if r.valid_time == valid), None)
        if row is None:
            return None
        ensemble = read_ensemble(row.path)
        field = ensemble_fields(ensemble.values[:, 0], self.threshold)[kind]
        return overlay_png(field, kind)

    def borders(self) -> dict:
        rows = self.best_rows()
        if not rows:
            return {"type": "FeatureCollection", "features": []}
        w, s, e, n = grid_of(read_ensemble(rows[-1].path)).extent
        features = []
        for layer in ("counties", "states", "rivers", "coast", "countries"):
            lines = border_lines()[layer]
            inside = (lines[:, 0] >= w - 1) & (lines[:, 0] <= e + 1) & (lines[:, 1] >= s - 1) & (lines[:, 1] <= n + 1)
            shown = np.where(inside[:, None], lines, np.nan)
            breaks = np.flatnonzero(np.isnan(shown[:, 0]))
            parts = [p for p in np.split(shown, breaks) if len(p[np.isfinite(p[:, 0])]) > 1]
            coords = [np.round(p[np.isfinite(p[:, 0])], 4).tolist() for p in parts]
            features.append({"type": "Feature", "properties": {"layer": layer},
                             "geometry": {"type": "MultiLineString", "coordinates": coords}})
        for basin in self.basins:
            rings = [[*map(list, ring), list(ring[0])] for ring in basin.rings]
            top = max((point for ring in basin.rings for point in ring), key=lambda point: point[1])
            features.append({"type": "Feature", "properties": {"layer": "basin", "name": basin.name, "label_at": list(top)},
                             "geometry": {"type": "MultiLineString", "coordinates": rings}})
        return {"type": "FeatureCollection", "features": features}


def _finite(value) -> float | None:
    return None if value is None or not np.isfinite(value) else float(value)


def overlay_png(field: np.ndarray, kind: str) -> bytes:
    """A transparent RGBA PNG of a (lat, lon) field, north up: blank below 0.1 mm/h (rates) or at 0, grey for no data."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.colors import BoundaryNorm, Normalize

    if kind == "prob":
        cmap, norm = plt.get_cmap("magma_r"), BoundaryNorm(PROB_LEVELS, 256)
    elif kind == "spread":
        cmap, norm = plt.get_cmap("viridis"), Normalize(1e-3, max(float(np.nanmax(field)) if np.isfinite(field).any() else 1.0, 1e-2))
    else:
        cmap, norm = plt.get_cmap("turbo"), BoundaryNorm(RATE_LEVELS, 256, extend="max")
    cmap = cmap.with_extremes(under=(0, 0, 0, 0), bad=(0.6, 0.6, 0.6, 0.6))
    rgba = cmap(norm(np.ma.masked_invalid(field)))
    buffer = io.BytesIO()
    plt.imsave(buffer, rgba[::-1], format="png")  # rows north first, as an image overlay expects
    return buffer.getvalue()


class Handler(BaseHTTPRequestHandler):
    server_version = "nrt-map"

    def __init__(self, *args, data: MapData, **kwargs):
        self.data = data
        super().__init__(*args, **kwargs)

    def log_message(self, fmt, *args):  # requests go to the nrt log, not stderr
        log.debug("map %s %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: bytes, content_type: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        self.end_headers()
        self.wfile.write(body)

    def _error(self, status: int, reason: str) -> None:
        self._send(status, json.dumps({"error": reason}).encode(), "application/json")

    def do_GET(self):  # noqa: N802 (http.server's name)
        path = self.path.split("?", 1)[0]
        try:
            if path in ("/", "/index.html"):
                return self._send(200, (WEB / "index.html").read_bytes(), "text/html; charset=utf-8")
            if path.startswith("/static/") and path.removeprefix("/static/") in STATIC:
                file, kind = STATIC[path.removeprefix("/static/")]
                return self._send(200, file.read_bytes(), kind)
            if path == "/api/state.json":
                return self._send(200, json.dumps(self.data.state()).encode(), "application/json")
            if path == "/api/borders.geojson":
                return self._send(200, json.dumps(self.data.borders()).encode(), "application/geo+json")
            match = OVERLAY.match(path)
            if match:
                try:
                    valid = utc(match[2])
                except ValueError:
                    return self._error(400, f"not a time: {match[2]}")
                png = self.data.overlay(match[1], valid)
                if png is None:
                    return self._error(404, f"no product for {match[2]}")
                return self._send(200, png, "image/png")
            return self._error(404, "no such page")
        except Exception as exc:  # a broken product must not kill the server; the page shows the error
            log.exception("map request %s failed", path)
            return self._error(500, type(exc).__name__)

    def _read_only(self):
        self._error(405, "read-only")

    do_POST = do_PUT = do_DELETE = do_PATCH = _read_only


def make_server(data: MapData, host: str = "127.0.0.1", port: int = 8765) -> ThreadingHTTPServer:
    """A threading HTTP server for the page (port 0 picks a free one); call serve_forever()."""
    return ThreadingHTTPServer((host, port), partial(Handler, data=data))
