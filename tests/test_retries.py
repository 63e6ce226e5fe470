"""Retries with a time budget: calls, renewals and logins outlast a flaky network.

Against an emulator of this module's own (its log at INFO, so every injected fault is
written down and counted), with the emulator's fault switches: dropped connections
(``drop_probability``, ``drop_after``) and lost replies (``drop_after_reply``).
"""

from __future__ import annotations

import hashlib
import math
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from cellprofiler_omero.core.config import Settings, load_settings
from cellprofiler_omero.core.errors import (
    ConnectionLost,
    NotFound,
    PermissionDenied,
    RetriesExhausted,
    ServerError,
)
from cellprofiler_omero.core.reading import ImageReader
from cellprofiler_omero.core.refs import parse_image
from cellprofiler_omero.core.roles import Connection
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.emulator import Emulator, synthetic
from tests.conftest import run

ROOT = Path(__file__).resolve().parents[1]
FAULT_SEED = 20


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """An emulator whose log records each injected fault ("fault: dropping …")."""
    with Emulator(tmp_path_factory.mktemp("flaky"), seed="users", log_level="INFO") as e:
        yield e


@pytest.fixture
def flaky(emu: Emulator) -> Iterator[Emulator]:
    yield emu
    emu.clear_faults()


class FaultLog:
    """The fault lines the emulator logs from now on."""

    def __init__(self, emu: Emulator) -> None:
        self.path = emu.data_dir / "emulator.log"
        self.start = self.path.stat().st_size

    def lines(self, what: str = "fault: dropping") -> list[str]:
        with self.path.open("rb") as handle:
            handle.seek(self.start)
            text = handle.read().decode(errors="replace")
        return [line for line in text.splitlines() if what in line]


def settings(emu: Emulator, tmp: Path, **overrides: Any) -> Settings:
    base = {"server.host": emu.host, "server.port": emu.port, "auth.use_token": False,
            "auth.token_dir": str(tmp / "tokens"), "auth.keepalive_seconds": 3600}
    base.update({k.replace("__", "."): v for k, v in overrides.items()})
    return Settings().replace(base)


@pytest.fixture
def mgr(emu: Emulator, tmp_path: Path) -> Iterator[SessionManager]:
    manager = SessionManager(settings(emu, tmp_path, retry__budget_seconds=1.0,
                                      retry__initial_delay_seconds=0.05,
                                      retry__max_delay_seconds=0.2))
    run(lambda: manager.connect(user="demo", password="demo"))
    yield manager
    run(manager.close)


def counted(func: Callable[[Connection], Any]) -> tuple[list[int], Callable[[Connection], Any]]:
    calls: list[int] = []

    async def wrapper(conn: Connection) -> Any:
        calls.append(1)
        return await func(conn)

    return calls, wrapper


def ice_call(op: Callable[[Any], Any], what: str) -> Callable[[Connection], Any]:
    """A raw omero-py call on the connection's session (errors translated by the transport)."""
    def call(conn: Connection) -> Any:
        return conn.call(lambda: op(conn.sf), what=what)  # type: ignore[attr-defined]

    return call


# -- settings ----------------------------------------------------------------------------


def test_retry_budget_is_a_setting_from_toml_and_environment(tmp_path: Path) -> None:
    assert Settings().retry.budget_seconds == 60.0
    toml = tmp_path / "config.toml"
    toml.write_text("[retry]\nbudget_seconds = 120\nmax_delay_seconds = 4\n")
    from_file = load_settings(path=toml, environ={})
    assert (from_file.retry.budget_seconds, from_file.retry.max_delay_seconds) == (120, 4)
    from_env = load_settings(path=toml,
                             environ={"CELLPROFILER_OMERO_RETRY_BUDGET_SECONDS": "5"})
    assert from_env.retry.budget_seconds == 5


# -- what is not retried -------------------------------------------------------------------


def test_permission_denied_is_raised_after_one_attempt(mgr: SessionManager) -> None:
    # A real server lets only administrators read its database settings.
    calls, func = counted(ice_call(
        lambda sf: sf.getConfigService().getConfigValue("omero.db.pass"),
        "reading a server setting"))
    with pytest.raises(PermissionDenied):
        run(lambda: mgr.call(func))
    assert len(calls) == 1


def test_bad_input_is_raised_after_one_attempt(mgr: SessionManager) -> None:
    calls, func = counted(ice_call(
        lambda sf: sf.getQueryService().findAllByQuery("select nonsense from", None),
        "running a query"))
    with pytest.raises(ServerError) as caught:
        run(lambda: mgr.call(func))
    assert not isinstance(caught.value, RetriesExhausted)
    assert len(calls) == 1


