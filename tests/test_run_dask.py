"""``cellprofiler-omero run``: a pipeline over OMERO images on a Dask cluster.

Small image sets (160² fields, a few nuclei each) on the shared emulator; LocalClusters of
two worker processes, and one ``dask scheduler`` + two ``dask worker`` processes.
Results land exactly once: one label image per image set, one Image-table row per image
set, no duplicate (ImageNumber, ObjectNumber), the same rows as a single-process run.
"""

from __future__ import annotations

import io
import json
import math
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.emulator import Emulator, synthetic
from tests.conftest import run

pytestmark = [pytest.mark.cellprofiler, pytest.mark.slow]

N_SETS = 6
FIELD = 160


@dataclass
class Rig:
    """The emulator, a BlitzGateway connection, the source images and a logged-in driver."""

    emulator: Emulator
    conn: Any
    manager: SessionManager
    tmp: Path
    urls: list[str] = field(default_factory=list)
    sources: int = 0

    def dataset(self, name: str) -> int:
        import omero.model
        from omero.rtypes import rstring

        ds = omero.model.DatasetI()
        ds.setName(rstring(name))
        return int(self.conn.getUpdateService().saveAndReturnObject(ds).getId().getValue())

    def pipeline(self, dataset_id: int, *, grouped: bool = False, flush_every: int = 100
                 ) -> Path:
        """The demo pipeline into ``dataset_id`` (grouped by image name if asked; rows
        written every ``flush_every`` image sets)."""
        from cellprofiler_core.pipeline import Pipeline

        from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline

        pipeline = Pipeline()
        pipeline.loadtxt(io.StringIO(nuclei_pipeline(dataset_id, table_prefix="Dask")),
                         raise_on_error=True)
        export = pipeline.modules()[-1]
        export.wants_relationships.value = False
        export.flush_every.value = flush_every
        if grouped:
            _group_by_name(pipeline)
        out = io.StringIO()
        pipeline.dump(out)
        path = self.tmp / f"pipeline-{dataset_id}.cppipe"
        path.write_text(out.getvalue())
        return path

    def tables(self, dataset_id: int) -> dict[str, tuple[list[str], list[tuple[Any, ...]]]]:
        """The dataset's tables by name prefix (Dask_Image, Dask_Nuclei): columns and rows."""
        import omero.model
        from omero.rtypes import rlong

        found = {}
        dataset = self.conn.getObject("Dataset", dataset_id)
        for ann in dataset.listAnnotations():
            if ann.OMERO_TYPE.__name__ != "FileAnnotationI":
                continue
            name = ann.getFile().getName()
            resources = self.conn.c.sf.sharedResources()
            table = resources.openTable(omero.model.OriginalFileI(
                rlong(int(ann.getFile().getId())), False))
            try:
                names = [h.name for h in table.getHeaders()]
                n = int(table.getNumberOfRows())
                data = table.read(list(range(len(names))), 0, n) if n else None
                cols = [list(c.values) for c in data.columns] if data else [[] for _ in names]
            finally:
                table.close()
            rows = [tuple(None if isinstance(v, float) and math.isnan(v) else v for v in r)
                    for r in zip(*cols, strict=True)]
            found[name.rsplit("_run-", 1)[0]] = (names, rows)
        return found

    def labels(self, dataset_id: int) -> list[str]:
        return sorted(i.getName() for i in self.conn.getObject("Dataset", dataset_id)
                      .listChildren())


def _group_by_name(pipeline: Any) -> None:
    """Groups by the OMERO image name (``SeriesName``): the odd fields share one name, the
    even fields another."""
    from cellprofiler_core.modules.groups import Groups

    groups = next(m for m in pipeline.modules() if isinstance(m, Groups))
    groups.wants_groups.value = True
    groups.grouping_metadata[0].metadata_choice.value = "SeriesName"


