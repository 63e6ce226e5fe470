"""The pixel-buffer transport against the emulator's omero-ms-pixel-buffer HTTP side.

Every read is compared with what the Ice transport returns for the same request, so
the two transports are interchangeable by configuration alone.
"""

from __future__ import annotations

import json
import logging
import socket
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

import anyio
import numpy as np
import pytest
import requests
from requests.adapters import HTTPAdapter

from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.errors import AuthError, ConfigError, ServerError
from cellprofiler_omero.core.model import PixelRequest, Region
from cellprofiler_omero.core.reading import ImageReader
from cellprofiler_omero.core.refs import parse_image
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.emulator import Emulator, synthetic
from cellprofiler_omero.transports.pixelbuffer import plugin, service, source
from cellprofiler_omero.transports.pixelbuffer.service import (
    SESSION_HEADER,
    BadTileRequest,
    TileClient,
    TileEndpoint,
    TileNotServed,
    TileQuery,
)
from cellprofiler_omero.transports.pixelbuffer.settings import PixelBufferSettings
from tests.conftest import TEST_SEED, run

#: Every type the service serves (``bit`` comes back empty, so it is read through Ice).
PIXEL_TYPES = ["int8", "uint8", "int16", "uint16", "int32", "uint32", "float", "double"]


# -- fixtures and helpers -----------------------------------------------------------------