def test_a_missing_object_is_raised_after_one_attempt(mgr: SessionManager) -> None:
    calls, func = counted(lambda conn: conn.image_meta(987654321))
    with pytest.raises(NotFound):
        run(lambda: mgr.call(func))
    assert len(calls) == 1


# -- what is retried -------------------------------------------------------------------


def test_the_budget_error_says_how_many_attempts_over_how_long_and_what_to_do(
        mgr: SessionManager, flaky: Emulator) -> None:
    faults = FaultLog(flaky)
    flaky.set_faults(drop_probability=1.0, ops=["findAllByQuery"], seed=FAULT_SEED)
    calls, func = counted(ice_call(
        lambda sf: sf.getQueryService().findAllByQuery("select p from Project p", None),
        "listing projects"))
    with pytest.raises(RetriesExhausted) as caught:
        run(lambda: mgr.call(func, what="listing projects"))
    error = caught.value
    assert error.attempts == len(calls) >= 2
    assert len(faults.lines("dropping connection on findAllByQuery")) == error.attempts
    assert error.budget_seconds == 1.0
    assert error.elapsed_seconds > 0
    assert error.what == "listing projects"
    assert isinstance(error.last_cause, ConnectionLost)
    assert error.__cause__ is error.last_cause
    text = str(error)
    assert f"after {error.attempts} attempts over {error.elapsed_seconds:.1f} s" in text
    assert "listing projects" in text and "retry.budget_seconds" in text


def test_a_call_dropped_several_times_succeeds_within_the_budget(
        emu: Emulator, flaky: Emulator, tmp_path: Path) -> None:
    manager = SessionManager(settings(emu, tmp_path, retry__initial_delay_seconds=0.05))
    run(lambda: manager.connect(user="demo", password="demo"))
    key = run(manager.connection).session_key
    faults = FaultLog(flaky)
    # Three dropped calls in a row: more than the one renewal there used to be.
    flaky.set_faults(drop_probability=1.0, ops=["findAllByQuery"], seed=FAULT_SEED)
    calls, func = counted(ice_call(
        lambda sf: sf.getQueryService().findAllByQuery("select p from Project p", None),
        "listing projects"))

    async def heal_after_three(conn: Connection) -> Any:
        if len(calls) == 3:
            flaky.clear_faults()
        return await func(conn)

    assert run(lambda: manager.call(heal_after_three)) == []
    assert len(calls) == 4
    assert len(faults.lines("dropping connection on findAllByQuery")) == 3
    assert run(manager.connection).session_key == key  # rejoined, not a new login
    run(manager.close)


def test_a_dropped_login_is_tried_again(emu: Emulator, flaky: Emulator,
                                        tmp_path: Path) -> None:
    manager = SessionManager(settings(emu, tmp_path, retry__initial_delay_seconds=0.05))
    faults = FaultLog(flaky)
    flaky.set_faults(drop_after=1, ops=["createSession"])
    info = run(lambda: manager.connect(user="demo", password="demo"))
    assert info.user == "demo"
    assert len(faults.lines("dropping connection on createSession")) == 1
    run(manager.close)


def test_a_first_login_to_a_closed_port_fails_without_waiting(emu: Emulator,
                                                             tmp_path: Path) -> None:
    from cellprofiler_omero.core.errors import NoTransport

    manager = SessionManager(settings(emu, tmp_path, server__port=1))
    with pytest.raises(NoTransport, match="Cannot reach OMERO") as caught:
        run(lambda: manager.connect(user="demo", password="demo"))
    assert not isinstance(caught.value, RetriesExhausted)


def test_an_upload_whose_replies_are_lost_is_made_once(mgr: SessionManager, flaky: Emulator,
                                                       emu: Emulator) -> None:
    from omero.gateway import BlitzGateway

    from cellprofiler_omero.core.uploading import upload

    dataset = new_dataset(emu, "lost replies")
    pixels = np.arange(64 * 48, dtype=np.uint16).reshape(48, 64)
    faults = FaultLog(flaky)
    # The reply of every second write is lost after the server made the change (the
    # seed drops the first createImage's reply: an upload has only a few writes).
    flaky.set_faults(drop_probability=0.5, drop_after_reply=True, seed=FAULT_SEED + 1,
                     ops=["saveObject", "saveAndReturnObject", "saveArray", "submit",
                          "setPlane", "save", "close", "createImage"])
    manager = SessionManager(mgr.settings.replace({"retry.budget_seconds": 60.0}))
    run(lambda: manager.connect(user="demo", password="demo"))
    made = run(lambda: upload(manager, pixels, name="once", dataset_id=dataset,
                              client_key="lost-replies-once"))
    flaky.clear_faults()
    assert faults.lines("dropping the reply")
    conn = BlitzGateway("demo", "demo", host=emu.host, port=emu.port)
    assert conn.connect()
    try:
        images = list(conn.getObject("Dataset", dataset).listChildren())
    finally:
        conn.close()
    assert [i.getId() for i in images] == [made.id]
    reader = ImageReader(manager, parse_image(f"Image:{made.id}"))
    np.testing.assert_array_equal(run(reader.read)[0, 0], pixels)
    run(reader.aclose)
    run(manager.close)


