"""Every page a user reaches from the demo's objects in OMERO.web, through its real URLs.

The list comes from OMERO.web's and OMERO.iviewer's URL tables
(``omeroweb/{webclient,webgateway,api}/urls.py``, ``omero_iviewer/urls.py``) filled
with the fixture's ids: project, dataset, source image with its ROIs and shapes, the
label image, plate, wells, screen, a tag, the table's file and annotation. Each page
answers what it answers in front of a real server (200, or the status OMERO.web gives
for a reason of its own, named beside it), and while the crawl runs the emulator logs
no unimplemented operation and no HQL it cannot parse.
"""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import sqlite3
import zipfile
from pathlib import Path
from typing import TYPE_CHECKING

import omero
import omero.gateway
import pytest
import tifffile

if TYPE_CHECKING:
    from cellprofiler_omero.commands.web import OmeroWeb
    from tests.web.conftest import WebEmulator, WebIds, WebSession

#: What the emulator logs for a call or query it cannot answer as a real server would.
GAPS = ("not implemented by the emulator", "HQL not supported by the emulator")

#: Views left out: each changes data (a POST a person sends from a form or dialog), or
#: runs a server-side script, which the emulator has not got.
OUT_OF_SCOPE = {
    "webclient/action/…, annotate_comment/rating/map, chgrp/chown (+DryRun), "
    "save_projection, persist_rois, saveImgRDef, copyImgRDef (POST), resetRDef, "
    "applyOwnersRDef, edit_channel_names, api/links (POST/DELETE), api/v0/m/save":
        "POST actions that change data",
    "webclient/script_ui|script_run|script_upload, figure_script, ome_tiff_script, "
    "webgateway/render_movie": "run an OMERO.script (the emulator runs none)",
    "webclient/logout, active_group, webgateway/su": "change the session itself",
    "webclient/api/share_images, shares by id": "the emulator has no shares",
    "webclient/help/ (its template is not in the omero-web wheel), webclient/action/edit/ "
    "of anything but a share (the view has no form for it)": "OMERO.web's own 500s",
}


def _history(day: datetime.date) -> str:
    """OMERO.web's History of one day (``load_history/YYYY/MM/DD/``)."""
    return f"webclient/load_history/{day.year}/{day.month}/{day.day}/"


