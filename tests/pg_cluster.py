"""A throwaway PostgreSQL cluster in a temporary directory, for outage tests that stop and start the server.

Never the shared test server: stopping that would break every other test using it. PostgreSQL refuses to
run as root, so as root the cluster belongs to the `postgres` user (via runuser).
"""

from __future__ import annotations

import os
import pwd
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path

import pytest


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class Cluster:
    def __init__(self):
        for tool in ("initdb", "pg_ctl"):
            if shutil.which(tool) is None:
                pytest.skip(f"{tool} not installed: no throwaway PostgreSQL cluster for outage tests")
        # Its own directory under /tmp: pytest's tmp_path sits below a root-only folder the postgres user cannot enter.
        self.directory = Path(tempfile.mkdtemp(prefix="nrt-pg-"))
        self.data = self.directory / "pgdata"
        self.port = _free_port()
        self.prefix: list[str] = []
        if os.geteuid() == 0:
            try:
                user = pwd.getpwnam("postgres")
            except KeyError:
                pytest.skip("running as root without a postgres user: cannot start a throwaway cluster")
            self.prefix = ["runuser", "-u", "postgres", "--"]
            os.chown(self.directory, user.pw_uid, user.pw_gid)
        self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "--no-sync")
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def _run(self, *args: str) -> None:
        subprocess.run([*self.prefix, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)

    def start(self) -> None:
        options = f"-p {self.port} -c listen_addresses=127.0.0.1 -k {self.directory} -c fsync=off"
        self._run("pg_ctl", "-D", str(self.data), "-o", options, "-w", "-l", str(self.directory / "log"), "start")

    def stop(self, mode: str = "fast") -> None:
        self._run("pg_ctl", "-D", str(self.data), "-m", mode, "-w", "stop")

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()


def throwaway_cluster():
    """Yields a started cluster; stops and removes it at the end."""
    cluster = Cluster()
    try:
        cluster.start()
        yield cluster
    finally:
        if cluster.running():
            cluster.stop("immediate")
        shutil.rmtree(cluster.directory, ignore_errors=True)
