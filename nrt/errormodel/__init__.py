"""IMERG Early's error model: fine truth -> IMERG-like 0.1° estimates, fit to real IMERG / Stage IV pairs.

    from nrt.errormodel import load_error_model, degrade
    params = load_error_model("builtin:imerg-early")      # or a path to a JSON artefact
    out = degrade(truth, truth_res_deg, params, seed, frame_minutes=30.0)
    out.precipitation, out.random_error                     # (time, lat/k, lon/k) float32 mm/h at 0.1°
"""

from nrt.errormodel.degrade import Degraded, degrade
from nrt.errormodel.params import ErrorModel, load_error_model, save_error_model
from nrt.errormodel.statistics import comparison_table, pair_statistics

__all__ = [
    "Degraded", "ErrorModel", "comparison_table", "degrade", "load_error_model", "pair_statistics", "save_error_model",
]
