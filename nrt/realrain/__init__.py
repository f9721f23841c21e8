"""Real rain from radar (and one satellite) products, as training truth for the downscaler (issue 15).

One reader per provider, each a plain function `read(path) -> xarray.DataArray (time, y, x)` of rain rate
in mm/h on the product's own grid (2-D lat/lon, NaN for no data, time = start of each value's period),
chosen by name from `READERS`, like pysteps' importers. `regrid` takes them to 0.05° and 30-min means;
`events` lists the events of `config/realrain.toml` and which are held out for skill.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import xarray as xr

from nrt.realrain.meteonet import read_meteonet
from nrt.realrain.mrms import read_mrms
from nrt.realrain.pysteps_readers import read_bom, read_fmi, read_knmi, read_mch, read_rmi, read_saf_crr
from nrt.realrain.radolan import read_radolan_rw, read_radolan_yw

Reader = Callable[[Path], xr.DataArray]

READERS: dict[str, Reader] = {
    "bom": read_bom,  # 10-min accumulations, 0.5 km
    "saf_crr": read_saf_crr,  # satellite rain rate, 15 min, ~4-5 km over Europe
    "knmi": read_knmi,  # 5-min accumulations, 1 km
    "mch": read_mch,  # 5-min accumulations, 1 km
    "mrms": read_mrms,  # hourly accumulations, 0.01°
    "rmi": read_rmi,  # rain rate, 5 min, 1 km
    "fmi": read_fmi,  # dBZ, 5 min, 1 km (Marshall-Palmer)
    "radolan_rw": read_radolan_rw,  # hourly accumulations, 1 km
    "radolan_yw": read_radolan_yw,  # 5-min accumulations, 1 km
    "meteonet": read_meteonet,  # 5-min accumulations, 0.01°
}

#: Sources about as coarse as a 0.05° cell take the nearest pixel rather than a bucket average.
REGRID_METHOD: dict[str, str] = {name: "bucket" for name in READERS} | {"saf_crr": "nearest"}


def get_reader(name: str) -> Reader:
    """The reader registered under `name` (KeyError lists the known ones)."""
    try:
        return READERS[name]
    except KeyError:
        raise KeyError(f"unknown real-rain source {name!r}; known: {', '.join(sorted(READERS))}") from None
