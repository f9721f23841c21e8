"""Nowcast bridge: carry the newest IMERG granule across the ~4 h latency with pysteps.

Pure core: an `xr.DataArray(time, lat, lon)` of 0.1° rain rates (mm/h, NaN = missing) goes in, a
`NowcastResult` with `precipitation(member, time, lat, lon)` for leads 1..steps comes out. Motion comes from
the newest contiguous granules (pysteps optical flow); the method is chosen by name from `methods.METHODS`.
Whatever pysteps handles badly makes the nowcast step down to a simpler method, each step a
`nrt.degradation.NowcastReason` in `NowcastResult.degraded`; the service turns the reasons into the
`nrt_nowcast_degraded_total{reason}` metric and a product attribute.

- `methods`: the pysteps methods by name (steps, sprog, extrapolation), the fallbacks (persistence, zero
  rain), the dB transform, the optical flow and the advection of the missing area;
- `ladder`: `nowcast` itself and its degradation ladder;
- `cf`: the result as CF `xr.DataArray`s;
- `buffer`: the upwind buffer around the domain (`nowcast_domain`).
"""

from nrt.nowcast.buffer import buffer_degrees_for, nowcast_domain
from nrt.nowcast.ladder import NowcastResult, nowcast

__all__ = ["NowcastResult", "buffer_degrees_for", "nowcast", "nowcast_domain"]
