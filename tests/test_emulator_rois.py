"""ROIs in the emulator, through OMERO's own unmodified clients (ezomero, omero-rois,
BlitzGateway): saved with real ids, read back field for field and mask byte for mask
byte, found by IRoi and HQL, refused where a real server refuses, deleted with their
image, kept across a restart."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import ezomero
import numpy as np
import omero
import omero.cmd
import omero_rois
import pytest
from omero.gateway import BlitzGateway
from omero.model import CommentAnnotationI, ImageI, MaskI, RectangleI, RoiI
from omero.rtypes import rdouble, rint, rlong, rstring
from omero.sys import ParametersI

from cellprofiler_omero.emulator import Emulator, SeedOptions
from cellprofiler_omero.emulator.store import READ_ONLY, Store


def _image(conn: BlitzGateway, name: str, plane: np.ndarray, sizes: tuple[int, int] = (1, 1)
           ) -> int:
    """A new image of ``plane`` repeated over Z × T (one channel)."""
    size_z, size_t = sizes
    planes = (plane for _t in range(size_t) for _z in range(size_z))
    image = conn.createImageFromNumpySeq(planes, name, sizeZ=size_z, sizeC=1, sizeT=size_t)
    return int(image.getId())


def _labels() -> np.ndarray:
    """Three objects, one touching another, one at the image's corner."""
    labels = np.zeros((40, 50), dtype=np.int32)
    labels[2:9, 3:15] = 1
    labels[9:20, 10:13] = 2
    yy, xx = np.mgrid[0:40, 0:50]
    labels[(yy - 30) ** 2 + (xx - 40) ** 2 <= 30] = 3
    labels[39, 49] = 3
    return labels


def test_ezomero_shapes_come_back_field_for_field(blitz: Any) -> None:
    conn = blitz()
    image_id = _image(conn, "roi shapes", np.zeros((32, 32), dtype=np.uint8), (2, 3))
    # Colours and widths given, since ezomero's get_shape fills in defaults for unset ones.
    style = {"fill_color": (0, 255, 0, 128), "stroke_color": (255, 0, 0, 255),
             "stroke_width": 2.0}
    shapes = [
        ezomero.rois.Point(4.5, 5.25, z=1, c=0, t=2, label="a point", **style),
        ezomero.rois.Rectangle(1.0, 2.0, 10.5, 6.0, z=0, t=1, label="box", **style),
        ezomero.rois.Ellipse(16.0, 12.0, 5.0, 3.5, label="oval", **style),
        ezomero.rois.Polygon([(1.0, 1.0), (20.0, 1.5), (10.25, 15.0)], z=1, label="tri",
                             **style),
        ezomero.rois.Line(0.0, 0.0, 31.0, 31.0, markerEnd="Arrow", t=0, **style),
        ezomero.rois.Polyline([(2.0, 3.0), (4.0, 5.0), (6.0, 3.0)], **style),
        ezomero.rois.Label(8.0, 9.0, label="text", fontSize=14.0, **style),
    ]
    roi_id = ezomero.post_roi(conn, image_id, shapes, name="cell 1", description="drawn")

    assert ezomero.get_roi_ids(conn, image_id) == [roi_id]
    shape_ids = ezomero.get_shape_ids(conn, roi_id)
    assert len(shape_ids) == len(shapes) and len(set(shape_ids)) == len(shapes)
    assert roi_id not in shape_ids  # every shape has an id of its own
    assert [ezomero.get_shape(conn, sid) for sid in shape_ids] == shapes

    roi = conn.getObject("Roi", roi_id)
    assert (roi.getName(), roi.getDescription()) == ("cell 1", "drawn")
    assert roi._obj.getImage().getId().getValue() == image_id
    counts = conn.getQueryService().projection(
        "select count(r), r.image.id from Roi r where r.image.id in (:ids) group by r.image.id",
        ParametersI().addIds([image_id]), conn.SERVICE_OPTS)
    assert [[c.val for c in row] for row in counts] == [[1, image_id]]
    by_kind = conn.getQueryService().projection(
        "select s.id, s.textValue from Shape s where s.roi.image.id = :id and s.theZ = 1 "
        "order by s.id", ParametersI().addId(image_id), conn.SERVICE_OPTS)
    assert [row[1].val for row in by_kind] == ["a point", "tri"]


