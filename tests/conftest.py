"""Shared fixtures: emulators (real servers in child processes) and omero-py clients."""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

from cellprofiler_omero.core.errors import ConfigError
from cellprofiler_omero.core.hookspecs import hookimpl
from cellprofiler_omero.emulator import Emulator, SeedOptions

if TYPE_CHECKING:
    from cellprofiler_omero.core.config import Settings
    from cellprofiler_omero.core.session import SessionManager

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


# -- the test target: the shared emulator, or a real server named in the environment -----
#
# Tests marked ``real_server`` use only ``target`` and the fixtures made from it
# (target_blitz, target_manager, target_cp_manager): they make what they need in the
# target's writable dataset and never use seeded ids, fault switches or emulator control.
# Without the variables below they run against the shared emulator; with them
# (``make test-real``) against that server.

TARGET_ENV = {"server": "CELLPROFILER_OMERO_TEST_SERVER",
              "user": "CELLPROFILER_OMERO_TEST_USER",
              "password": "CELLPROFILER_OMERO_TEST_PASSWORD",
              "dataset": "CELLPROFILER_OMERO_TEST_DATASET"}
#: Optional product settings for the target, ``section.key=value`` separated by spaces
#: (e.g. ``server.secure=true transports.read=pixelbuffer,ice``).
TARGET_SETTINGS_ENV = "CELLPROFILER_OMERO_TEST_SETTINGS"
OMERO_PORT = 4064


@dataclass(frozen=True)
class Target:
    """Where the ``real_server`` tests run: a server, an account, a dataset it may write to."""

    host: str
    port: int
    user: str
    # Never printed: kept out of the repr that pytest shows in failures and logs.
    password: str = field(repr=False)
    dataset_id: int
    is_emulator: bool
    #: Product settings beyond host and port, as (``section.key``, value) pairs.
    extra_settings: tuple[tuple[str, str], ...] = ()

    def settings(self, token_dir: Path, **overrides: Any) -> Settings:
        """Product settings for this server (tokens in ``token_dir``); ``a__b=`` sets ``a.b``."""
        from cellprofiler_omero.core.config import Settings

        values: dict[str, Any] = {"server.host": self.host, "server.port": self.port,
                                  "auth.token_dir": str(token_dir),
                                  "auth.keepalive_seconds": 3600}
        values.update(dict(self.extra_settings))
        values.update({k.replace("__", "."): v for k, v in overrides.items()})
        return Settings().replace(values)

    def child_environment(self, **extra: str) -> dict[str, str]:
        """This process's environment for a child (CLI, CellProfiler) that talks to the
        target: the product's own variables name the server; no test credentials."""
        env = {k: v for k, v in os.environ.items()
               if k != "OMERO_PASSWORD" and (k == "CELLPROFILER_OMERO_CONFIG"
                                             or not k.startswith("CELLPROFILER_OMERO_"))}
        env["CELLPROFILER_OMERO_SERVER_HOST"] = self.host
        env["CELLPROFILER_OMERO_SERVER_PORT"] = str(self.port)
        for key, value in self.extra_settings:
            section, _, name = key.partition(".")
            env[f"CELLPROFILER_OMERO_{section.upper()}_{name.upper()}"] = value
        env.update(extra)
        return env

    def blitz(self) -> Any:
        """A new BlitzGateway connection as the target's user (the caller closes it)."""
        from omero.gateway import BlitzGateway

        secure = self.settings(Path()).server.secure
        conn = BlitzGateway(self.user, self.password, host=self.host, port=self.port,
                            secure=secure)
        if not conn.connect():
            raise AssertionError(f"BlitzGateway cannot log in to {self.host}:{self.port} as "
                                 f"{self.user}: {conn.getLastError()}")
        return conn

    def dataset_contents(self) -> tuple[set[int], set[int]]:
        """Ids of the images in the target dataset and of the annotations on it."""
        conn = self.blitz()
        try:
            dataset = conn.getObject("Dataset", self.dataset_id)
            if dataset is None:
                raise AssertionError(f"{self.user} cannot see Dataset {self.dataset_id}.")
            return ({int(i.getId()) for i in dataset.listChildren()},
                    {int(a.getId()) for a in dataset.listAnnotations()})
        finally:
            conn.close()


