"""The emulator's omero-ms-pixel-buffer: pixels as RawPixelsStore's, answers as the service's.

Status codes follow glencoesoftware/omero-ms-pixel-buffer (``TileRequestHandler``,
``PixelBufferVerticle``, ``PixelBufferMicroserviceVerticle``, ``TileCtx``) behind the
README's nginx ``location /tile/`` block.
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import omero
import omero.clients
import pytest
import requests
import tifffile

from cellprofiler_omero.emulator import Emulator
from tests.conftest import pixels_of


@pytest.fixture
def ice_session(emulator: Emulator) -> Iterator[tuple[Any, str]]:
    client = omero.client(emulator.host, emulator.port)
    sf = client.createSession("demo", "demo")
    yield sf, client.getSessionId()
    client.closeSession()


def tile_url(emulator: Emulator, image: int, z: int = 0, c: int = 0, t: int = 0) -> str:
    return f"{emulator.http_url}/tile/{image}/{z}/{c}/{t}"


@pytest.mark.parametrize("ptype", ["int8", "uint8", "int16", "uint16", "int32", "uint32",
                                   "float", "double"])
def test_raw_tile_is_byte_identical_to_raw_pixels_store(emulator: Emulator,
                                                        seeded: dict[str, Any],
                                                        ice_session: tuple[Any, str],
                                                        ptype: str) -> None:
    sf, key = ice_session
    image = seeded["types"][ptype]
    store = sf.createRawPixelsStore()
    store.setPixelsId(pixels_of(sf, image), True)
    expected = store.getTile(0, 0, 0, 3, 5, 40, 30)
    store.close()
    response = requests.get(tile_url(emulator, image), params={"x": 3, "y": 5, "w": 40,
                                                               "h": 30},
                            headers={"X-OMERO-Session-Key": key}, timeout=30)
    assert response.status_code == 200
    assert response.content == expected


def test_pyramid_level_numbering_matches_raw_pixels_store(emulator: Emulator,
                                                          seeded: dict[str, Any],
                                                          ice_session: tuple[Any, str]
                                                          ) -> None:
    sf, key = ice_session
    store = sf.createRawPixelsStore()
    store.setPixelsId(pixels_of(sf, seeded["large"]), True)
    store.setResolutionLevel(1)
    expected = store.getTile(0, 0, 0, 64, 32, 128, 96)
    store.close()
    response = requests.get(tile_url(emulator, seeded["large"]),
                            params={"x": 64, "y": 32, "w": 128, "h": 96, "resolution": 1},
                            headers={"X-OMERO-Session-Key": key}, timeout=30)
    assert response.status_code == 200 and response.content == expected


def test_missing_key_is_forbidden_before_anything_else(emulator: Emulator,
                                                       seeded: dict[str, Any]) -> None:
    url = tile_url(emulator, seeded["fields"][0])
    for response in (requests.get(url, timeout=30),
                     requests.get(url, params={"x": "abc"}, timeout=30),
                     requests.get(f"{emulator.http_url}/tile/no/such/route", timeout=30)):
        assert (response.status_code, response.content) == (403, b"")


def test_key_of_no_live_session_is_forbidden(emulator: Emulator, seeded: dict[str, Any]
                                             ) -> None:
    response = requests.get(tile_url(emulator, seeded["fields"][0]),
                            headers={"X-OMERO-Session-Key": "not-a-session"}, timeout=30)
    assert (response.status_code, response.content) == (403, b"")


def test_bsession_parameter_authenticates(emulator: Emulator, seeded: dict[str, Any],
                                          ice_session: tuple[Any, str]) -> None:
    _, key = ice_session
    response = requests.get(tile_url(emulator, seeded["fields"][0]),
                            params={"w": 8, "h": 8, "bsession": key}, timeout=30)
    assert response.status_code == 200 and len(response.content) == 8 * 8 * 2


def test_sessionid_cookie_authenticates(emulator: Emulator, seeded: dict[str, Any],
                                        ice_session: tuple[Any, str]) -> None:
    _, key = ice_session
    response = requests.get(tile_url(emulator, seeded["fields"][0]), params={"w": 4, "h": 2},
                            cookies={"sessionid": key}, timeout=30)
    assert response.status_code == 200 and len(response.content) == 4 * 2 * 2


def test_other_user_gets_not_found_for_demos_private_image(emulator: Emulator,
                                                           seeded: dict[str, Any]) -> None:
    client = omero.client(emulator.host, emulator.port)
    try:
        client.createSession("other", "other")
        response = requests.get(tile_url(emulator, seeded["fields"][0]),
                                headers={"X-OMERO-Session-Key": client.getSessionId()},
                                timeout=30)
        assert (response.status_code, response.content) == (404, b"")
    finally:
        client.closeSession()


@pytest.mark.parametrize("path,params,text", [
    ("{image}/0/0/0", {"x": "abc"}, "abc"),
    ("{image}/0/0/0", {"w": ""}, ""),
    ("{image}/0/0/0", {"h": "1.5"}, "1.5"),
    ("{image}/0/0/0", {"y": "2147483648"}, "2147483648"),
    ("{image}/0/0/0", {"resolution": "low"}, "low"),
    ("abc/0/0/0", {}, "abc"),
    ("{image}/0/zero/0", {}, "zero"),
], ids=["letters", "empty", "decimal", "int-overflow", "resolution", "image-id", "z"])
def test_parameters_that_are_not_numbers_are_a_bad_request_with_javas_message(
        emulator: Emulator, seeded: dict[str, Any], path: str, params: dict[str, str],
        text: str) -> None:
    # Parsing comes before joining the session: a dead key still gets the 400.
    url = f"{emulator.http_url}/tile/" + path.format(image=seeded["fields"][0])
    response = requests.get(url, params=params,
                            headers={"X-OMERO-Session-Key": "not-a-session"}, timeout=30)
    assert response.status_code == 400
    assert response.text == f'For input string: "{text}"'


@pytest.mark.parametrize("params,plane", [
    ({"x": -1, "w": 4, "h": 4}, (0, 0, 0)),
    ({"x": 510, "w": 4, "h": 4}, (0, 0, 0)),
    ({"w": 10**6}, (0, 0, 0)),
    ({"w": -4, "h": -4}, (0, 0, 0)),
    ({"w": 4, "h": 4}, (0, 7, 0)),
    ({"w": 4, "h": 4}, (3, 0, 0)),
    ({"w": 4, "h": 4, "resolution": 0}, (0, 0, 0)),
    ({"w": 4, "h": 4, "format": "gif"}, (0, 0, 0)),
    ({"w": 4, "h": 4, "format": "tiff"}, (0, 0, 0)),
    ({"w": 4, "h": 4, "format": "PNG"}, (0, 0, 0)),
    ({"w": 4, "h": 4, "format": ""}, (0, 0, 0)),
], ids=["negative-x", "past-the-edge", "too-wide", "negative-size", "channel", "z",
        "resolution-of-a-single-level", "gif", "tiff", "upper-case", "empty-format"])
def test_any_failure_inside_the_tile_handler_is_not_found(
        emulator: Emulator, seeded: dict[str, Any], ice_session: tuple[Any, str],
        params: dict[str, Any], plane: tuple[int, int, int]) -> None:
    _, key = ice_session
    response = requests.get(tile_url(emulator, seeded["fields"][0], *plane), params=params,
                            headers={"X-OMERO-Session-Key": key}, timeout=30)
    assert (response.status_code, response.content) == (404, b"")


def test_unknown_image_is_not_found(emulator: Emulator, ice_session: tuple[Any, str]) -> None:
    _, key = ice_session
    response = requests.get(tile_url(emulator, 987654321),
                            headers={"X-OMERO-Session-Key": key}, timeout=30)
    assert (response.status_code, response.content) == (404, b"")


def test_resolution_outside_the_pyramid_is_not_found(emulator: Emulator,
                                                     seeded: dict[str, Any],
                                                     ice_session: tuple[Any, str]) -> None:
    _, key = ice_session
    headers = {"X-OMERO-Session-Key": key}
    url = tile_url(emulator, seeded["large"])
    assert requests.get(url, params={"w": 8, "h": 8, "resolution": 99}, headers=headers,
                        timeout=30).status_code == 404
    # Without w and h the region is the full image's size, too big for a smaller level.
    assert requests.get(url, params={"resolution": 0}, headers=headers,
                        timeout=30).status_code == 404


def test_missing_width_and_height_mean_the_whole_plane(emulator: Emulator,
                                                      seeded: dict[str, Any],
                                                      ice_session: tuple[Any, str]) -> None:
    _, key = ice_session
    response = requests.get(tile_url(emulator, seeded["types"]["uint8"]),
                            params={"w": 0}, headers={"X-OMERO-Session-Key": key}, timeout=30)
    assert response.status_code == 200 and len(response.content) == 64 * 64
    assert response.headers["Content-Disposition"] == (
        f'attachment; filename="image{seeded["types"]["uint8"]}_z0_c0_t0_x0_y0_w64_h64.bin"')


def test_bit_image_tile_is_empty(emulator: Emulator, seeded: dict[str, Any],
                                 ice_session: tuple[Any, str]) -> None:
    _, key = ice_session
    headers = {"X-OMERO-Session-Key": key}
    url = tile_url(emulator, seeded["types"]["bit"])
    response = requests.get(url, params={"x": 3, "y": 5, "w": 40, "h": 30}, headers=headers,
                            timeout=30)
    assert (response.status_code, response.content) == (200, b"")
    # The region is still checked, and an empty tile cannot be written as a PNG.
    assert requests.get(url, params={"x": 60, "w": 40, "h": 30}, headers=headers,
                        timeout=30).status_code == 404
    assert requests.get(url, params={"w": 4, "h": 4, "format": "png"}, headers=headers,
                        timeout=30).status_code == 404


def test_request_over_the_max_plane_size_comes_back_as_zeros(
        emulator: Emulator, seeded: dict[str, Any], ice_session: tuple[Any, str]) -> None:
    # The shared emulator's max plane is 2048 × 2048 pixels; the large image is 4096² uint16.
    _, key = ice_session
    headers = {"X-OMERO-Session-Key": key}
    url = tile_url(emulator, seeded["large"])
    at_limit = requests.get(url, params={"w": 4096, "h": 1024}, headers=headers, timeout=60)
    assert at_limit.status_code == 200 and len(at_limit.content) == 4096 * 1024 * 2
    assert at_limit.content.count(0) < len(at_limit.content)
    over = requests.get(url, params={"w": 4096, "h": 1025}, headers=headers, timeout=60)
    assert over.status_code == 200
    assert over.content == bytes(4096 * 1025 * 2)


def test_unreadable_pixels_fault_answers_404_for_those_images_only(
        faults: Emulator, seeded: dict[str, Any], ice_session: tuple[Any, str]) -> None:
    _, key = ice_session
    headers = {"X-OMERO-Session-Key": key}
    faults.set_faults(http_unreadable_images=[seeded["fields"][0]])
    broken = requests.get(tile_url(faults, seeded["fields"][0]), params={"w": 4, "h": 4},
                          headers=headers, timeout=30)
    fine = requests.get(tile_url(faults, seeded["fields"][1]), params={"w": 4, "h": 4},
                        headers=headers, timeout=30)
    assert (broken.status_code, fine.status_code) == (404, 200)


def test_refused_sessions_fault_answers_403_to_a_live_session(
        faults: Emulator, seeded: dict[str, Any], ice_session: tuple[Any, str]) -> None:
    sf, key = ice_session
    faults.set_faults(http_refuse_sessions=True)
    response = requests.get(tile_url(faults, seeded["fields"][0]), params={"w": 4, "h": 4},
                            headers={"X-OMERO-Session-Key": key}, timeout=30)
    assert (response.status_code, response.content) == (403, b"")
    sf.getAdminService().getEventContext()  # Ice still accepts the session


# -- the nginx layout of the README ---------------------------------------------------------


@pytest.mark.parametrize("method", ["GET", "OPTIONS", "POST"])
def test_tile_without_its_slash_is_redirected_permanently(emulator: Emulator,
                                                          method: str) -> None:
    response = requests.request(method, f"{emulator.http_url}/tile", timeout=30,
                                allow_redirects=False)
    assert response.status_code == 301
    assert response.headers["Location"] == f"{emulator.http_url}/tile/"


def test_redirect_keeps_the_query(emulator: Emulator) -> None:
    response = requests.get(f"{emulator.http_url}/tile", params={"x": 1}, timeout=30,
                            allow_redirects=False)
    assert (response.status_code, response.headers["Location"]) == (
        301, f"{emulator.http_url}/tile/?x=1")


def test_paths_outside_the_location_are_not_the_service(emulator: Emulator) -> None:
    for path in ("/", "/tiles/1/0/0/0", "/webgateway/render_image/1/0/0/"):
        assert requests.options(emulator.http_url + path, timeout=30).status_code == 404
        assert requests.get(emulator.http_url + path, timeout=30).status_code == 404


def test_png_and_tif_formats_decode_to_the_same_pixels(emulator: Emulator,
                                                       seeded: dict[str, Any],
                                                       ice_session: tuple[Any, str]) -> None:
    from PIL import Image

    _, key = ice_session
    headers = {"X-OMERO-Session-Key": key}
    url = tile_url(emulator, seeded["fields"][0])
    params = {"x": 10, "y": 10, "w": 32, "h": 16}
    raw = requests.get(url, params=params, headers=headers, timeout=30).content
    expected = np.frombuffer(raw, ">u2").reshape(16, 32)
    png = requests.get(url, params={**params, "format": "png"}, headers=headers, timeout=30)
    assert png.headers["Content-Type"] == "image/png"
    np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(png.content))), expected)
    tif = requests.get(url, params={**params, "format": "tif"}, headers=headers, timeout=30)
    np.testing.assert_array_equal(tifffile.imread(io.BytesIO(tif.content)), expected)


@pytest.mark.parametrize("path", ["/tile/", "/tile/1/0/0/0", "/tile/anything"])
def test_options_inside_the_location_answers_the_provider_without_auth(emulator: Emulator,
                                                                       path: str) -> None:
    response = requests.options(emulator.http_url + path, timeout=30)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/json"
    body = response.json()
    assert body["provider"] == "PixelBufferMicroservice" and body["features"] == []


def test_concurrent_requests_are_served(emulator: Emulator, seeded: dict[str, Any],
                                        ice_session: tuple[Any, str]) -> None:
    from concurrent.futures import ThreadPoolExecutor

    _, key = ice_session
    session = requests.Session()
    session.headers["X-OMERO-Session-Key"] = key
    url = tile_url(emulator, seeded["fields"][0])

    def fetch(i: int) -> int:
        return session.get(url, params={"x": i, "w": 64, "h": 64}, timeout=30).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(fetch, range(32))) == {200}


def test_control_endpoint_needs_the_control_token(emulator: Emulator) -> None:
    response = requests.post(f"{emulator.http_url}/_emulator/faults", json={"latency_ms": 5},
                             timeout=30)
    assert response.status_code == 403


# -- pyramids being built ----------------------------------------------------------------------

#: A site whose planes above 256² are pyramids, which take ten minutes to build.
SLOW_PYRAMIDS = {"omero.pixeldata.max_plane_width": "256",
                 "omero.pixeldata.max_plane_height": "256",
                 "omero.pixeldata.emulator_pyramid_delay_ms": "600000"}


@pytest.fixture(scope="module")
def slow_pyramids(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    with Emulator(tmp_path_factory.mktemp("slow-pyramids"), seed="users",
                  server_config=SLOW_PYRAMIDS) as emu:
        yield emu


def write_pyramid_image(sf: Any, size: int) -> int:
    """A new uint16 image written tile by tile in RPSTileLoop's order; its id."""
    query = sf.getQueryService()
    ptype = query.findByQuery("from PixelsType as p where p.value='uint16'", None)
    image = sf.getPixelsService().createImage(size, size, 1, 1, [0], ptype,
                                              "pyramid", "written by tiles").getValue()
    store = sf.createRawPixelsStore()
    try:
        store.setPixelsId(pixels_of(sf, image), True)
        width, height = store.getTileSize()
        for y in range(0, size, height):
            for x in range(0, size, width):
                w, h = min(width, size - x), min(height, size - y)
                tile = np.full((h, w), x + y, dtype=">u2")
                store.setTile(tile.tobytes(), 0, 0, 0, x, y, w, h)
        store.save()
    finally:
        store.close()
    return int(image)


def test_tile_of_a_pyramid_not_built_yet_is_not_found(slow_pyramids: Emulator) -> None:
    client = omero.client(slow_pyramids.host, slow_pyramids.port)
    try:
        sf = client.createSession("demo", "demo")
        image = write_pyramid_image(sf, 512)
        # Ice says why: the pyramid is still being built.
        store = sf.createRawPixelsStore()
        with pytest.raises(omero.MissingPyramidException):
            store.setPixelsId(pixels_of(sf, image), True)
        store.close()
        response = requests.get(tile_url(slow_pyramids, image), params={"w": 16, "h": 16},
                                headers={"X-OMERO-Session-Key": client.getSessionId()},
                                timeout=30)
        assert (response.status_code, response.content) == (404, b"")
    finally:
        client.closeSession()
