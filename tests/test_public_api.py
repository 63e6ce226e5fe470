"""The public one-call API (``cellprofiler_omero.read_image`` …) against the emulator.

Every result is checked through an independent client (BlitzGateway, omero2pandas),
and the login rules are the CLI's: explicit credentials, else the saved token.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

import cellprofiler_omero as co
from cellprofiler_omero.core.errors import AuthError
from cellprofiler_omero.core.model import TableInfo, UploadedImage
from cellprofiler_omero.core.refs import Kind, ObjectRef
from cellprofiler_omero.emulator import Emulator


@pytest.fixture
def process_session(emulator: Emulator, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                    ) -> Iterator[Path]:
    """The process's session starts empty, with settings (from the environment) naming the
    emulator and a private token folder; it is ended again afterwards."""
    from cellprofiler_omero.core import session

    tokens = tmp_path / "tokens"
    monkeypatch.setenv("CELLPROFILER_OMERO_SERVER_HOST", emulator.host)
    monkeypatch.setenv("CELLPROFILER_OMERO_SERVER_PORT", str(emulator.port))
    monkeypatch.setenv("CELLPROFILER_OMERO_AUTH_TOKEN_DIR", str(tokens))
    monkeypatch.setenv("CELLPROFILER_OMERO_AUTH_KEEPALIVE_SECONDS", "3600")
    saved = session._manager
    session.set_manager(None)
    yield tokens
    co.disconnect()
    session.set_manager(saved)


@pytest.fixture
def logged_in(process_session: Path) -> None:
    co.connect(user="demo", password="demo")


def blitz_plane(conn: Any, image_id: int, z: int, c: int, t: int = 0) -> np.ndarray:
    pixels = conn.getObject("Image", image_id).getPrimaryPixels()
    return np.asarray(pixels.getPlane(z, c, t))


def test_importing_the_package_loads_no_heavy_dependency() -> None:
    # Importing loads nothing heavy; resolving a function loads no omero-py, Ice or pandas
    # either (they come with the first call that needs them).
    code = ("import sys, cellprofiler_omero as co; "
            "assert 'numpy' not in sys.modules; "
            "assert callable(co.read_image); "
            "heavy = {'omero', 'Ice', 'pandas'} & set(sys.modules); "
            "assert not heavy, heavy")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=False)
    assert done.returncode == 0, done.stderr
    assert {"read_image", "list_images", "upload_image", "write_table"} <= set(dir(co))


@pytest.mark.usefixtures("logged_in")
@pytest.mark.parametrize("form", ["Image:{id}", "image-{id}", "omero:iid={id}",
                                  "https://{host}/webclient/?show=image-{id}"])
def test_read_image_takes_every_link_form_and_matches_blitzgateway(
        form: str, emulator: Emulator, seeded: dict[str, Any], blitz: Any) -> None:
    image_id = seeded["fields"][0]
    data = co.read_image(form.format(id=image_id, host=emulator.host))
    conn = blitz()
    size_c = conn.getObject("Image", image_id).getSizeC()
    assert data.shape[0] == size_c  # z=0 (an int) drops Z: (C, Y, X)
    for c in range(size_c):
        np.testing.assert_array_equal(data[c], blitz_plane(conn, image_id, 0, c))


@pytest.mark.usefixtures("logged_in")
def test_read_image_region_and_single_axes_drop_those_axes(seeded: dict[str, Any],
                                                           blitz: Any) -> None:
    image_id = seeded["zstack"]
    plane = co.read_image(f"Image:{image_id}", z=1, c=0, region=(3, 5, 20, 10))
    expected = blitz_plane(blitz(), image_id, 1, 0)[5:15, 3:23]
    assert plane.shape == (10, 20)
    np.testing.assert_array_equal(plane, expected)
    stack = co.read_image(ObjectRef(Kind.IMAGE, image_id), z=[0, 1], c=[0])
    assert stack.shape[:2] == (2, 1)
    np.testing.assert_array_equal(stack[1, 0], blitz_plane(blitz(), image_id, 1, 0))


@pytest.mark.usefixtures("logged_in")
def test_list_images_gives_a_datasets_images_as_blitzgateway_sees_them(
        seeded: dict[str, Any], blitz: Any) -> None:
    images = co.list_images(f"Dataset:{seeded['dataset']}")
    dataset = blitz().getObject("Dataset", seeded["dataset"])
    assert {image.id for image in images} == {child.getId() for child in
                                             dataset.listChildren()}
    assert all(image.kind is Kind.IMAGE for image in images)
    single = co.list_images(f"Image:{seeded['fields'][0]}")
    assert [image.id for image in single] == [seeded["fields"][0]]


@pytest.mark.usefixtures("logged_in")
def test_upload_image_creates_it_once_per_key_and_blitzgateway_reads_it(
        scratch_dataset: int, blitz: Any) -> None:
    array = (np.arange(2 * 24 * 32, dtype=np.uint16).reshape(2, 24, 32) * 7)
    made = co.upload_image(array, name="api upload", axes="CYX",
                           dataset=f"Dataset:{scratch_dataset}", channel_names=("a", "b"),
                           key="test-public-api-upload")
    assert isinstance(made, UploadedImage) and not made.reused
    again = co.upload_image(array, name="api upload", axes="CYX", dataset=scratch_dataset,
                            channel_names=("a", "b"), key="test-public-api-upload")
    assert again.id == made.id and again.reused
    conn = blitz()
    image = conn.getObject("Image", made.id)
    assert image.getName() == "api upload"
    assert [ds.getId() for ds in image.listParents()] == [scratch_dataset]
    assert [channel.getLabel() for channel in image.getChannels()] == ["a", "b"]
    for c in range(2):
        np.testing.assert_array_equal(blitz_plane(conn, made.id, 0, c), array[c])
    np.testing.assert_array_equal(co.read_image(f"Image:{made.id}"), array)


@pytest.mark.usefixtures("logged_in")
def test_write_table_reads_back_with_omero2pandas(scratch_dataset: int,
                                                  seeded: dict[str, Any], blitz: Any) -> None:
    import omero2pandas

    frame = pd.DataFrame({
        "Image": seeded["fields"][:3],
        "Area": [10.5, float("nan"), 3.25],
        "Count": [1, 2, 3],
        "Hit": [True, False, True],
        "Label": ["nucleus", "cell ünïcode", ""],
    })
    info = co.write_table(frame, f"Dataset:{scratch_dataset}", name="api table")
    assert isinstance(info, TableInfo) and info.rows == 3
    back = omero2pandas.read_table(file_id=info.file_id, omero_connector=blitz())
    assert list(back.columns) == list(frame.columns)
    assert back["Image"].tolist() == frame["Image"].tolist()
    np.testing.assert_array_equal(back["Area"].to_numpy(), frame["Area"].to_numpy())
    assert back["Count"].tolist() == [1, 2, 3]
    assert back["Hit"].tolist() == [True, False, True]
    assert back["Label"].tolist() == frame["Label"].tolist()


def test_calls_without_credentials_join_the_saved_token(
        process_session: Path, seeded: dict[str, Any], blitz: Any) -> None:
    from cellprofiler_omero.core import runtime
    from cellprofiler_omero.core.session import get_manager

    co.connect(user="demo", password="demo")
    runtime.run(get_manager().save_token)
    co.disconnect()
    image_id = seeded["fields"][1]
    data = co.read_image(f"Image:{image_id}", c=0)  # no connect(): the token is joined
    assert get_manager().info is not None and get_manager().info.source == "token"
    np.testing.assert_array_equal(data, blitz_plane(blitz(), image_id, 0, 0))


def test_calls_without_any_login_say_how_to_log_in(process_session: Path,
                                                   seeded: dict[str, Any]) -> None:
    with pytest.raises(AuthError, match="Not logged in") as failure:
        co.read_image(f"Image:{seeded['fields'][0]}")
    assert "login" in (failure.value.hint or "")


def test_connect_with_settings_applies_them(process_session: Path,
                                            emulator: Emulator) -> None:
    from cellprofiler_omero.core.session import get_manager

    info = co.connect(user="demo", password="demo",
                      settings={"transports.read": ["ice"], "tables.batch_rows": 2})
    assert info.user == "demo" and info.server.port == emulator.port
    assert get_manager().settings.tables.batch_rows == 2


@pytest.mark.usefixtures("logged_in")
def test_calls_work_from_a_thread_running_its_own_event_loop_as_notebooks_do(
        seeded: dict[str, Any]) -> None:
    import asyncio

    async def cell() -> list[ObjectRef]:
        # Jupyter runs a cell's code synchronously on the thread of its own asyncio loop.
        return co.list_images(f"Dataset:{seeded['dataset']}")

    images = asyncio.run(cell())
    assert images and all(image.kind is Kind.IMAGE for image in images)