@pytest.fixture(scope="module")
def rig(emulator: Emulator, cellprofiler_plugins: None,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    from omero.gateway import BlitzGateway

    from cellprofiler_omero.core.uploading import upload

    tmp = tmp_path_factory.mktemp("dask")
    conn = BlitzGateway("demo", "demo", host=emulator.host, port=emulator.port)
    assert conn.connect()
    manager = SessionManager(Settings().replace({
        "server.host": emulator.host, "server.port": emulator.port,
        "auth.token_dir": str(tmp / "tokens"), "auth.keepalive_seconds": 3600}))
    run(lambda: manager.connect(user="demo", password="demo"))
    rig = Rig(emulator, conn, manager, tmp)
    rig.sources = rig.dataset("dask sources")
    for index in range(N_SETS):
        pixels, _labels = synthetic.nuclei_and_cells(3000 + index, FIELD, n_cells=4)
        image = run(lambda p=pixels, n=_name(index): upload(
            manager, p, name=n, axes="CYX", dataset_id=rig.sources,
            channel_names=["DAPI", "Cytoplasm"]))
        rig.urls.append(f"omero:iid={image.id}")
    yield rig
    run(manager.close)
    conn.close()


def _name(index: int) -> str:
    """Image set ``index``'s image name: odd and even fields share a name (for grouping)."""
    return f"dask {'odd' if index % 2 else 'even'} field"


def _run(rig: Rig, dataset_id: int, **kw: Any) -> Any:
    from cellprofiler_omero.cp_integration.distributed import run_pipeline

    if "client" not in kw:
        kw.setdefault("workers", 2)
    kw.setdefault("batch_size", 1)
    pipeline = rig.pipeline(dataset_id, grouped=kw.pop("grouped", False),
                            flush_every=kw.pop("flush_every", 100))
    urls = kw.pop("urls", rig.urls)
    return run_pipeline(pipeline,
                        urls, rig.manager, output=rig.tmp / f"out-{dataset_id}",
                        progress=False, **kw)


def _check_exactly_once(rig: Rig, dataset_id: int) -> dict[str, Any]:
    tables = rig.tables(dataset_id)
    assert sorted(tables) == ["Dask_Image", "Dask_Nuclei"], sorted(tables)
    names, images = tables["Dask_Image"]
    assert sorted(row[0] for row in images) == list(range(1, N_SETS + 1))
    _, nuclei = tables["Dask_Nuclei"]
    keys = [(row[0], row[1]) for row in nuclei]
    assert len(keys) == len(set(keys)) == sum(
        row[names.index("Count_Nuclei")] for row in images) > 0
    assert rig.labels(dataset_id) == sorted(f"{_name(i)}_nuclei" for i in range(N_SETS))
    return tables


def _comparable(table: tuple[list[str], list[tuple[Any, ...]]]) -> list[tuple[Any, ...]]:
    """Rows without what differs between two runs (timings, the label images' ids/links)."""
    names, rows = table
    keep = [i for i, n in enumerate(names)
            if not n.startswith(("ExecutionTime_", "OMERO_ImageID_", "OMERO_URL_"))]
    return sorted((tuple(r[i] for i in keep) for r in rows), key=repr)


def _differing_columns(a: tuple[list[str], list[tuple[Any, ...]]],
                       b: tuple[list[str], list[tuple[Any, ...]]]) -> list[str]:
    """The columns whose values differ (for the failure message)."""
    rows_a, rows_b = sorted(a[1], key=repr), sorted(b[1], key=repr)
    return [f"{name}: {[r[i] for r in rows_a][:3]} != {[r[i] for r in rows_b][:3]}"
            for i, name in enumerate(a[0]) if not name.startswith("ExecutionTime_")
            and [r[i] for r in rows_a] != [r[i] for r in rows_b]]


@pytest.fixture(scope="module")
def single_process(rig: Rig) -> dict[str, Any]:
    """The same pipeline over the same images in one headless CellProfiler process."""
    from cellprofiler_omero.cp_integration import plugins_dir

    dataset_id = rig.dataset("dask single process")
    out = rig.tmp / "single"
    out.mkdir()
    (out / "files.txt").write_text("\n".join(rig.urls) + "\n")
    env = {**os.environ, **rig.manager.export_for_workers(),
           "CELLPROFILER_OMERO_SERVER_HOST": rig.emulator.host,
           "CELLPROFILER_OMERO_SERVER_PORT": str(rig.emulator.port)}
    result = subprocess.run(
        [sys.executable, "-c", _CELLPROFILER_WATCHING_GC, str(out / "gc.json"), "-c", "-r",
         "-p", str(rig.pipeline(dataset_id)), "--file-list", str(out / "files.txt"),
         "-o", str(out), "--plugins-directory", str(plugins_dir())],
        env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-4000:]
    tables = _check_exactly_once(rig, dataset_id)
    tables["gc"] = json.loads((out / "gc.json").read_text())
    return tables


#: ``python -m cellprofiler`` that also notes, for every garbage collection started
#: while a module runs an image set, the thread and whether automatic collection was on;
#: and whether it is on again once the run is over.
_CELLPROFILER_WATCHING_GC = """
import gc, json, sys, threading
out, sys.argv = sys.argv[1], ["cellprofiler"] + sys.argv[2:]
main_thread = threading.main_thread().ident
seen = []
def in_a_module():
    frame = sys._current_frames().get(main_thread)
    while frame is not None and frame.f_code.co_name != "run_module":
        frame = frame.f_back
    return frame is not None
def on_gc(phase, info):
    if phase == "start" and in_a_module():
        seen.append([threading.get_ident() == main_thread, gc.isenabled()])
gc.callbacks.append(on_gc)
from cellprofiler.__main__ import main
code = main()
open(out, "w").write(json.dumps({"seen": seen, "enabled_after": gc.isenabled()}))
sys.exit(code)
"""


def test_a_local_cellprofiler_run_collects_garbage_only_in_its_own_thread(
        single_process: dict[str, Any]) -> None:
    """CellProfiler's own run (``cellprofiler -c -r``, the demo) writes HDF5 while this
    package's threads read ahead and upload beside it: while a module runs an image set,
    automatic collection is off (a collection on those threads could free an h5py object
    while CellProfiler holds h5py's lock), and CellProfiler's thread collects the young
    generations at each image set. Once the run is over, collection is automatic again."""
    seen = single_process["gc"]["seen"]
    assert len(seen) >= N_SETS, seen
    assert all(in_cellprofilers_thread and not automatic
               for in_cellprofilers_thread, automatic in seen), seen
    assert single_process["gc"]["enabled_after"]


def test_two_workers_write_each_result_once_and_the_same_rows_as_one_process(
        rig: Rig, single_process: dict[str, Any]) -> None:
    dataset_id = rig.dataset("dask two workers")
    report = _run(rig, dataset_id)
    assert (report.image_sets, report.done, report.failures) == (N_SETS, N_SETS, [])
    assert report.uploaded == N_SETS
    assert len({report.ran_on[n] for n in range(1, N_SETS + 1)}) == 2  # both workers ran
    tables = _check_exactly_once(rig, dataset_id)
    for name in ("Dask_Image", "Dask_Nuclei"):
        assert _comparable(tables[name]) == _comparable(single_process[name]), \
            _differing_columns(tables[name], single_process[name])
    # CellProfiler's measurements of the whole run, merged into one file.
    from cellprofiler_core.measurement import Measurements

    merged = Measurements(filename=report.output, mode="r")
    try:
        assert sorted(merged.get_image_numbers()) == list(range(1, N_SETS + 1))
        counts = merged["Image", "Count_Nuclei", list(range(1, N_SETS + 1))]
        names, images = tables["Dask_Image"]
        by_number = {row[0]: row[names.index("Count_Nuclei")] for row in images}
        assert [int(c) for c in counts] == [by_number[n] for n in range(1, N_SETS + 1)]
    finally:
        merged.close()


@pytest.fixture(scope="module")
def cluster(rig: Rig) -> Iterator[Any]:
    """Two worker processes (one thread each) shared by the tests below."""
    from distributed import Client, LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True,
                      dashboard_address=":0") as local, Client(local) as client:
        client.wait_for_workers(2)
        yield client


