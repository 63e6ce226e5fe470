"""A run is a resumable unit: reruns, killed runs and expired sessions leave one set of
tables (rows exactly once), one label image per image set and one provenance annotation
per image; the same pipeline gives the same columns in the same order.

The first tests drive the table writer directly; the rest run real headless CellProfiler
(8 small image sets) against the emulator.
"""

from __future__ import annotations

import json
import logging
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest

from cellprofiler_omero.core.model import ColumnKind, ColumnSpec, TableSchema, TableTarget
from cellprofiler_omero.core.session import HANDOFF_ENV, SessionManager
from cellprofiler_omero.core.tables import TableWriter, run_key, table_identity
from cellprofiler_omero.emulator import Emulator, synthetic
from tests.conftest import run

SCHEMA = TableSchema("Rerun_Image", (ColumnSpec("ImageNumber", ColumnKind.LONG),
                                     ColumnSpec("Image", ColumnKind.IMAGE),
                                     ColumnSpec("Count", ColumnKind.DOUBLE)))


def _rows(numbers: list[int]) -> dict[str, list[Any]]:
    return {"ImageNumber": numbers, "Image": [1] * len(numbers),
            "Count": [float(n) for n in numbers]}


def _tables_with(conn: Any, dataset_id: int, identity: str) -> list[tuple[int, int]]:
    """(annotation id, file id) of the tables on the dataset carrying ``identity``."""
    dataset = conn.getObject("Dataset", dataset_id)
    return sorted((int(a.getId()), int(a.getFile().getId()))
                  for a in dataset.listAnnotations()
                  if a.getFile() is not None and a.getDescription() == identity)


def _identity(name: str) -> str:
    return table_identity(run_key([name]), "Image")


def test_a_table_of_the_same_run_is_continued_not_made_again(
        manager: SessionManager, scratch_dataset: int, blitz: Any) -> None:
    schema = replace(SCHEMA, identity=_identity("continued"))
    target = TableTarget("Dataset", scratch_dataset)
    first = TableWriter(manager, target, schema, key_columns=("ImageNumber",))
    made = run(first.open)
    first.add_rows(_rows([1, 2]))
    run(first.close)
    again = TableWriter(manager, target, schema, key_columns=("ImageNumber",))
    found = run(again.open)
    assert (found.file_id, found.reused, made.reused) == (made.file_id, True, False)
    again.add_rows(_rows([1, 2, 3]))  # a rerun sends every row again
    assert run(again.close).rows == 3
    assert _tables_with(blitz(), scratch_dataset, schema.identity) == [
        (made.annotation_id, made.file_id)]


def test_another_run_makes_its_own_table(manager: SessionManager, scratch_dataset: int,
                                         blitz: Any) -> None:
    target = TableTarget("Dataset", scratch_dataset)
    infos = [run(TableWriter(manager, target, replace(SCHEMA, identity=_identity(name))).open)
             for name in ("run one", "run two")]
    assert infos[0].file_id != infos[1].file_id and not infos[1].reused


