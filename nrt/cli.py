"""The `nrt` command. Thin: parse arguments, load the config, call one function.

Each sub-command lives in `nrt/commands/<name>.py` with `register(subparsers)`; the handler it sets
receives `(args, cfg)` and returns an exit code. Errors a user can fix (`NrtError`) print one line and
exit 2, with no traceback.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import os
import pkgutil
import sys

from nrt import __version__, commands
from nrt.errors import NrtError

log = logging.getLogger("nrt.cli")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="nrt",
        description="Near-real-time calibrated 0.05° precipitation ensembles from IMERG Early, pysteps and residual diffusion.",
    )
    parser.add_argument("--version", action="version", version=f"nrt {__version__}")
    parser.add_argument("--config", "-c", metavar="FILE", help="TOML configuration (default: built-in offline demo settings)")
    parser.add_argument("--log-level", choices=["DEBUG", "INFO", "WARNING", "ERROR"], help="override general.log_level")
    parser.add_argument("--json-logs", action="store_true", default=None, help="log JSON lines (for the daemon)")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for module in sorted(pkgutil.iter_modules(commands.__path__), key=lambda m: m.name):
        importlib.import_module(f"nrt.commands.{module.name}").register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    from nrt import config as config_mod, logs

    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 0 if args.command is None else 2
    try:
        cfg = config_mod.load(args.config)
        logs.setup(args.log_level or cfg.general.log_level, cfg.general.log_json if args.json_logs is None else True)
        return int(args.handler(args, cfg) or 0)
    except NrtError as exc:
        print(f"nrt: error: {exc}", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `nrt ... | head`: the reader has gone; point stdout at /dev/null so the exit flush is quiet too.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141  # what a shell reports for a process ended by SIGPIPE
    except OSError as exc:  # a path the user gave that cannot be written: read-only, a file, disk full
        print(f"nrt: error: {exc.filename or 'nrt'}: {exc.strerror or exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("nrt: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