def _kill_a_busy_worker(client: Any, rig: Rig, dataset_id: int, killed: list[int]) -> None:
    """SIGKILL, once the first label image is on the server, a worker running a batch."""
    import signal
    import time

    from omero.gateway import BlitzGateway

    conn = BlitzGateway("demo", "demo", host=rig.emulator.host, port=rig.emulator.port)
    assert conn.connect()
    try:
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            if len(list(conn.getObject("Dataset", dataset_id).listChildren())) >= 1:
                pids = client.run(os.getpid)
                busy = [address for address, keys in client.processing().items() if keys]
                if busy:
                    killed.append(pids[busy[0]])
                    os.kill(pids[busy[0]], signal.SIGKILL)
                    return
            time.sleep(0.05)
    finally:
        conn.close()


def test_a_batch_whose_worker_was_killed_runs_again_and_writes_each_result_once(
        rig: Rig, cluster: Any) -> None:
    import threading

    dataset_id = rig.dataset("dask killed worker")
    killed: list[int] = []
    killer = threading.Thread(target=_kill_a_busy_worker,
                              args=(cluster, rig, dataset_id, killed))

    def start_killer(line: str) -> None:
        if line.startswith("[run] run the image sets"):
            killer.start()

    # Three image sets per batch: the killed batch leaves label images behind that its
    # second run must find instead of uploading again; rows are written every image set.
    report = _run(rig, dataset_id, client=cluster, batch_size=3, say=start_killer,
                  flush_every=1)
    killer.join()
    assert killed, "no worker was killed"
    assert all(f"pid {killed[0]}" not in where for where in report.ran_on.values())
    assert (report.done, report.failures) == (N_SETS, [])
    _check_exactly_once(rig, dataset_id)


