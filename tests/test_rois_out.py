"""CellProfiler objects go to OMERO as ROIs: one per object, exactly once, read back as
OMERO's own clients read them."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from cellprofiler_omero.core.roi_encoding import (
    LabelsLargerThanImage,
    check_fits,
    iter_objects,
    label_rois,
    pack_mask,
    parse_color,
    rgba_to_int,
    unpack_mask,
)
from cellprofiler_omero.core.roi_writing import estimated_bytes, plan_batches
from cellprofiler_omero.core.shapes import MaskShape, Plane, PolygonShape, ShapeKind


def grid_labels(rows: int, columns: int, cell: int = 12, seed: int = 0) -> np.ndarray:
    """``rows × columns`` objects of random sizes (some split in two, some with holes)."""
    rng = np.random.default_rng(seed)
    labels = np.zeros((rows * cell, columns * cell), np.int32)
    number = 0
    for r in range(rows):
        for c in range(columns):
            number += 1
            h, w = rng.integers(2, cell - 1, size=2)
            y, x = r * cell + 1, c * cell + 1
            labels[y:y + h, x:x + w] = number
            if number % 7 == 0 and h > 4 and w > 4:
                labels[y + h // 2, x + w // 2] = 0  # a hole
            if number % 11 == 0 and w > 5:
                labels[y:y + h, x + 2] = 0  # split in two parts
    return labels


def from_masks(rois: dict[int, Any], shape: tuple[int, ...]) -> np.ndarray:
    """The label image the Mask shapes describe (object number = the key of ``rois``)."""
    out = np.zeros(shape, np.int32)
    for number, roi in rois.items():
        for mask in roi.shapes:
            assert isinstance(mask, MaskShape)
            box = out[mask.y:mask.y + mask.height, mask.x:mask.x + mask.width]
            assert not np.any(box[mask.mask]), "objects overlap"
            box[mask.mask] = number
    return out


# -- the pure encoding ---------------------------------------------------------------------


def test_masks_reassemble_the_label_image_pixel_for_pixel() -> None:
    labels = grid_labels(12, 15)
    labels[labels == 5] = 0  # a missing number makes no ROI
    rois = label_rois(labels, 7, "Nuclei")
    assert list(rois) == [n for n in range(1, 12 * 15 + 1) if n != 5]
    assert np.array_equal(from_masks(rois, labels.shape), labels)
    roi = rois[3]
    assert roi.name == "Nuclei 3" and roi.image_id == 7
    assert roi.shapes[0].style.text == "Nuclei 3"
    assert roi.key is not None and len({r.key for r in rois.values()}) == len(rois)


def test_mask_bytes_are_what_omero_rois_makes() -> None:
    from omero_rois import mask_from_binary_image

    labels = grid_labels(4, 4, seed=3)
    for number, roi in label_rois(labels, 1, "Cells").items():
        theirs = mask_from_binary_image(labels == number)
        mask = roi.shapes[0]
        assert isinstance(mask, MaskShape)
        assert pack_mask(mask.mask) == bytes(theirs.getBytes())
        assert (mask.x, mask.y, mask.width, mask.height) == (
            theirs.getX().getValue(), theirs.getY().getValue(),
            theirs.getWidth().getValue(), theirs.getHeight().getValue())
        assert np.array_equal(unpack_mask(pack_mask(mask.mask), mask.width, mask.height),
                              mask.mask)


def test_polygons_outline_the_largest_part_within_the_tolerance() -> None:
    from skimage.draw import polygon as fill

    labels = np.zeros((40, 40), np.int32)
    labels[5:15, 5:25] = 1  # a rectangle
    labels[20:35, 10:30] = 2
    labels[20:35, 18] = 0  # split: the larger part (x 19–29) is outlined
    rois = label_rois(labels, 1, "Nuclei", kind=ShapeKind.POLYGON, tolerance=0.5)
    for number, expected in ((1, labels == 1), (2, (labels == 2) & (np.arange(40) > 18))):
        shape = rois[number].shapes[0]
        assert isinstance(shape, PolygonShape)
        xs = np.array([x for x, _ in shape.points])
        ys = np.array([y for _, y in shape.points])
        drawn = np.zeros_like(expected)
        drawn[fill(ys, xs, drawn.shape)] = True
        assert np.array_equal(drawn, expected)
    assert len(rois[1].shapes[0].points) == 4  # simplified to its corners


def test_volumes_give_one_shape_per_plane_on_that_plane() -> None:
    labels = np.zeros((3, 10, 10), np.uint16)
    labels[0, 1:3, 1:3] = 1
    labels[2, 4:8, 4:6] = 1
    labels[1, 5, 5] = 2
    rois = label_rois(labels, 9, "Nuclei", plane=Plane(z=None, t=2))
    assert [s.plane for s in rois[1].shapes] == [Plane(0, 2), Plane(2, 2)]
    assert [s.plane for s in rois[2].shapes] == [Plane(1, 2)]


def test_keys_change_with_the_object_and_stay_for_the_same_object() -> None:
    labels = grid_labels(3, 3)
    first = label_rois(labels, 1, "Nuclei")
    again = label_rois(labels.copy(), 1, "Nuclei")
    assert [r.key for r in first.values()] == [r.key for r in again.values()]
    changed = labels.copy()
    changed[changed == 2] = 0
    changed[1, 13] = 2
    moved = label_rois(changed, 1, "Nuclei")
    assert moved[2].key != first[2].key and moved[1].key == first[1].key
    assert label_rois(labels, 2, "Nuclei")[1].key != first[1].key
    assert label_rois(labels, 1, "Cells")[1].key != first[1].key


def test_labels_larger_than_the_image_are_refused_naming_both_sizes() -> None:
    with pytest.raises(LabelsLargerThanImage) as caught:
        label_rois(np.ones((20, 30), np.uint8), 4, "Nuclei", image_size=(25, 20, 1))
    assert caught.value.labels_size == (30, 20)
    assert caught.value.image_size == (25, 20)
    assert caught.value.image_id == 4
    assert "30×20" in caught.value.message and "25×20" in caught.value.message
    with pytest.raises(LabelsLargerThanImage):
        check_fits((3, 10, 10), 10, 10, 2)
    check_fits((2, 10, 10), 10, 10, 2)


def test_ten_thousand_objects_encode_in_one_pass_into_few_batches() -> None:
    labels = grid_labels(100, 100, cell=10)
    objects = list(iter_objects(labels))
    assert len(objects) == 10_000
    rois = list(label_rois(labels, 1, "Nuclei").values())
    batches = plan_batches(rois, 8 * 1024 * 1024, rois_per_call=1000)
    assert [len(b) for b in batches] == [1000] * 10
    small = plan_batches(rois, 64 * 1024)
    assert all(sum(estimated_bytes(r) for r in b) <= 64 * 1024 for b in small)
    assert [r for b in small for r in b] == rois


def test_colours_are_omeros_signed_rgba() -> None:
    assert rgba_to_int(255, 0, 0) == -16776961  # what OMERO.web stores for opaque red
    assert parse_color("#00FF00") == 0x00FF00FF
    with pytest.raises(ValueError):
        parse_color("green")