def new_dataset(emu: Emulator, name: str) -> int:
    import omero.model
    from omero.gateway import BlitzGateway
    from omero.rtypes import rstring

    conn = BlitzGateway("demo", "demo", host=emu.host, port=emu.port)
    assert conn.connect()
    try:
        dataset = omero.model.DatasetI()
        dataset.setName(rstring(name))
        saved = conn.getUpdateService().saveAndReturnObject(dataset)
        return int(saved.getId().getValue())
    finally:
        conn.close()


# -- real headless CellProfiler runs through faults --------------------------------------


@pytest.fixture(scope="module")
def sources(emu: Emulator, tmp_path_factory: pytest.TempPathFactory
            ) -> Iterator[dict[str, Any]]:
    """Eight small two-channel fields, and a session handed to CellProfiler processes."""
    from cellprofiler_omero.core.uploading import upload

    tmp = tmp_path_factory.mktemp("sources")
    manager = SessionManager(settings(emu, tmp))
    run(lambda: manager.connect(user="demo", password="demo"))
    dataset = new_dataset(emu, "sources")
    ids = []
    for index in range(8):
        pixels, _ = synthetic.nuclei_and_cells(3000 + index, 160)
        ids.append(run(lambda p=pixels, i=index: upload(
            manager, p, name=f"field {i}", axes="CYX", dataset_id=dataset,
            channel_names=["DAPI", "Cytoplasm"])).id)
    home = tmp / "home"
    home.mkdir()
    env = {**os.environ, **manager.export_for_workers(), "HOME": str(home),
           "OMERO_USER_TOKEN_DIR": str(tmp / "no-tokens"),
           "CELLPROFILER_OMERO_SERVER_HOST": emu.host,
           "CELLPROFILER_OMERO_SERVER_PORT": str(emu.port)}
    try:
        yield {"ids": ids, "env": env, "manager": manager, "tmp": tmp}
    finally:
        run(manager.close)


PREFIX = "Flaky"


def cellprofiler_run(emu: Emulator, sources: dict[str, Any], name: str,
                     faults: dict[str, Any] | None = None) -> dict[str, Any]:
    """One headless run of the nuclei pipeline over the eight fields into a new dataset,
    with ``faults`` on while it runs; returns what it made and the faults that fired."""
    from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline
    from tests.test_cp_headless import run_cellprofiler

    dataset = new_dataset(emu, name)
    pipeline = nuclei_pipeline(dataset, save_labels=True, table_prefix=PREFIX)
    urls = [f"omero:iid={i}" for i in sources["ids"]]
    log = FaultLog(emu)
    # The default budget (60 s), with short waits between attempts to keep CI quick.
    env = {**sources["env"], "CELLPROFILER_OMERO_RETRY_INITIAL_DELAY_SECONDS": "0.05",
           "CELLPROFILER_OMERO_RETRY_MAX_DELAY_SECONDS": "0.5"}
    if faults:
        emu.set_faults(**faults)
    try:
        run_cellprofiler(pipeline, urls, sources["tmp"] / name, env)
    finally:
        emu.clear_faults()
    return {"outputs": outputs(emu, sources["manager"], dataset),
            "faults": log.lines()}


