"""The omero-ms-pixel-buffer HTTP API behind its documented nginx layout, plus a control endpoint.

The port stands for a web server configured as the service's README says
(``location /tile/ { proxy_pass http://pixel_buffer_backend; }``): everything under
``/tile/`` reaches the service unchanged, ``/tile`` without the slash answers nginx's
``301`` to ``/tile/`` (for every method, query kept), and other paths are not the
service's (``404``; OMERO.web would be there). ``/_emulator/…`` (faults, expiring
sessions, counts of the service's answers and of every call, the network profile) needs
the emulator's control token. Every other request is counted (``"HTTP GET /tile"``, per
session key too) and, under a network profile, waits its round trip and the transfer of
its bytes (``network.Network``); control requests are neither.

The service, as glencoesoftware/omero-ms-pixel-buffer answers (``PixelBufferMicroserviceVerticle``,
``PixelBufferVerticle``, ``TileCtx``, ``TileRequestHandler``; omero-ms-core's
``OmeroWebSessionRequestHandler``):

* ``OPTIONS`` on any path, without auth: ``{"provider": "PixelBufferMicroservice", …}``.
* ``GET /tile/{imageId}/{z}/{c}/{t}?x=&y=&w=&h=&resolution=&format=`` (0-based;
  ``resolution`` 0 is the smallest level; no ``resolution``: full size; ``w``/``h``
  missing or 0: the full image's ``sizeX``/``sizeY``). No ``format``: raw big-endian
  bytes, ``w·h·bytes`` long; ``png`` or ``tif`` otherwise.
* No session key (``X-OMERO-Session-Key`` header, else ``bsession``, else the
  ``sessionid`` cookie): ``403``, before anything else is looked at.
* Parameters that do not parse as Java ints/longs: ``400`` whose body is Java's
  message (``For input string: "…"``).
* A key whose session cannot be joined: ``403``.
* Any failure inside the tile handler — unknown image, no access, a plane or region
  outside the image, a resolution a non-pyramid buffer cannot set, a pyramid not
  built yet, a lock, I/O, an unknown format: ``404`` with an empty body.
* ``bit`` images: ``bitSize / 8`` is 0 bytes per pixel, so the tile is empty: ``200``
  with an empty body (region bounds are still checked).
* A request of more than ``omero.pixeldata.max_plane_width × max_plane_height``
  pixels: the NGFF pixel buffer (``ZarrPixelBuffer.checkReadSize``, the service's
  default pixels service) throws inside ``getTileDirect``, which logs it and returns
  without filling the buffer, so the service answers ``200`` with ``w·h·bytes`` zero
  bytes. The emulator does the same for every image: a client must never ask for more.
"""

from __future__ import annotations

import contextlib
import io
import json
import logging
import re
import secrets
import threading
import time
from http.cookies import SimpleCookie
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlsplit

import numpy as np

from cellprofiler_omero.emulator.faults import FaultSettings
from cellprofiler_omero.emulator.network import NetworkSettings
from cellprofiler_omero.emulator.pixels import BIT_SIZES, PixelsShape

if TYPE_CHECKING:
    from cellprofiler_omero.emulator.server import Context
    from cellprofiler_omero.emulator.store import Obj

log = logging.getLogger(__name__)

PROVIDER = {"provider": "PixelBufferMicroservice", "version": "0.9.0-emulator",
            "features": []}
#: The nginx ``location`` the README puts in front of the service.
LOCATION = "/tile/"
#: Vert.x path parameters match any non-empty segment; parsing decides 400 or not.
_TILE = re.compile(r"^/tile/([^/]+)/([^/]+)/([^/]+)/([^/]+)/?$")
#: What ``Integer.parseInt``/``Long.parseLong`` accept (ASCII digits, optional sign).
_JAVA_INTEGER = re.compile(r"^[+-]?[0-9]+$")
_INT_RANGE = (-(2 ** 31), 2 ** 31 - 1)
_LONG_RANGE = (-(2 ** 63), 2 ** 63 - 1)
#: omero-common's defaults for ``omero.pixeldata.max_plane_width``/``height``.
DEFAULT_MAX_PLANE = 3192
_NGINX_301 = (b"<html>\r\n<head><title>301 Moved Permanently</title></head>\r\n<body>\r\n"
              b"<center><h1>301 Moved Permanently</h1></center>\r\n<hr><center>nginx</center>"
              b"\r\n</body>\r\n</html>\r\n")
_VERTX_404 = b"<html><body><h1>Resource not found</h1></body></html>"
#: About what a status line and the headers of an answer take (bandwidth accounting).
_REPLY_HEADER_BYTES = 200


class BadParameter(ValueError):
    """A parameter Java would not parse (``NumberFormatException``: HTTP 400)."""


