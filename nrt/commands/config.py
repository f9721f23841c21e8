"""`nrt config show`: the effective configuration, secrets masked."""

from __future__ import annotations

import json


def register(sub) -> None:
    parser = sub.add_parser("config", help="show the effective configuration")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    show = actions.add_parser("show", help="print the effective config as JSON, secrets masked")
    show.set_defaults(handler=show_config)


def show_config(args, cfg) -> int:
    print(json.dumps(cfg.masked(), indent=2))
    return 0
