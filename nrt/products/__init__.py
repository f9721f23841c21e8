"""Products for hydrologic models and operators (see docs/products.md).

- `netcdf`: CF-1.8 ensemble files, (time, realization, lat, lon) on disk (`write_ensemble`, `read_ensemble`) and their names (`product_path`);
- `summary`: mean, median, p10, p90, exceedance probabilities, accumulations (`summarize`,
  `accumulations`, `best_mean_fields`, `write_summary`, `write_accumulations`: one file per window);
- `ef5`: GeoTIFF forcings for EF5 (`export_ef5`), gap-filled ranges and a runnable control file (`export_range`, `control_file`);
- `wrf_hydro`: PRECIP_FORCING files on a WRF-Hydro geogrid (`read_geogrid`, `export_wrf_hydro`);
- `quicklook`: maps with borders and alert areas: the PNG per cycle (`quicklook`) and single maps (`plot_map`);
- `alerts`: exceedance over operator areas (`alert_states`);
- `publish`: one valid time (and a cycle's valid times) end to end, best-available lookup and `latest.json`
  (`publish_settings`, `publish_valid_time`, `publish_cycle`, `best_available`, `update_latest`, `export_best_ef5`);
- `stac`: the STAC catalog beside the products (`update_stac`);
- `mapserver`: the live map page behind `nrt serve` (`MapData`, `make_server`);
- `dataset`: best available per valid time as one dataset (`open_best`);
- `retention`: age-based pruning that keeps catalog and disk consistent (`prune`; raw granules:
  `nrt.sources.retention`).
"""

from nrt.products.alerts import AlertState, alert_states, check_areas
from nrt.products.ef5 import control_block, export_ef5
from nrt.products.netcdf import ENSEMBLE, QUICKLOOK, SUMMARY, product_path, provenance, read_ensemble, write_ensemble
from nrt.products.publish import (
    Published,
    ProductRecord,
    best_available,
    PublishSettings,
    ef5_directory,
    export_best_ef5,
    publish_cycle,
    publish_settings,
    publish_valid_time,
    update_latest,
)
from nrt.products.quicklook import quicklook
from nrt.products.retention import PruneReport, prune
from nrt.products.summary import ProductStats, accumulations, best_mean_fields, summarize, write_summary

__all__ = [
    "ENSEMBLE", "QUICKLOOK", "SUMMARY",
    "AlertState", "alert_states", "check_areas",
    "control_block", "export_ef5",
    "product_path", "provenance", "read_ensemble", "write_ensemble",
    "Published", "ProductRecord", "PublishSettings", "best_available", "ef5_directory", "export_best_ef5", "publish_cycle",
    "publish_settings", "publish_valid_time", "update_latest",
    "quicklook",
    "PruneReport", "prune",
    "ProductStats", "accumulations", "best_mean_fields", "summarize", "write_summary",
]