@pytest.fixture(autouse=True)
def fresh_probes(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Every test probes anew (the cache is per process), and retries wait briefly."""
    monkeypatch.setattr(source, "BACKOFF_BASE_SECONDS", 0.01)
    service.clear_probe_cache()
    yield
    service.clear_probe_cache()


@dataclass(frozen=True)
class Sent:
    """One HTTP request as it left ``requests``."""

    method: str
    url: str
    headers: dict[str, str]


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[Sent]:
    """Every request any ``requests`` session sends (the real request still goes out)."""
    recorded: list[Sent] = []
    original = HTTPAdapter.send
    lock = threading.Lock()

    def send(self: HTTPAdapter, request: requests.PreparedRequest, *args: Any,
             **kwargs: Any) -> requests.Response:
        with lock:
            recorded.append(Sent(str(request.method), str(request.url),
                                 dict(request.headers)))
        return original(self, request, *args, **kwargs)

    monkeypatch.setattr(HTTPAdapter, "send", send)
    return recorded


def pb_settings(settings_for: Any, url: str, read: tuple[str, ...] = ("pixelbuffer",),
                host: str = "127.0.0.1", **overrides: Any) -> Settings:
    settings: Settings = settings_for(transports__read=list(read),
                                      pixelbuffer__servers={host: url}, **overrides)
    return settings


def login(settings: Settings, user: str = "demo") -> SessionManager:
    manager = SessionManager(settings)
    run(lambda: manager.connect(user=user, password=user))
    return manager


@pytest.fixture
def pb_manager(settings_for: Any, emulator: Emulator) -> Iterator[SessionManager]:
    """demo, reading through the pixel-buffer transport only."""
    manager = login(pb_settings(settings_for, emulator.http_url, host=emulator.host))
    yield manager
    run(manager.close)


def read(manager: SessionManager, image_id: int, **kw: Any) -> tuple[np.ndarray, str]:
    """The pixels of one read and the transport that served it."""
    reader = ImageReader(manager, parse_image(f"Image:{image_id}"))
    try:
        data = run(lambda: reader.read(**kw))
        return data, reader.transport
    finally:
        run(reader.aclose)


def same_as_ice(pb: SessionManager, ice: SessionManager, image_id: int, **kw: Any
                ) -> np.ndarray:
    """Read through both transports, check they agree byte for byte, return the data."""
    data, transport = read(pb, image_id, **kw)
    expected, ice_transport = read(ice, image_id, **kw)
    assert (transport, ice_transport) == ("pixelbuffer", "ice")
    assert data.dtype == expected.dtype and data.shape == expected.shape
    assert data.tobytes() == expected.tobytes()
    return data


def closed_port_url() -> str:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    return f"http://127.0.0.1:{port}"


def tile_requests(sent: list[Sent]) -> list[Sent]:
    return [s for s in sent if s.method == "GET" and "/tile/" in s.url]


# -- reads agree with Ice -------------------------------------------------------------------


@pytest.mark.parametrize("ptype", PIXEL_TYPES)
def test_every_pixel_type_reads_byte_identical_to_ice(pb_manager: SessionManager,
                                                      manager: SessionManager,
                                                      seeded: dict[str, Any],
                                                      ptype: str) -> None:
    data = same_as_ice(pb_manager, manager, seeded["types"][ptype])
    np.testing.assert_array_equal(data[0, 0], synthetic.every_type(TEST_SEED.seed, 64)[ptype])


@pytest.mark.parametrize("level,region", [(0, Region(1000, 2000, 700, 300)), (1, None),
                                          (2, Region(10, 30, 500, 200))])
def test_pyramid_levels_read_byte_identical_to_ice(pb_manager: SessionManager,
                                                   manager: SessionManager,
                                                   seeded: dict[str, Any], level: int,
                                                   region: Region | None) -> None:
    data = same_as_ice(pb_manager, manager, seeded["large"], level=level, region=region)
    if level == 1:
        full = synthetic.large(TEST_SEED.seed, 4096)
        np.testing.assert_array_equal(data[0, 0], full[::2, ::2])


def test_region_of_multichannel_z_image_reads_byte_identical_to_ice(
        pb_manager: SessionManager, manager: SessionManager, seeded: dict[str, Any]) -> None:
    data = same_as_ice(pb_manager, manager, seeded["zstack"], z=[1, 5], c=[2, 0],
                       region=Region(10, 20, 30, 40))
    stack = synthetic.z_stack(TEST_SEED.seed, 256, 8, 3)
    np.testing.assert_array_equal(data, stack[[1, 5]][:, [2, 0], 20:60, 10:40])


def test_plane_over_the_tile_limit_is_fetched_in_tiles(settings_for: Any, emulator: Emulator,
                                                       seeded: dict[str, Any],
                                                       sent: list[Sent]) -> None:
    manager = login(pb_settings(settings_for, emulator.http_url, host=emulator.host,
                                transfer__max_chunk_bytes=40_000, ice__message_limit_kib=100))
    data, transport = read(manager, seeded["fields"][2], c=[0, 1])
    run(manager.close)
    pixels, _ = synthetic.nuclei_and_cells(TEST_SEED.seed * 1000 + 2, TEST_SEED.field_size)
    np.testing.assert_array_equal(data[0], pixels)
    assert transport == "pixelbuffer"
    # 512 rows of 1 KiB in strips of 39 rows: 14 tiles per channel.
    assert len(tile_requests(sent)) == 2 * 14


def test_url_ending_in_tile_is_used_as_the_tile_path(settings_for: Any, emulator: Emulator,
                                                     seeded: dict[str, Any],
                                                     sent: list[Sent]) -> None:
    manager = login(pb_settings(settings_for, emulator.http_url + "/tile/",
                                host=emulator.host))
    data, transport = read(manager, seeded["types"]["uint16"])
    run(manager.close)
    assert transport == "pixelbuffer"
    np.testing.assert_array_equal(data[0, 0],
                                  synthetic.every_type(TEST_SEED.seed, 64)["uint16"])
    image = seeded["types"]["uint16"]
    assert [s.url.split("?")[0] for s in tile_requests(sent)] == [
        f"{emulator.http_url}/tile/{image}/0/0/0"]


@pytest.mark.parametrize("configured,tile_base", [
    ("http://h:8082", "http://h:8082/tile"),
    ("http://h:8082/", "http://h:8082/tile"),
    ("https://omero.example.org/tile", "https://omero.example.org/tile"),
    ("https://omero.example.org/tile/", "https://omero.example.org/tile"),
    ("https://omero.example.org/pb", "https://omero.example.org/pb/tile"),
])
def test_configured_url_may_be_a_root_or_end_in_tile(configured: str, tile_base: str
                                                     ) -> None:
    endpoint = TileEndpoint.parse(configured)
    assert endpoint.tile_base == tile_base
    assert endpoint.tile_url(7, 1, 2, 3) == f"{tile_base}/7/1/2/3"


@pytest.mark.parametrize("bad", ["ftp://h/tile", "h:8082", "http://h/tile?bsession=x"])
def test_unusable_url_is_a_config_error(bad: str) -> None:
    with pytest.raises(ConfigError, match="pixel-buffer URL"):
        TileEndpoint.parse(bad)


def test_credentials_in_a_configured_url_are_not_shown() -> None:
    endpoint = TileEndpoint.parse("https://user:secret@omero.example.org/tile")
    assert "secret" not in endpoint.display and endpoint.display.startswith("https://omero")


# -- discovery --------------------------------------------------------------------------------


def test_absent_service_declines_and_ice_serves(settings_for: Any, emulator: Emulator,
                                                seeded: dict[str, Any],
                                                caplog: pytest.LogCaptureFixture) -> None:
    url = closed_port_url()
    manager = login(pb_settings(settings_for, url, ("pixelbuffer", "ice"), emulator.host))
    with caplog.at_level(logging.INFO):
        data, transport = read(manager, seeded["types"]["int16"])
    run(manager.close)
    assert transport == "ice"
    np.testing.assert_array_equal(data[0, 0], synthetic.every_type(TEST_SEED.seed, 64)["int16"])
    messages = [r.getMessage() for r in caplog.records]
    assert any(r.levelno == logging.WARNING and f"pixel-buffer service at {url}/tile is "
               "unavailable" in r.getMessage() and "next read transport will serve"
               in r.getMessage() for r in caplog.records)
    assert "transport pixelbuffer declined read" in messages
    assert "transport ice serves read" in messages


def test_failing_options_declines_and_ice_serves(settings_for: Any, faults: Emulator,
                                                 seeded: dict[str, Any], sent: list[Sent],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    faults.set_faults(http_options_fail=True)
    manager = login(pb_settings(settings_for, faults.http_url, ("pixelbuffer", "ice"),
                                faults.host))
    with caplog.at_level(logging.INFO):
        data, transport = read(manager, seeded["zstack"], z=[3], c=[1])
    run(manager.close)
    assert transport == "ice"
    stack = synthetic.z_stack(TEST_SEED.seed, 256, 8, 3)
    np.testing.assert_array_equal(data[0, 0], stack[3, 1])
    assert "HTTP 500" in caplog.text and "next read transport will serve" in caplog.text
    assert tile_requests(sent) == []


def test_service_of_another_kind_declines(settings_for: Any, emulator: Emulator,
                                          seeded: dict[str, Any],
                                          caplog: pytest.LogCaptureFixture) -> None:
    class Other(BaseHTTPRequestHandler):
        def do_OPTIONS(self) -> None:
            body = json.dumps({"provider": "SomethingElse"}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, format: str, *args: Any) -> None:
            return None

    server = ThreadingHTTPServer(("127.0.0.1", 0), Other)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        manager = login(pb_settings(settings_for, url, ("pixelbuffer", "ice"), emulator.host))
        with caplog.at_level(logging.WARNING):
            _, transport = read(manager, seeded["types"]["uint8"])
        run(manager.close)
    finally:
        server.shutdown()
        server.server_close()
    assert transport == "ice"
    assert "did not name provider PixelBufferMicroservice" in caplog.text


def test_no_url_for_the_server_host_declines_without_any_request(
        settings_for: Any, emulator: Emulator, seeded: dict[str, Any],
        sent: list[Sent]) -> None:
    manager = login(pb_settings(settings_for, emulator.http_url, ("pixelbuffer", "ice"),
                                host="omero.elsewhere.org"))
    _, transport = read(manager, seeded["types"]["uint8"])
    run(manager.close)
    assert transport == "ice"
    assert sent == []


def test_probe_is_made_once_per_url(pb_manager: SessionManager, seeded: dict[str, Any],
                                    sent: list[Sent]) -> None:
    for name in ("uint8", "float", "int8"):
        assert read(pb_manager, seeded["types"][name])[1] == "pixelbuffer"
    assert [s.method for s in sent].count("OPTIONS") == 1


def test_failed_probe_is_believed_until_the_retry_interval(
        settings_for: Any, faults: Emulator, seeded: dict[str, Any], sent: list[Sent],
        monkeypatch: pytest.MonkeyPatch) -> None:
    manager = login(pb_settings(settings_for, faults.http_url, ("pixelbuffer", "ice"),
                                faults.host))
    image = seeded["types"]["uint8"]
    faults.set_faults(http_options_fail=True)
    assert read(manager, image)[1] == "ice"
    faults.clear_faults()
    assert read(manager, image)[1] == "ice"
    assert [s.method for s in sent].count("OPTIONS") == 1
    monkeypatch.setattr(service, "PROBE_RETRY_SECONDS", 0.0)
    assert read(manager, image)[1] == "pixelbuffer"
    assert [s.method for s in sent].count("OPTIONS") == 2
    run(manager.close)


# -- retries and fall-through -------------------------------------------------------------------


@pytest.mark.parametrize("fault", [
    {"http_error_count": 2},
    {"http_error_probability": 0.5, "seed": 11},
    {"http_drop_probability": 0.3, "seed": 5},
], ids=["error-count", "error-probability", "drops"])
def test_server_errors_and_drops_are_retried_to_correct_data(
        settings_for: Any, faults: Emulator, seeded: dict[str, Any], sent: list[Sent],
        fault: dict[str, Any]) -> None:
    manager = login(pb_settings(settings_for, faults.http_url, host=faults.host,
                                pixelbuffer__retries=10))
    faults.set_faults(**fault)
    data, transport = read(manager, seeded["zstack"], z=[0, 4, 7], c=[0, 1, 2],
                           region=Region(0, 100, 256, 60))
    faults.clear_faults()
    run(manager.close)
    stack = synthetic.z_stack(TEST_SEED.seed, 256, 8, 3)
    np.testing.assert_array_equal(data, stack[[0, 4, 7]][:, :, 100:160, :])
    assert transport == "pixelbuffer"
    assert len(tile_requests(sent)) > 9  # nine tiles, some of them more than once


def test_exhausted_retries_fall_through_to_ice(settings_for: Any, faults: Emulator,
                                               seeded: dict[str, Any], sent: list[Sent],
                                               caplog: pytest.LogCaptureFixture) -> None:
    manager = login(pb_settings(settings_for, faults.http_url, ("pixelbuffer", "ice"),
                                faults.host, pixelbuffer__retries=2))
    faults.set_faults(http_error_probability=1.0)
    with caplog.at_level(logging.WARNING):
        data, transport = read(manager, seeded["zstack"], z=[2], c=[0, 2])
        # The failure is remembered: the next image goes to Ice without trying tiles.
        before = len(tile_requests(sent))
        _, next_transport = read(manager, seeded["types"]["uint8"])
    run(manager.close)
    stack = synthetic.z_stack(TEST_SEED.seed, 256, 8, 3)
    np.testing.assert_array_equal(data[0], stack[2][[0, 2]])
    assert (transport, next_transport) == ("ice", "ice")
    assert len(tile_requests(sent)) == before
    assert "falling back to ice" in caplog.text


def test_exhausted_retries_without_fallback_raise_server_error(
        settings_for: Any, faults: Emulator, seeded: dict[str, Any], sent: list[Sent]
        ) -> None:
    manager = login(pb_settings(settings_for, faults.http_url, host=faults.host,
                                pixelbuffer__retries=2))
    faults.set_faults(http_error_probability=1.0)
    with pytest.raises(ServerError, match=r"after 3 attempt\(s\): the service answered HTTP"):
        read(manager, seeded["types"]["uint16"])
    run(manager.close)
    assert len(tile_requests(sent)) == 3


# -- sessions and keys --------------------------------------------------------------------------


def test_expired_password_session_is_renewed_and_the_read_succeeds(
        pb_manager: SessionManager, emulator: Emulator, seeded: dict[str, Any]) -> None:
    reader = ImageReader(pb_manager, parse_image(f"Image:{seeded['types']['int32']}"))
    run(reader.read)
    old_key = run(pb_manager.connection).session_key
    assert emulator.expire_sessions(keys=[old_key]) == 1
    data = run(reader.read)
    assert reader.transport == "pixelbuffer"
    assert run(pb_manager.connection).session_key != old_key
    np.testing.assert_array_equal(data[0, 0], synthetic.every_type(TEST_SEED.seed, 64)["int32"])
    run(reader.aclose)


def test_expired_session_that_cannot_be_renewed_raises_auth_error(
        settings_for: Any, emulator: Emulator, seeded: dict[str, Any]) -> None:
    settings = pb_settings(settings_for, emulator.http_url, host=emulator.host)
    owner = login(settings)
    key = run(owner.connection).session_key
    joined = SessionManager(settings)
    run(lambda: joined.connect(session_key=key))
    reader = ImageReader(joined, parse_image(f"Image:{seeded['types']['uint8']}"))
    run(reader.metadata)
    emulator.expire_sessions(keys=[key])
    with pytest.raises(AuthError, match="could not be renewed"):
        run(reader.read)
    run(reader.aclose)
    run(joined.close)
    run(owner.close)


def test_session_key_goes_only_in_the_header_to_the_configured_service(
        pb_manager: SessionManager, emulator: Emulator, seeded: dict[str, Any],
        sent: list[Sent]) -> None:
    key = run(pb_manager.connection).session_key
    read(pb_manager, seeded["zstack"], z=[0, 1], c=[0, 1, 2])
    assert len(tile_requests(sent)) == 6
    for request in sent:
        assert key not in request.url
        if request.method == "OPTIONS":
            assert SESSION_HEADER not in request.headers
        else:
            assert request.headers[SESSION_HEADER] == key
            assert request.url.startswith(f"{emulator.http_url}/tile/")


def test_session_key_never_reaches_a_log_line(settings_for: Any, emulator: Emulator,
                                              seeded: dict[str, Any],
                                              caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    manager = login(pb_settings(settings_for, emulator.http_url, host=emulator.host))
    keys = [run(manager.connection).session_key]
    reader = ImageReader(manager, parse_image(f"Image:{seeded['types']['double']}"))
    run(reader.read)
    emulator.expire_sessions(keys=keys)  # a 403, a renewal and a retry, all logged
    run(reader.read)
    keys.append(run(manager.connection).session_key)
    # A region past the edge: the service answers 404, and no transport follows.
    with pytest.raises(TileNotServed) as bad:
        run(lambda: reader._source.read(  # type: ignore[union-attr]
            PixelRequest(z=(0,), c=(0,), region=Region(60, 0, 10, 10))))
    run(reader.aclose)
    run(manager.close)
    assert any(r.name.startswith("urllib3") for r in caplog.records)
    assert any("/tile/" in r.getMessage() for r in caplog.records)
    for key in keys:
        assert key not in caplog.text
        assert key not in str(bad.value)


# -- errors ---------------------------------------------------------------------------------------


def test_404_without_a_next_transport_names_the_image_and_says_to_add_ice(
        pb_manager: SessionManager, settings_for: Any, emulator: Emulator,
        seeded: dict[str, Any]) -> None:
    # demo's private image, read by "other" with demo's metadata: the service answers
    # 404 as it does for every failure.
    image = seeded["fields"][0]
    ref = parse_image(f"Image:{image}")
    meta = run(run_meta, pb_manager, ref.id)
    other = login(pb_settings(settings_for, emulator.http_url, host=emulator.host), "other")
    conn = run(other.connection)
    pixels = other.registry.open_reader(conn, ref, meta)
    with pytest.raises(TileNotServed) as caught:
        run(lambda: pixels.read(PixelRequest(z=(0,), c=(0,))))
    assert pixels.transport == "pixelbuffer"
    run(pixels.aclose)
    run(other.close)
    assert (caught.value.image_id, caught.value.status) == (image, 404)
    assert caught.value.service == f"{emulator.http_url}/tile"
    assert f"could not serve image {image}" in str(caught.value)
    assert 'Add "ice" after "pixelbuffer" in transports.read' in str(caught.value)


async def run_meta(manager: SessionManager, image_id: int) -> Any:
    conn = await manager.connection()
    return await conn.image_meta(image_id)


def test_bad_request_raises_an_error_quoting_the_request(pb_manager: SessionManager,
                                                         emulator: Emulator,
                                                         seeded: dict[str, Any]) -> None:
    # The service answers 400 only for parameters that are not numbers, which this
    # package never sends: a fractional x stands in for such a bug.
    image = seeded["types"]["uint8"]
    key = run(pb_manager.connection).session_key
    client = TileClient(TileEndpoint.parse(emulator.http_url), key,
                        pb_manager.settings.pixelbuffer)
    query = TileQuery(image, 0, 0, 0, Region(1.5, 0, 10, 10))  # type: ignore[arg-type]
    with pytest.raises(BadTileRequest) as caught:
        client.fetch(query, 100)
    client.close()
    message = str(caught.value)
    assert f"GET /tile/{image}/0/0/0?x=1.5&y=0&w=10&h=10" in message
    assert 'bug' in message and 'HTTP 400: For input string: "1.5"' in message
    assert not caught.value.transient
    assert key not in message


# -- the service's refusals: proxy layout, 404, 403, bit, max plane ---------------------------


@pytest.mark.parametrize("suffix", ["", "/", "/tile", "/tile/"])
def test_probe_works_behind_the_readmes_tile_location(settings_for: Any, emulator: Emulator,
                                                       seeded: dict[str, Any],
                                                       sent: list[Sent], suffix: str) -> None:
    # The emulator's port is nginx with `location /tile/`: OPTIONS /tile is a 301 there.
    assert requests.options(f"{emulator.http_url}/tile", allow_redirects=False,
                            timeout=30).status_code == 301
    manager = login(pb_settings(settings_for, emulator.http_url + suffix, host=emulator.host))
    data, transport = read(manager, seeded["types"]["uint16"])
    run(manager.close)
    assert transport == "pixelbuffer"
    np.testing.assert_array_equal(data[0, 0],
                                  synthetic.every_type(TEST_SEED.seed, 64)["uint16"])
    # After this test's own OPTIONS /tile, the product's one probe.
    assert [s.url for s in sent[1:] if s.method == "OPTIONS"] == [f"{emulator.http_url}/tile/"]


def warnings_about(caplog: pytest.LogCaptureFixture, image: int) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and f"image {image}" in r.getMessage()]


def test_tile_answering_404_falls_back_to_ice_for_that_image_with_one_log_line(
        settings_for: Any, faults: Emulator, seeded: dict[str, Any], sent: list[Sent],
        caplog: pytest.LogCaptureFixture) -> None:
    image, other = seeded["zstack"], seeded["types"]["uint16"]
    faults.set_faults(http_unreadable_images=[image])
    manager = login(pb_settings(settings_for, faults.http_url + "/tile/",
                                ("pixelbuffer", "ice"), faults.host))
    reader = ImageReader(manager, parse_image(f"Image:{image}"))
    async def read_ahead() -> np.ndarray:
        # As CellProfiler's read-ahead: one read per channel, all at once, each of two
        # planes, so many tiles answer 404 together.
        planes: list[np.ndarray] = [np.empty(0)] * 3

        async def one(ci: int) -> None:
            planes[ci] = await reader.read(z=[0, 5], c=[ci])

        async with anyio.create_task_group() as tg:
            for ci in range(3):
                tg.start_soon(one, ci)
        return np.concatenate(planes, axis=1)

    with caplog.at_level(logging.INFO):
        first = run(read_ahead)
        after_first = len(tile_requests(sent))
        second = run(lambda: reader.read(z=[7], c=[1]))
        assert reader.transport == "ice"
        run(reader.aclose)
        # A new reader of the same image does not ask the service again.
        third, third_transport = read(manager, image, z=[2], c=[2])
        # Other images still come from the service.
        _, other_transport = read(manager, other)
    run(manager.close)
    stack = synthetic.z_stack(TEST_SEED.seed, 256, 8, 3)
    np.testing.assert_array_equal(first, stack[[0, 5]])
    np.testing.assert_array_equal(second[0, 0], stack[7, 1])
    np.testing.assert_array_equal(third[0, 0], stack[2, 2])
    assert (third_transport, other_transport) == ("ice", "pixelbuffer")
    image_tiles = [s for s in tile_requests(sent) if f"/tile/{image}/" in s.url]
    assert 1 <= len(image_tiles) == after_first <= 6
    lines = warnings_about(caplog, image)
    assert len(lines) == 1
    assert "falling back to ice" in lines[0] and "HTTP 404" in lines[0]


def test_403_for_a_session_ice_accepts_falls_back_to_ice_and_sets_the_service_aside(
        settings_for: Any, faults: Emulator, seeded: dict[str, Any], sent: list[Sent],
        caplog: pytest.LogCaptureFixture) -> None:
    faults.set_faults(http_refuse_sessions=True)
    manager = login(pb_settings(settings_for, faults.http_url + "/tile",
                                ("pixelbuffer", "ice"), faults.host))
    key = run(manager.connection).session_key
    image = seeded["zstack"]
    with caplog.at_level(logging.INFO):
        data, transport = read(manager, image, z=[1], c=[0, 1, 2])
        refused = len(tile_requests(sent))
        _, next_transport = read(manager, seeded["types"]["uint8"])
    assert run(manager.connection).session_key == key  # the live session was kept
    run(manager.close)
    stack = synthetic.z_stack(TEST_SEED.seed, 256, 8, 3)
    np.testing.assert_array_equal(data[0], stack[1])
    assert (transport, next_transport) == ("ice", "ice")
    assert refused >= 1 and len(tile_requests(sent)) == refused
    lines = warnings_about(caplog, image)
    assert len(lines) == 1 and "HTTP 403" in lines[0] and "falling back to ice" in lines[0]


def test_403_after_one_renewal_falls_back_to_ice(settings_for: Any, faults: Emulator,
                                                 seeded: dict[str, Any], sent: list[Sent],
                                                 caplog: pytest.LogCaptureFixture) -> None:
    manager = login(pb_settings(settings_for, faults.http_url, ("pixelbuffer", "ice"),
                                faults.host))
    image = seeded["types"]["int16"]
    reader = ImageReader(manager, parse_image(f"Image:{image}"))
    run(reader.read)
    old_key = run(manager.connection).session_key
    faults.set_faults(http_refuse_sessions=True)
    faults.expire_sessions(keys=[old_key])
    with caplog.at_level(logging.INFO):
        data = run(reader.read)
    assert reader.transport == "ice"
    assert run(manager.connection).session_key != old_key
    run(reader.aclose)
    run(manager.close)
    np.testing.assert_array_equal(data[0, 0], synthetic.every_type(TEST_SEED.seed, 64)["int16"])
    assert "session lapsed or connection dropped (SessionRefused); renewing" in caplog.text
    # One tile before the renewal, one after; then Ice.
    assert len(tile_requests(sent)) == 3
    assert len(warnings_about(caplog, image)) == 1


def test_bit_images_never_go_to_the_pixel_buffer(settings_for: Any, emulator: Emulator,
                                                 seeded: dict[str, Any],
                                                 sent: list[Sent]) -> None:
    manager = login(pb_settings(settings_for, emulator.http_url, ("pixelbuffer", "ice"),
                                emulator.host))
    data, transport = read(manager, seeded["types"]["bit"])
    run(manager.close)
    assert transport == "ice"
    np.testing.assert_array_equal(data[0, 0], synthetic.every_type(TEST_SEED.seed, 64)["bit"])
    assert sent == []


def test_tiles_are_capped_at_the_servers_max_plane(settings_for: Any, emulator: Emulator,
                                                   seeded: dict[str, Any],
                                                   sent: list[Sent]) -> None:
    # 16 MiB strips of the 4096² uint16 plane would be 2048 rows: twice the shared
    # emulator's 2048 × 2048 max plane, which the service answers with zeros.
    manager = login(pb_settings(settings_for, emulator.http_url, host=emulator.host,
                                transfer__max_chunk_bytes=16 * 1024 * 1024))
    data, transport = read(manager, seeded["large"])
    run(manager.close)
    assert transport == "pixelbuffer"
    np.testing.assert_array_equal(data[0, 0], synthetic.large(TEST_SEED.seed, 4096))
    sizes = [tuple(int(v[0]) for k, v in sorted(parse_qs(urlsplit(s.url).query).items())
                   if k in ("w", "h")) for s in tile_requests(sent)]
    assert sizes == [(1024, 4096)] * 4


# -- the HTTP session -----------------------------------------------------------------------------


def test_aclose_closes_the_http_session(pb_manager: SessionManager,
                                        seeded: dict[str, Any]) -> None:
    reader = ImageReader(pb_manager, parse_image(f"Image:{seeded['zstack']}"))
    run(lambda: reader.read(c=[0, 1, 2]))
    pixels = reader._source._source  # type: ignore[union-attr]
    assert isinstance(pixels, source.PixelBufferSource)
    adapter = pixels.client.session.get_adapter("http://")
    assert isinstance(adapter, HTTPAdapter)
    pools = adapter.poolmanager.pools
    assert len(pools) == 1
    pool = pools[next(iter(pools.keys()))]
    # Three channels, one keep-alive pool of at most `concurrency` connections.
    assert 1 <= pool.num_connections <= pb_manager.settings.pixelbuffer.concurrency
    run(reader.aclose)
    assert len(adapter.poolmanager.pools) == 0


@pytest.mark.parametrize("overrides,verify", [({}, True), ({"verify": False}, False),
                                              ({"ca_bundle": "/etc/ca.pem"}, "/etc/ca.pem")])
def test_tls_verification_follows_the_settings(overrides: dict[str, Any],
                                               verify: bool | str) -> None:
    settings = PixelBufferSettings(concurrency=3, **overrides)
    client = TileClient(TileEndpoint.parse("https://omero.example.org/tile"), "k", settings)
    assert client.session.verify == verify
    adapter = client.session.get_adapter("https://omero.example.org/")
    assert isinstance(adapter, HTTPAdapter) and adapter._pool_maxsize == 3  # type: ignore[attr-defined]
    assert "k" not in repr(client)
    client.close()


def test_hook_declines_for_a_host_without_a_url(pb_manager: SessionManager,
                                                seeded: dict[str, Any]) -> None:
    conn = run(pb_manager.connection)
    meta = run(run_meta, pb_manager, seeded["types"]["uint8"])
    settings = pb_manager.settings.replace({"pixelbuffer.servers": {}})
    assert plugin.omero_open_reader(connection=conn, image=parse_image("Image:1"), meta=meta,
                                    settings=settings) is None
