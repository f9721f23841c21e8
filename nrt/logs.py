"""One logger tree ("nrt.*"), UTC timestamps, optional JSON lines for the daemon."""

from __future__ import annotations

import json
import logging
import sys
import time

_SECRET_HINTS = ("password", "token", "secret")


class UtcFormatter(logging.Formatter):
    converter = time.gmtime

    def __init__(self):
        super().__init__("%(asctime)s.%(msecs)03dZ %(levelname)-7s %(name)s: %(message)s", "%Y-%m-%dT%H:%M:%S")


class JsonFormatter(logging.Formatter):
    converter = time.gmtime

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in getattr(record, "fields", {}).items():
            if not any(hint in key.lower() for hint in _SECRET_HINTS):
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


class StderrHandler(logging.StreamHandler):
    """Writes to whatever sys.stderr is now, so a replaced stream (pytest, daemons) is never left closed."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, _value):
        pass


def setup(level: str = "INFO", json_lines: bool = False) -> None:
    """Configure the "nrt" logger tree once; calling again replaces the handler."""
    root = logging.getLogger("nrt")
    for handler in list(root.handlers):
        root.removeHandler(handler)
    handler = StderrHandler()
    handler.setFormatter(JsonFormatter() if json_lines else UtcFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    root.propagate = False
