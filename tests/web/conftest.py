"""The real OMERO.web (+ OMERO.iviewer) in front of one emulator, shared by tests/web/.

``web_emulator``: a small seeded emulator plus what ``cellprofiler-omero demo`` leaves
on it — a nuclei label image in the demo dataset, the nuclei as Mask ROIs on their
source image and a CellProfiler-like OMERO.table attached to the dataset — made in a
second through this package's own upload, ROI and table code instead of running
CellProfiler (~40 s). ``omero_web``: OMERO.web serving it. ``web_session(user,
password)``: a ``requests.Session`` logged in through ``/webclient/login/``. ``web_ids``
names what was made (dataset, image with ROIs, label image, table file and annotation).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import requests

from cellprofiler_omero.commands.web import OmeroWeb
from cellprofiler_omero.emulator import Emulator, SeedOptions

#: Small demo data: two 256² fields, no pyramid, a 1 × 2 plate of 64² fields.
WEB_SEED = SeedOptions(seed=3, fields=2, field_size=256, large_size=0, plate_rows=1,
                       plate_columns=2, plate_fields=1, plate_field_size=64)

#: The demo table's name for the nuclei (``CellProfiler_<objects>_run-<key>``).
TABLE_NAME = "CellProfiler_Nuclei_run-web"


@dataclass(frozen=True)
class WebIds:
    """The ids of what the fixtures made (on top of ``emulator.seeded``)."""

    project: int
    dataset: int
    #: A source image (2 channels) carrying the nuclei ROIs.
    image: int
    #: The ROIs on ``image``, one per nucleus (object number → ROI id).
    rois: dict[int, int]
    #: The uploaded nuclei label image (uint16), in ``dataset``.
    label_image: int
    #: The OMERO.table of the nuclei: its OriginalFile and FileAnnotation on ``dataset``.
    table_file: int
    table_annotation: int
    table_rows: int
    #: Everything the seed made (``Emulator.seeded``).
    seeded: dict[str, object]


@dataclass
class WebEmulator:
    emulator: Emulator
    ids: WebIds


def _make_results(emulator: Emulator) -> WebIds:
    """Upload a label image, save ROIs and write a table, as the demo's pipeline does."""
    from cellprofiler_omero.core import runtime
    from cellprofiler_omero.core.config import Settings
    from cellprofiler_omero.core.model import ColumnKind, ColumnSpec, TableSchema, TableTarget
    from cellprofiler_omero.core.roi_encoding import label_rois
    from cellprofiler_omero.core.roi_writing import save_rois
    from cellprofiler_omero.core.session import SessionManager
    from cellprofiler_omero.core.tables import TableWriter
    from cellprofiler_omero.core.uploading import upload
    from cellprofiler_omero.emulator import synthetic

    seeded = emulator.seeded
    dataset = int(seeded["dataset"])
    image = int(seeded["fields"][0])
    # The seed's own ground truth for field 1 (seed * 1000 + index): the nuclei that
    # CellProfiler would find there.
    _pixels, labels = synthetic.nuclei_and_cells(WEB_SEED.seed * 1000, WEB_SEED.field_size)
    labels = labels.astype(np.uint16)
    numbers = [int(n) for n in np.unique(labels) if n]

    manager = SessionManager(Settings().replace({
        "server.host": emulator.host, "server.port": emulator.port, "auth.use_token": False}))
    runtime.run(lambda: manager.connect(user="demo", password="demo"))
    try:
        uploaded = runtime.run(lambda: upload(
            manager, labels, name="field_01_nuclei", dataset_id=dataset,
            channel_names=["Nuclei"], source_image_ids=[image]))
        rois = label_rois(labels, image, "Nuclei")
        saved = runtime.run(lambda: save_rois(manager, [rois[n] for n in numbers]))
        roi_ids = {n: r.id for n, r in zip(numbers, saved.rois, strict=True)}

        ys, xs = np.indices(labels.shape)
        area = [float((labels == n).sum()) for n in numbers]
        cy = [float(ys[labels == n].mean()) for n in numbers]
        cx = [float(xs[labels == n].mean()) for n in numbers]
        schema = TableSchema(TABLE_NAME, (
            ColumnSpec("ImageNumber", ColumnKind.LONG),
            ColumnSpec("Image", ColumnKind.IMAGE),
            ColumnSpec("ObjectNumber", ColumnKind.LONG),
            ColumnSpec("Roi", ColumnKind.ROI),
            ColumnSpec("AreaShape_Area", ColumnKind.DOUBLE),
            ColumnSpec("Location_Center_X", ColumnKind.DOUBLE),
            ColumnSpec("Location_Center_Y", ColumnKind.DOUBLE),
            ColumnSpec("FileName_DNA", ColumnKind.STRING, 16),
        ))
        columns: dict[str, list[object]] = {
            "ImageNumber": [1] * len(numbers), "Image": [image] * len(numbers),
            "ObjectNumber": list(numbers), "Roi": [roi_ids[n] for n in numbers],
            "AreaShape_Area": area, "Location_Center_X": cx, "Location_Center_Y": cy,
            "FileName_DNA": ["field_01"] * len(numbers)}

        async def write() -> object:
            writer = TableWriter(manager, TableTarget("Dataset", dataset), schema)
            await writer.open()
            writer.add_rows(columns)
            return await writer.close()

        table = runtime.run(write)
    finally:
        runtime.run(manager.close)
    assert table.annotation_id is not None
    return WebIds(project=int(seeded["project"]), dataset=dataset, image=image,
                  rois=roi_ids, label_image=uploaded.id, table_file=table.file_id,
                  table_annotation=table.annotation_id, table_rows=table.rows,
                  seeded=seeded)


