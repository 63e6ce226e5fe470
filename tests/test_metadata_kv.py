"""OMERO key-value pairs and tags in (LoadData CSV, Metadata module) and measurements out.

The annotations are made by OMERO's own clients (ezomero's ``post_map_annotation``,
BlitzGateway tags, as this ezomero has no tag writer) on an emulator of this module's
own, whose ``other`` group is read-only with ``demo`` as a member: ``demo`` can read
``other``'s image there but may not annotate it, as on a real server.
"""

from __future__ import annotations

import contextlib
import csv
import io
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from cellprofiler_omero.core import runtime
from cellprofiler_omero.core import session as core_session
from cellprofiler_omero.core.annotations import (
    MEASUREMENTS_NS,
    NewKeyValues,
    metadata_names,
)
from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.errors import CannotAnnotate
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.emulator import Emulator, SeedOptions
from cellprofiler_omero.emulator.store import READ_ONLY

pytestmark = [pytest.mark.cellprofiler]

SMALL = SeedOptions(seed=7, fields=1, field_size=64, large_size=128, plate_rows=1,
                    plate_columns=2, plate_fields=1, plate_field_size=32)
TREATMENT_NS = "example.org/lab/treatment"
OTHER_NS = "example.org/lab/other"


@pytest.fixture(scope="module")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """An emulator of this module's own: ``other``'s group read-only, ``demo`` a member."""
    data = tmp_path_factory.mktemp("kv-emulator")
    with Emulator(data, seed_options=SMALL, pyramid_threshold=2048) as emulator:
        # As an administrator would, before anyone logs in (the emulator reads groups and
        # memberships from its database on every call).
        db = sqlite3.connect(str(data / "omero.sqlite"), timeout=30)
        with db:
            gid = db.execute("SELECT id FROM groups WHERE name='other'").fetchone()[0]
            uid = db.execute("SELECT id FROM experimenters WHERE omename='demo'").fetchone()[0]
            db.execute("UPDATE groups SET perms=? WHERE id=?", (READ_ONLY, gid))
            db.execute("INSERT INTO members VALUES (?, ?, 0)", (gid, uid))
        db.close()
        yield emulator


@pytest.fixture(scope="module")
def annotated(emu: Emulator) -> dict[str, Any]:
    """Pairs and tags on three images and a plate image, made by ezomero and BlitzGateway."""
    import ezomero
    from omero.gateway import BlitzGateway, TagAnnotationWrapper

    seeded = emu.seeded
    # Single-channel images, so NamesAndTypes loads each as one grayscale image.
    f0, f1, f2 = (seeded["types"][name] for name in ("uint8", "uint16", "float"))
    conn = BlitzGateway("demo", "demo", host=emu.host, port=emu.port)
    assert conn.connect()
    try:
        wells = {w.getWellPos(): w.getImage(0).getId()
                 for w in conn.getObject("Plate", seeded["plate"]).listChildren()}
        for image, pairs in ((f0, {"Treatment": "DMSO"}), (f1, {"Treatment": "Drug A"}),
                             (f2, {"Treatment": "DMSO"}),
                             (wells["A1"], {"Treatment": "DMSO", "Dose uM": "0",
                                            "Well": "from a key"}),
                             (wells["A2"], {"Treatment": "Drug A", "Dose-uM": "10"})):
            assert ezomero.post_map_annotation(conn, "Image", image, pairs, TREATMENT_NS)
        assert ezomero.post_map_annotation(conn, "Image", wells["A1"], {"Operator": "Ann"},
                                           OTHER_NS)
        for image in (f0, wells["A1"]):
            tag = TagAnnotationWrapper(conn)
            tag.setValue("reviewed")
            tag.save()
            conn.getObject("Image", image).linkAnnotation(tag)
    finally:
        conn.close()
    return {"fields": (f0, f1, f2), "wells": (wells["A1"], wells["A2"]),
            "plate": seeded["plate"],
            "other_image": seeded["other_image"]}


@pytest.fixture(scope="module")
def mgr(emu: Emulator, tmp_path_factory: pytest.TempPathFactory) -> Iterator[SessionManager]:
    """demo's session, the process's manager for CellProfiler code."""
    tokens = tmp_path_factory.mktemp("kv-tokens")
    settings = Settings().replace({"server.host": emu.host, "server.port": emu.port,
                                   "auth.token_dir": str(tokens),
                                   "auth.keepalive_seconds": 3600})
    manager = SessionManager(settings)
    runtime.run(lambda: manager.connect(user="demo", password="demo"))
    core_session.set_manager(manager)
    yield manager
    core_session.set_manager(None)
    runtime.run(manager.close)


