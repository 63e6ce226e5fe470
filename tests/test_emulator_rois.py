"""ROIs in the emulator, through OMERO's own unmodified clients (ezomero, omero-rois,
BlitzGateway): saved with real ids, read back field for field and mask byte for mask
byte, found by IRoi and HQL, refused where a real server refuses, deleted with their
image, kept across a restart."""

from __future__ import annotations

from typing import Any

import ezomero
import numpy as np
import omero
import omero.cmd
import omero_rois
import pytest
from omero.gateway import BlitzGateway
from omero.model import ImageI, MaskI, RectangleI, RoiI
from omero.rtypes import rdouble, rint, rstring
from omero.sys import ParametersI


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

    # Paging as RoiOptions asks (ordered by ROI id).
    opts = omero.api.RoiOptions(offset=rint(1), limit=rint(1))
    page = conn.getRoiService().findByImage(image_id, opts, conn.SERVICE_OPTS)
    assert [r.getId().getValue() for r in page.rois] == [saved[1].getId().getValue()]

    # Statistics over the image's plane: the mask covers exactly the label's pixels.
    stats = conn.getRoiService().getShapeStatsRestricted(
        [saved_masks[1].getId().getValue()], 0, 0, [0], conn.SERVICE_OPTS)
    assert stats[0].pointsCount == [int((labels == 2).sum())]


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
