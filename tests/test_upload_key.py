"""The exactly-once content key of an upload (``core.uploading.content_key``)."""

from __future__ import annotations

import numpy as np

from cellprofiler_omero.core.uploading import content_key


def _key(array: np.ndarray, **changes: object) -> str:
    args: dict[str, object] = {"name": "nuclei.tif", "dataset_id": 5, "axes": "YX",
                               "source_image_ids": [1, 2]}
    args.update(changes)
    return content_key(array, **args)  # type: ignore[arg-type]


def test_the_same_image_saved_again_gets_the_same_key() -> None:
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    assert _key(pixels) == _key(pixels.copy())
    # Memory layout is not content: a Fortran-ordered copy is the same image.
    assert _key(pixels) == _key(np.asfortranarray(pixels))
    assert len(_key(pixels)) == 64 and int(_key(pixels), 16) >= 0


def test_any_change_of_pixels_or_destination_makes_a_new_key() -> None:
    pixels = np.arange(12, dtype=np.uint16).reshape(3, 4)
    changed = pixels.copy()
    changed[0, 0] += 1
    base = _key(pixels)
    variants = [
        _key(changed),
        _key(pixels.astype(np.uint8)),
        _key(pixels.reshape(4, 3)),
        _key(pixels, name="other.tif"),
        _key(pixels, dataset_id=6),
        _key(pixels, dataset_id=None),
        _key(pixels, source_image_ids=[1]),
        _key(pixels, axes="XY"),
    ]
    assert base not in variants
    assert len(set(variants)) == len(variants)


def test_the_key_is_stable_across_releases() -> None:
    # Reruns of a pipeline made with an earlier release must find the images it saved
    # (the value is what SaveImagesToOMERO computed before the key had a name).
    pixels = np.zeros((2, 2), dtype=np.uint8)
    assert _key(pixels) == \
        "05550ddd3d28390c0dec5f1e6ba06516fa00af527ec0489244b6feeeca8a5e8d"
