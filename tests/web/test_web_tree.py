"""The webclient's tree through the real OMERO.web's URLs: what demo and other see.

OMERO.web builds these answers from the HQL in ``webclient/tree.py`` and
``webgateway/plategrid.py`` (``new map`` rows, the caller's permissions, subquery
counts, ``in :ids``, ``.class`` discriminators…); the emulator must answer it as a real
server does, and log no HQL it cannot parse.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import omero.gateway

if TYPE_CHECKING:
    from cellprofiler_omero.commands.web import OmeroWeb
    from tests.web.conftest import WebEmulator, WebIds, WebSession

GAP = "HQL not supported by the emulator"


def _gaps(web_emulator: WebEmulator) -> list[str]:
    log = Path(web_emulator.emulator.data_dir) / "emulator.log"
    return [line for line in log.read_text(errors="replace").splitlines() if GAP in line]


def _get(session: Any, url: str) -> Any:
    answer = session.get(url, timeout=120)
    assert answer.status_code == 200, (url, answer.status_code, answer.text[:500])
    return answer.json()


def _tag_an_image(web_emulator: WebEmulator, image_id: int) -> tuple[int, int]:
    """A tag of demo's on ``image_id`` (through omero-py, as the webclient would add it):
    the tag's id and demo's."""
    emu = web_emulator.emulator
    conn = omero.gateway.BlitzGateway("demo", "demo", host=emu.host, port=emu.port)
    assert conn.connect()
    try:
        tag = omero.gateway.TagAnnotationWrapper(conn)
        tag.setValue("tree-test")
        tag.save()
        conn.getObject("Image", image_id).linkAnnotation(tag)
        return int(tag.getId()), int(conn.getUserId())
    finally:
        conn.close()


def test_demo_browses_projects_datasets_images_screens_plates_tags_and_people(
        omero_web: OmeroWeb, web_session: WebSession, web_ids: WebIds,
        web_emulator: WebEmulator) -> None:
    seeded: dict[str, Any] = dict(web_ids.seeded)
    tag_id, demo_id = _tag_an_image(web_emulator, seeded["rgb"])
    gaps_before = len(_gaps(web_emulator))
    api = omero_web.url + "webclient/api/"
    demo = web_session("demo", "demo")
    assert _get(demo, api + f"experimenters/{demo_id}/")["experimenter"]["omeName"] == "demo"

    tree = _get(demo, api + f"containers/?id={demo_id}")
    (project,) = [p for p in tree["projects"] if p["id"] == web_ids.project]
    datasets = _get(demo, api + f"datasets/?id={web_ids.project}")["datasets"]
    assert project["childCount"] == len(datasets) > 0
    assert set(project["permsCss"].split()) == {"canEdit", "canAnnotate", "canLink",
                                                "canDelete", "canChgrp", "canChown",
                                                "isOwned"}
    (dataset,) = [d for d in datasets if d["id"] == web_ids.dataset]
    images = _get(demo, api + f"images/?id={web_ids.dataset}&sizeXYZ=true&date=true")[
        "images"]
    ids = [i["id"] for i in images]
    assert dataset["childCount"] == len(images)
    assert {web_ids.image, web_ids.label_image} <= set(ids)
    assert [i["name"] for i in images] == sorted((i["name"] for i in images), key=str.lower)
    label = next(i for i in images if i["id"] == web_ids.label_image)
    assert label["name"].startswith("field_01_") and label["sizeZ"] == 1
    assert label["date"].startswith("20")  # an ISO date from an rtime in milliseconds
    # Orphaned datasets: demo's "Shared data" is in no project; no orphaned images.
    assert seeded["shared_dataset"] in {d["id"] for d in tree["datasets"]}
    assert tree["orphaned"]["childCount"] == 0

    (screen,) = [s for s in tree["screens"] if s["id"] == seeded["screen"]]
    plates = _get(demo, api + f"plates/?id={seeded['screen']}")["plates"]
    assert screen["childCount"] == len(plates) == 1 and plates[0]["id"] == seeded["plate"]
    grid = _get(demo, omero_web.url + f"webgateway/plate/{seeded['plate']}/")
    wells = [cell for row in grid["grid"] for cell in row if cell]
    assert sorted(w["name"] for w in wells) == ["A01_f0", "A02_f0"]
    assert all(w["author"] == "Demo User" for w in wells)

    tags = _get(demo, api + "tags/")["tags"]
    (tag,) = [t for t in tags if t["id"] == tag_id]
    assert (tag["value"], tag["set"], tag["childCount"]) == ("tree-test", False, 1)
    tagged = _get(demo, api + f"tags/?id={tag_id}")
    assert [i["id"] for i in tagged["images"]] == [seeded["rgb"]]

    groups = {g["name"]: g["perm"] for g in _get(demo, api + "groups/")["groups"]}
    assert groups["shared"] == "rwra--" and "user" not in groups
    assert _gaps(web_emulator)[gaps_before:] == []


def test_other_sees_none_of_demos_private_data_in_the_tree(
        omero_web: OmeroWeb, web_session: WebSession, web_ids: WebIds,
        web_emulator: WebEmulator) -> None:
    seeded: dict[str, Any] = dict(web_ids.seeded)
    gaps_before = len(_gaps(web_emulator))
    api = omero_web.url + "webclient/api/"
    other = web_session("other", "other")
    tree = _get(other, api + "containers/")
    project_ids = {p["id"] for p in tree["projects"]}
    assert web_ids.project not in project_ids and seeded["other_project"] in project_ids
    assert tree["screens"] == [] and tree["plates"] == []
    # demo's dataset in the read-annotate group is visible, and only to annotate.
    assert [(d["id"], d["permsCss"]) for d in tree["datasets"]] == [
        (seeded["shared_dataset"], "canAnnotate")]
    assert _get(other, api + f"datasets/?id={web_ids.project}")["datasets"] == []
    assert _get(other, api + f"images/?id={web_ids.dataset}")["images"] == []
    assert _get(other, api + f"plates/?id={seeded['screen']}")["plates"] == []
    assert _gaps(web_emulator)[gaps_before:] == []
