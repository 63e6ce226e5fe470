"""OMEROReader against the emulator: CellProfiler 5's reader contract, case by case."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest

from cellprofiler_omero.core import session as core_session
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.emulator import Emulator, synthetic
from tests.conftest import TEST_SEED, run

pytestmark = pytest.mark.cellprofiler


@pytest.fixture
def cp_manager(settings_for: Any, cellprofiler_plugins: None) -> Iterator[SessionManager]:
    """The process-wide manager CellProfiler code uses, logged in as demo."""
    import cellprofiler_core.preferences as preferences

    preferences.set_headless()
    from cellprofiler_omero.cp_integration import compat

    compat.install()
    mgr = SessionManager(settings_for(reader__cache_mib=64))
    run(lambda: mgr.connect(user="demo", password="demo"))
    core_session.set_manager(mgr)
    yield mgr
    core_session.set_manager(None)
    run(mgr.close)


def reader_for(url: str) -> Any:
    from cellprofiler_core.pipeline import ImageFile

    from cellprofiler_omero.cp_integration.reader import OMEROReader

    return OMEROReader(ImageFile(url))


def fields(index: int) -> np.ndarray:
    pixels, _ = synthetic.nuclei_and_cells(TEST_SEED.seed * 1000 + index, TEST_SEED.field_size)
    return pixels


# -- claiming -----------------------------------------------------------------------------

@pytest.mark.parametrize("url", [
    "omero:iid=3",
    "https://omero.example.org/webclient/?show=image-3",
    "https://omero.example.org/webclient/img_detail/3",
    "https://omero.example.org/iviewer/?images=3",
    "https://omero.example.org/webgateway/render_image/3/0/0/",
])
def test_supports_format_claims_image_references_first(url: str) -> None:
    from cellprofiler_core.pipeline import ImageFile

    from cellprofiler_omero.cp_integration.reader import OMEROReader

    assert OMEROReader.supports_format(ImageFile(url)) == 1


@pytest.mark.parametrize("url", [
    "https://example.org/images/x.tif",
    "file:///data/plate/A01.tif",
    "https://omero.example.org/webclient/?show=dataset-3",
    "https://omero.example.org/webclient/?show=image-1|image-2",
])
def test_supports_format_leaves_other_files_to_other_readers(url: str) -> None:
    from cellprofiler_core.pipeline import ImageFile

    from cellprofiler_omero.cp_integration.reader import OMEROReader

    assert OMEROReader.supports_format(ImageFile(url)) == -1


def test_reader_reads_urls_directly() -> None:
    from cellprofiler_omero.cp_integration.reader import OMEROReader

    assert OMEROReader.supports_url() is True


def test_omero_scheme_is_passed_through_not_downloaded(cellprofiler_plugins: None) -> None:
    # CellProfiler configured first, as it always is before plugins load: without it,
    # compat.install() imports the Images module in a process with neither wx nor
    # headless mode, that import fails half way, and later imports of
    # cellprofiler_core.modules.* in the same process fail too.
    from cellprofiler_core.constants.image import PASSTHROUGH_SCHEMES
    from cellprofiler_core.utilities.pathname import pathname2url

    from cellprofiler_omero.cp_integration import compat

    compat.install()
    assert "omero" in PASSTHROUGH_SCHEMES
    assert pathname2url("omero:iid=3") == "omero:iid=3"


def test_images_only_filter_keeps_omero_links(cellprofiler_plugins: None) -> None:
    import importlib

    images_module = importlib.import_module("cellprofiler_core.modules.images")

    from cellprofiler_omero.cp_integration import compat

    compat.install()
    assert images_module.is_image("https://omero.example.org/webclient/?show=image-3")
    assert images_module.is_image("/data/a.tif")
    assert not images_module.is_image("/data/notes.txt")


def test_reader_settings_appear_under_configure_readers() -> None:
    from cellprofiler_omero.cp_integration.reader import OMEROReader

    keys = [key for key, *_ in OMEROReader.get_settings()]
    assert keys == ["use_tokens", "show_token_message", "transports"]
    defaults = {key: default for key, _, _, _, default in OMEROReader.get_settings()}
    assert defaults["use_tokens"] is True and defaults["show_token_message"] is True


# -- reading ------------------------------------------------------------------------------

def test_one_channel_reads_as_yx_in_raw_dtype(cp_manager: SessionManager,
                                              seeded: dict[str, Any]) -> None:
    reader = reader_for(f"omero:iid={seeded['fields'][0]}")
    data = reader.read(c=1)
    assert data.dtype == np.uint16 and data.shape == (512, 512)
    np.testing.assert_array_equal(data, fields(0)[1])
    reader.close()


def test_all_channels_read_as_yxc_with_names(cp_manager: SessionManager,
                                            seeded: dict[str, Any]) -> None:
    reader = reader_for(f"https://127.0.0.1/webclient/?show=image-{seeded['fields'][1]}")
    names: list[str] = []
    data = reader.read(c=None, channel_names=names)
    assert data.shape == (512, 512, 2)
    np.testing.assert_array_equal(np.moveaxis(data, -1, 0), fields(1))
    assert names == ["DAPI", "Cytoplasm"]
    reader.close()


def test_single_channel_image_without_c_reads_as_yx(cp_manager: SessionManager,
                                                    seeded: dict[str, Any]) -> None:
    reader = reader_for(f"omero:iid={seeded['types']['uint16']}")
    assert reader.read().shape == (64, 64)
    reader.close()


def test_region_is_read_with_xywh(cp_manager: SessionManager, seeded: dict[str, Any]) -> None:
    reader = reader_for(f"omero:iid={seeded['fields'][0]}")
    data = reader.read(c=0, xywh=(10, 20, 30, 40))
    np.testing.assert_array_equal(data, fields(0)[0, 20:60, 10:40])
    reader.close()


def test_index_walks_planes_in_xyzct_order(cp_manager: SessionManager,
                                           seeded: dict[str, Any]) -> None:
    stack = synthetic.z_stack(TEST_SEED.seed, 256, 8, 3)  # (Z, C, Y, X)
    reader = reader_for(f"omero:iid={seeded['zstack']}")
    for index, (z, c) in {0: (0, 0), 1: (1, 0), 7: (7, 0), 8: (0, 1), 23: (7, 2)}.items():
        np.testing.assert_array_equal(reader.read(index=index), stack[z, c])
    reader.close()


@pytest.mark.parametrize("ptype,expected", [
    ("uint8", (0.0, 255.0)), ("uint16", (0.0, 65535.0)), ("int16", (-32768.0, 32767.0)),
    ("int8", (-128.0, 127.0)), ("float", None), ("bit", (0.0, 1.0)),
])
def test_rescale_range_comes_from_the_pixel_type(cp_manager: SessionManager,
                                                 seeded: dict[str, Any], ptype: str,
                                                 expected: tuple[float, float] | None) -> None:
    reader = reader_for(f"omero:iid={seeded['types'][ptype]}")
    data, scale = reader.read(wants_metadata_rescale=True)
    assert scale == expected
    raw = synthetic.every_type(TEST_SEED.seed, 64)[ptype]
    np.testing.assert_array_equal(data, raw.astype(np.uint8) if ptype == "bit" else raw)
    reader.close()


@pytest.mark.parametrize("kwargs,message", [
    ({"c": 2}, "c=2"), ({"z": 1}, "z=1"), ({"t": 3}, "t=3"), ({"series": 1}, "series=1"),
    ({"index": 2}, "index=2"),
])
def test_out_of_range_planes_raise(cp_manager: SessionManager, seeded: dict[str, Any],
                                   kwargs: dict[str, int], message: str) -> None:
    reader = reader_for(f"omero:iid={seeded['fields'][0]}")
    with pytest.raises(IndexError, match=message):
        reader.read(**kwargs)
    reader.close()


def test_unreadable_image_raises_instead_of_returning_none(cp_manager: SessionManager) -> None:
    from cellprofiler_omero.core.errors import NotFound

    reader = reader_for("omero:iid=999999")
    with pytest.raises(NotFound, match="999999"):
        reader.read(c=0)
    reader.close()


def test_volume_reads_as_zyx_and_zyxc(cp_manager: SessionManager,
                                      seeded: dict[str, Any]) -> None:
    stack = synthetic.z_stack(TEST_SEED.seed, 256, 8, 3)
    reader = reader_for(f"omero:iid={seeded['zstack']}")
    one, scale = reader.read_volume(wants_metadata_rescale=True, c=1)
    assert one.shape == (8, 256, 256) and scale == (0.0, 65535.0)
    np.testing.assert_array_equal(one, stack[:, 1])
    every = reader.read_volume(c=None)
    assert every.shape == (8, 256, 256, 3)
    np.testing.assert_array_equal(np.moveaxis(every, -1, 1), stack)
    reader.close()


def test_series_metadata_gives_sizes_and_name(cp_manager: SessionManager,
                                              seeded: dict[str, Any]) -> None:
    from cellprofiler_core.constants.image import (
        MD_SERIES_NAME,
        MD_SIZE_C,
        MD_SIZE_S,
        MD_SIZE_T,
        MD_SIZE_X,
        MD_SIZE_Y,
        MD_SIZE_Z,
    )

    reader = reader_for(f"omero:iid={seeded['zstack']}")
    meta = reader.get_series_metadata()
    assert meta[MD_SIZE_S] == 1 and meta[MD_SERIES_NAME] == ["zstack"]
    assert (meta[MD_SIZE_C], meta[MD_SIZE_Z], meta[MD_SIZE_T], meta[MD_SIZE_Y],
            meta[MD_SIZE_X]) == ([3], [8], [1], [256], [256])
    reader.close()


def test_other_channels_are_fetched_ahead(cp_manager: SessionManager,
                                          seeded: dict[str, Any]) -> None:
    from cellprofiler_omero.cp_integration import reader as reader_module

    first = reader_for(f"omero:iid={seeded['fields'][2]}")
    second = reader_for(f"omero:iid={seeded['fields'][2]}")
    first.read(c=0)
    key = (first.ref, 0, 0, None)
    futures = reader_module._shared.planes[key]
    assert set(futures) == {0, 1}
    np.testing.assert_array_equal(futures[1].result(timeout=30)[0, 0], fields(2)[1])
    np.testing.assert_array_equal(second.read(c=1), fields(2)[1])
    first.close()
    second.close()


def test_file_image_normalises_like_any_cellprofiler_image(cp_manager: SessionManager,
                                                           seeded: dict[str, Any]) -> None:
    from cellprofiler_core.image.abstract_image.file import FileImage

    image = FileImage("DNA", "", f"omero:iid={seeded['fields'][0]}", channel=0,
                      metadata_rescale=True)
    pixels = image.provide_image(None).pixel_data
    np.testing.assert_allclose(pixels, fields(0)[0] / 65535.0, rtol=1e-6)
    image.release_memory()


@pytest.mark.real_server
def test_objects_image_reads_label_planes_as_integers(target_cp_manager: SessionManager
                                                      ) -> None:
    cp_manager = target_cp_manager
    from cellprofiler_core.image.abstract_image.file.url import ObjectsImage

    from cellprofiler_omero.core.uploading import upload

    labels = np.zeros((32, 32), np.uint16)
    labels[2:6, 2:6], labels[10:20, 10:12] = 1, 2
    uploaded = run(lambda: upload(cp_manager, labels, name="labels"))
    image = ObjectsImage("Nuclei", f"omero:iid={uploaded.id}", None, None)
    data = image.provide_image(None).pixel_data
    np.testing.assert_array_equal(data[..., 0], labels)


def test_session_is_handed_to_workers_after_connecting(cp_manager: SessionManager,
                                                       seeded: dict[str, Any],
                                                       emulator: Emulator) -> None:
    import os

    from cellprofiler_omero.core.session import HANDOFF_ENV
    from cellprofiler_omero.cp_integration import session

    session.after_connect(cp_manager)
    assert os.environ.get(HANDOFF_ENV)
    assert os.stat(os.environ[HANDOFF_ENV]).st_mode & 0o077 == 0
