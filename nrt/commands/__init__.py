"""Sub-commands of `nrt`; each module defines `register(subparsers)` and is discovered by `nrt.cli`."""

from __future__ import annotations

from datetime import datetime

from nrt.errors import ConfigError


def parse_span(start: str, end: str) -> tuple[datetime, datetime]:
    """--start/--end as UTC times, with a one-line error naming the option when they are bad or reversed."""
    from nrt.timeline import isoformat, utc

    try:
        first, last = utc(start), utc(end)
    except ValueError as exc:
        raise ConfigError("--start/--end", str(exc)) from None
    if last < first:
        raise ConfigError("--end", f"{isoformat(last)} is before --start {isoformat(first)}")
    return first, last
