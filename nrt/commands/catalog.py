"""`nrt catalog init|status`: create or migrate the catalog, and count its rows by table and state."""

from __future__ import annotations

import json


def register(sub) -> None:
    parser = sub.add_parser("catalog", help="create, migrate and inspect the SQL catalog")
    actions = parser.add_subparsers(dest="action", metavar="ACTION", required=True)
    init = actions.add_parser("init", help="create the catalog or migrate it to the newest schema")
    init.set_defaults(handler=init_catalog)
    status = actions.add_parser("status", help="row counts by table and state")
    status.add_argument("--json", action="store_true", help="print JSON instead of text")
    status.set_defaults(handler=catalog_status)


def init_catalog(args, cfg) -> int:
    from nrt.store import Catalog  # SQLAlchemy loads only for catalog commands, keeping `nrt --help` quick

    with Catalog.from_config(cfg, migrate=True) as catalog:
        print(f"catalog {catalog.url} at revision {catalog.revision()} (newest)")
    return 0


def catalog_status(args, cfg) -> int:
    from nrt.store import Catalog

    with Catalog.from_config(cfg) as catalog:
        revision, counts = catalog.revision(), catalog.counts()
    if args.json:
        print(json.dumps({"url": catalog.url, "revision": revision, "counts": counts}, indent=2))
        return 0
    print(f"catalog {catalog.url} at revision {revision}")
    width = max(len(table) for table in counts)
    for table, states in counts.items():
        print(f"  {table:<{width}}  " + "  ".join(f"{state}={n}" for state, n in states.items()))
    return 0