def test_masks_from_a_label_image_round_trip_through_omero_rois(blitz: Any) -> None:
    conn = blitz()
    labels = _labels()
    image_id = _image(conn, "roi masks", np.zeros(labels.shape, dtype=np.uint16))
    masks = omero_rois.masks_from_label_image(labels, rgba=(255, 0, 255, 128), z=0, c=0,
                                              t=0, text="nuclei")
    rois = []
    for number, mask in enumerate(masks, start=1):
        roi = RoiI()
        roi.setImage(ImageI(image_id, False))
        roi.setName(rstring(f"nuclei {number}"))
        roi.addShape(mask)
        rois.append(roi)
    tag = CommentAnnotationI()
    tag.setNs(rstring("example.org/segmentation"))
    tag.setTextValue(rstring("from a label image"))
    rois[0].linkAnnotation(tag)
    saved = conn.getUpdateService().saveAndReturnArray(rois, conn.SERVICE_OPTS)
    saved_masks = [r.copyShapes()[0] for r in saved]
    assert all(m.getId() is not None for m in saved_masks)
    assert [m.getBytes() for m in saved_masks] == [bytes(m.getBytes()) for m in masks]

    result = conn.getRoiService().findByImage(image_id, None, conn.SERVICE_OPTS)
    assert [r.getId().getValue() for r in result.rois] == [r.getId().getValue()
                                                           for r in saved]
    found = [s for r in result.rois for s in r.copyShapes()]
    read_back, colours, properties = omero_rois.masks_to_labels(
        found, (1, 1, 1, *labels.shape))
    assert np.array_equal(read_back[0, 0, 0], labels)
    assert set(properties) == {1, 2, 3}
    assert properties[1]["omero:text"] == "nuclei"
    assert colours[2] == masks[1].getFillColor().getValue()
    assert [unwrap_z for unwrap_z in result.byZ] == [0]
    assert len(result.byZ[0]) == 3

    # An annotation that came inside a ROI is linked to it (namespaces of ROIs).
    namespaces = conn.getQueryService().projection(
        "select l.parent.id, a.ns from RoiAnnotationLink l join l.child a "
        "where l.parent.id in (:ids)", ParametersI().addIds([r.getId() for r in saved]),
        conn.SERVICE_OPTS)
    assert [[v.val for v in row] for row in namespaces] == [
        [saved[0].getId().getValue(), "example.org/segmentation"]]

    # Paging as RoiOptions asks (ordered by ROI id).
    opts = omero.api.RoiOptions(offset=rint(1), limit=rint(1))
    page = conn.getRoiService().findByImage(image_id, opts, conn.SERVICE_OPTS)
    assert [r.getId().getValue() for r in page.rois] == [saved[1].getId().getValue()]

    # HQL over the ROI's owner.
    owned = conn.getQueryService().projection(
        "select count(r) from Roi r where r.image.id = :id and r.details.owner.id = :uid",
        ParametersI().addId(image_id).addLong("uid", conn.getUserId()), conn.SERVICE_OPTS)
    assert owned[0][0].val == 3

    # Statistics over the image's plane: the mask covers exactly the label's pixels.
    stats = conn.getRoiService().getShapeStatsRestricted(
        [saved_masks[1].getId().getValue()], 0, 0, [0], conn.SERVICE_OPTS)
    assert stats[0].pointsCount == [int((labels == 2).sum())]
    roi_stats = conn.getRoiService().getRoiStats(saved[2].getId().getValue(),
                                                 conn.SERVICE_OPTS)
    assert (roi_stats.imageId, roi_stats.combined.pointsCount) == (
        image_id, [int((labels == 3).sum())])


