"""The omero-ms-pixel-buffer HTTP API, plus a private control endpoint for tests.

``GET /tile/{imageId}/{z}/{c}/{t}?x=&y=&w=&h=&resolution=&format=`` (0-based;
``resolution`` 0 is the smallest level, as the microservice numbers them). No
``format``: raw big-endian bytes, ``w·h·bytes`` long, no header; ``png`` or ``tif``
otherwise. Auth: ``X-OMERO-Session-Key`` header, else ``bsession`` query parameter,
else the ``sessionid`` cookie; none or a dead session → 403. 400 bad parameters,
404 not found / no access / unknown format, 500 anything else. ``OPTIONS`` (no auth)
answers the provider JSON. It shares the Ice side's store, sessions and faults.

``/_emulator/…`` (faults, expiring sessions) needs the emulator's control token.
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
from cellprofiler_omero.emulator.pixels import PixelsShape

if TYPE_CHECKING:
    from cellprofiler_omero.emulator.server import Context

log = logging.getLogger(__name__)

PROVIDER = {"provider": "PixelBufferMicroservice", "version": "0.9.0-emulator",
            "features": ["tile"]}
_TILE = re.compile(r"^/tile/(\d+)/(\d+)/(\d+)/(\d+)/?$")


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:
        # Never log request lines: they may carry a bsession key.
        return None

    def _send(self, status: int, body: bytes, content_type: str = "text/plain",
              headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        for key, value in (headers or {}).items():
            self.send_header(key, value)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, status: int, message: str) -> None:
        self._send(status, message.encode())

    def do_OPTIONS(self) -> None:
        ctx = self.server.ctx
        if ctx.faults.settings.http_options_fail:
            self._error(500, "options unavailable (fault)")
            return
        self._send(200, json.dumps(PROVIDER).encode(), "application/json",
                   {"Allow": "GET, OPTIONS"})

    def do_POST(self) -> None:
        parts = urlsplit(self.path)
        if parts.path.startswith("/_emulator/"):
            self._control(parts.path)
            return
        self._error(404, "not found")

    def do_GET(self) -> None:
        try:
            self._get()
        except (BrokenPipeError, ConnectionResetError):
            return
        except Exception:
            log.exception("tile request failed")
            with contextlib.suppress(OSError):
                self._error(500, "internal error")

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
        else:
            self._error(404, "unknown control path")

    # -- tiles -----------------------------------------------------------------------------

    def _session_key(self, query: dict[str, list[str]]) -> str | None:
        key = self.headers.get("X-OMERO-Session-Key")
        if key:
            return key
        if query.get("bsession"):
            return query["bsession"][0]
        cookie = self.headers.get("Cookie")
        if cookie:
            jar = SimpleCookie(cookie)
            if "sessionid" in jar:
                return jar["sessionid"].value
        return None

    def _get(self) -> None:
        ctx = self.server.ctx
        parts = urlsplit(self.path)
        match = _TILE.match(parts.path)
        if match is None:
            self._error(404, "not found")
            return
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
        query = parse_qs(parts.query)
        key = self._session_key(query)
        session = ctx.store.live_session(key) if key else None
        if session is None:
            self._error(403, "no valid session")
            return
        user = ctx.store.user(session.user_id)
        image_id, z, c, t = (int(v) for v in match.groups())
        image = ctx.store.get(image_id, "Image")
        if user is None or image is None or not ctx.store.can_read(
                user, image.owner_id, image.group_id):
            self._error(404, f"image {image_id} not found")
            return
        d = image.data
        levels = [(int(x), int(y)) for x, y in d["levels"]]
        shape = PixelsShape(d["sizeX"], d["sizeY"], d["sizeZ"], d["sizeC"], d["sizeT"],
                            d["pixelsType"])
        try:
            resolution = int(query.get("resolution", [str(len(levels) - 1)])[0])
            level0 = len(levels) - 1 - resolution
            if not 0 <= level0 < len(levels):
                raise ValueError(f"resolution {resolution} does not exist")
            sx, sy = levels[level0]
            x = int(query.get("x", ["0"])[0])
            y = int(query.get("y", ["0"])[0])
            w = int(query.get("w", [str(sx)])[0])
            h = int(query.get("h", [str(sy)])[0])
            if not (0 <= z < shape.size_z and 0 <= c < shape.size_c and 0 <= t < shape.size_t):
                raise ValueError("plane out of range")
            if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > sx or y + h > sy:
                raise ValueError("region out of range")
        except ValueError as exc:
            self._error(400, f"bad request: {exc}")
            return
        fmt = query.get("format", [""])[0].lower()
        if fmt not in ("", "png", "tif", "tiff"):
            self._error(404, f"unknown format {fmt!r}")
            return
        raw = ctx.pixels.read(image_id, shape, levels, z=z, c=c, t=t, x=x, y=y, w=w, h=h,
                              level=level0)
        if fmt == "":
            self._send(200, raw, "application/octet-stream")
            return
        tile = np.frombuffer(raw, dtype=shape.dtype).reshape(h, w)
        native = tile.astype(tile.dtype.newbyteorder("="))
        buf = io.BytesIO()
        if fmt == "png":
            from PIL import Image

            if native.dtype not in (np.uint8, np.uint16):
                self._error(400, f"png cannot hold {d['pixelsType']} pixels")
                return
            Image.fromarray(native).save(buf, format="PNG")
            self._send(200, buf.getvalue(), "image/png")
        else:
            import tifffile

            tifffile.imwrite(buf, native)
            self._send(200, buf.getvalue(), "image/tiff")


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    request_queue_size = 64

    def __init__(self, address: tuple[str, int], ctx: Context) -> None:
        super().__init__(address, _Handler)
        self.ctx = ctx


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
