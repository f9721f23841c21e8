"""Whether a diffusion checkpoint can be trusted with a cycle's inputs (issue 15, "Any domain").

Two checks, each a fallback reason for `nrt.downscale.choose`:
- `inputs_missing`: a channel the checkpoint requires (`ChannelSet.required`) is absent;
- `inputs_out_of_distribution`: a given channel's domain mean lies more than `max_z` training standard
  deviations from its training mean (statistics stored in the checkpoint, after the precipitation transform).
  Absolute position channels of an old checkpoint run on another domain are the case this catches: 6-7 sigma.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from nrt.degradation import Fallback
from nrt.model.conditioning import Conditioning, given_groups, missing_required, raw_channels



@dataclass
class InputCheck:
    reason: Fallback | None = None  # None when the inputs are fine
    detail: str = ""
    max_z: float = 0.0  # the largest |z| of any given channel's domain mean
    channel_z: dict[str, float] = field(default_factory=dict)


def channel_z(spec, cond: Conditioning) -> dict[str, float]:
    """Domain mean of each given channel (availability channels excluded) in training standard deviations."""
    raw = raw_channels(cond, spec.channels)
    names = list(spec.input_stats.names)
    given = given_groups(cond)
    absent = {n for group, members in spec.channels.groups().items() if group not in given for n in members}
    z = spec.normalize_inputs(raw)  # NaN (missing) cells become 0: the training mean
    out = {}
    for index, name in enumerate(names):
        if name.startswith("has_") or name in absent:
            continue
        valid = np.isfinite(raw[:, index])
        if valid.any():
            out[name] = float(np.mean(z[:, index][valid]))
    return out


def check_inputs(spec, conditions: Sequence[Conditioning], max_z: float) -> InputCheck:
    """The first reason not to trust the checkpoint with `conditions` (one per valid time), with the z-scores."""
    for cond in conditions:
        lacking = missing_required(cond, spec.channels)
        if lacking:
            return InputCheck(Fallback.INPUTS_MISSING, f"the checkpoint requires {', '.join(lacking)}")
    worst: dict[str, float] = {}
    for cond in conditions:
        for name, z in channel_z(spec, cond).items():
            if abs(z) > abs(worst.get(name, 0.0)):
                worst[name] = z
    result = InputCheck(max_z=max((abs(z) for z in worst.values()), default=0.0), channel_z=worst)
    beyond = {name: z for name, z in worst.items() if abs(z) > max_z}
    if beyond:
        result.reason = Fallback.INPUTS_OUT_OF_DISTRIBUTION
        result.detail = ", ".join(f"{name} at {z:+.1f} sigma" for name, z in sorted(beyond.items(), key=lambda kv: -abs(kv[1])))
    return result