def _pages(ids: WebIds, tag: int, shape: int, demo: int, group: int, made: datetime.date,
           ) -> list[tuple[str, int]]:
    """(path, expected status) for every page of the crawl; ``made`` is the day the
    fixture's objects were created (the server's clock, not the test's)."""
    s = ids.seeded
    image, label, dataset, project = ids.image, ids.label_image, ids.dataset, ids.project
    roi = ids.rois[min(ids.rois)]
    table, annotation = ids.table_file, ids.table_annotation
    screen, plate = s["screen"], s["plate"]
    well = s["wells"]["A01"]  # type: ignore[index]
    rdef = "c=1|0:255$FF0000,2|0:255$00FF00&m=c"
    ok = [
        # webclient: the main pages and dialogs
        "webclient/", f"webclient/userdata/?show=image-{image}", "webclient/history/",
        "webclient/group_user_content/", f"webclient/action/editname/image/{image}/",
        f"webclient/action/editdescription/project/{project}/",
        "webclient/usertags/", "webclient/search/", "webclient/public/",
        "webclient/activities/", "webclient/activities_json/",
        f"webclient/load_plate/plate/{plate}/", f"webclient/load_chgrp_groups/?Image={image}",
        f"webclient/load_chgrp_target/{group}/project/",
        "webclient/load_calendar/", f"webclient/load_calendar/{made.year}/{made.month}/",
        _history(made),
        "webclient/load_searching/form/?query=field&dataType=images",
        f"webclient/fileset_check/delete/?Image={image}",
        f"webclient/fileset_check/chgrp/?Dataset={dataset}",
        f"webclient/download_placeholder/?ids=image-{image}",
        # the right-hand panel
        *(f"webclient/metadata_details/{kind}/{oid}/" for kind, oid in (
            ("image", image), ("image", label), ("dataset", dataset), ("project", project),
            ("screen", screen), ("plate", plate), ("well", well), ("tag", tag))),
        f"webclient/metadata_acquisition/image/{image}/",
        f"webclient/metadata_acquisition/well/{well}/",
        f"webclient/metadata_preview/image/{image}/", f"webclient/metadata_preview/well/{well}/",
        f"webclient/metadata_hierarchy/image/{image}/",
        f"webclient/metadata_hierarchy/dataset/{dataset}/",
        f"webclient/load_original_metadata/{image}/",
        f"webclient/download_orig_metadata/{image}/",
        # annotating forms (GET shows the form; its POST is out of scope)
        f"webclient/batch_annotate/?image={image}&image={label}",
        f"webclient/annotate_tags/?image={image}",
        "webclient/marshal_tagging_form_data/?jsonmode=tagcount",
        "webclient/marshal_tagging_form_data/?jsonmode=tags",
        "webclient/marshal_tagging_form_data/?jsonmode=desc",
        f"webclient/annotate_file/?image={image}", f"webclient/annotate_file/?dataset={dataset}",
        f"webclient/annotation/{annotation}/",
        # tables and files
        f"webclient/omero_table/{table}/", f"webclient/omero_table/{table}/json/",
        f"webclient/omero_table/{table}/csv/",
        f"webclient/get_original_file/{table}/", f"webclient/download_original_file/{table}/",
        f"webgateway/table/{table}/query/?query=*", f"webgateway/table/{table}/metadata/",
        f"webgateway/table/{table}/obj_id_bitmask/?col_name=ObjectNumber",
        f"webgateway/table/{table}/query/?query=ObjectNumber>2",
        f"webgateway/table/{table}/rows/", f"webgateway/table/{table}/slice/?rows=0,1&columns=0,2",
        f"webgateway/table/Dataset/{dataset}/query/?query=*",
        f"webgateway/annotations/Dataset/{dataset}/",
        # images: thumbnails, rendering, plots, viewer data
        f"webclient/get_thumbnails/?id={image}&id={label}", f"webclient/get_thumbnail/{image}/",
        f"webclient/render_thumbnail/{image}/", f"webclient/render_thumbnail/size/96/{label}/",
        f"webclient/render_image_region/{image}/0/0/?region=0,0,64,64",
        f"webclient/render_birds_eye_view/{image}/", f"webclient/render_image/{image}/",
        f"webclient/render_image_download/{image}/",
        f"webclient/render_image_download/{image}/?format=tif",
        f"webclient/img_detail/{image}/", f"webclient/imgData/{image}/",
        f"webclient/render_row_plot/{image}/0/0/10/", f"webclient/render_col_plot/{image}/0/0/10/",
        f"webclient/render_split_channel/{image}/0/0/", "webclient/getImgRDef/",
        "webclient/luts/", f"webclient/ome_tiff_info/{image}/", f"webclient/avatar/{demo}/",
        "webclient/list_scripts/", "webclient/keepalive_ping/",
        f"webgateway/render_image/{image}/0/0/",
        f"webgateway/render_image_region/{image}/0/0/?tile=0,0,0,128,128",
        f"webgateway/render_image_rdef/{image}/?{rdef}",
        f"webgateway/render_image_region_rdef/{image}/0/0/?region=0,0,32,32&{rdef}",
        f"webgateway/render_split_channel/{image}/0/0/",
        f"webgateway/render_row_plot/{image}/0/0/10/",
        f"webgateway/render_col_plot/{image}/0/0/10/",
        f"webgateway/render_thumbnail/{image}/", f"webgateway/render_roi_thumbnail/{roi}/",
        f"webgateway/render_shape_thumbnail/{shape}/", f"webgateway/render_shape_mask/{shape}/",
        f"webgateway/render_birds_eye_view/{image}/",
        f"webgateway/render_ome_tiff/i/{image}/", f"webgateway/render_ome_tiff/i/{label}/",
        f"webgateway/render_ome_tiff/d/{dataset}/", f"webgateway/render_ome_tiff/p/{project}/",
        f"webgateway/render_ome_tiff/w/{well}/",
        f"webgateway/render_image/{label}/", f"webgateway/histogram_json/{label}/channel/0/",
        f"webgateway/render_image/{s['zstack']}/?p=intmax|0:7",
        f"webgateway/render_image/{s['rgb']}/",
        f"webclient/metadata_details/image/{s['zstack']}/",
        # every pixel type the seed has: thumbnail, rendered plane, OME-TIFF
        *(f"webgateway/{view}/{oid}/" for oid in s["types"].values()  # type: ignore[attr-defined]
          for view in ("render_thumbnail", "render_image", "render_ome_tiff/i")),
        f"webgateway/get_thumbnails/?id={image}", f"webgateway/get_thumbnail/{image}/",
        f"webgateway/imgData/{image}/", f"webgateway/img_detail/{image}/",
        f"webgateway/get_rois_json/{image}/", f"webgateway/get_shape_json/{roi}/{shape}/",
        f"webgateway/histogram_json/{image}/channel/0/", "webgateway/getImgRDef/",
        "webgateway/luts/", "webgateway/luts_png/", f"webgateway/compatImgRDef/{image}/",
        f"webgateway/download_as/?image={image}", f"webgateway/original_file_paths/{image}/",
        "webgateway/open_with/", f"webgateway/get_image_rdefs_json/{image}/",
        # containers as JSON
        "webgateway/proj/list/", f"webgateway/proj/{project}/detail/",
        f"webgateway/proj/{project}/children/", f"webgateway/dataset/{dataset}/detail/",
        f"webgateway/dataset/{dataset}/children/", f"webgateway/well/{well}/children/",
        f"webgateway/plate/{plate}/", f"webgateway/plate/{plate}/0/",
        f"webgateway/wellData/{well}/",
        "webclient/api/groups/", "webclient/api/experimenters/-1/",
        f"webclient/api/experimenters/{demo}/", "webclient/api/containers/",
        f"webclient/api/datasets/?id={project}", f"webclient/api/images/?id={dataset}",
        f"webclient/api/plates/?id={screen}", f"webclient/api/plate_acquisitions/?id={plate}",
        f"webclient/api/paths_to_object/?image={image}",
        f"webclient/api/paths_to_object/?well={well}",
        f"webclient/api/parent_links/?image={image}", "webclient/api/tags/",
        f"webclient/api/tags/?id={tag}", f"webclient/api/annotations/?type=map&image={image}",
        f"webclient/api/annotations/?type=file&dataset={dataset}",
        f"webclient/api/annotations/?type=tag&image={image}", "webclient/api/shares/",
        # the JSON API
        "api/", "api/v0/", "api/v0/servers/", "api/v0/token/",
        *(f"api/v0/m/{path}/" for path in (
            "projects", f"projects/{project}", f"projects/{project}/datasets", "datasets",
            f"datasets/{dataset}", f"datasets/{dataset}/images", f"datasets/{dataset}/projects",
            "images", f"images/{image}", f"images/{label}", f"images/{image}/datasets",
            f"images/{image}/rois", "screens", f"screens/{screen}", f"screens/{screen}/plates",
            "plates", f"plates/{plate}", f"plates/{plate}/wells", f"plates/{plate}/screens",
            f"plates/{plate}/plateacquisitions", "wells", f"wells/{well}",
            f"wells/{well}/plates", "rois", f"rois/{roi}", "shapes", f"shapes/{shape}",
            "experimenters", f"experimenters/{demo}", f"experimenters/{demo}/experimentergroups",
            "experimentergroups", f"experimentergroups/{group}",
            f"experimentergroups/{group}/experimenters")),
        # OMERO.iviewer
        f"iviewer/?images={image}", f"iviewer/?images={label}", f"iviewer/image_data/{image}/",
        f"iviewer/image_data/{image}/delta_t/", f"iviewer/roi/{roi}/image_data/",
        f"iviewer/shape/{shape}/image_data/", f"iviewer/roi/{roi}/page_data/",
        f"iviewer/shape/{shape}/page_data/", f"iviewer/well_images/?id={well}",
        f"iviewer/get_intensity/?image={image}&x=10&y=10&z=0&t=0&c=0,1",
        f"iviewer/shape_stats/?ids={shape}&z=0&t=0&c=0",
        f"iviewer/rois_by_plane/{image}/0/0/", f"iviewer/plane_shape_counts/{image}/",
    ]
    return [(page, 200) for page in ok] + [
        # OMERO.web's own answer, whatever the server: the emulator's images were not
        # imported from files, so they have no fileset and no archived original file
        # ("Tried downloading archived files from image with no files archived.").
        (f"webgateway/archived_files/download/{image}/", 500),
        # OMERO.web 5.33.2 passes its service options as searchObjects' ``created``
        # argument, which fails in omero-py before a query reaches any server.
        ("webgateway/search/?text=field", 500),
        # No such objects: a real server finds none either.
        ("webgateway/render_thumbnail/999999/", 404),
        ("api/v0/m/images/999999/", 404),
    ]


