"""Sub-commands of `nrt`; each module defines `register(subparsers)` and is discovered by `nrt.cli`."""

from __future__ import annotations

import signal
import threading
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


def serve_until_stopped(server) -> int:
    """Serve an http.server until Ctrl-C or SIGTERM (systemd's stop), then close its socket; exit code 0."""
    # shutdown() waits for serve_forever to return, so it must come from another thread than the serving one.
    signal.signal(signal.SIGTERM, lambda signum, frame: threading.Thread(target=server.shutdown, daemon=True).start())
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0