def outputs(emu: Emulator, manager: SessionManager, dataset: int) -> dict[str, Any]:
    """A run's labels (pixel hashes by image number) and tables (rows by key), without
    the ids of this run's own uploads (every run makes its own images)."""
    import omero2pandas
    from omero.gateway import BlitzGateway

    conn = BlitzGateway("demo", "demo", host=emu.host, port=emu.port)
    assert conn.connect()
    try:
        ds = conn.getObject("Dataset", dataset)
        images = {int(i.getId()): i.getName() for i in ds.listChildren()}
        files = [(a.getFile().getName(), a.getFile().getId()) for a in ds.listAnnotations()
                 if a.getFile() is not None and a.getFile().getName().startswith(PREFIX)]
        tables: dict[str, dict[tuple[int, ...], tuple[Any, ...]]] = {}
        columns: dict[str, list[str]] = {}
        hashes: dict[int, str] = {}
        for file_name, file_id in files:
            label = file_name[len(PREFIX) + 1:].split("_run-")[0]
            assert label not in tables, f"two tables for {label}: {files}"
            frame = omero2pandas.read_table(file_id=file_id, omero_connector=conn)
            # This run's own uploads (ids, links) and CellProfiler's timings differ by run.
            own = [c for c in frame.columns if c.startswith(("OMERO_", "ExecutionTime_"))]
            keys = [c for c in ("ImageNumber", "ObjectNumber") if c in frame.columns]
            if "OMERO_ImageID_Nuclei" in frame.columns:
                for number, image_id in zip(frame["ImageNumber"],
                                            frame["OMERO_ImageID_Nuclei"], strict=True):
                    hashes[int(number)] = pixel_hash(manager, int(image_id))
            columns[label] = list(frame.columns)
            rows = frame.drop(columns=own)
            tables[label] = {tuple(int(v) for v in key): tuple(map(comparable, row))
                             for key, row in zip(rows[keys].itertuples(index=False),
                                                 rows.itertuples(index=False), strict=True)}
            assert len(tables[label]) == len(frame), f"{label} has a row twice"
    finally:
        conn.close()
    return {"labels": hashes, "label_names": sorted(images.values()), "tables": tables,
            "columns": columns}


def comparable(value: Any) -> Any:
    """NaN (a measurement CellProfiler could not make) as None, so equal runs compare equal."""
    return None if isinstance(value, float) and math.isnan(value) else value


def pixel_hash(manager: SessionManager, image_id: int) -> str:
    reader = ImageReader(manager, parse_image(f"Image:{image_id}"))
    try:
        data = run(reader.read)
    finally:
        run(reader.aclose)
    return hashlib.sha256(np.ascontiguousarray(data).tobytes()).hexdigest()


@pytest.fixture(scope="module")
def fault_free(emu: Emulator, sources: dict[str, Any], cellprofiler_plugins: None
               ) -> dict[str, Any]:
    return cellprofiler_run(emu, sources, "fault-free")


@pytest.mark.cellprofiler
@pytest.mark.slow
@pytest.mark.parametrize("lose", ["calls", "replies"])
def test_a_run_through_one_in_twenty_dropped_calls_equals_a_fault_free_run(
        lose: str, emu: Emulator, sources: dict[str, Any], fault_free: dict[str, Any]
) -> None:
    expected = fault_free["outputs"]
    assert len(expected["labels"]) == 8 and len(expected["label_names"]) == 8
    assert {"Image", "Nuclei"} <= set(expected["tables"])
    flaky = cellprofiler_run(emu, sources, f"flaky-{lose}", {
        "drop_probability": 0.05, "drop_after_reply": lose == "replies",
        "seed": FAULT_SEED})
    fired = flaky["faults"]
    assert len(fired) >= 5, fired  # enough faults to have needed more than one renewal
    if lose == "replies":
        assert all("dropping the reply" in line for line in fired)
    assert flaky["outputs"] == expected


@pytest.mark.cellprofiler
@pytest.mark.slow
def test_a_workers_dropped_login_is_tried_again(emu: Emulator, sources: dict[str, Any],
                                                cellprofiler_plugins: None) -> None:
    from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline

    out = sources["tmp"] / "workers"
    out.mkdir()
    dataset = new_dataset(emu, "workers")
    (out / "pipeline.cppipe").write_text(nuclei_pipeline(dataset, table_prefix=PREFIX))
    (out / "files.txt").write_text("\n".join(f"omero:iid={i}" for i in sources["ids"][:4])
                                   + "\n")
    log = FaultLog(emu)
    # The main process logs in first (secure router, then the plain-TCP one); the
    # third login call is a worker joining the handed-over session.
    emu.set_faults(drop_after=3, ops=["createSession"])
    try:
        result = subprocess.run([sys.executable, str(ROOT / "tests" / "run_with_workers.py"),
                                 str(out / "pipeline.cppipe"), str(out / "files.txt"),
                                 str(out), "2"], env=sources["env"], capture_output=True,
                                text=True, timeout=600)
    finally:
        emu.clear_faults()
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    assert "finished: 4 image sets" in result.stdout
    assert len(log.lines("dropping connection on createSession")) == 1
    # CellProfiler relays its workers' log lines, each marked with the worker.
    retried = [line for line in (result.stdout + result.stderr).splitlines()
               if "[Worker" in line and "logging in to" in line and "(attempt 1:" in line]
    assert len(retried) == 1, result.stdout[-4000:] + result.stderr[-4000:]
    made = outputs(emu, sources["manager"], dataset)
    assert sorted(made["labels"]) == [1, 2, 3, 4]
    assert sorted(key[0] for key in made["tables"]["Image"]) == [1, 2, 3, 4]
