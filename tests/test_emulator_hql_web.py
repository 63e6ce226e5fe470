"""The HQL OMERO.web's tree and panels send, answered as a real OMERO.server answers it.

Each query is the one omero-web 5.33.2 sends (``webclient/tree.py``, ``show.py``,
``webgateway/plategrid.py``), through plain omero-py's IQuery. The rules mirrored:
ome.logic.QueryImpl.projection (an entity under a ``…_details_permissions`` key of a
``new map`` row becomes its Permissions), omero-blitz IceMapper.toRType (Permissions →
``{perm, canAnnotate, canDelete, canEdit, canLink, canChgrp, canChown}``, timestamps →
``rtime``), ome.security.basic.BasicACLVoter.postProcess (what the caller may do), and
ome.services.query.StringQuery (HQL it cannot parse → ``omero.QueryException``
"Illegal query:…").
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import omero
import omero.sys
import pytest
from omero.rtypes import rlong, unwrap

from cellprofiler_omero.emulator import Emulator

ALL = {"omero.group": "-1"}
FLAGS = ("canAnnotate", "canDelete", "canEdit", "canLink", "canChgrp", "canChown")

#: marshal_projects / marshal_datasets (webclient/tree.py), with the owner filter.
PROJECTS = """
    select new map(project.id as id,
           project.name as name,
           project.details.owner.id as ownerId,
           project as project_details_permissions,
           (select count(id) from ProjectDatasetLink pdl
            where pdl.parent = project.id) as childCount)
    from Project project
    where project.details.owner.id = :id
    order by lower(project.name), project.id
"""
ORPHANED_DATASETS = """
    select new map(dataset.id as id,
           dataset.name as name,
           dataset.details.owner.id as ownerId,
           dataset as dataset_details_permissions,
           (select count(id) from DatasetImageLink dil
             where dil.parent=dataset.id) as childCount)
           from Dataset dataset
    where not exists (
        select pdlink from ProjectDatasetLink as pdlink
        where pdlink.child = dataset.id)
    order by lower(dataset.name), dataset.id
"""
#: marshal_tags: tag sets through AnnotationAnnotationLink, tagged images counted.
TAGS = """
    select new map(tag.id as id,
           tag.textValue as textValue,
           tag.details.owner.id as ownerId,
           tag as tag_details_permissions,
           tag.ns as ns,
           (select count(aalink2)
            from AnnotationAnnotationLink aalink2
            where aalink2.child.class=TagAnnotation
            and aalink2.parent.id=tag.id) as tagChildCount,
           (select count(aalink3)
            from ImageAnnotationLink aalink3
            where aalink3.child.id=tag.id) as imageChildCount)
    from TagAnnotation tag
    where tag.id = :id
    order by tag.id
