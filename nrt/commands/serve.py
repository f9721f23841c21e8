"""`nrt serve`: the live map page over the best-available products (read-only, loopback by default)."""

from __future__ import annotations

from nrt.commands import serve_until_stopped


def register(sub) -> None:
    parser = sub.add_parser("serve", help="serve the live map page of the latest products (read-only)")
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on (default loopback only)")
    parser.add_argument("--port", type=int, default=8765, help="TCP port (default 8765)")
    parser.add_argument("--hours", type=float, default=6.0, help="how far back the time slider reaches (hours)")
    parser.set_defaults(handler=serve)


def serve(args, cfg) -> int:
    from nrt.products.mapserver import MapData, make_server
    from nrt.service import open_catalog

    with open_catalog(cfg) as catalog:
        data = MapData(catalog, cfg.alerts.areas, cfg.products.quicklook_threshold_mmh, args.hours, cfg.products.basins)
        server = make_server(data, args.host, args.port)
        print(f"nrt map on http://{args.host}:{server.server_address[1]}/ (Ctrl-C stops)", flush=True)
        return serve_until_stopped(server)
