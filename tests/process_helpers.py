"""Subprocesses that tests run side by side: on two cores, commands that each keep about one core busy (soaks,
demos) take the time of the slowest instead of the sum."""

from __future__ import annotations

import subprocess
import time
from pathlib import Path


def run_side_by_side(commands: dict[str, tuple[list[str], Path]], timeout_s: float, **popen) -> dict[str, subprocess.CompletedProcess]:
    """Start every command at once, each writing its stdout and stderr to files in its folder (a full pipe would
    stall one while another is waited for), and wait for all. A command still running `timeout_s` after the start
    is killed (a negative return code). Returns {key: CompletedProcess with the output as text}."""
    started: dict[str, subprocess.Popen] = {}
    try:
        for key, (argv, folder) in commands.items():
            with (folder / "stdout").open("w") as out, (folder / "stderr").open("w") as err:  # the child keeps its own descriptors
                started[key] = subprocess.Popen(argv, stdout=out, stderr=err, **popen)
        deadline = time.monotonic() + timeout_s
        for proc in started.values():
            try:
                proc.wait(timeout=max(0.0, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
    finally:
        for proc in started.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    return {
        key: subprocess.CompletedProcess(proc.args, proc.returncode, (folder / "stdout").read_text(errors="replace"),
                                         (folder / "stderr").read_text(errors="replace"))
        for (key, proc), (_, folder) in zip(started.items(), commands.values())
    }


def selected_tests(request) -> set[str]:
    """Names (with parameters) of the tests of the requesting module that this session runs: a module fixture
    that starts processes for several tests starts only the selected ones'."""
    return {item.name for item in request.session.items if item.module is request.module}