def test_safe_names_resolve_collisions_the_same_way_every_time() -> None:
    names, collisions = metadata_names(["Dose-uM", "Dose uM", "well", "2nd try", ""],
                                       reserved=["Well", "Tags"])
    assert names == {"Dose uM": "Dose_uM", "Dose-uM": "Dose_uM_2", "well": "well_2",
                     "2nd try": "K_2nd_try", "": "Key"}
    assert [(c.key, c.given, c.taken_by, c.reserved) for c in collisions] == [
        ("Dose-uM", "Dose_uM_2", "Dose uM", False), ("well", "well_2", "Well", True)]
    assert metadata_names(reversed(["Dose-uM", "Dose uM"]))[0] == \
        metadata_names(["Dose-uM", "Dose uM"])[0]


def test_pairs_and_tags_become_metadata_columns_in_loaddata(
        emu: Emulator, annotated: dict[str, Any], mgr: SessionManager,
        monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str],
        tmp_path: Path) -> None:
    from cellprofiler_omero.cli import main

    for name, value in mgr.export_for_workers().items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("CELLPROFILER_OMERO_SERVER_HOST", emu.host)
    monkeypatch.setenv("CELLPROFILER_OMERO_SERVER_PORT", str(emu.port))
    monkeypatch.setenv("OMERO_USER_TOKEN_DIR", str(tmp_path / "tokens"))
    a1, a2 = annotated["wells"]
    capsys.readouterr()
    assert main(["urls", f"Plate:{annotated['plate']}", "--loaddata", "--form", "legacy"]) == 0
    out, err = capsys.readouterr()
    rows = {int(r["Metadata_ImageID"]): r for r in csv.DictReader(io.StringIO(out))}
    assert rows[a1]["Metadata_Treatment"] == "DMSO"
    assert rows[a2]["Metadata_Treatment"] == "Drug A"
    assert rows[a1]["Metadata_Operator"] == "Ann" and rows[a2]["Metadata_Operator"] == ""
    assert rows[a1]["Metadata_Tags"] == "reviewed" and rows[a2]["Metadata_Tags"] == ""
    # "Dose uM" and "Dose-uM" both want Dose_uM: sorted, "Dose uM" keeps it.
    assert rows[a1]["Metadata_Dose_uM"] == "0" and rows[a2]["Metadata_Dose_uM_2"] == "10"
    # The plate's own Metadata_Well stays; the key "Well" moves aside.
    assert rows[a1]["Metadata_Well"] == "A01" and rows[a1]["Metadata_Well_2"] == "from a key"
    notes = [line for line in err.splitlines() if line.startswith("note: OMERO key")]
    assert sorted(notes) == [
        "note: OMERO key 'Dose-uM' is named Dose_uM_2 (Dose_uM is taken by OMERO key "
        "'Dose uM')",
        "note: OMERO key 'Well' is named Well_2 (Well is a built-in name)"], err

    # One namespace only, no tags.
    assert main(["urls", f"Image:{a1}", "--loaddata", "--form", "legacy",
                 "--kv-namespace", OTHER_NS, "--no-tags"]) == 0
    header = capsys.readouterr()[0].splitlines()[0].split(",")
    assert "Metadata_Operator" in header
    assert "Metadata_Treatment" not in header and "Metadata_Tags" not in header


def test_annotations_of_an_image_list_take_the_same_few_queries_for_one_or_many(
        emu: Emulator, annotated: dict[str, Any], mgr: SessionManager,
        monkeypatch: pytest.MonkeyPatch) -> None:
    from cellprofiler_omero.transports.ice import annotations

    key = runtime.run(mgr.connection).session_key

    def queries(ids: list[int]) -> tuple[dict[int, Any], int]:
        emu.call_counts(key, reset=True)
        found = runtime.run(mgr.call, lambda c: c.image_annotations(ids))
        counts = emu.call_counts(key)
        return found, sum(n for op, n in counts.items() if op.startswith("IQuery."))

    _, for_one = queries([annotated["fields"][0]])
    found, for_five = queries([*annotated["fields"], *annotated["wells"]])
    assert for_one == for_five <= 5
    a1 = found[annotated["wells"][0]]
    assert a1.plate is not None and a1.plate.well_name == "A01"
    assert a1.tags == ("reviewed",)
    assert {(p.namespace, p.key) for p in a1.pairs} >= {(TREATMENT_NS, "Well"),
                                                        (OTHER_NS, "Operator")}

    # Paged: one row per page gives the same answer.
    monkeypatch.setattr(annotations, "ROW_PAGE", 1)
    paged, _ = queries([*annotated["fields"], *annotated["wells"]])
    assert paged == found


