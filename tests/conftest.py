"""Shared fixtures: emulators (real servers in child processes) and omero-py clients."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellprofiler_omero.emulator import Emulator, SeedOptions

# Small but complete demo data: every kind of object, a pyramid (4096² over a 2048
# threshold), every pixel type, a plate. Deterministic from seed 1.
TEST_SEED = SeedOptions(seed=1, fields=3, field_size=512, large_size=4096, plate_rows=2,
                        plate_columns=3, plate_fields=2, plate_field_size=128)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """One seeded emulator for the whole run (tests that change faults restore them)."""
    data = tmp_path_factory.mktemp("emulator")
    with Emulator(data, seed_options=TEST_SEED, pyramid_threshold=2048) as emu:
        yield emu


@pytest.fixture(scope="session")
def seeded(emulator: Emulator) -> dict[str, Any]:
    return emulator.seeded


@pytest.fixture
def faults(emulator: Emulator) -> Iterator[Emulator]:
    """The shared emulator, with faults cleared again after the test."""
    yield emulator
    emulator.clear_faults()


@pytest.fixture
def blitz(emulator: Emulator) -> Iterator[Any]:
    """A factory of BlitzGateway connections that are closed after the test."""
    from omero.gateway import BlitzGateway

    made: list[Any] = []

    def connect(user: str = "demo", password: str | None = None, **kw: Any) -> Any:
        conn = BlitzGateway(user, password or user, host=emulator.host, port=emulator.port,
                            **kw)
        assert conn.connect(), conn.getLastError()
        made.append(conn)
        return conn

    yield connect
    for conn in made:
        with contextlib.suppress(Exception):
            conn.close()


@pytest.fixture
def token_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private omero-user-token folder for the test."""
    folder = tmp_path / "tokens"
    monkeypatch.setenv("OMERO_USER_TOKEN_DIR", str(folder))
    return folder


def pytest_configure(config: pytest.Config) -> None:
    # Never let a developer's own settings or token leak into the tests.
    os.environ.setdefault("CELLPROFILER_OMERO_CONFIG", "/nonexistent/cellprofiler-omero.toml")


@pytest.fixture
def settings_for(emulator: Emulator, tmp_path: Path) -> Any:
    """Settings pointing at the shared emulator (tokens in a private folder)."""
    from cellprofiler_omero.core.config import Settings

    def make(**overrides: Any) -> Settings:
        base = {"server.host": emulator.host, "server.port": emulator.port,
                "auth.token_dir": str(tmp_path / "tokens"), "auth.keepalive_seconds": 3600}
        base.update({k.replace("__", "."): v for k, v in overrides.items()})
        return Settings().replace(base)

    return make


@pytest.fixture
def manager(settings_for: Any) -> Iterator[Any]:
    """A SessionManager logged in as demo on the shared emulator; closed afterwards."""
    from cellprofiler_omero.core import runtime
    from cellprofiler_omero.core.session import SessionManager

    mgr = SessionManager(settings_for())
    runtime.run(lambda: mgr.connect(user="demo", password="demo"))
    yield mgr
    runtime.run(mgr.close)


def run(func: Any, *args: Any) -> Any:
    """Run a coroutine function on the process loop (tests are synchronous)."""
    from cellprofiler_omero.core import runtime

    return runtime.run(func, *args)


@pytest.fixture
def scratch_dataset(blitz: Any) -> int:
    """A new empty Dataset owned by demo (so tests that add images stay apart)."""
    import omero.model
    from omero.rtypes import rstring

    conn = blitz()
    ds = omero.model.DatasetI()
    ds.setName(rstring("scratch"))
    return int(conn.getUpdateService().saveAndReturnObject(ds).getId().getValue())


@pytest.fixture(scope="session")
def cellprofiler_plugins() -> None:
    """CellProfiler (headless) with its modules, readers and this package's plugins loaded,
    the way ``cellprofiler --plugins-directory`` loads them."""
    import logging

    import cellprofiler_core.preferences as preferences

    logging.getLogger("cellprofiler.modules.exporttodatabase").setLevel(logging.ERROR)
    preferences.set_headless()
    from cellprofiler_omero.cp_integration import plugins_dir

    preferences.set_plugin_directory(str(plugins_dir()), globally=False)
    from cellprofiler_core.reader import activate_readers, fill_readers
    from cellprofiler_core.utilities.core.modules import fill_modules
    from cellprofiler_core.utilities.core.plugins import PLUGIN_STATUS, load_plugins

    # Readers first: fill_modules() also loads the plugins (our reader among them), and
    # fill_readers() would clear every reader registered before it.
    fill_readers(check_config=False)
    fill_modules()
    load_plugins()
    activate_readers(check_config=False)
    failed = {k: v["error"] for k, v in PLUGIN_STATUS.items() if not v["loaded"]}
    assert not failed, failed


def pixels_of(sf: Any, image_id: int) -> int:
    """The Pixels id of an image, looked up as any omero-py client must (ids differ)."""
    import omero.sys
    from omero.rtypes import rlong

    params = omero.sys.Parameters()
    params.map = {"id": rlong(image_id)}
    pixels = sf.getQueryService().findByQuery(
        "select p from Pixels p where p.image.id = :id", params, {"omero.group": "-1"})
    return int(pixels.getId().getValue())