@pytest.fixture(scope="session")
def web_emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WebEmulator]:
    """A small seeded emulator holding the demo's results (see the module docstring)."""
    data = tmp_path_factory.mktemp("web-emulator")
    # INFO: the emulator logs each unimplemented operation and unparseable HQL at INFO
    # (data/emulator.log), which tests/web/test_browser.py reads to prove there were none.
    with Emulator(data, seed_options=WEB_SEED, pyramid_threshold=2048,
                  log_level="INFO") as emu:
        yield WebEmulator(emu, _make_results(emu))


@pytest.fixture(scope="session")
def web_ids(web_emulator: WebEmulator) -> WebIds:
    return web_emulator.ids


@pytest.fixture(scope="session")
def omero_web(web_emulator: WebEmulator, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[OmeroWeb]:
    """OMERO.web + OMERO.iviewer (gunicorn on 127.0.0.1) in front of ``web_emulator``."""
    home = tmp_path_factory.mktemp("omero-web")
    emu = web_emulator.emulator
    with OmeroWeb(emu.host, emu.port, home=home) as web:
        yield web


_CSRF = re.compile(r"name=['\"]csrfmiddlewaretoken['\"] value=['\"]([^'\"]+)")


def login(web_url: str, user: str, password: str) -> requests.Session:
    """A ``requests.Session`` logged in to OMERO.web at ``web_url`` (server 1).

    As a browser does: GET the login page (its CSRF cookie and form token), then POST
    the form. Raises ``AssertionError`` when OMERO.web shows the login page again.
    """
    session = requests.Session()
    login_url = web_url + "webclient/login/"
    page = session.get(login_url, timeout=60)
    page.raise_for_status()
    found = _CSRF.search(page.text)
    token = found.group(1) if found else session.cookies.get("csrftoken", "")
    answer = session.post(login_url, timeout=120, headers={"Referer": login_url},
                          data={"username": user, "password": password, "server": "1",
                                "csrfmiddlewaretoken": token})
    answer.raise_for_status()
    if "sessionid" not in session.cookies or answer.url.rstrip("/").endswith("login"):
        raise AssertionError(f"OMERO.web refused the login of {user}: {answer.url}")
    return session


WebSession = Callable[..., requests.Session]


@pytest.fixture(scope="session")
def web_session(omero_web: OmeroWeb) -> WebSession:
    """``web_session(user="demo", password="demo", fresh=False)``: a ``requests.Session``
    logged in to OMERO.web. Shared per user across the session's tests (never log it
    out); ``fresh=True`` gives a new one of your own."""
    sessions: dict[tuple[str, str], requests.Session] = {}

    def make(user: str = "demo", password: str = "demo", *, fresh: bool = False
             ) -> requests.Session:
        key = (user, password)
        if fresh:
            return login(omero_web.url, user, password)
        if key not in sessions:
            sessions[key] = login(omero_web.url, user, password)
        return sessions[key]

    return make


@pytest.fixture(scope="session")
def web_url(omero_web: OmeroWeb) -> str:
    """OMERO.web's root URL (``http://127.0.0.1:PORT/``)."""
    return omero_web.url


def web_log(web: OmeroWeb) -> str:
    """OMERO.web's log so far (for asserting that no traceback was logged)."""
    path: Path = web.log_path
    return path.read_text(errors="replace") if path.exists() else ""