def target_from_environment(environ: Mapping[str, str]) -> Target | None:
    """The real server named by the ``CELLPROFILER_OMERO_TEST_*`` variables, or ``None``
    when none is set; a partial or malformed set is a usage error naming the variable."""
    values = {key: environ.get(name, "") for key, name in TARGET_ENV.items()}
    if not any(values.values()):
        return None
    every = ", ".join(TARGET_ENV.values())
    missing = [TARGET_ENV[key] for key, value in values.items() if not value.strip()]
    if missing:
        raise pytest.UsageError(
            f"{' and '.join(missing)} not set: a run against a real server needs all of "
            f"{every} (see README.md, 'Testing against your own server').")
    server = values["server"].strip()
    host, sep, port = server.rpartition(":")
    if not sep:
        host, port = server, str(OMERO_PORT)
    if not host or not port.isdigit():
        raise pytest.UsageError(f"{TARGET_ENV['server']} must be host:port, not {server!r}.")
    dataset = values["dataset"].strip()
    if not dataset.isdigit():
        raise pytest.UsageError(
            f"{TARGET_ENV['dataset']} must be a Dataset id (a number), not {dataset!r}.")
    pairs = []
    for item in environ.get(TARGET_SETTINGS_ENV, "").split():
        key, sep, value = item.partition("=")
        if not sep or "." not in key:
            raise pytest.UsageError(
                f"{TARGET_SETTINGS_ENV} holds section.key=value pairs separated by spaces; "
                f"{item!r} is not one.")
        pairs.append((key, value))
    target = Target(host, int(port), values["user"].strip(), values["password"],
                    int(dataset), False, tuple(pairs))
    try:
        target.settings(Path())
    except ConfigError as exc:
        raise pytest.UsageError(f"{TARGET_SETTINGS_ENV}: {exc}") from None
    return target


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # A half-set environment fails the run at once, with one message, not test by test.
    target_from_environment(os.environ)
    # The marker promises the test can run against any server: no emulator fixtures.
    bound = [item.nodeid for item in items if item.get_closest_marker("real_server")
             and "emulator" in getattr(item, "fixturenames", ())]
    if bound:
        raise pytest.UsageError(
            "Tests marked real_server must use only the target fixture (and those made from "
            f"it), never the emulator or its seeded data: {', '.join(bound)}.")


@pytest.fixture(scope="session")
def target(request: pytest.FixtureRequest) -> Target:
    """The server the ``real_server`` tests run against."""
    real = target_from_environment(os.environ)
    if real is not None:
        return real
    # The shared emulator, through a dataset of its own: what these tests add never
    # changes the seeded data other tests count. Looked up lazily, so a real-server run
    # starts no emulator.
    import omero.model
    from omero.rtypes import rstring

    emulator = request.getfixturevalue("emulator")
    target = Target(emulator.host, emulator.port, "demo", "demo", 0, True)
    conn = target.blitz()
    try:
        ds = omero.model.DatasetI()
        ds.setName(rstring("real_server tests"))
        dataset = int(conn.getUpdateService().saveAndReturnObject(ds).getId().getValue())
    finally:
        conn.close()
    return dataclasses.replace(target, dataset_id=dataset)


class Leftovers:
    """What tests made on the target, deleted afterwards (a real server keeps it).

    Registered on a SessionManager, it records every image uploaded and table written
    through the product's own observer hooks.
    """

    def __init__(self) -> None:
        self.objects: dict[str, set[int]] = {}

    def add(self, kind: str, ids: Iterable[int]) -> None:
        """Remember objects of ``kind`` (an OMERO class name) to delete."""
        self.objects.setdefault(kind, set()).update(int(i) for i in ids)

    @hookimpl
    def omero_image_uploaded(self, session: Any, image: Any, spec: Any) -> None:
        self.add("Image", [image.id])

    @hookimpl
    def omero_table_written(self, session: Any, table: Any, rows_added: int) -> None:
        if table.annotation_id is not None:
            self.add("Annotation", [table.annotation_id])  # its file goes with it
        else:
            self.add("OriginalFile", [table.file_id])

    def delete(self, target: Target) -> None:
        """Delete everything recorded through the server's normal delete (``Delete2``,
        as BlitzGateway sends it), on the emulator too, so the path is proven here."""
        if not any(self.objects.values()):
            return
        conn = target.blitz()
        try:
            for kind in ("Image", "Annotation", "OriginalFile"):
                ids = sorted(self.objects.get(kind, ()))
                if ids:
                    conn.deleteObjects(kind, ids, deleteAnns=True, wait=True)
        finally:
            conn.close()
        self.objects.clear()


@pytest.fixture
def target_blitz(target: Target) -> Iterator[Callable[[], Any]]:
    """A factory of BlitzGateway connections to the target, closed after the test."""
    made: list[Any] = []

    def connect() -> Any:
        conn = target.blitz()
        made.append(conn)
        return conn

    yield connect
    for conn in made:
        with contextlib.suppress(Exception):
            conn.close()


@pytest.fixture
def target_manager(target: Target, tmp_path: Path) -> Iterator[SessionManager]:
    """A SessionManager logged in to the target; what it uploads or writes is deleted after
    the test."""
    from cellprofiler_omero.core.session import SessionManager

    mgr = SessionManager(target.settings(tmp_path / "tokens"))
    leftovers = Leftovers()
    mgr.registry.register(leftovers, "test-leftovers")
    run(lambda: mgr.connect(user=target.user, password=target.password))
    yield mgr
    run(mgr.close)
    leftovers.delete(target)


@pytest.fixture
def target_cp_manager(target_manager: SessionManager, cellprofiler_plugins: None
                      ) -> Iterator[SessionManager]:
    """``target_manager`` as the process-wide manager CellProfiler's reader uses."""
    from cellprofiler_omero.core import session as core_session
    from cellprofiler_omero.cp_integration import compat

    compat.install()
    core_session.set_manager(target_manager)
    yield target_manager
    core_session.set_manager(None)