class TileFailure(Exception):
    """Anything that goes wrong inside the tile handler (HTTP 404, empty body)."""


def java_number(text: str, *, long: bool = False) -> int:
    """``text`` as ``Integer.parseInt`` (``Long.parseLong``) parses it, else ``BadParameter``."""
    low, high = _LONG_RANGE if long else _INT_RANGE
    if _JAVA_INTEGER.match(text) and low <= int(text) <= high:
        return int(text)
    raise BadParameter(f'For input string: "{text}"')


class TileCtx:
    """One tile request's parameters, parsed as the service's ``TileCtx`` does."""

    def __init__(self, path: tuple[str, ...], query: dict[str, list[str]]) -> None:
        def optional(name: str) -> int | None:
            values = query.get(name)
            return None if values is None else java_number(values[0])

        self.image_id = java_number(path[0], long=True)
        self.z, self.c, self.t = (java_number(v) for v in path[1:])
        self.x = optional("x") or 0
        self.y = optional("y") or 0
        self.w = optional("w") or 0
        self.h = optional("h") or 0
        self.resolution = optional("resolution")
        formats = query.get("format")
        self.format = None if formats is None else formats[0]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server
    #: Whether this request crosses the emulated network (control requests do not).
    _shaped = False

    def log_message(self, format: str, *args: Any) -> None:
        # Never log request lines: they may carry a bsession key.
        return None

    def _send(self, status: int, body: bytes, content_type: str | None = "text/plain",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        if content_type:
            self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        if self._shaped and self.server.ctx.network.shaping:
            self.server.ctx.network.reply(_REPLY_HEADER_BYTES + len(body))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def send_response(self, code: int, message: str | None = None) -> None:
        # Count the service's answers (method and status) so tests can prove which
        # transport a client read through; a real server's access log holds the same.
        if urlsplit(self.path).path.startswith(LOCATION):
            self.server.count(f"{self.command} {code}")
        super().send_response(code, message)

    def _error(self, status: int, message: str = "") -> None:
        # The service ends failed requests with the status alone (no body), except 400.
        self._send(status, message.encode(), "text/plain" if message else None)

    # -- the nginx layer ---------------------------------------------------------------------

    def _front(self) -> str | None:
        """The path when it is the service's; otherwise answer as nginx would and return None."""
        parts = urlsplit(self.path)
        if parts.path == LOCATION.rstrip("/"):
            # nginx: a request for a `location /tile/` prefix without its slash is
            # redirected permanently to it (arguments kept), whatever the method.
            host = self.headers.get("Host") or "{}:{}".format(*self.server.server_address[:2])
            target = f"http://{host}{LOCATION}" + (f"?{parts.query}" if parts.query else "")
            self._send(301, _NGINX_301, "text/html", {"Location": target})
            return None
        if not parts.path.startswith(LOCATION):
            self._send(404, b"not found")
            return None
        return parts.path

    def _arrive(self) -> None:
        """Count this request (by its first path segment) and let it cross the network."""
        ctx = self.server.ctx
        parts = urlsplit(self.path)
        segment = parts.path.lstrip("/").split("/", 1)[0]
        key = self._session_key(parse_qs(parts.query, keep_blank_values=True))
        ctx.calls.count(f"HTTP {self.command} /{segment}", key)
        self._shaped = True
        ctx.network.round_trip()
        if ctx.network.shaping:
            body = int(self.headers.get("Content-Length") or 0)
            ctx.network.request(len(self.requestline) + 2 + len(str(self.headers)) + body)

    def do_OPTIONS(self) -> None:
        self._arrive()
        if self._front() is None:
            return
        ctx = self.server.ctx
        if ctx.faults.settings.http_options_fail:
            self._error(500, "options unavailable (fault)")
            return
        # The service routes OPTIONS before its session handler: no auth needed.
        self._send(200, json.dumps(PROVIDER, indent=2).encode(), "application/json")

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        if parts.path.startswith("/_emulator/"):
            self._shaped = False  # a kept-alive connection may have served tiles before
            self._control(parts.path)
            return
        self._arrive()
        if self._front() is None:
            return
        self._send(405, b"", None)

    def do_GET(self) -> None:
        try:
            self._arrive()
            path = self._front()
            if path is not None:
                self._get(path)
        except (BrokenPipeError, ConnectionResetError):
            return
        except Exception:
            log.exception("tile request failed")
            with contextlib.suppress(OSError):
                self._error(500)

    # -- control ---------------------------------------------------------------------------

    def _control(self, path: str) -> None:
        ctx = self.server.ctx
        token = self.headers.get("X-Emulator-Control", "")
        if not ctx.options.control_token or not secrets.compare_digest(
                token, ctx.options.control_token):
            self._error(403, "bad control token")
            return
        length = int(self.headers.get("Content-Length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        if path == "/_emulator/faults":
            try:
                ctx.faults.set(FaultSettings.from_dict(body))
            except (TypeError, ValueError) as exc:
                self._error(400, str(exc))
                return
            self._send(200, json.dumps(ctx.faults.snapshot()).encode(), "application/json")
        elif path == "/_emulator/expire-sessions":
            keys = body.get("keys")
            user = body.get("user")
            expired = 0
            for session in ctx.store.sessions():
                owner = ctx.store.user(session.user_id)
                if (keys is None or session.uuid in keys) and (
                        user is None or (owner is not None and owner.omename == user)):
                    ctx.store.expire_session(session.uuid)
                    ctx.forget_session(session.uuid)
                    expired += 1
            self._send(200, json.dumps({"expired": expired}).encode(), "application/json")
        elif path == "/_emulator/sessions":
            sessions = [{"user": (u.omename if (u := ctx.store.user(s.user_id)) else None),
                         "refcount": s.refcount, "user_session": s.user_session,
                         "live": ctx.store.live_session(s.uuid, touch=False) is not None}
                        for s in ctx.store.sessions()]
            self._send(200, json.dumps(sessions).encode(), "application/json")
        elif path == "/_emulator/http-requests":
            self._send(200, json.dumps(self.server.counts()).encode(), "application/json")
        elif path == "/_emulator/calls":
            counts = ctx.calls.counts(body.get("session"))
            if body.get("reset"):
                ctx.calls.reset()
            self._send(200, json.dumps(counts).encode(), "application/json")
        elif path == "/_emulator/network":
            try:
                ctx.network.set(NetworkSettings.from_dict(body))
            except (TypeError, ValueError) as exc:
                self._error(400, str(exc))
                return
            self._send(200, json.dumps(ctx.network.snapshot()).encode(), "application/json")
        else:
            self._error(404, "unknown control path")

    # -- tiles -----------------------------------------------------------------------------

    def _session_key(self, query: dict[str, list[str]]) -> str | None:
        key = self.headers.get("X-OMERO-Session-Key")
        if key is not None:
            return key
        if query.get("bsession"):
            return query["bsession"][0]
        cookie = self.headers.get("Cookie")
        if cookie:
            jar = SimpleCookie(cookie)
            if "sessionid" in jar:
                return jar["sessionid"].value
        return None

    def _get(self, path: str) -> None:
        ctx = self.server.ctx
        fault = ctx.faults.http_fault()
        delay = ctx.faults.http_latency()
        if delay:
            time.sleep(delay)
        if fault == "drop":
            self.close_connection = True
            self.connection.close()
            return
        if fault in ("500", "503"):
            self._error(int(fault), "server error (fault)")
            return
        query = parse_qs(urlsplit(self.path).query, keep_blank_values=True)
        # The session handler runs on every route, before routing and parsing.
        key = self._session_key(query)
        if key is None:
            self._error(403)
            return
        match = _TILE.match(path)
        if match is None:
            self._send(404, _VERTX_404, "text/html")
            return
        try:
            tile_ctx = TileCtx(match.groups(), query)
        except BadParameter as exc:
            self._error(400, str(exc))
            return
        # OmeroRequest joins the session: PermissionDenied/CannotCreateSession → 403.
        session = ctx.store.live_session(key)
        if session is None or ctx.faults.settings.http_refuse_sessions:
            self._error(403)
            return
        try:
            body, content_type = self._tile(tile_ctx, session.user_id)
        except Exception as exc:
            # TileRequestHandler.getTile logs any exception and returns null: 404.
            log.debug("tile of image %s failed: %s", tile_ctx.image_id, exc)
            self._error(404)
            return
        filename = (f"image{tile_ctx.image_id}_z{tile_ctx.z}_c{tile_ctx.c}_t{tile_ctx.t}_"
                    f"x{tile_ctx.x}_y{tile_ctx.y}_w{tile_ctx.w}_h{tile_ctx.h}."
                    f"{tile_ctx.format or 'bin'}")
        self._send(200, body, content_type,
                   {"Content-Disposition": f'attachment; filename="{filename}"'})

    def _tile(self, tc: TileCtx, user_id: int) -> tuple[bytes, str]:
        """The body and content type of one tile; any exception means 404."""
        ctx = self.server.ctx
        user = ctx.store.user(user_id)
        image = ctx.store.get(tc.image_id, "Image")
        if user is None or image is None or not ctx.store.can_read(
                user, image.owner_id, image.group_id):
            raise TileFailure(f"Cannot find Image:{tc.image_id}")
        self._check_readable(image)
        d = image.data
        levels = [(int(x), int(y)) for x, y in d["levels"]]
        shape = PixelsShape(d["sizeX"], d["sizeY"], d["sizeZ"], d["sizeC"], d["sizeT"],
                            d["pixelsType"])
        level = 0
        if tc.resolution is not None:
            if len(levels) == 1:
                raise TileFailure("Cannot set resolution levels on a ROMIO pixel buffer.")
            if not 0 <= tc.resolution < len(levels):
                raise TileFailure(f"resolution {tc.resolution} does not exist")
            level = len(levels) - 1 - tc.resolution
        # Width and height 0 mean the full image's size, whatever the resolution.
        tc.w = tc.w or shape.size_x
        tc.h = tc.h or shape.size_y
        size = tc.w * tc.h * (BIT_SIZES[shape.pixel_type] // 8)
        if size < 0:
            raise TileFailure("NegativeArraySizeException")
        sx, sy = levels[level]
        # RomioPixelBuffer.checkCubeBounds: both corners inside the level.
        for value, limit in ((tc.x, sx), (tc.y, sy), (tc.x + tc.w - 1, sx),
                             (tc.y + tc.h - 1, sy), (tc.z, shape.size_z), (tc.c, shape.size_c),
                             (tc.t, shape.size_t)):
            if not 0 <= value < limit:
                raise TileFailure("DimensionsOutOfBoundsException")
        if shape.pixel_type == "bit":
            if tc.format is not None:
                raise TileFailure("an empty tile cannot be written as an image")
            return b"", "application/octet-stream"
        max_w = int(ctx.config.get("omero.pixeldata.max_plane_width", DEFAULT_MAX_PLANE))
        max_h = int(ctx.config.get("omero.pixeldata.max_plane_height", DEFAULT_MAX_PLANE))
        if tc.w * tc.h > max_w * max_h:
            # ZarrPixelBuffer.getTileDirect swallows its read-size error: the buffer the
            # handler allocated goes out unfilled.
            log.debug("Requested shape [%d, %d] > max plane size %d * %d", tc.w, tc.h,
                      max_w, max_h)
            raw = bytes(size)
        else:
            raw = ctx.pixels.read(tc.image_id, shape, levels, z=tc.z, c=tc.c, t=tc.t,
                                  x=tc.x, y=tc.y, w=tc.w, h=tc.h, level=level)
        if tc.format is None:
            return raw, "application/octet-stream"
        if tc.format not in ("png", "tif"):
            raise TileFailure(f"Unknown output format: {tc.format}")
        tile = np.frombuffer(raw, dtype=shape.dtype).reshape(tc.h, tc.w)
        native = tile.astype(tile.dtype.newbyteorder("="))
        buf = io.BytesIO()
        if tc.format == "png":
            from PIL import Image

            # PNG has no signed samples: the bytes go out as they are.
            unsigned = {np.dtype("int8"): np.uint8, np.dtype("int16"): np.uint16}
            if native.dtype in unsigned:
                native = native.view(unsigned[native.dtype])
            if native.dtype not in (np.uint8, np.uint16):
                raise TileFailure(f"PNG cannot hold {shape.pixel_type} pixels")
            Image.fromarray(native).save(buf, format="PNG")
            return buf.getvalue(), "image/png"
        import tifffile

        tifffile.imwrite(buf, native)
        return buf.getvalue(), "image/tiff"


    def _check_readable(self, image: Obj) -> None:
        """Raise where the service's pixels service could not open the image's pixels."""
        ctx = self.server.ctx
        if image.id in ctx.faults.settings.http_unreadable_images:
            raise TileFailure(f"I/O error reading Image:{image.id} (fault)")
        # PixelsService.getPixelBuffer: a pyramid not written yet, or still being built,
        # raises MissingPyramidException; a ROMIO image nobody wrote has no pixel file.
        state = image.data.get("pyramid")
        wait = getattr(ctx, "pyramid_wait_s", None)
        if state == "missing" or (state == "building" and wait is not None
                                  and wait(image) > 0):
            raise TileFailure(f"MissingPyramidException for Image:{image.id}")
        if image.data.get("pixelFile") is False:
            raise TileFailure(f"no pixel file for Image:{image.id}")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], ctx: Context) -> None:
        super().__init__(address, _Handler)
        self.ctx = ctx
        self._counts: dict[str, int] = {}
        self._counts_lock = threading.Lock()

    def count(self, what: str) -> None:
        with self._counts_lock:
            self._counts[what] = self._counts.get(what, 0) + 1

    def counts(self) -> dict[str, int]:
        """Answers under ``/tile/`` since the start, by ``"METHOD status"``."""
        with self._counts_lock:
            return dict(self._counts)


class HttpServer:
    """Runs the pixel-buffer API in a background thread."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._server: _Server | None = None
        self._thread: threading.Thread | None = None
        self.port = 0

    def start(self) -> None:
        opts = self.ctx.options
        self._server = _Server((opts.host, opts.http_port), self.ctx)
        self.port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True,
                                        name="emulator-http")
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
