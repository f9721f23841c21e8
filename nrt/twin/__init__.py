"""The synthetic twin: a consistent world and the four sources that observe it, in the real formats and layouts.

`generate(spec, out)` writes a mirror tree (truth, IMERG Early, DPR, GEOS-FP, DEM; see `nrt.twin.naming`),
`serve_in_thread(root)` serves it like the real servers, `read_truth(root)` reads the truth back for scoring.
"""

from nrt.twin.generate import GenerateReport, generate, load_manifest
from nrt.twin.server import serve_in_thread
from nrt.twin.spec import DprSettings, GeosfpSettings, ImergSettings, TwinSpec, WorldSettings
from nrt.twin.writers import read_truth

__all__ = [
    "DprSettings", "GenerateReport", "GeosfpSettings", "ImergSettings", "TwinSpec", "WorldSettings",
    "generate", "load_manifest", "read_truth", "serve_in_thread",
]