def test_a_group_runs_whole_on_one_worker(rig: Rig, cluster: Any) -> None:
    dataset_id = rig.dataset("dask grouped")
    report = _run(rig, dataset_id, client=cluster, grouped=True, batch_size=1)
    assert report.batches == 2  # two groups of three, never split by the batch size
    from cellprofiler_core.measurement import Measurements

    merged = Measurements(filename=report.output, mode="r")
    try:
        names = {n: merged["Image", "Metadata_SeriesName", n] for n in report.ran_on}
    finally:
        merged.close()
    by_group: dict[str, set[str]] = {}
    for n, where in report.ran_on.items():  # where: the worker's own address and pid
        by_group.setdefault(names[n], set()).add(where)
    assert {k: len(v) for k, v in by_group.items()} == {_name(0): 1, _name(1): 1}
    assert report.done == N_SETS


def test_while_a_run_lasts_the_drivers_garbage_is_collected_only_in_the_drivers_thread(
        rig: Rig, cluster: Any) -> None:
    """The driver writes CellProfiler's HDF5 measurements in its own thread while Dask's
    client loop and the Ice loop allocate beside it; a collection started on one of
    those could free an h5py object while the driver holds h5py's lock (the deadlock of
    h5py/h5py#2019). So from the first phase to the summary every collection starts in
    the driver's thread, and there are some (young generations, after each batch)."""
    import gc
    import threading

    started: list[int] = []
    recording = threading.Event()

    def on_gc(phase: str, _info: dict[str, Any]) -> None:
        if phase == "start" and recording.is_set():
            started.append(threading.get_ident())

    def say(line: str) -> None:
        if line.startswith("[run] prepare"):
            recording.set()
        elif "cellprofiler-omero run:" in line:  # the summary, after the run
            recording.clear()

    gc.callbacks.append(on_gc)
    try:
        report = _run(rig, rig.dataset("dask driver gc"), client=cluster, say=say)
    finally:
        gc.callbacks.remove(on_gc)
    assert report.done == N_SETS
    driver = threading.get_ident()
    assert started.count(driver) >= N_SETS, started  # one after each batch at least
    others = [t for t in started if t != driver]
    assert not others, f"{len(others)} collection(s) started on another thread"