def test_two_processes_making_the_table_at_once_keep_the_older_one(
        manager: SessionManager, settings_for: Any, scratch_dataset: int, blitz: Any,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cellprofiler_omero.transports.ice.tables import IceTableSink

    schema = replace(SCHEMA, name="Race_Image", identity=_identity("race"))
    target = TableTarget("Dataset", scratch_dataset)
    winner = run(TableWriter(manager, target, schema).open)
    # The other process looked before the first one's table was saved: it found none.
    real_find = IceTableSink._find
    looks: list[int] = []

    def late_find(self: IceTableSink) -> list[tuple[int, int]]:
        looks.append(1)
        return [] if len(looks) == 1 else real_find(self)

    monkeypatch.setattr(IceTableSink, "_find", late_find)
    other = SessionManager(settings_for())
    run(lambda: other.connect(user="demo", password="demo"))
    try:
        loser = run(TableWriter(other, target, schema).open)
    finally:
        run(other.close)
    assert len(looks) == 2  # it made one, then looked again
    assert (loser.file_id, loser.reused) == (winner.file_id, True)
    conn = blitz()
    assert _tables_with(conn, scratch_dataset, schema.identity) == [
        (winner.annotation_id, winner.file_id)]
    assert conn.getQueryService().projection(
        "select count(f) from OriginalFile f where f.name = :n",
        _name_param(schema.name))[0][0].getValue() == 1  # the other's table was deleted


def _name_param(name: str) -> Any:
    import omero.sys
    from omero.rtypes import rstring

    p = omero.sys.ParametersI()
    p.add("n", rstring(name))
    return p


def test_a_lost_reply_while_attaching_the_table_leaves_one_table(
        manager: SessionManager, scratch_dataset: int, blitz: Any, faults: Emulator,
        caplog: pytest.LogCaptureFixture) -> None:
    schema = replace(SCHEMA, identity=_identity("lost reply"))
    faults.set_faults(drop_after=1, drop_after_reply=True, ops=["saveAndReturnObject"])
    with caplog.at_level(logging.INFO, logger="cellprofiler_omero.transports.ice.tables"):
        info = run(TableWriter(manager, TableTarget("Dataset", scratch_dataset), schema).open)
    # The annotation was saved but its reply lost: the retry found it instead of making
    # another table.
    assert info.reused
    assert any("continuing table" in r.getMessage() for r in caplog.records)
    assert _tables_with(blitz(), scratch_dataset, schema.identity) == [
        (info.annotation_id, info.file_id)]


def test_columns_do_not_depend_on_the_order_cellprofiler_lists_measurements() -> None:
    from cellprofiler_omero.cp_integration.export_table import plan_tables

    columns = [("Image", "Metadata_Z", "integer"), ("Image", "Metadata_C", "integer"),
               ("Image", "Count_Nuclei", "integer"), ("Nuclei", "AreaShape_Area", "float"),
               ("Nuclei", "AreaShape_Perimeter", "float"), ("Cells", "AreaShape_Area", "float")]

    def order(cols: list[tuple[str, str, str]]) -> list[list[str]]:
        return [list(p.schema.names) for p in plan_tables(cols, "CP", 64, True)]

    assert order(columns) == order(columns[::-1])
    assert order(columns)[0] == [
        "ImageNumber", "Image", "Count_Nuclei", "Metadata_C", "Metadata_Z",
        "Mean_Cells_AreaShape_Area", "Median_Cells_AreaShape_Area",
        "StDev_Cells_AreaShape_Area", "Mean_Nuclei_AreaShape_Area",
        "Median_Nuclei_AreaShape_Area", "StDev_Nuclei_AreaShape_Area",
        "Mean_Nuclei_AreaShape_Perimeter", "Median_Nuclei_AreaShape_Perimeter",
        "StDev_Nuclei_AreaShape_Perimeter"]


def test_the_run_key_is_the_pipeline_the_image_sets_and_the_parents(
        cellprofiler_plugins: None) -> None:
    import io

    from cellprofiler_core.measurement import Measurements
    from cellprofiler_core.pipeline import Pipeline

    from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline

    pipeline = Pipeline()
    pipeline.loadtxt(io.StringIO(nuclei_pipeline(5)), raise_on_error=True)
    save, export = pipeline.modules()[-2:]
    identify = pipeline.modules()[4]

    def key(urls: tuple[str, ...] = ("omero:iid=1", "omero:iid=2")) -> str:
        m = Measurements()
        m.add_all_measurements("Image", "ImageNumber", list(range(1, len(urls) + 1)))
        m.add_all_measurements("Image", "URL_DNA", list(urls))
        workspace = type("Workspace", (), {"pipeline": pipeline, "measurements": m})()
        return run_key(export.run_key_parts(workspace))

    first = key()
    assert key() == first
    export.parent.value = save.dataset.value = "https://omero.example.org/webclient/?show=dataset-5"
    export.flush_every.value = 7  # how often rows are sent changes no row
    assert key() == first
    assert key(("omero:iid=2", "omero:iid=1")) != first  # other image sets
    export.parent.value = "6"
    assert key() != first  # another parent
    export.parent.value = "5"
    identify.size_range.max = 60
    assert key() != first  # another pipeline
    identify.size_range.max = 45
    assert key() == first
    export.fresh_tables.value = True
    assert len({key(), key(), first}) == 3  # every run its own tables


# -- real headless CellProfiler ------------------------------------------------------------

N_SETS = 8
KILL_AT = 4  # SIGKILL once the 4th image set's labels are on the server
FIELD = 160  # small fields: each holds a few nuclei


@dataclass
class Rig:
    """The emulator, a BlitzGateway connection, and 8 source images in their own Dataset."""

    emulator: Emulator
    conn: Any
    urls: list[str]
    pipeline_for: Any  # (dataset id, fresh tables?) -> .cppipe text
    tmp: Path
    datasets: dict[str, int] = field(default_factory=dict)

    def dataset(self, name: str) -> int:
        import omero.model
        from omero.rtypes import rstring

        ds = omero.model.DatasetI()
        ds.setName(rstring(name))
        self.datasets[name] = int(
            self.conn.getUpdateService().saveAndReturnObject(ds).getId().getValue())
        return self.datasets[name]

    def login(self, name: str) -> tuple[SessionManager, dict[str, str]]:
        """A new session (as a user who logs in again would have) and a CellProfiler child
        environment that joins it."""
        from cellprofiler_omero.core.config import Settings

        mgr = SessionManager(Settings().replace({
            "server.host": self.emulator.host, "server.port": self.emulator.port,
            "auth.token_dir": str(self.tmp / "tokens"), "auth.keepalive_seconds": 3600}))
        run(lambda: mgr.connect(user="demo", password="demo"))
        handoff = mgr.export_for_workers()
        home = self.tmp / f"home-{name}"
        home.mkdir(exist_ok=True)
        env = {**os.environ, **handoff, "HOME": str(home),
               "OMERO_USER_TOKEN_DIR": str(self.tmp / "no-tokens"),
               "CELLPROFILER_OMERO_SERVER_HOST": self.emulator.host,
               "CELLPROFILER_OMERO_SERVER_PORT": str(self.emulator.port)}
        return mgr, env

    def command(self, pipeline: str, out: Path) -> list[str]:
        from cellprofiler_omero.cp_integration import plugins_dir

        out.mkdir(parents=True, exist_ok=True)
        (out / "pipeline.cppipe").write_text(pipeline)
        (out / "files.txt").write_text("\n".join(self.urls) + "\n")
        return [sys.executable, "-m", "cellprofiler", "-c", "-r", "-p",
                str(out / "pipeline.cppipe"), "--file-list", str(out / "files.txt"), "-o",
                str(out), "--plugins-directory", str(plugins_dir()), "-L", "INFO"]

    def cellprofiler(self, pipeline: str, out: Path, env: dict[str, str], *,
                     hash_seed: int | None = None) -> str:
        """Run CellProfiler to the end (``hash_seed``: its PYTHONHASHSEED, which decides the
        order in which CellProfiler's Metadata module lists its measurements)."""
        if hash_seed is not None:
            env = {**env, "PYTHONHASHSEED": str(hash_seed)}
        result = subprocess.run(self.command(pipeline, out), env=env, capture_output=True,
                                text=True, timeout=600)
        assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
        return result.stdout + result.stderr

    def cellprofiler_until(self, pipeline: str, out: Path, env: dict[str, str],
                           dataset_id: int, then: Any) -> int:
        """Start CellProfiler, call ``then(process)`` once the KILL_AT-th image set's labels
        are in the dataset, wait for the process to end; returns its exit status."""
        with (out.parent / f"{out.name}.log").open("w") as log:
            process = subprocess.Popen(self.command(pipeline, out), env=env, stdout=log,
                                       stderr=subprocess.STDOUT, start_new_session=True)
            try:
                deadline = time.monotonic() + 600
                while len(self.contents(dataset_id).images) < KILL_AT:
                    assert process.poll() is None, "CellProfiler ended before the fault"
                    assert time.monotonic() < deadline, "CellProfiler made no progress"
                    time.sleep(0.1)
                then(process)
                return process.wait(timeout=600)
            finally:
                if process.poll() is None:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()

    def contents(self, dataset_id: int) -> Contents:
        dataset = self.conn.getObject("Dataset", dataset_id)
        tables: dict[str, int] = {}
        for ann in dataset.listAnnotations():
            if ann.OMERO_TYPE.__name__ == "FileAnnotationI":
                tables[ann.getFile().getName()] = int(ann.getFile().getId())
        images = {int(i.getId()): i.getName() for i in dataset.listChildren()}
        annotations = {
            i: sorted(int(a.getId()) for a in self.conn.getObject("Image", i).listAnnotations())
            for i in images}
        return Contents(tables, images, annotations)

    def source_annotations(self) -> dict[int, list[int]]:
        ids = [int(u.split("=")[1]) for u in self.urls]
        return {i: sorted(int(a.getId()) for a in self.conn.getObject("Image", i)
                          .listAnnotations()) for i in ids}

    def table(self, file_id: int) -> tuple[list[str], list[tuple[Any, ...]]]:
        """A table's column names and its rows, sorted."""
        import omero.model
        from omero.rtypes import rlong

        resources = self.conn.c.sf.sharedResources()
        table = resources.openTable(omero.model.OriginalFileI(rlong(file_id), False))
        try:
            names = [h.name for h in table.getHeaders()]
            n = int(table.getNumberOfRows())
            data = table.read(list(range(len(names))), 0, n) if n else None
            columns = [list(c.values) for c in data.columns] if data else [[] for _ in names]
        finally:
            table.close()
        # NaN (a measurement missing in a cycle) as None, so that equal tables compare equal.
        rows = [tuple(None if isinstance(v, float) and math.isnan(v) else v for v in row)
                for row in zip(*columns, strict=True)]
        return names, sorted(rows, key=repr)


def _across_runs(table: tuple[list[str], list[tuple[Any, ...]]]
                 ) -> tuple[list[str], list[tuple[Any, ...]]]:
    """A table without what differs between two runs of one pipeline on the same images:
    CellProfiler's execution times, and the saved labels' ids and links (another dataset
    has other label images)."""
    names, rows = table
    keep = [i for i, n in enumerate(names)
            if not n.startswith(("ExecutionTime_", "OMERO_ImageID_", "OMERO_URL_"))]
    return [names[i] for i in keep], sorted((tuple(r[i] for i in keep) for r in rows),
                                            key=repr)


@dataclass(frozen=True)
class Contents:
    tables: dict[str, int]  # name -> OriginalFile id
    images: dict[int, str]  # id -> name
    annotations: dict[int, list[int]]  # image id -> its annotation ids


@pytest.fixture(scope="module")
def rig(emulator: Emulator, cellprofiler_plugins: None,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[Rig]:
    import io

    from cellprofiler_core.pipeline import Pipeline
    from omero.gateway import BlitzGateway

    from cellprofiler_omero.core.uploading import upload
    from cellprofiler_omero.cp_integration.pipelines import nuclei_pipeline

    def pipeline_for(dataset_id: int, *, fresh: bool = False) -> str:
        pipeline = Pipeline()
        pipeline.loadtxt(io.StringIO(nuclei_pipeline(dataset_id, table_prefix="Rerun")),
                         raise_on_error=True)
        export = pipeline.modules()[-1]
        export.flush_every.value = 2  # a killed run leaves a partial table behind
        export.wants_relationships.value = False  # every table this pipeline makes has rows
        export.fresh_tables.value = fresh
        out = io.StringIO()
        pipeline.dump(out)
        return out.getvalue()

    conn = BlitzGateway("demo", "demo", host=emulator.host, port=emulator.port)
    assert conn.connect()
    tmp = tmp_path_factory.mktemp("reruns")
    rig = Rig(emulator, conn, [], pipeline_for, tmp)
    mgr, _ = rig.login("sources")
    try:
        sources = rig.dataset("rerun sources")
        for index in range(N_SETS):
            pixels, _labels = synthetic.nuclei_and_cells(2000 + index, FIELD, n_cells=4)
            image = run(lambda p=pixels, i=index: upload(
                mgr, p, name=f"rerun field {i}", axes="CYX", dataset_id=sources,
                channel_names=["DAPI", "Cytoplasm"]))
            rig.urls.append(f"omero:iid={image.id}")
    finally:
        run(mgr.close)
    yield rig
    conn.close()


def _check_one_complete_run(rig: Rig, dataset_id: int, reference: Contents | None) -> Contents:
    """One table per label (each with every row exactly once), one label image per image set
    and one provenance annotation per label image; the tables equal ``reference``'s."""
    contents = rig.contents(dataset_id)
    assert len(contents.tables) == 2, contents.tables  # Rerun_Image, Rerun_Nuclei
    assert sorted(contents.images.values()) == sorted(
        f"rerun field {i}_nuclei" for i in range(N_SETS))
    assert all(len(anns) == 1 for anns in contents.annotations.values())
    image_table = next(f for n, f in contents.tables.items() if n.startswith("Rerun_Image"))
    nuclei_table = next(f for n, f in contents.tables.items() if n.startswith("Rerun_Nuclei"))
    names, images = rig.table(image_table)
    assert [row[0] for row in images] == list(range(1, N_SETS + 1))
    nuclei_names, nuclei = rig.table(nuclei_table)
    keys = [(row[0], row[1]) for row in nuclei]
    assert len(keys) == len(set(keys)) == sum(
        row[names.index("Count_Nuclei")] for row in images) > 0
    if reference is not None:
        ref_image = next(f for n, f in reference.tables.items() if n.startswith("Rerun_Image"))
        ref_nuclei = next(f for n, f in reference.tables.items()
                          if n.startswith("Rerun_Nuclei"))
        assert rig.table(ref_nuclei) == (nuclei_names, nuclei)
        assert _across_runs(rig.table(ref_image)) == _across_runs((names, images))
    return contents


@pytest.fixture(scope="module")
def complete(rig: Rig) -> Iterator[dict[str, Any]]:
    """One complete run into its own dataset."""
    dataset_id = rig.dataset("rerun complete")
    mgr, env = rig.login("complete")
    try:
        rig.cellprofiler(rig.pipeline_for(dataset_id), rig.tmp / "complete", env,
                         hash_seed=1)
        contents = _check_one_complete_run(rig, dataset_id, None)
        tables = {f: rig.table(f) for f in contents.tables.values()}
        yield {"dataset": dataset_id, "env": env, "contents": contents, "tables": tables}
    finally:
        run(mgr.close)


def test_a_rerun_after_a_complete_run_changes_nothing(rig: Rig,
                                                      complete: dict[str, Any]) -> None:
    sources_before = rig.source_annotations()
    log = rig.cellprofiler(rig.pipeline_for(complete["dataset"]), rig.tmp / "rerun",
                           complete["env"])
    after = rig.contents(complete["dataset"])
    assert after == complete["contents"]  # no new tables, images or annotations
    assert {f: rig.table(f) for f in after.tables.values()} == complete["tables"]
    assert "continuing table" in log
    assert rig.source_annotations() == sources_before


def test_fresh_tables_are_new_and_every_run_has_the_same_columns(
        rig: Rig, complete: dict[str, Any]) -> None:
    # Hash seeds 1 and 3 make CellProfiler list the Metadata measurements in other orders.
    rig.cellprofiler(rig.pipeline_for(complete["dataset"], fresh=True), rig.tmp / "fresh",
                     complete["env"], hash_seed=3)
    after = rig.contents(complete["dataset"])
    new = {n: f for n, f in after.tables.items() if n not in complete["contents"].tables}
    assert len(new) == 2  # a new set, named for its own run
    assert {n.rsplit("_run-", 1)[0] for n in new} == {"Rerun_Image", "Rerun_Nuclei"}
    assert after.images == complete["contents"].images  # the labels were found again
    for name, file_id in new.items():
        old = next(f for n, f in complete["contents"].tables.items()
                   if n.rsplit("_run-", 1)[0] == name.rsplit("_run-", 1)[0])
        # Another process, another hash seed: the same columns in the same order.
        assert _across_runs(rig.table(file_id)) == _across_runs(complete["tables"][old])


def test_a_run_killed_during_image_set_4_is_completed_by_its_rerun(
        rig: Rig, complete: dict[str, Any]) -> None:
    dataset_id = rig.dataset("rerun killed")
    mgr, env = rig.login("killed")
    try:
        pipeline = rig.pipeline_for(dataset_id)
        status = rig.cellprofiler_until(pipeline, rig.tmp / "killed", env, dataset_id,
                                        lambda p: os.killpg(p.pid, signal.SIGKILL))
        assert status == -signal.SIGKILL
        left = rig.contents(dataset_id)
        assert len(left.tables) == 2 and len(left.images) < N_SETS  # killed half-way
        assert min(len(rig.table(f)[1]) for f in left.tables.values()) < N_SETS
        rig.cellprofiler(pipeline, rig.tmp / "killed-rerun", env)
        after = _check_one_complete_run(rig, dataset_id, complete["contents"])
        assert after.tables == left.tables  # the killed run's tables, completed
    finally:
        run(mgr.close)


def test_a_run_whose_session_expired_is_completed_after_a_new_login(
        rig: Rig, complete: dict[str, Any]) -> None:
    dataset_id = rig.dataset("rerun expired")
    mgr, env = rig.login("expired")
    key = json.loads(Path(env[HANDOFF_ENV]).read_text())["key"]
    pipeline = rig.pipeline_for(dataset_id)
    # Nobody renews the lent session, so CellProfiler waits out its retry budget for a
    # renewed hand-off before it gives up: a short budget keeps the test short.
    short = {**env, "CELLPROFILER_OMERO_RETRY_BUDGET_SECONDS": "5"}
    try:
        status = rig.cellprofiler_until(
            pipeline, rig.tmp / "expired", short, dataset_id,
            lambda p: rig.emulator.expire_sessions(keys=[key]))
        left = rig.contents(dataset_id)
        assert status != 0 or len(left.images) < N_SETS
        assert len(left.images) < N_SETS  # the session ended before the run was done
    finally:
        run(mgr.close)
    mgr, env = rig.login("expired-again")
    try:
        rig.cellprofiler(pipeline, rig.tmp / "expired-rerun", env)
        after = _check_one_complete_run(rig, dataset_id, complete["contents"])
        assert after.tables == left.tables
    finally:
        run(mgr.close)
