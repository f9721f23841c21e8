"""Shared fixtures: the real data beside the checkout, an isolated work directory and config, PostgreSQL."""

from __future__ import annotations

import contextlib
import importlib.util
import os
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("NRT_SHARED_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """../shared/data (real GPM granules and radar sequences); skipped where it is absent, as on a user's machine."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} is absent (set NRT_SHARED_DATA to it; it ships beside the checkout, not in the package)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def gpm_dir(shared_data) -> Path:
    return shared_data / "gpm"


@pytest.fixture(scope="session")
def radar_dir(shared_data) -> Path:
    return shared_data / "radar"


@pytest.fixture
def cfg(tmp_path, monkeypatch):
    """Default config with its work directory (and so the SQLite catalog) under tmp_path."""
    from nrt import config

    for env in config.SECRET_ENV.values():
        monkeypatch.delenv(env, raising=False)
    return config.from_dict({"general": {"workdir": str(tmp_path / "work")}}, "<test>")


def postgres_url() -> str | None:
    return os.environ.get("NRT_TEST_POSTGRES_URL")


@pytest.fixture
def pg_url() -> str:
    url = postgres_url()
    if not url:
        pytest.skip("NRT_TEST_POSTGRES_URL is not set (.ci/run starts PostgreSQL and sets it)")
    return url


@pytest.fixture(autouse=True)
def _restore_nrt_logger():
    """`nrt.cli.main` configures the "nrt" logger (own handler, no propagation); undo that after each test
    so that later tests' caplog still sees nrt's records."""
    import logging

    logger = logging.getLogger("nrt")
    saved = (list(logger.handlers), logger.propagate, logger.level)
    yield
    logger.handlers[:], logger.propagate, logger.level = saved[0], saved[1], saved[2]


@pytest.fixture(scope="module")
def one_thread():
    """Tiny networks run fastest on one thread, and the shared cores stay free for the rest."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@contextlib.contextmanager
def script_module(name: str):
    """scripts/<name>.py imported as the module `name`, registered in sys.modules while in use (the scripts'
    dataclasses look their module up there)."""
    spec = importlib.util.spec_from_file_location(name, REPO / "scripts" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.modules.pop(name, None)