def _doomed_image(rig: Rig) -> tuple[str, Any]:
    """A new image's URL and a ``say`` hook that deletes it once the run is prepared (its
    image set exists, its pixels are gone by the time a worker reads them)."""
    from cellprofiler_omero.core.uploading import upload

    pixels, _labels = synthetic.nuclei_and_cells(4000, FIELD, n_cells=4)
    image = run(lambda: upload(rig.manager, pixels, name="dask doomed field", axes="CYX",
                               dataset_id=rig.sources, channel_names=["DAPI", "Cytoplasm"]))

    def delete_when_prepared(line: str) -> None:
        if line.startswith("[run] start the workers"):
            rig.conn.deleteObjects("Image", [image.id], wait=True)

    return f"omero:iid={image.id}", delete_when_prepared


def test_a_bad_image_fails_its_image_set_only_and_is_reported(rig: Rig, cluster: Any) -> None:
    dataset_id = rig.dataset("dask bad image")
    bad, delete = _doomed_image(rig)
    report = _run(rig, dataset_id, client=cluster, urls=[rig.urls[0], bad], say=delete)
    assert report.done == 1 and len(report.failures) == 1
    failed = report.failures[0]  # CellProfiler numbers image sets in its own URL order
    assert failed.image_number in (1, 2) and failed.module and failed.error
    assert f"image set {failed.image_number} failed in {failed.module}" in report.summary()
    _, images = rig.tables(dataset_id)["Dask_Image"]
    assert [row[0] for row in images] == [3 - failed.image_number]
    assert rig.labels(dataset_id) == [f"{_name(0)}_nuclei"]


def test_max_failures_0_stops_the_run_at_the_first_failed_image_set(
        rig: Rig, cluster: Any) -> None:
    from cellprofiler_omero.cp_integration.distributed import TooManyFailures

    dataset_id = rig.dataset("dask max failures")
    bad, delete = _doomed_image(rig)
    with pytest.raises(TooManyFailures) as caught:
        _run(rig, dataset_id, client=cluster, urls=[bad, *rig.urls[:2]], say=delete,
             max_failures=0)
    assert (caught.value.failed, caught.value.limit) == (1, 0)
    assert "more than --max-failures 0" in str(caught.value)


@dataclass
class External:
    """A ``dask scheduler`` and two ``dask worker`` processes started here (no LocalCluster)."""

    address: str
    logs: list[Path]


@pytest.fixture(scope="module")
def external(rig: Rig) -> Iterator[External]:
    import json
    import signal
    import time

    from cellprofiler_omero.core.session import HANDOFF_ENV

    dask = str(Path(sys.executable).parent / "dask")
    folder = rig.tmp / "external"
    folder.mkdir()
    scheduler_file = folder / "scheduler.json"
    # The workers learn the session only from the run's WorkerPlugin: no hand-off in
    # their environment; this package's loggers (and omero's) at DEBUG in their logs.
    env = {k: v for k, v in os.environ.items() if k != HANDOFF_ENV}
    env.update({"DASK_LOGGING__CELLPROFILER_OMERO": "debug", "DASK_LOGGING__OMERO": "debug",
                "DASK_LOGGING__DISTRIBUTED": "debug"})
    processes: list[subprocess.Popen[bytes]] = []
    logs: list[Path] = []

    def start(name: str, *args: str) -> None:
        log = folder / f"{name}.log"
        logs.append(log)
        with log.open("wb") as out:
            processes.append(subprocess.Popen([dask, *args], env=env, stdout=out,
                                              stderr=subprocess.STDOUT,
                                              start_new_session=True))

    try:
        start("scheduler", "scheduler", "--scheduler-file", str(scheduler_file), "--port",
              "0", "--dashboard-address", ":0")
        deadline = time.monotonic() + 60
        while not scheduler_file.exists():
            assert time.monotonic() < deadline, "the dask scheduler did not start"
            time.sleep(0.1)
        for n in (1, 2):
            start(f"worker-{n}", "worker", "--scheduler-file", str(scheduler_file),
                  "--nthreads", "1", "--no-dashboard")
        from distributed import Client

        with Client(scheduler_file=str(scheduler_file)) as client:
            client.wait_for_workers(2, timeout=120)
        yield External(json.loads(scheduler_file.read_text())["address"], logs)
    finally:
        for process in processes:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
        for process in processes:
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait()


