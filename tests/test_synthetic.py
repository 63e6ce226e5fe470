"""Synthetic demo images: shapes, determinism, and that the fluorescence data segments."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Callable

import numpy as np
import pytest

from cellprofiler_omero.emulator import synthetic

SMALL: dict[str, Callable[[int], np.ndarray]] = {
    "nuclei_and_cells": lambda seed: synthetic.nuclei_and_cells(seed, 256, 6)[0],
    "z_stack": lambda seed: synthetic.z_stack(seed, 64, 4, 3),
    "rgb": lambda seed: synthetic.rgb(seed, 64),
    "large": lambda seed: synthetic.large(seed, 1100),
    "plate_field": lambda seed: synthetic.plate_field(seed, 1, 2, 0, 64),
}


def otsu_threshold(image: np.ndarray, bins: int = 1024) -> float:
    """Otsu's threshold: the histogram cut maximising between-class variance."""
    hist, edges = np.histogram(image, bins=bins)
    centres = (edges[:-1] + edges[1:]) / 2
    w0 = np.cumsum(hist).astype(np.float64)
    w1 = w0[-1] - w0
    m0 = np.cumsum(hist * centres)
    with np.errstate(divide="ignore", invalid="ignore"):
        between = (m0[-1] * w0 / w0[-1] - m0) ** 2 / (w0 * w1)
    return float(centres[np.nanargmax(between)])


@pytest.fixture(scope="module")
def field() -> tuple[np.ndarray, np.ndarray]:
    return synthetic.nuclei_and_cells(7)


