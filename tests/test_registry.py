"""Plugins from entry-point metadata serve reads; configuration orders the transports."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from cellprofiler_omero.core import runtime
from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.errors import ConfigError, NoTransport
from cellprofiler_omero.core.model import PixelRequest, Region
from cellprofiler_omero.core.refs import parse_image
from cellprofiler_omero.core.registry import Registry
from cellprofiler_omero.core.roles import Credentials, ServerAddress
from cellprofiler_omero.core.session import SessionManager

PLUGINS = Path(__file__).parent / "plugins"


@pytest.fixture
def third_party(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """Entry-point metadata for two plugins defined only in the test tree."""
    dist = tmp_path / "cpo_test_plugins-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text(
        "Metadata-Version: 2.1\nName: cpo-test-plugins\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text(
        "[cellprofiler_omero]\nmemory = memory_transport\ndecliner = declining_transport\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(PLUGINS))
    import memory_transport

    memory_transport.CALLS.clear()
    memory_transport.STATE["fail_reads"] = 0
    yield tmp_path
    for name in ("memory_transport", "declining_transport"):
        sys.modules.pop(name, None)


def settings_for(read: list[str]) -> Settings:
    return Settings().replace({"transports.read": read, "transports.connect": ["memory"],
                               "auth.use_token": False})


def read_through(manager: SessionManager, text: str, request: PixelRequest) -> np.ndarray:
    async def go() -> np.ndarray:
        ref = parse_image(text)
        conn = await manager.connection(ref)
        meta = await conn.image_meta(ref.id)
        source = manager.registry.open_reader(conn, ref, meta)
        try:
            return await source.read(request)
        finally:
            await source.aclose()

    return runtime.run(go)


def test_entry_point_plugins_are_registered_by_name(third_party: Path) -> None:
    registry = Registry(settings_for(["memory"]))
    assert {"memory", "decliner"} <= set(registry.names())


def test_third_party_plugin_serves_a_read(third_party: Path) -> None:
    import memory_transport

    manager = SessionManager(settings_for(["memory"]))
    runtime.run(lambda: manager.connect("memory", user="demo", password="demo"))
    data = read_through(manager, "Image:1", PixelRequest(z=(1,), c=(0, 2),
                                                         region=Region(1, 2, 3, 2)))
    expected = memory_transport.IMAGES[1][[1]][:, [0, 2], 2:4, 1:4]
    np.testing.assert_array_equal(data, expected)
    assert "memory read" in memory_transport.CALLS
    runtime.run(manager.close)


def test_declining_transport_falls_through_in_configured_order(
        third_party: Path, caplog: pytest.LogCaptureFixture) -> None:
    import declining_transport

    declining_transport.ASKED.clear()
    manager = SessionManager(settings_for(["decliner", "memory"]))
    runtime.run(lambda: manager.connect("memory", user="demo", password="demo"))
    with caplog.at_level(logging.INFO, logger="cellprofiler_omero.core.registry"):
        read_through(manager, "Image:1", PixelRequest(z=(0,), c=(0,)))
    assert declining_transport.ASKED == ["read 1"]
    messages = [r.getMessage() for r in caplog.records]
    assert "transport decliner declined read" in messages
    assert "transport memory serves read" in messages
    runtime.run(manager.close)


def test_reordering_configuration_changes_who_is_asked_first(third_party: Path) -> None:
    import declining_transport

    declining_transport.ASKED.clear()
    manager = SessionManager(settings_for(["memory", "decliner"]))
    runtime.run(lambda: manager.connect("memory", user="demo", password="demo"))
    read_through(manager, "Image:1", PixelRequest(z=(0,), c=(0,)))
    assert declining_transport.ASKED == []
    runtime.run(manager.close)


def test_transient_failure_during_read_falls_back_to_next_transport(
        third_party: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    import memory_transport

    # A second copy of the memory plugin under another name plays the backup transport.
    backup = tmp_path / "backup_transport.py"
    backup.write_text("from memory_transport import omero_connect, omero_open_reader\n")
    registry = Registry(settings_for(["memory", "backup"]))
    import backup_transport

    registry.register(backup_transport, "backup")
    manager = SessionManager(registry.settings, registry)
    runtime.run(lambda: manager.connect("memory", user="demo", password="demo"))
    memory_transport.STATE["fail_reads"] = 1
    with caplog.at_level(logging.WARNING, logger="cellprofiler_omero.core.registry"):
        data = read_through(manager, "Image:1", PixelRequest(z=(0,), c=(1,)))
    np.testing.assert_array_equal(data, memory_transport.IMAGES[1][[0]][:, [1]])
    assert any("falling back to backup" in r.getMessage() for r in caplog.records)
    sys.modules.pop("backup_transport", None)
    runtime.run(manager.close)


def test_unknown_transport_name_raises_config_error(third_party: Path) -> None:
    registry = Registry(settings_for(["nonesuch"]))
    with pytest.raises(ConfigError, match=r"'nonesuch'.*not installed"):
        registry.first("read", "omero_open_reader", connection=None, image=None, meta=None,
                       settings=registry.settings)


def test_all_transports_declining_raises_no_transport(third_party: Path) -> None:
    registry = Registry(settings_for(["decliner"]))
    with pytest.raises(NoTransport, match="decliner: declined"):
        registry.first("read", "omero_open_reader", connection=None,
                       image=parse_image("Image:1"), meta=None, settings=registry.settings)


def test_connect_refusal_is_not_a_fall_through(third_party: Path) -> None:
    from cellprofiler_omero.core.errors import AuthError

    registry = Registry(settings_for(["memory"]))
    with pytest.raises(AuthError):
        registry.connect(ServerAddress("memory"), Credentials(user="demo", password="bad"))
