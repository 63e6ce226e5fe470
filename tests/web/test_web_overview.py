"""The demo's results found by name through the core (``core.overview``), as the ``web``
command prints its links: the command reaches the server only through the core."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from cellprofiler_omero.commands.web import DEMO_DATASET

if TYPE_CHECKING:
    from cellprofiler_omero.core.session import SessionManager
    from tests.web.conftest import WebEmulator

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def demo_manager(web_emulator: WebEmulator) -> Iterator[SessionManager]:
    from cellprofiler_omero.core import runtime
    from cellprofiler_omero.core.config import Settings
    from cellprofiler_omero.core.session import SessionManager

    emu = web_emulator.emulator
    manager = SessionManager(Settings().replace({
        "server.host": emu.host, "server.port": emu.port, "auth.use_token": False}))
    runtime.run(lambda: manager.connect(user="demo", password="demo"))
    yield manager
    runtime.run(manager.close)


def test_the_demo_dataset_is_found_by_name_with_its_rois_label_image_and_table(
        web_emulator: WebEmulator, demo_manager: SessionManager) -> None:
    from cellprofiler_omero.core import runtime
    from cellprofiler_omero.core.overview import datasets_named

    ids = web_emulator.ids
    [dataset] = runtime.run(lambda: datasets_named(demo_manager, DEMO_DATASET))
    assert (dataset.id, dataset.name) == (ids.dataset, DEMO_DATASET)
    by_id = {image.id: image for image in dataset.images}
    assert {ids.image, ids.label_image} <= set(by_id)
    assert [image.name for image in dataset.images] == sorted(
        image.name for image in dataset.images)
    # The nuclei ROIs lie on the source image only; the label image was uploaded by us.
    assert [(i.id, i.roi_count) for i in dataset.images_with_rois] == [
        (ids.image, len(ids.rois))]
    assert [i.id for i in dataset.uploaded_images] == [ids.label_image]
    assert [(t.file_id, t.name) for t in dataset.tables] == [
        (ids.table_file, "CellProfiler_Nuclei_run-web")]
    # No dataset of that name: nothing, not an error.
    assert runtime.run(lambda: datasets_named(demo_manager, "no such dataset")) == []


def test_the_web_command_reaches_the_server_only_through_the_core() -> None:
    # ARCHITECTURE: commands reach transports (and omero-py's client API) only through
    # the core; OMERO.web's own configuration file (omero.config) is not the server.
    tree = ast.parse((ROOT / "commands" / "web.py").read_text())
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module or "" for node in ast.walk(tree)
                 if isinstance(node, ast.ImportFrom)}
    reaching = sorted(name for name in imported
                      if (name.startswith(("omero", "Ice")) and name != "omero.config")
                      or ".transports" in name)
    assert reaching == []