def test_ten_thousand_single_mask_rois_save_in_one_call(blitz: Any) -> None:
    conn = blitz()
    image_id = _image(conn, "many rois", np.zeros((200, 200), dtype=np.uint8))
    rois = []
    for index in range(10_000):
        mask = MaskI()
        mask.setX(rdouble(index % 100 * 2))
        mask.setY(rdouble(index // 100 * 2))
        mask.setWidth(rdouble(2))
        mask.setHeight(rdouble(2))
        mask.setBytes(bytes([0b11110000]))
        roi = RoiI()
        roi.setImage(ImageI(image_id, False))
        roi.addShape(mask)
        rois.append(roi)
    ids = conn.getUpdateService().saveAndReturnIds(rois, conn.SERVICE_OPTS)
    assert len(set(ids)) == 10_000
    count = conn.getQueryService().projection(
        "select count(s) from Shape s where s.roi.image.id = :id",
        ParametersI().addId(image_id), conn.SERVICE_OPTS)
    assert count[0][0].val == 10_000
    conn.deleteObjects("Image", [image_id], wait=True)
    left = conn.getQueryService().projection(
        "select count(r) from Roi r where r.image.id = :id", ParametersI().addId(image_id),
        conn.SERVICE_OPTS)
    assert left[0][0].val == 0


def test_a_roi_on_an_image_the_user_cannot_see_is_refused(blitz: Any, seeded: Any) -> None:
    conn = blitz("demo")
    roi = RoiI()
    roi.setImage(ImageI(seeded["other_image"], False))
    roi.addShape(RectangleI())
    with pytest.raises(omero.ApiUsageException):
        conn.getUpdateService().saveAndReturnObject(roi, conn.SERVICE_OPTS)


# -- permissions and persistence: an emulator of this module's own ------------------------

_SMALL = SeedOptions(seed=1, fields=1, field_size=64, large_size=256, plate_rows=1,
                     plate_columns=1, plate_fields=1, plate_field_size=32)


@pytest.fixture(scope="module")
def own_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """An emulator with a read-only group ``readonly`` of demo and other (the seed has
    none); the last test restarts it."""
    data = tmp_path_factory.mktemp("rois")
    emu = Emulator(data, seed_options=_SMALL)
    emu.start()
    emu.stop()
    store = Store(data / "omero.sqlite")
    group = store.add_group("readonly", READ_ONLY)
    for name in ("demo", "other"):
        user = store.user_by_name(name)
        assert user is not None
        store.add_member(group.id, user.id)
    store.close()
    emu.restart()
    try:
        yield emu
    finally:
        emu.close()


def _connect(emu: Emulator, user: str) -> BlitzGateway:
    conn = BlitzGateway(user, user, host=emu.host, port=emu.port)
    assert conn.connect(), conn.getLastError()
    conn.SERVICE_OPTS.setOmeroGroup(-1)
    return conn


def _mask_roi(image_id: int, name: str) -> RoiI:
    roi = RoiI()
    roi.setImage(ImageI(image_id, False))
    roi.setName(rstring(name))
    roi.addShape(omero_rois.mask_from_binary_image(_labels() == 1, text=name))
    return roi


def _roi_count(conn: BlitzGateway, image_id: int) -> int:
    rows = conn.getQueryService().projection(
        "select count(r) from Roi r where r.image.id = :id", ParametersI().addId(image_id),
        conn.SERVICE_OPTS)
    return int(rows[0][0].val)


def test_rois_follow_the_image_groups_rules_and_a_refusal_saves_nothing(
        own_emulator: Emulator) -> None:
    demo, other = _connect(own_emulator, "demo"), _connect(own_emulator, "other")
    try:
        groups = {g.getName(): g.getId() for g in demo.getGroupsMemberOf()}
        demo.SERVICE_OPTS.setOmeroGroup(groups["readonly"])
        locked = _image(demo, "read-only image", np.zeros((40, 50), dtype=np.uint8))
        demo.SERVICE_OPTS.setOmeroGroup(groups["shared"])
        annotatable = _image(demo, "read-annotate image", np.zeros((40, 50), dtype=np.uint8))
        demo.SERVICE_OPTS.setOmeroGroup(-1)

        # Read-annotate: another member may draw on demo's image; the ROI is in its group.
        theirs = other.getUpdateService().saveAndReturnObject(
            _mask_roi(annotatable, "by other"), other.SERVICE_OPTS)
        assert theirs.getDetails().getGroup().getId().getValue() == groups["shared"]
        assert theirs.getDetails().getOwner().getId().getValue() == other.getUserId()

        # Read-only: refused as OmeroInterceptor refuses the link, and the whole call
        # (including the ROI that was allowed) leaves nothing behind.
        with pytest.raises(omero.SecurityViolation) as refused:
            other.getUpdateService().saveAndReturnArray(
                [_mask_roi(annotatable, "allowed"), _mask_roi(locked, "refused")],
                other.SERVICE_OPTS)
        assert refused.value.message == (
            f"Group is rwr---. Cannot link to object: ome.model.core.Image:Id_{locked}")
        assert (_roi_count(demo, locked), _roi_count(demo, annotatable)) == (0, 1)

        # A ROI is made in the call's group: an image of another group cannot take it.
        in_own_group = {"omero.group": str(other.getEventContext().groupId)}
        with pytest.raises(omero.GroupSecurityViolation, match="MIXED GROUP"):
            other.getUpdateService().saveObject(_mask_roi(annotatable, "mixed"),
                                                in_own_group)
        assert _roi_count(demo, annotatable) == 1

        # The owner may; RoiOptions.userId picks one user's ROIs.
        mine = demo.getUpdateService().saveAndReturnObject(_mask_roi(annotatable, "by demo"),
                                                           demo.SERVICE_OPTS)
        found = demo.getRoiService().findByImage(
            annotatable, omero.api.RoiOptions(userId=rlong(other.getUserId())),
            demo.SERVICE_OPTS)
        assert [r.getName().getValue() for r in found.rois] == ["by other"]
        # BlitzGateway's own ROI query: "join fetch obj.shapes" with an image filter.
        rois = list(demo.getObjects("Roi", opts={"image": annotatable, "load_shapes": True}))
        assert sorted(r.getName() for r in rois) == ["by demo", "by other"]
        assert all(len(r._obj.copyShapes()) == 1 for r in rois)

        # Another user may not delete demo's ROI; demo may, and its shapes go with it.
        shape_id = mine.copyShapes()[0].getId().getValue()
        handle = other.c.sf.submit(omero.cmd.Delete2(
            targetObjects={"Roi": [mine.getId().getValue()]}), other.SERVICE_OPTS)
        response = handle.getResponse()
        assert isinstance(response, omero.cmd.GraphException)
        demo.deleteObjects("Roi", [mine.getId().getValue()], wait=True)
        assert demo.getObject("Shape", shape_id) is None
        assert _roi_count(demo, annotatable) == 1
    finally:
        demo.close()
        other.close()


def test_rois_are_deleted_with_their_image_and_survive_a_restart(
        own_emulator: Emulator) -> None:
    conn = _connect(own_emulator, "demo")
    kept = _image(conn, "kept", np.zeros((40, 50), dtype=np.uint8))
    gone = _image(conn, "gone", np.zeros((40, 50), dtype=np.uint8))
    saved = conn.getUpdateService().saveAndReturnArray(
        [_mask_roi(kept, "kept"), _mask_roi(gone, "gone")], conn.SERVICE_OPTS)
    gone_shape = saved[1].copyShapes()[0].getId().getValue()
    handle = conn.c.sf.submit(omero.cmd.Delete2(targetObjects={"Image": [gone]}),
                              conn.SERVICE_OPTS)
    deleted = handle.getResponse().deletedObjects
    assert deleted["ome.model.roi.Roi"] == [saved[1].getId().getValue()]
    assert deleted["ome.model.roi.Mask"] == [gone_shape]
    conn.close()

    own_emulator.restart()
    conn = _connect(own_emulator, "demo")
    try:
        result = conn.getRoiService().findByImage(kept, None, conn.SERVICE_OPTS)
        assert [r.getName().getValue() for r in result.rois] == ["kept"]
        mask = result.rois[0].copyShapes()[0]
        assert mask.getBytes() == saved[0].copyShapes()[0].getBytes()
        assert mask.getTextValue().getValue() == "kept"
        assert _roi_count(conn, gone) == 0
        assert conn.getObject("Shape", gone_shape) is None
    finally:
        conn.close()