def test_nuclei_and_cells_shapes_and_dtypes(field: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, labels = field
    assert pixels.shape == (2, 1024, 1024)
    assert pixels.dtype == np.uint16
    assert labels.shape == (1024, 1024)
    assert labels.dtype == np.uint16


def test_other_functions_shapes_and_dtypes() -> None:
    assert synthetic.z_stack(0, 64, 5, 2).shape == (5, 2, 64, 64)
    assert synthetic.z_stack(0).dtype == np.uint16
    assert synthetic.z_stack(0).shape == (8, 3, 256, 256)
    image = synthetic.rgb(0, 96)
    assert (image.shape, image.dtype) == ((3, 96, 96), np.uint8)
    plate = synthetic.plate_field(0, 0, 0, 0)
    assert (plate.shape, plate.dtype) == ((2, 256, 256), np.uint16)


def test_large_shape_and_dtype_at_2048() -> None:
    image = synthetic.large(3, 2048)
    assert (image.shape, image.dtype) == ((2048, 2048), np.uint16)
    assert image.max() > 1000  # it holds bright nuclei, not just background


def test_large_handles_sizes_that_are_not_a_tile_multiple() -> None:
    assert synthetic.large(3, 1100).shape == (1100, 1100)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_gives_same_bytes(name: str) -> None:
    make = SMALL[name]
    assert make(11).tobytes() == make(11).tobytes()


@pytest.mark.parametrize("name", sorted(SMALL))
def test_different_seed_gives_different_bytes(name: str) -> None:
    make = SMALL[name]
    assert make(11).tobytes() != make(12).tobytes()


def test_every_type_is_deterministic_per_seed() -> None:
    first, again, other = (synthetic.every_type(s) for s in (5, 5, 6))
    for name in synthetic.PIXEL_TYPES:
        assert first[name].tobytes() == again[name].tobytes()
    assert any(first[n].tobytes() != other[n].tobytes() for n in synthetic.PIXEL_TYPES)


def test_output_is_identical_in_a_fresh_interpreter() -> None:
    code = (
        "import hashlib; from cellprofiler_omero.emulator import synthetic as s; "
        "print(hashlib.sha256(s.nuclei_and_cells(42, 256, 5)[0].tobytes()).hexdigest())"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    here = hashlib.sha256(synthetic.nuclei_and_cells(42, 256, 5)[0].tobytes()).hexdigest()
    assert out.stdout.strip() == here


def test_labels_are_consecutive_and_count_is_sensible(
    field: tuple[np.ndarray, np.ndarray],
) -> None:
    _, labels = field
    distinct = np.unique(labels[labels > 0])
    assert distinct.tolist() == list(range(1, int(labels.max()) + 1))
    assert 60 <= distinct.size <= 120


def test_nuclei_have_plausible_sizes(field: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = field
    areas = np.bincount(labels.ravel())[1:]
    # Between an ellipse with semi-axes 8 x 5 and a disc of radius 20 (plus ripple).
    assert areas.min() > 100
    assert areas.max() < np.pi * 22**2


def test_nuclei_do_not_touch(field: tuple[np.ndarray, np.ndarray]) -> None:
    _, labels = field
    for a, b in ((labels[:, 1:], labels[:, :-1]), (labels[1:, :], labels[:-1, :])):
        assert not np.any((a > 0) & (b > 0) & (a != b))


def test_n_cells_is_honoured_when_there_is_room() -> None:
    _, labels = synthetic.nuclei_and_cells(1, 512, 25)
    assert labels.max() == 25


def test_default_cell_count_scales_with_area() -> None:
    small = synthetic.nuclei_and_cells(2, 512)[1].max()
    big = synthetic.nuclei_and_cells(2, 1024)[1].max()
    assert 2 * small < big


def test_otsu_on_dapi_recovers_the_nucleus_mask(field: tuple[np.ndarray, np.ndarray]) -> None:
    pixels, labels = field
    foreground = pixels[0] > otsu_threshold(pixels[0])
    truth = labels > 0
    iou = (foreground & truth).sum() / (foreground | truth).sum()
    assert iou > 0.7


def test_otsu_on_dapi_finds_about_the_right_number_of_nuclei(
    field: tuple[np.ndarray, np.ndarray],
) -> None:
    from scipy import ndimage  # installed with CellProfiler
    pixels, labels = field
    _, found = ndimage.label(pixels[0] > otsu_threshold(pixels[0]))
    assert abs(found - int(labels.max())) <= 0.1 * labels.max()


def test_cytoplasm_is_dimmer_than_nuclei_and_brighter_than_background(
    field: tuple[np.ndarray, np.ndarray],
) -> None:
    pixels, labels = field
    dapi, cyto = pixels.astype(np.float64)
    nuclear_dapi = dapi[labels > 0].mean()
    near = np.zeros_like(labels, dtype=bool)
    for shift in (6, -6):
        near |= np.roll(labels, shift, axis=1) > 0  # just outside a nucleus: cytoplasm
    ring = near & (labels == 0)
    far = cyto[labels == 0]
    assert cyto[ring].mean() < nuclear_dapi
    assert cyto[ring].mean() > np.percentile(far, 25) + 100


def test_z_stack_cross_sections_vary_with_z() -> None:
    stack = synthetic.z_stack(4).astype(np.float64)
    per_plane = stack[:, 0].sum(axis=(1, 2))
    assert per_plane.max() > 1.2 * per_plane.min()


def test_z_stack_channels_show_different_patterns() -> None:
    stack = synthetic.z_stack(4).astype(np.float64)
    middle = stack[stack.shape[0] // 2]
    for i in range(3):
        for j in range(i + 1, 3):
            assert np.corrcoef(middle[i].ravel(), middle[j].ravel())[0, 1] < 0.9


def test_rgb_is_pink_with_purple_nuclei() -> None:
    red, green, blue = synthetic.rgb(0).astype(np.float64)
    assert red.mean() > green.mean()  # eosin pink overall
    purple = (blue > red) & (green < 150)
    assert 0.02 < purple.mean() < 0.5


def test_every_type_covers_the_nine_omero_pixel_types() -> None:
    planes = synthetic.every_type(0)
    expected = {
        "int8": np.int8, "uint8": np.uint8, "int16": np.int16, "uint16": np.uint16,
        "int32": np.int32, "uint32": np.uint32, "float": np.float32, "double": np.float64,
        "bit": np.bool_,
    }
    assert set(planes) == set(expected) == set(synthetic.PIXEL_TYPES)
    for name, dtype in expected.items():
        assert planes[name].dtype == dtype, name
        assert planes[name].shape == (64, 64), name


@pytest.mark.parametrize("name", ["int8", "uint8", "int16", "uint16", "int32", "uint32"])
def test_every_type_integer_planes_hit_both_extremes(name: str) -> None:
    plane = synthetic.every_type(0)[name]
    info = np.iinfo(plane.dtype)
    assert plane.min() == info.min
    assert plane.max() == info.max
    if info.min < 0:
        assert (plane < 0).any() and (plane > 0).any()


@pytest.mark.parametrize("name", ["float", "double"])
def test_every_type_float_planes_are_signed_and_fractional(name: str) -> None:
    plane = synthetic.every_type(0)[name]
    assert plane.min() < 0 < plane.max()
    assert np.isfinite(plane).all()
    assert (plane != np.round(plane)).mean() > 0.9


def test_every_type_bit_plane_has_both_values() -> None:
    plane = synthetic.every_type(0)["bit"]
    assert plane.any() and not plane.all()


def test_plate_field_differs_across_columns() -> None:
    assert (
        synthetic.plate_field(0, 0, 0, 0).tobytes() != synthetic.plate_field(0, 0, 11, 0).tobytes()
    )


def test_plate_field_shows_a_dose_response_across_columns() -> None:
    def foreground(column: int) -> float:
        dapi = np.stack([synthetic.plate_field(0, 2, column, f)[0] for f in range(3)])
        return float((dapi > 1000).mean())

    assert foreground(0) > 2 * foreground(11)