def test_scheduler_runs_on_a_cluster_someone_else_started(
        rig: Rig, external: External, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from cellprofiler_omero.cli import main

    dataset_id = rig.dataset("dask external scheduler")
    files = rig.tmp / "external-files.txt"
    files.write_text("\n".join(rig.urls[:2]) + "\n")
    rig.manager.export_for_workers()  # the command joins this session (as under a GUI)
    code = main(["run", str(rig.pipeline(dataset_id)), str(files), "--scheduler",
                 external.address, "--output", str(rig.tmp / "external-out"), "--json",
                 "--server", rig.emulator.host, "--port", str(rig.emulator.port)])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    report = json.loads(out.out)
    assert (report["image_sets"], report["done"], report["failures"]) == (2, 2, [])
    assert report["workers"] == 2
    assert all("pid" in where for where in report["ran_on"].values())
    _, images = rig.tables(dataset_id)["Dask_Image"]
    assert sorted(row[0] for row in images) == [1, 2]
    assert len(rig.labels(dataset_id)) == 2


def test_the_session_key_is_in_no_task_log_line_or_process_argument(
        rig: Rig, external: External, caplog: pytest.LogCaptureFixture) -> None:
    import json
    import logging

    import psutil
    from distributed import Client

    from cellprofiler_omero.core.session import HANDOFF_ENV

    key = json.loads(Path(rig.manager.export_for_workers()[HANDOFF_ENV]).read_text())["key"]
    assert len(key) >= 16
    seen: list[str] = []
    dataset_id = rig.dataset("dask secrecy")
    with Client(external.address) as client, caplog.at_level(logging.DEBUG):

        def tasks(dask_scheduler: Any) -> list[str]:
            return [f"{ts.key!r} {ts.run_spec!r}" for ts in dask_scheduler.tasks.values()]

        def look(_result: dict[str, Any]) -> None:
            seen.extend(client.run_on_scheduler(tasks))

        report = _run(rig, dataset_id, client=client, urls=rig.urls[:2], on_batch=look)
    assert report.done == 2 and any("cellprofiler-batch" in s for s in seen)
    assert not [s for s in seen if key in s]
    assert caplog.records and not [r for r in caplog.records if key in r.getMessage()]
    worker_logs = "".join(log.read_text(errors="replace") for log in external.logs)
    assert "worker prepared for run" in worker_logs  # the workers logged at DEBUG here
    assert key not in worker_logs
    arguments = []
    for process in psutil.process_iter(["cmdline"]):
        arguments += process.info["cmdline"] or []
    assert arguments and not [a for a in arguments if key in a]


def _loaddata_pipeline(rig: Rig, dataset_id: int) -> Path:
    """The demo pipeline with LoadData (a CSV's ``URL_DAPI``/``URL_Cytoplasm`` columns) in
    place of the input modules."""
    from cellprofiler_core.modules.loaddata import LoadData
    from cellprofiler_core.pipeline import Pipeline

    from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline

    pipeline = Pipeline()
    pipeline.loadtxt(io.StringIO(nuclei_pipeline(dataset_id, table_prefix="Dask")),
                     raise_on_error=True)
    for module in list(pipeline.modules())[:4]:  # Images, Metadata, NamesAndTypes, Groups
        pipeline.remove_module(module.module_num)
    load = LoadData()
    load.set_module_num(1)
    load.csv_directory.value = f"Elsewhere...|{rig.tmp}"
    load.csv_file_name.value = "not-this-one.csv"  # the run points it at its target
    pipeline.add_module(load)
    modules = {m.module_name: m for m in pipeline.modules()}
    modules["IdentifyPrimaryObjects"].x_name.value = "DAPI"
    modules["MeasureObjectIntensity"].images_list.value = "DAPI, Cytoplasm"
    modules["SaveImagesToOMERO"].file_image_name.value = "DAPI"
    modules["ExportToOMEROTable"].wants_relationships.value = False
    out = io.StringIO()
    pipeline.dump(out)
    path = rig.tmp / f"loaddata-{dataset_id}.cppipe"
    path.write_text(out.getvalue())
    return path


def test_a_loaddata_csv_target_feeds_the_pipelines_loaddata_module(
        rig: Rig, cluster: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from cellprofiler_omero.cli import main

    server = ["--server", rig.emulator.host, "--port", str(rig.emulator.port)]
    rig.manager.export_for_workers()  # the commands join this session
    csv_file = rig.tmp / "two-images.csv"
    ids = [url.split("=")[1] for url in rig.urls[:2]]
    assert main(["urls", *[f"Image:{i}" for i in ids], "--loaddata", "-o", str(csv_file),
                 *server]) == 0
    assert csv_file.read_text().startswith("URL_DAPI,Frame_DAPI,URL_Cytoplasm")
    dataset_id = rig.dataset("dask loaddata")
    capsys.readouterr()
    code = main(["run", str(_loaddata_pipeline(rig, dataset_id)), str(csv_file),
                 "--scheduler", cluster.scheduler.address, "--batch-size", "1",
                 "--output", str(rig.tmp / "loaddata-out"), "--json", *server])
    out = capsys.readouterr()
    assert code == 0, out.err[-3000:]
    report = json.loads(out.out)
    assert (report["image_sets"], report["done"], report["failures"]) == (2, 2, [])
    assert len({report["ran_on"]["1"], report["ran_on"]["2"]}) == 2  # a worker each
    names, images = rig.tables(dataset_id)["Dask_Image"]
    assert sorted(row[0] for row in images) == [1, 2]
    assert all(row[names.index("Count_Nuclei")] > 0 for row in images)
    assert len(rig.labels(dataset_id)) == 2
    # A pipeline that takes its images from NamesAndTypes says what to do instead.
    rig.manager.export_for_workers()  # (the command's own hand-off replaced it, and ended)
    code = main(["run", str(rig.pipeline(dataset_id)), str(csv_file), "--scheduler",
                 cluster.scheduler.address, "--output", str(rig.tmp / "nt-out"), *server])
    err = capsys.readouterr().err
    assert code == 1
    assert "has no LoadData module" in err and "-o files.txt" in err, err


def test_a_renewed_driver_session_reaches_the_workers_mid_run(rig: Rig, cluster: Any) -> None:
    import json
    import threading
    import time

    from cellprofiler_omero.core.session import HANDOFF_ENV

    def key() -> str:
        return str(json.loads(Path(rig.manager.export_for_workers()[HANDOFF_ENV])
                              .read_text())["key"])

    dataset_id = rig.dataset("dask session renewed")
    ended: list[str] = []

    def end_the_session() -> None:  # once the first label image is on the server
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not rig.labels(dataset_id):
            time.sleep(0.05)
        ended.append(key())
        assert rig.emulator.expire_sessions(keys=ended) == 1

    killer = threading.Thread(target=end_the_session)

    def start_killer(line: str) -> None:
        if line.startswith("[run] run the image sets"):
            killer.start()

    report = _run(rig, dataset_id, client=cluster, say=start_killer,
                  session_check_seconds=0.2)
    killer.join()
    assert ended and key() != ended[0]  # the driver's session ended and was renewed
    assert (report.done, report.failures) == (N_SETS, [])
    _check_exactly_once(rig, dataset_id)


def test_ctrl_c_stops_the_run_cleanly_and_a_rerun_completes_it(
        rig: Rig, cluster: Any, capsys: pytest.CaptureFixture[str]) -> None:
    import json
    import signal
    import time

    import psutil

    from cellprofiler_omero.cli import main

    dataset_id = rig.dataset("dask interrupted")
    pipeline = rig.pipeline(dataset_id, flush_every=1)
    out_dir = rig.tmp / "interrupted-out"
    server = ["--server", rig.emulator.host, "--port", str(rig.emulator.port)]
    # A Dataset target through the CLI: expanded into its images (both runs).
    command = ["run", str(pipeline), f"Dataset:{rig.sources}", "--batch-size", "1",
               "--output", str(out_dir), *server]
    env = {**os.environ, **rig.manager.export_for_workers()}  # it joins this session
    err_file = rig.tmp / "interrupted.err"
    with err_file.open("w") as err_out:  # a file: Dask's log lines would fill a pipe
        # Ctrl-C as a terminal delivers it: SIGINT handled by default in the command,
        # even when this test runs in the background (where it is inherited as ignored).
        process = subprocess.Popen([sys.executable, "-m", "cellprofiler_omero", *command,
                                    "--workers", "2"], env=env, stdout=subprocess.PIPE,
                                   stderr=err_out, text=True, start_new_session=True,
                                   preexec_fn=lambda: signal.signal(signal.SIGINT,
                                                                    signal.SIG_DFL))
    children: list[psutil.Process] = []
    try:
        assert process.stdout is not None
        for line in process.stdout:  # the workers are running once this is printed
            if line.startswith("[run] run the image sets"):
                break
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and not rig.labels(dataset_id):
            time.sleep(0.02)
        # Slow reads from here on, so the rest of the run cannot finish before Ctrl-C
        # lands (on an idle machine it otherwise can: the test would see exit code 0).
        rig.emulator.set_faults(latency_ms=400, ops=["getTile"])
        children = psutil.Process(process.pid).children(recursive=True)
        assert len(children) >= 2  # the local cluster's worker processes (and nannies)
        os.killpg(process.pid, signal.SIGINT)  # Ctrl-C reaches the terminal's process group
        process.communicate(timeout=120)
    finally:
        rig.emulator.clear_faults()
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
    err = err_file.read_text()
    assert process.returncode == 130, err[-3000:]
    lines = [line for line in err.splitlines() if line.strip()]
    assert lines[-1].startswith("interrupted: the run was stopped"), err[-3000:]
    assert "Traceback" not in err, err[-3000:]
    psutil.wait_procs(children, timeout=30)
    assert not [c for c in children if c.is_running() and c.status() != psutil.STATUS_ZOMBIE]
    assert not list(out_dir.glob(".cellprofiler-omero-*"))  # the hand-off file is gone
    run(lambda: rig.manager.call(_alive))  # the lent session was detached, not ended
    done_before = len(rig.labels(dataset_id))
    assert 1 <= done_before < N_SETS  # the interrupt came mid-run
    # The same command again (on the shared cluster) finishes the run: nothing twice.
    rig.manager.export_for_workers()
    capsys.readouterr()
    code = main([*command, "--scheduler", cluster.scheduler.address, "--json"])
    result = capsys.readouterr()
    assert code == 0, result.err[-3000:]
    report = json.loads(result.out)
    assert (report["image_sets"], report["done"], report["failures"]) == (N_SETS, N_SETS, [])
    _check_exactly_once(rig, dataset_id)


async def _alive(conn: Any) -> None:
    await conn.ping()