@pytest.fixture(scope="module")
def made_on(web_emulator: WebEmulator, web_ids: WebIds) -> datetime.date:
    """The day the label image was made, by the server's clock (its creation event), as
    OMERO.web's History and calendar count days: a run crossing midnight still finds it.

    The image is first moved a day back in the emulator's store, as if the fixtures had
    run before midnight and the crawl after it: the crawl must not assume "today".
    """
    emu = web_emulator.emulator
    with contextlib.closing(sqlite3.connect(Path(emu.data_dir) / "omero.sqlite",
                                            timeout=30)) as db, db:
        db.execute("UPDATE objects SET created = created - 86400 WHERE id = ?",
                   (web_ids.label_image,))
    conn = omero.gateway.BlitzGateway("demo", "demo", host=emu.host, port=emu.port)
    assert conn.connect()
    try:
        made: datetime.datetime = conn.getObject("Image", web_ids.label_image
                                                 ).creationEventDate()
        assert made.date() < datetime.date.today()
        return made.date()
    finally:
        conn.close()


@pytest.fixture(scope="module")
def tag(web_emulator: WebEmulator, web_ids: WebIds) -> int:
    """A tag of demo's on the demo image (through omero-py, as the webclient adds one)."""
    emu = web_emulator.emulator
    conn = omero.gateway.BlitzGateway("demo", "demo", host=emu.host, port=emu.port)
    assert conn.connect()
    try:
        tag = omero.gateway.TagAnnotationWrapper(conn)
        tag.setValue("crawl-test")
        tag.save()
        conn.getObject("Image", web_ids.image).linkAnnotation(tag)
        return int(tag.getId())
    finally:
        conn.close()