def metadata_pipeline(urls: list[str], *, export: bool) -> Any:
    """Images ▸ Metadata (from OMERO) ▸ NamesAndTypes ▸ Groups by Treatment ▸
    MeasureImageIntensity ▸ (ExportToOMEROKeyValues)."""
    from cellprofiler.modules.measureimageintensity import MeasureImageIntensity
    from cellprofiler_core.modules.groups import Groups
    from cellprofiler_core.modules.images import Images
    from cellprofiler_core.modules.metadata import Metadata
    from cellprofiler_core.modules.namesandtypes import NamesAndTypes
    from cellprofiler_core.pipeline import Pipeline

    from cellprofiler_omero.cp_integration.export_kv import ExportToOMEROKeyValues
    from cellprofiler_omero.cp_integration.metadata import X_OMERO

    pipeline = Pipeline()
    modules: list[Any] = [Images(), Metadata(), NamesAndTypes(), Groups(),
                          MeasureImageIntensity()]
    metadata, groups, measure = modules[1], modules[3], modules[4]
    metadata.wants_metadata.value = True
    metadata.extraction_methods[0].extraction_method.value = X_OMERO
    groups.wants_groups.value = True
    groups.grouping_metadata[0].metadata_choice.value = "Treatment"
    measure.images_list.value = "DNA"
    if export:
        kv = ExportToOMEROKeyValues()
        kv.measurements.value = "Image|Intensity_TotalIntensity_DNA,Image|Metadata_Treatment"
        modules.append(kv)
    for number, module in enumerate(modules, 1):
        module.set_module_num(number)
        pipeline.add_module(module)
    pipeline.add_urls(urls)
    return pipeline


def test_metadata_module_extracts_omero_pairs_that_groups_group_by(
        annotated: dict[str, Any], mgr: SessionManager, cellprofiler_plugins: None) -> None:
    from cellprofiler_omero.cp_integration import compat
    from cellprofiler_omero.cp_integration.reader import omero_file_metadata

    compat.install()
    f0, f1, f2 = annotated["fields"]
    urls = [f"omero:iid={i}" for i in (f0, f1, f2)]
    pipeline = metadata_pipeline(urls, export=False)
    m = pipeline.run()
    numbers = list(m.get_image_numbers())
    by_url = {m["Image", "URL_DNA", n]: n for n in numbers}
    treatment = {url: m["Image", "Metadata_Treatment", n] for url, n in by_url.items()}
    assert treatment == {urls[0]: "DMSO", urls[1]: "Drug A", urls[2]: "DMSO"}
    assert m["Image", "Metadata_Tags", by_url[urls[0]]] == "reviewed"
    group = {url: m["Image", "Group_Number", n] for url, n in by_url.items()}
    assert group[urls[0]] == group[urls[2]] != group[urls[1]]
    assert sorted(m["Image", "Group_Index", by_url[u]] for u in (urls[0], urls[2])) == [1, 2]

    # The keys travel with the pipeline (analysis workers and a reloaded pipeline declare
    # the same measurement columns as the process that extracted).
    from cellprofiler_core.pipeline import Pipeline

    text = io.StringIO()
    pipeline.dump(text)
    reloaded = Pipeline()
    reloaded.loadtxt(io.StringIO(text.getvalue()), raise_on_error=True)
    columns = {c[1] for c in reloaded.get_measurement_columns() if c[0] == "Image"}
    assert {"Metadata_Treatment", "Metadata_Tags"} <= columns

    # A plate image: its position comes with its pairs (one batched fetch for the list).
    plate_url = f"omero:iid={annotated['wells'][0]}"
    found, collisions = omero_file_metadata([plate_url, "file:///not/omero.tif"])
    assert list(found) == [plate_url]
    assert found[plate_url]["Well"] == "A01" and found[plate_url]["Field"] == "1"
    assert found[plate_url]["Well_2"] == "from a key"
    assert [c.key for c in collisions] == ["Well"]


def measurement_annotations(emu: Emulator, image_ids: list[int]) -> dict[int, list[dict]]:
    import ezomero
    from omero.gateway import BlitzGateway

    conn = BlitzGateway("demo", "demo", host=emu.host, port=emu.port)
    assert conn.connect()
    try:
        return {i: [ezomero.get_map_annotation(conn, a) for a in
                    ezomero.get_map_annotation_ids(conn, "Image", i, ns=MEASUREMENTS_NS)]
                for i in image_ids}
    finally:
        conn.close()