"""


def params(**values: Any) -> omero.sys.ParametersI:
    p = omero.sys.ParametersI()
    for key, value in values.items():
        p.add(key, omero.rtypes.rlist([rlong(v) for v in value]) if isinstance(value, list)
              else rlong(value))
    return p


@pytest.fixture
def query(blitz: Any) -> Any:
    return blitz().getQueryService()


# -- new map, and the permissions a real server puts in it --------------------------------------

def test_new_map_rows_are_one_map_each_keyed_by_alias_with_subquery_counts(
        blitz: Any, seeded: dict[str, Any]) -> None:
    conn = blitz()
    rows = conn.getQueryService().projection(PROJECTS, params(id=conn.getUserId()), ALL)
    assert rows and all(len(row) == 1 and isinstance(row[0], omero.RMap) for row in rows)
    project = {unwrap(row[0])["id"]: unwrap(row[0]) for row in rows}[seeded["project"]]
    assert set(project) == {"id", "name", "ownerId", "project_details_permissions",
                            "childCount"}
    assert (project["id"], project["name"], project["ownerId"]) == (
        seeded["project"], "CellProfiler demo", conn.getUserId())
    links = conn.getQueryService().projection(
        "select l.id from ProjectDatasetLink l where l.parent.id = :id",
        params(id=seeded["project"]), ALL)
    assert project["childCount"] == len(links) == 5


def test_an_entity_keyed_details_permissions_is_what_the_caller_may_do(
        blitz: Any, seeded: dict[str, Any]) -> None:
    # demo owns and leads their private group: every right, chown included.
    demo = blitz()
    rows = unwrap(demo.getQueryService().projection(PROJECTS, params(id=demo.getUserId()),
                                                    ALL))
    project = {r[0]["id"]: r[0] for r in rows}[seeded["project"]]
    assert project["project_details_permissions"] == {
        "perm": "rw----", **dict.fromkeys(FLAGS, True)}
    # other sees demo's dataset in the read-annotate group: annotate, nothing else.
    other = blitz("other")
    rows = unwrap(other.getQueryService().projection(ORPHANED_DATASETS, None, ALL))
    shared = {r[0]["id"]: r[0] for r in rows}[seeded["shared_dataset"]]
    assert shared["dataset_details_permissions"] == {
        "perm": "rwra--", **dict.fromkeys(FLAGS, False), "canAnnotate": True}
    # demo's own dataset there: everything but chown (demo does not lead "shared").
    rows = unwrap(demo.getQueryService().projection(ORPHANED_DATASETS, None, ALL))
    mine = {r[0]["id"]: r[0] for r in rows}[seeded["shared_dataset"]]
    assert mine["dataset_details_permissions"] == {
        "perm": "rwra--", **dict.fromkeys(FLAGS, True), "canChown": False}


def test_a_details_permissions_column_is_the_groups_permissions_unrestricted(
        query: Any) -> None:
    # marshal_groups: the perm string is read; a column carries no per-caller rights.
    rows = unwrap(query.projection(
        "select grp.id, grp.name, grp.details.permissions from ExperimenterGroup grp "
        "where grp.name != 'user' order by lower(grp.name)", None, ALL))
    perms = {name: p for _id, name, p in rows}
    assert "user" not in perms and list(perms) == sorted(perms)
    assert perms["shared"] == {"perm": "rwra--", **dict.fromkeys(FLAGS, True)}
    assert perms["demo"]["perm"] == "rw----"
    image = unwrap(query.projection(
        "select i.details.permissions from Image i where i.name = 'shared_field'",
        None, ALL))
    assert image == [[{"perm": "rwra--", **dict.fromkeys(FLAGS, True)}]]


def test_another_user_sees_none_of_demos_private_data(blitz: Any,
                                                      seeded: dict[str, Any]) -> None:
    other = blitz("other")
    q = other.getQueryService()
    demo_id = blitz().getUserId()
    assert q.projection(PROJECTS, params(id=demo_id), ALL) == []
    datasets = [r[0] for r in unwrap(q.projection(ORPHANED_DATASETS, None, ALL))]
    # demo's dataset in the read-annotate group, and nothing else of demo's.
    assert seeded["shared_dataset"] in {d["id"] for d in datasets}
    assert {d["id"] for d in datasets if d["ownerId"] == demo_id} == {
        seeded["shared_dataset"]}
    images = unwrap(q.projection(
        "select new map(image.id as id, image as image_details_permissions) "
        "from Image image join image.datasetLinks dlink where dlink.parent.id = :did",
        params(did=seeded["dataset"]), ALL))
    assert images == []


# -- the rest of the constructs the webclient sends ----------------------------------------------

def test_in_a_list_parameter_needs_no_parentheses(blitz: Any) -> None:
    # marshal_experimenter, for a user who is not an admin.
    conn = blitz()
    groups = [g for g in conn.getEventContext().memberOfGroups if g != 1]
    rows = conn.getQueryService().projection(
        "select distinct experimenter.id, experimenter.omeName from Experimenter experimenter "
        "join experimenter.groupExperimenterMap gem "
        "where experimenter.id = :id and gem.parent.id in :ids",
        params(id=conn.getUserId(), ids=groups), ALL)
    assert unwrap(rows) == [[conn.getUserId(), "demo"]]


def test_tags_by_class_discriminator_and_type_with_their_image_counts(
        blitz: Any, scratch_dataset: int) -> None:
    conn = blitz()
    image = conn.createImageFromNumpySeq(iter([np.zeros((4, 4), np.uint8)]), "tagged",
                                         dataset=conn.getObject("Dataset", scratch_dataset))
    tag = omero.gateway.TagAnnotationWrapper(conn)
    tag.setValue("nuclei")
    tag.save()
    image.linkAnnotation(tag)
    q = conn.getQueryService()
    (row,), = q.projection(TAGS, params(id=tag.getId()), ALL)
    found = unwrap(row)
    assert (found["textValue"], found["tagChildCount"], found["imageChildCount"]) == (
        "nuclei", 0, 1)
    assert found["tag_details_permissions"]["canEdit"] is True
    for test in ("a.class = TagAnnotation", "type(a) = TagAnnotation",
                 "a.class != CommentAnnotation"):
        rows = q.projection(f"select a.id from Annotation a where a.id = :id and {test}",
                            params(id=tag.getId()), ALL)
        assert unwrap(rows) == [[tag.getId()]], test
    assert q.projection("select a.id from Annotation a where a.id = :id "
                        "and a.class = FileAnnotation", params(id=tag.getId()), ALL) == []
    # Selected, type() is the Java class's full name: BlitzGateway.countAnnotations
    # (sum(case …) per an.class) counts the tag by it.
    (kind,), = q.projection("select type(a) from Annotation a where a.id = :id",
                            params(id=tag.getId()), ALL)
    assert unwrap(kind) == "ome.model.annotations.TagAnnotation"
    counts = conn.countAnnotations("Image", [image.getId()])
    assert counts["TagAnnotation"] == 1 and sum(counts.values()) == 1


def test_sum_of_case_per_group(query: Any, seeded: dict[str, Any]) -> None:
    rows = query.projection(
        "select w.row, sum(case when w.column > 0 then 1 else 0 end), count(distinct w.id) "
        "from Well w where w.plate.id = :id group by w.row order by w.row",
        params(id=seeded["plate"]), ALL)
    assert unwrap(rows) == [[0, 2, 3], [1, 2, 3]]


def test_having_keeps_the_groups_whose_aggregates_match(query: Any,
                                                        seeded: dict[str, Any]) -> None:
    # The shape of OMERO.web's chgrp/delete dialog (views.getAllObjects: filesets
    # shared by more than one image).
    hql = ("select w.id from Well w where w.id in (select w2.id from Well w2 "
           "join w2.wellSamples ws where w2.plate.id = :id group by w2.id "
           "having count(ws.id) > :n)")
    assert len(query.projection(hql, params(id=seeded["plate"], n=1), ALL)) == 6
    assert query.projection(hql, params(id=seeded["plate"], n=2), ALL) == []


def test_order_by_a_select_alias(query: Any, seeded: dict[str, Any]) -> None:
    # Hibernate 3.5 resolves a result variable in order by (HHH-892).
    rows = query.projection(
        "select new map(w.id as id, w.row * 10 + w.column as place) from Well w "
        "where w.plate.id = :id order by place desc", params(id=seeded["plate"]), ALL)
    assert [r[0]["place"] for r in unwrap(rows)] == [12, 11, 10, 2, 1, 0]


def test_timestamps_are_rtimes_and_extract_epoch_gives_seconds(
        query: Any, seeded: dict[str, Any]) -> None:
    (created, epoch, acquired), = query.projection(
        "select i.details.creationEvent.time, extract(epoch from i.details.creationEvent.time),"
        " i.acquisitionDate from Image i where i.id = :id",
        params(id=seeded["fields"][0]), ALL)
    assert isinstance(created, omero.RTime) and isinstance(acquired, omero.RTime)
    assert unwrap(epoch) == pytest.approx(unwrap(created) / 1000)


def test_orphaned_images_are_in_no_dataset_and_no_plate(blitz: Any,
                                                        seeded: dict[str, Any]) -> None:
    # marshal_orphaned / marshal_images(orphaned=True): plate images are in no dataset
    # but are not orphans.
    conn = blitz()
    orphan = conn.createImageFromNumpySeq(iter([np.zeros((4, 4), np.uint8)]), "orphan")
    rows = conn.getQueryService().projection(
        "select image.id from Image image where image.details.owner.id = :id and "
        "not exists (select dilink from DatasetImageLink as dilink "
        "where dilink.child = image.id) "
        "and not exists (select ws from WellSample ws where ws.image.id = image.id)",
        params(id=conn.getUserId()), ALL)
    found = {i for (i,) in unwrap(rows)}
    assert orphan.getId() in found
    plate_images = unwrap(conn.getQueryService().projection(
        "select ws.image.id from WellSample ws where ws.well.plate.id = :id",
        params(id=seeded["plate"]), ALL))
    assert len(plate_images) == 12 and not found & {i for (i,) in plate_images}
    assert not found & set(seeded["fields"])


# -- what cannot be parsed -----------------------------------------------------------------------

@pytest.fixture(scope="module")
def quiet_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """Users only (starts in a second), logging at INFO as a site that looks for gaps."""
    with Emulator(tmp_path_factory.mktemp("hql-log"), seed="users",
                  log_level="INFO") as emu:
        yield emu


def test_hql_that_cannot_be_parsed_is_a_query_exception_and_one_log_line(
        quiet_emulator: Emulator) -> None:
    from omero.gateway import BlitzGateway

    conn = BlitzGateway("demo", "demo", host=quiet_emulator.host, port=quiet_emulator.port)
    assert conn.connect()
    try:
        hql = "select p from Project p where p.name ~ 'x'"
        with pytest.raises(omero.QueryException) as info:
            conn.getQueryService().findAllByQuery(hql, None, ALL)
        assert info.value.message.startswith(f"Illegal query:{hql}\n")
        with pytest.raises(omero.ApiUsageException) as missing:
            conn.getQueryService().findAllByQuery(
                "select p from Project p where p.id = :pid", params(), ALL)
        assert missing.value.message == "Null parameters not allowed: pid"
        assert type(missing.value) is omero.ApiUsageException
    finally:
        conn.close()
    log = (Path(quiet_emulator.data_dir) / "emulator.log").read_text(errors="replace")
    gaps = [line for line in log.splitlines() if "HQL not supported by the emulator" in line]
    assert len(gaps) == 1 and hql in gaps[0]