def test_every_page_from_the_demo_objects_answers_as_with_a_real_server_and_no_gap_is_logged(
        omero_web: OmeroWeb, web_emulator: WebEmulator, web_session: WebSession,
        web_ids: WebIds, tag: int, made_on: datetime.date) -> None:
    session = web_session()
    url = omero_web.url
    rois = session.get(url + f"api/v0/m/images/{web_ids.image}/rois/", timeout=60).json()
    shape = int(rois["data"][0]["shapes"][0]["@id"])
    [demo] = [e["@id"] for e in session.get(url + "api/v0/m/experimenters/", timeout=60)
              .json()["data"] if e["UserName"] == "demo"]
    groups = session.get(url + f"api/v0/m/experimenters/{demo}/experimentergroups/",
                         timeout=60).json()["data"]
    group = next(g["@id"] for g in groups if g["Name"] not in ("user", "system"))
    log = Path(web_emulator.emulator.data_dir) / "emulator.log"
    start = log.stat().st_size

    wrong: list[tuple[str, int, int, str]] = []
    answers: dict[str, bytes] = {}
    for page, expected in _pages(web_ids, tag, shape, demo, group, made_on):
        answer = session.get(url + page, timeout=120)
        answers[page] = answer.content
        if answer.status_code != expected:
            wrong.append((page, expected, answer.status_code, answer.text[:300]))
    with log.open("rb") as fh:
        fh.seek(start)
        gaps = [line for line in fh.read().decode(errors="replace").splitlines()
                if any(gap in line for gap in GAPS)]

    assert wrong == []
    assert gaps == []
    # A few answers read as a person would use them, not only their status.
    history = answers[_history(made_on)].decode()
    assert "field_01_nuclei" in history  # that day's History lists what the demo made
    csv = answers[f"webclient/omero_table/{web_ids.table_file}/csv/"].decode()
    assert len(csv.strip().splitlines()) == web_ids.table_rows + 1  # header + rows
    assert answers[f"webgateway/render_shape_thumbnail/{shape}/"][:3] == b"\xff\xd8\xff"
    with tifffile.TiffFile(io.BytesIO(answers[f"webgateway/render_ome_tiff/i/{web_ids.image}/"])
                           ) as tiff:
        assert tiff.is_ome
        assert tiff.series[0].shape == (2, 256, 256)  # the field's two channels
        assert "DAPI" in (tiff.ome_metadata or "")
        assert tiff.asarray().max() > 0  # the field's pixels, not an empty frame
    with zipfile.ZipFile(io.BytesIO(answers[f"webgateway/render_ome_tiff/d/{web_ids.dataset}/"])
                         ) as archive:  # one OME-TIFF per image of the dataset
        assert f"{web_ids.label_image}-field_01_nuclei.ome.tiff" in archive.namelist()
    well = web_ids.seeded["wells"]["A01"]  # type: ignore[index]
    samples = json.loads(answers[f"iviewer/well_images/?id={well}"])
    assert samples["meta"]["totalCount"] == 1  # one field per well, in well_index order
    assert samples["data"][0]["Name"].startswith("A01")