def test_measurements_go_back_once_per_image_and_run(
        emu: Emulator, annotated: dict[str, Any], mgr: SessionManager,
        cellprofiler_plugins: None) -> None:
    from cellprofiler_omero.cp_integration import compat

    compat.install()
    ids = list(annotated["fields"])
    urls = [f"omero:iid={i}" for i in ids]
    m = metadata_pipeline(urls, export=True).run()
    written = measurement_annotations(emu, ids)
    by_url = {m["Image", "URL_DNA", n]: n for n in m.get_image_numbers()}
    for image_id, url in zip(ids, urls, strict=True):
        assert len(written[image_id]) == 1, written
        values = written[image_id][0]
        total = m["Image", "Intensity_TotalIntensity_DNA", by_url[url]]
        assert float(values["Intensity_TotalIntensity_DNA"]) == pytest.approx(total)
        assert values["Metadata_Treatment"] == ("Drug A" if image_id == ids[1] else "DMSO")

    metadata_pipeline(urls, export=True).run()  # the same run again: nothing new
    assert {i: len(v) for i, v in measurement_annotations(emu, ids).items()} == \
        dict.fromkeys(ids, 1)
    # The measurements written back are not read as input metadata (a rerun's run key
    # would change with them), unless their namespace is asked for by name.
    from cellprofiler_omero.cp_integration.reader import omero_file_metadata

    assert "Intensity_TotalIntensity_DNA" not in omero_file_metadata(urls)[0][urls[0]]
    assert "Intensity_TotalIntensity_DNA" in \
        omero_file_metadata(urls, [MEASUREMENTS_NS])[0][urls[0]]


def test_the_modules_settings_survive_a_saved_pipeline(cellprofiler_plugins: None) -> None:
    from cellprofiler_core.pipeline import Pipeline

    from cellprofiler_omero.cp_integration import compat

    compat.install()
    text = io.StringIO()
    metadata_pipeline(["omero:iid=1"], export=True).dump(text)
    reloaded = Pipeline()
    reloaded.loadtxt(io.StringIO(text.getvalue()), raise_on_error=True)
    kv = reloaded.modules()[-1]
    assert kv.module_name == "ExportToOMEROKeyValues"
    assert kv.features() == ["Intensity_TotalIntensity_DNA", "Metadata_Treatment"]
    assert kv.namespace.value == MEASUREMENTS_NS
    from cellprofiler_omero.cp_integration.metadata import X_OMERO

    assert reloaded.modules()[1].extraction_methods[0].extraction_method.value == X_OMERO


def test_an_image_set_not_from_omero_is_refused_clearly(cellprofiler_plugins: None) -> None:
    from cellprofiler_core.measurement import Measurements

    from cellprofiler_omero.core.errors import UnsupportedData
    from cellprofiler_omero.cp_integration.export_kv import ExportToOMEROKeyValues

    m = Measurements()
    m.add_image_measurement("URL_DNA", "file:///data/local.tif")
    m.add_experiment_measurement("OMERO_KeyValues_RunKey", "k")

    class Workspace:
        measurements = m

    with pytest.raises(UnsupportedData, match="has no OMERO image to annotate"):
        ExportToOMEROKeyValues().request(Workspace())


def test_an_image_the_user_cannot_annotate_gets_nothing_and_a_clear_error(
        emu: Emulator, annotated: dict[str, Any], mgr: SessionManager) -> None:
    from cellprofiler_omero.cp_integration.export_kv import put_key_values

    image = annotated["other_image"]
    request = NewKeyValues(image, MEASUREMENTS_NS, (("Count_Nuclei", "3"),),
                           "cellprofiler-omero measurements of run refused")
    with pytest.raises(CannotAnnotate) as caught:
        runtime.run(put_key_values, mgr, request)
    assert caught.value.object_id == image and caught.value.user == "demo"
    assert "may not annotate image" in caught.value.message

    async def orphans(conn: Any) -> Any:
        from cellprofiler_omero.transports.ice.connection import ALL_GROUPS, params

        def query() -> Any:
            p = params(uid=conn.info.user_id)
            return conn.sf.getQueryService().projection(
                "select a.id from MapAnnotation a where a.details.owner.id = :uid "
                "and a.ns = '" + MEASUREMENTS_NS + "'", p, ALL_GROUPS)
        return await conn.call(query, what="counting")

    before = len(runtime.run(mgr.call, orphans))
    with contextlib.suppress(CannotAnnotate):
        runtime.run(put_key_values, mgr, request)
    assert len(runtime.run(mgr.call, orphans)) == before  # no annotation made, not even unlinked
    assert measurement_annotations(emu, [image]) == {image: []}
