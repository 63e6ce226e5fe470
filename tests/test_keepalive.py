"""Keep-alive: an anyio background task on the process loop that pings while connected."""

from __future__ import annotations

import threading
import time
from typing import Any

import pytest

from cellprofiler_omero.core import runtime
from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.registry import Registry
from cellprofiler_omero.core.session import SessionManager
from tests.plugins import memory_transport


def _wait_for(condition: Any, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(0.05)


def test_keep_alive_pings_on_the_loop_while_connected_and_stops_on_close(
        monkeypatch: pytest.MonkeyPatch) -> None:
    pings: list[str] = []

    async def ping(self: Any) -> None:
        pings.append(threading.current_thread().name)

    monkeypatch.setattr(memory_transport.MemoryConnection, "ping", ping)
    settings = Settings().replace({"transports.connect": ["memory"],
                                   "auth.keepalive_seconds": 1, "auth.use_token": False})
    registry = Registry(settings, load_entry_points=False)
    registry.register(memory_transport, "memory")
    manager = SessionManager(settings, registry)
    runtime.run(lambda: manager.connect("memory", 4064, user="demo", password="demo"))
    try:
        _wait_for(lambda: len(pings) >= 2)
        assert set(pings) == {"cellprofiler-omero-loop"}
    finally:
        runtime.run(manager.close)
    stopped_at = len(pings)
    time.sleep(2.5)  # more than two intervals: a task still running would have pinged
    assert len(pings) == stopped_at