def test_exporter_refuses_as_omero_blitz_exporter_does(web_emulator: WebEmulator,
                                                       web_ids: WebIds) -> None:
    """ExporterI's state machine: one image per TIFF, no read before a generate method,
    no configuring once output has begun, reads of at most 1 MiB."""
    emu = web_emulator.emulator
    conn = omero.gateway.BlitzGateway("demo", "demo", host=emu.host, port=emu.port)
    assert conn.connect()
    try:
        two = conn.createExporter()
        two.addImage(web_ids.image)
        two.addImage(web_ids.label_image)
        with pytest.raises(omero.ApiUsageException) as many:
            two.generateTiff()
        assert many.value.message == "Only one image supported for TIFF, not 2"
        two.close()

        one = conn.createExporter()
        one.addImage(web_ids.image)
        with pytest.raises(omero.ApiUsageException) as early:
            one.read(0, 10)
        assert early.value.message == "Call a generate method first"
        size = one.generateTiff()
        with pytest.raises(omero.ApiUsageException) as during:
            one.addImage(web_ids.label_image)
        assert during.value.message == "Cannot configure during output"
        with pytest.raises(omero.ApiUsageException) as big:
            one.read(0, 1024 * 1024 + 1)
        assert big.value.message == "Max read size is: 1048576"
        assert one.read(0, 4) in (b"II*\x00", b"MM\x00*")
        assert len(one.read(size - 10, 100)) == 10  # a read past the end is cut short
        one.close()
    finally:
        conn.close()
