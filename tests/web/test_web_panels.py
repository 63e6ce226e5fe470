"""OMERO.web's right-hand panel, search and original metadata, through its real URLs.

For an image the panel shows its name, owner, dimensions, channels and ROI count, the
acquisition tab (valid and empty: the emulator has no instrument), the key-value pairs
ExportToOMEROKeyValues writes, and "no original metadata"; for the demo dataset its
OMERO.table attachment, which downloads as the HDF5 file. The search page finds images
by name as a real server's Lucene search does for a simple term or prefix, and only
those the user may see. While these pages load the emulator logs no unimplemented
operation.
"""

from __future__ import annotations

import contextlib
import html
import re
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from cellprofiler_omero.commands.web import OmeroWeb
    from tests.web.conftest import WebEmulator, WebIds, WebSession

#: What ExportToOMEROKeyValues writes on the image (the product's own annotation writer).
PAIRS = (("Count_Nuclei", "57"), ("Metadata_Well", "A01"))
KV_NS = "openmicroscopy.org/cellprofiler-omero/measurements"


@pytest.fixture(scope="module")
def key_values(web_emulator: WebEmulator, web_ids: WebIds) -> int:
    """The key-value pairs on ``web_ids.image``, written through the product's own
    annotation writer as ExportToOMEROKeyValues does; the annotation's id."""
    from cellprofiler_omero.core import runtime
    from cellprofiler_omero.core.annotations import NewKeyValues
    from cellprofiler_omero.core.config import Settings
    from cellprofiler_omero.core.session import SessionManager

    emu = web_emulator.emulator
    manager = SessionManager(Settings().replace({
        "server.host": emu.host, "server.port": emu.port, "auth.use_token": False}))
    request = NewKeyValues(web_ids.image, KV_NS, PAIRS, "cellprofiler-omero panel test")

    async def write() -> int:
        async def attempt(conn: object) -> int:
            sink = await manager.registry.open_annotation_writer(conn)
            async with contextlib.aclosing(sink):
                return (await sink.put_key_values(request)).annotation_id

        return await manager.call(attempt, what="annotating the panel test's image")

    runtime.run(lambda: manager.connect(user="demo", password="demo"))
    try:
        return runtime.run(write)
    finally:
        runtime.run(manager.close)


class EmulatorLog:
    """The emulator's log lines written since ``mark``."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.start = 0

    def mark(self) -> None:
        self.start = self.path.stat().st_size if self.path.exists() else 0

    def gaps(self) -> list[str]:
        with self.path.open("rb") as fh:
            fh.seek(self.start)
            text = fh.read().decode(errors="replace")
        return [line for line in text.splitlines()
                if "not implemented by the emulator" in line
                or "HQL not supported by the emulator" in line]


@pytest.fixture
def emulator_log(web_emulator: WebEmulator) -> EmulatorLog:
    log = EmulatorLog(web_emulator.emulator.data_dir / "emulator.log")
    log.mark()
    return log


def _text(page: str) -> str:
    """The page's text without tags or repeated blanks (what a person reads)."""
    page = re.sub(r"<script.*?</script>", " ", page, flags=re.S)
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))


def test_image_panel_shows_name_owner_sizes_channels_rois_and_key_values(
        omero_web: OmeroWeb, web_session: WebSession, web_ids: WebIds, key_values: int,
        emulator_log: EmulatorLog) -> None:
    session = web_session()
    page = session.get(omero_web.url + f"webclient/metadata_details/image/{web_ids.image}/",
                       timeout=120)
    assert page.status_code == 200, page.text[-2000:]
    text = _text(page.text)
    assert f"field_01 Image ID: {web_ids.image} Owner: Demo User" in text, text[:2000]
    assert "Dimensions (XY): 256 x 256" in text, text[:2000]
    assert "Channels: DAPI , Cytoplasm" in text, text[:2000]
    assert f"ROI Count: {len(web_ids.rois)} " in text, text[:2000]
    maps = session.get(omero_web.url + "webclient/api/annotations/",
                       params={"type": "map", "image": web_ids.image}, timeout=60).json()
    [kv] = [a for a in maps["annotations"] if a["id"] == key_values]
    assert [tuple(pair) for pair in kv["values"]] == list(PAIRS)
    assert kv["ns"] == KV_NS
    acquisition = session.get(
        omero_web.url + f"webclient/metadata_acquisition/image/{web_ids.image}/", timeout=120)
    assert acquisition.status_code == 200, acquisition.text[-2000:]
    assert {"DAPI", "Cytoplasm"} <= set(re.findall(r"DAPI|Cytoplasm", acquisition.text))
    original = session.get(omero_web.url + f"webclient/load_original_metadata/{web_ids.image}/",
                           timeout=60)
    assert original.status_code == 200
    assert "No Original Metadata for this image" in _text(original.text)
    assert emulator_log.gaps() == []


def test_dataset_panel_lists_the_table_attachment_and_it_downloads(
        omero_web: OmeroWeb, web_session: WebSession, web_ids: WebIds,
        emulator_log: EmulatorLog) -> None:
    session = web_session()
    page = session.get(omero_web.url + f"webclient/metadata_details/dataset/{web_ids.dataset}/",
                       timeout=120)
    assert page.status_code == 200, page.text[-2000:]
    files = session.get(omero_web.url + "webclient/api/annotations/",
                        params={"type": "file", "dataset": web_ids.dataset}, timeout=60).json()
    [table] = [a for a in files["annotations"] if a["id"] == web_ids.table_annotation]
    assert table["file"]["id"] == web_ids.table_file
    download = session.get(omero_web.url + f"webclient/annotation/{web_ids.table_annotation}/",
                           timeout=120)
    assert download.status_code == 200
    assert download.content.startswith(b"\x89HDF\r\n\x1a\n")  # the table's HDF5 file
    assert len(download.content) == table["file"]["size"]
    assert emulator_log.gaps() == []


def test_search_finds_images_by_name_term_and_prefix_for_their_owner_only(
        omero_web: OmeroWeb, web_session: WebSession, web_ids: WebIds,
        emulator_log: EmulatorLog) -> None:
    def found(user: str, query: str) -> set[int]:
        page = web_session(user, user).get(
            omero_web.url + "webclient/load_searching/form/",
            params={"query": query, "datatype": "images"}, timeout=120)
        assert page.status_code == 200, page.text[-2000:]
        return {int(i) for i in re.findall(r'id="image-(\d+)"', page.text)}

    fields = {int(i) for i in web_ids.seeded["fields"]}  # type: ignore[attr-defined]
    # "field" is a term of "field_01" and "field_02" (and of the label image's name).
    assert fields | {web_ids.label_image} <= found("demo", "field")
    assert fields <= found("demo", "fiel*")
    assert found("demo", "fiel") == set()  # a term, not a substring
    assert web_ids.label_image in found("demo", "nuclei")
    assert found("other", "field") & fields == set()  # demo's group is private
    assert emulator_log.gaps() == []
