"""`nrt doctor`: check a deployment (config, checkpoint, catalog, credentials, servers, GPU, disk, clock)."""

from __future__ import annotations


def register(sub) -> None:
    parser = sub.add_parser(
        "doctor",
        help="check the deployment and print a table of findings; exit 1 on any failure",
        description="Checks the config, checkpoint, catalog, credentials (never printed), servers, GPU, disk space "
        "and clock sync. Exits 1 if any check fails; warnings alone exit 0. Run it as the service runs: "
        "`systemctl start nrt-doctor.service` uses the worker's user, sandbox and credentials.",
    )
    parser.add_argument("--min-free-gib", type=float, default=20.0, metavar="GIB",
                        help="free space the workdir and product file systems need (default 20, as the NrtDiskLow alert)")
    parser.add_argument("--json", action="store_true", help="print the findings as JSON")
    parser.set_defaults(handler=run_doctor)


def run_doctor(args, cfg) -> int:
    from nrt import doctor

    findings = doctor.run_checks(cfg, min_free_bytes=int(args.min_free_gib * doctor.GIB))
    print(doctor.render_json(findings) if args.json else doctor.render_table(findings))
    return doctor.exit_code(findings)
