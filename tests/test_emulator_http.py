"""The emulator's omero-ms-pixel-buffer HTTP side, checked against RawPixelsStore."""

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
                                   "float", "double", "bit"])
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


def test_missing_or_bad_key_is_forbidden(emulator: Emulator, seeded: dict[str, Any]) -> None:
    url = tile_url(emulator, seeded["fields"][0])
    assert requests.get(url, timeout=30).status_code == 403
    bad = requests.get(url, headers={"X-OMERO-Session-Key": "not-a-session"}, timeout=30)
    assert bad.status_code == 403


def test_bsession_parameter_authenticates(emulator: Emulator, seeded: dict[str, Any],
                                          ice_session: tuple[Any, str]) -> None:
    _, key = ice_session
    response = requests.get(tile_url(emulator, seeded["fields"][0]),
                            params={"w": 8, "h": 8, "bsession": key}, timeout=30)
    assert response.status_code == 200 and len(response.content) == 8 * 8 * 2


def test_other_user_gets_not_found_for_demos_private_image(emulator: Emulator,
                                                           seeded: dict[str, Any]) -> None:
    client = omero.client(emulator.host, emulator.port)
    try:
        client.createSession("other", "other")
        response = requests.get(tile_url(emulator, seeded["fields"][0]),
                                headers={"X-OMERO-Session-Key": client.getSessionId()},
                                timeout=30)
        assert response.status_code == 404
    finally:
        client.closeSession()


def test_bad_parameters_are_a_bad_request(emulator: Emulator, seeded: dict[str, Any],
                                          ice_session: tuple[Any, str]) -> None:
    _, key = ice_session
    headers = {"X-OMERO-Session-Key": key}
    url = tile_url(emulator, seeded["fields"][0])
    assert requests.get(url, params={"x": -1}, headers=headers, timeout=30).status_code == 400
    assert requests.get(url, params={"w": 10**6}, headers=headers, timeout=30).status_code == 400
    assert requests.get(url, params={"resolution": 9}, headers=headers,
                        timeout=30).status_code == 400
    assert requests.get(tile_url(emulator, seeded["fields"][0], c=7), headers=headers,
                        timeout=30).status_code == 400
    assert requests.get(url, params={"format": "gif"}, headers=headers,
                        timeout=30).status_code == 404


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


def test_options_answers_the_provider_without_auth(emulator: Emulator) -> None:
    response = requests.options(f"{emulator.http_url}/tile", timeout=30)
    assert response.status_code == 200
    assert response.json()["provider"] == "PixelBufferMicroservice"


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
