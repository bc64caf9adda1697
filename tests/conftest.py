"""Shared fixtures: settings in a temporary data dir, and a real server on an unused port."""

from __future__ import annotations

import pytest
from tornado.testing import bind_unused_port

from kernelagent.config import Settings

pytest_plugins = ["backends"]


@pytest.fixture
def settings(tmp_path):
    """Embedded defaults in a private data dir; no warm pool unless a test asks for one."""
    return Settings(data_dir=tmp_path / "data", pool_size=0, pool_preimport="")


@pytest.fixture
def unused_port():
    sock, port = bind_unused_port()
    sock.close()
    return port
