"""The omero-ms-pixel-buffer HTTP service: where it lives, whether it answers, one tile.

Base URLs are configured per OMERO server host in ``pixelbuffer.servers`` and may be
written two ways:

* the service's root, ``http://omero.example.org:8082`` — tiles are then fetched
  from ``{root}/tile/{imageId}/{z}/{c}/{t}``;
* a URL that already ends in ``/tile``, ``https://omero.example.org/tile`` — the
  usual reverse-proxy path in front of the service; tiles are then fetched from
  ``{url}/{imageId}/{z}/{c}/{t}``.

Any other path prefix is treated as a root (``https://host/pb`` → ``https://host/pb/tile/…``).

Discovery is an ``OPTIONS`` request on ``{tile URL}/`` — with the slash: the service
answers ``OPTIONS`` on any path without auth (``{"provider": "PixelBufferMicroservice",
…}``), and the README's nginx layout (``location /tile/ {…}``) forwards only paths
under ``/tile/``, answering ``/tile`` itself with a 301. Its outcome is cached per
tile URL for the process: a success for good, a failure for ``PROBE_RETRY_SECONDS``,
after which the next image probes again.

What the service's answers mean (read from its source, ``TileRequestHandler``,
``PixelBufferVerticle``): 404 for *any* failure inside its tile handler (unknown image,
no access, region outside the image, pyramid not built yet, lock, I/O), 400 only for
parameters that are not numbers, 403 when it cannot join the session. Images whose
metadata Ice has already read exist and are readable, so a 404 means the service cannot
serve that image (``TileNotServed``: the next read transport serves it, and this
process does not ask the service for it again). A request over the NGFF pixel buffer's
``max_plane_width × max_plane_height`` pixels comes back as zeros, so requests are kept
under ``max_tile_pixels``. ``bit`` images come back empty and are never asked for.

The session key travels only in the ``X-OMERO-Session-Key`` header of tile requests,
only to the configured URL (redirects are not followed, so it cannot be forwarded
elsewhere), and never in a URL or a log line.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from urllib.parse import urlencode, urlsplit, urlunsplit

import requests
from requests.adapters import HTTPAdapter

from cellprofiler_omero.core.errors import (
    AuthError,
    ConfigError,
    OmeroError,
    TransportUnavailable,
)
from cellprofiler_omero.core.model import Region
from cellprofiler_omero.transports.pixelbuffer.settings import PixelBufferSettings

log = logging.getLogger(__name__)

PROVIDER = "PixelBufferMicroservice"
SESSION_HEADER = "X-OMERO-Session-Key"
USER_AGENT = "cellprofiler-omero"
#: How long a failed probe is believed before the service is asked again.
PROBE_RETRY_SECONDS = 300.0
#: The probe must not hold up opening an image for long: an absent service should
#: cost a second or two, not the full read timeout.
PROBE_TIMEOUT_SECONDS = 5.0
#: Error bodies up to this size are read (and quoted) rather than dropping the connection.
MAX_ERROR_BODY = 64 * 1024
#: omero-common's default ``omero.pixeldata.max_plane_width`` and ``max_plane_height``:
#: the service's NGFF pixel buffer answers zeros for a larger request, and the service
#: uses this default unless its own configuration repeats the server's value.
DEFAULT_MAX_PLANE = (3192, 3192)
#: How many images the service could not serve are remembered (per process).
MAX_UNSERVED = 10_000


@dataclass(frozen=True)
class TileEndpoint:
    """Where one service's tiles are: ``tile_base`` + ``/{image}/{z}/{c}/{t}``."""

    tile_base: str

    @classmethod
    def parse(cls, url: str) -> TileEndpoint:
        """The endpoint for a configured base URL (a root, or a URL ending in ``/tile``)."""
        text = url.strip()
        parts = urlsplit(text)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(
                f"The pixel-buffer URL {redact(text)!r} is not an http(s) URL.",
                hint="Set pixelbuffer.servers to e.g. {\"omero.example.org\" = "
                     "\"https://omero.example.org/tile\"}.")
        if parts.query or parts.fragment:
            raise ConfigError(
                f"The pixel-buffer URL {redact(text)!r} must not have a query or fragment.")
        path = parts.path.rstrip("/")
        if not path.endswith("/tile"):
            path += "/tile"
        return cls(urlunsplit((parts.scheme, parts.netloc, path, "", "")))

    @property
    def probe_url(self) -> str:
        """Where the probe goes: inside the proxy's ``location /tile/``, which ``/tile`` is not."""
        return f"{self.tile_base}/"

    def tile_url(self, image_id: int, z: int, c: int, t: int) -> str:
        """The URL of one plane's tiles (the region goes in the query)."""
        return f"{self.tile_base}/{image_id}/{z}/{c}/{t}"

    @property
    def display(self) -> str:
        """The URL without any user:password part, for messages and logs."""
        return redact(self.tile_base)


def redact(url: str) -> str:
    """``url`` with credentials in its authority (``user:pw@``) removed."""
    parts = urlsplit(url)
    if "@" not in parts.netloc:
        return url
    return urlunsplit((parts.scheme, parts.netloc.rsplit("@", 1)[1], parts.path,
                       parts.query, parts.fragment))


def endpoint_for(settings: PixelBufferSettings, host: str) -> TileEndpoint | None:
    """The endpoint configured for OMERO server ``host`` (case-insensitive), if any."""
    wanted = host.lower()
    for name, url in settings.servers.items():
        if name.lower() == wanted and url.strip():
            return TileEndpoint.parse(url)
    return None


def tls_verify(settings: PixelBufferSettings) -> bool | str:
    """What ``requests`` is given as ``verify=``: the CA bundle when set, else the flag."""
    return settings.ca_bundle if settings.ca_bundle else settings.verify


# -- discovery --------------------------------------------------------------------------


@dataclass(frozen=True)
class Probe:
    """What the last ``OPTIONS`` request on one endpoint found."""

    available: bool
    reason: str
    checked_at: float
    version: str = ""
    #: True when this answer came from the cache, not from a request just made.
    cached: bool = False


_probes: dict[str, Probe] = {}
_probing: dict[str, threading.Lock] = {}
_probes_lock = threading.Lock()
#: (tile base, image id) of images the service answered 404 for, oldest first.
_unserved: OrderedDict[tuple[str, int], str] = OrderedDict()


def clear_probe_cache() -> None:
    """Forget every probe and unserved image (tests; after reconfiguring a service)."""
    with _probes_lock:
        _probes.clear()
        _unserved.clear()


def mark_unserved(endpoint: TileEndpoint, image_id: int, reason: str) -> None:
    """Record that the service cannot serve ``image_id``; later readers of it skip the service."""
    with _probes_lock:
        _unserved[(endpoint.tile_base, image_id)] = reason
        while len(_unserved) > MAX_UNSERVED:
            _unserved.popitem(last=False)


def unserved(endpoint: TileEndpoint, image_id: int) -> str | None:
    """Why the service could not serve ``image_id`` earlier in this process, if it could not."""
    with _probes_lock:
        return _unserved.get((endpoint.tile_base, image_id))


def mark_unavailable(endpoint: TileEndpoint, reason: str) -> None:
    """Record that the service failed, so later images skip it until the next probe."""
    with _probes_lock:
        _probes[endpoint.tile_base] = Probe(False, reason, time.monotonic())


def probe(endpoint: TileEndpoint, settings: PixelBufferSettings) -> Probe:
    """Whether the service answers as omero-ms-pixel-buffer (cached; blocking on a miss)."""
    key = endpoint.tile_base
    with _probes_lock:
        lock = _probing.setdefault(key, threading.Lock())
    # One probe per endpoint at a time: concurrent openers wait for its outcome.
    with lock:
        with _probes_lock:
            cached = _probes.get(key)
        if cached is not None and (
                cached.available
                or time.monotonic() - cached.checked_at < PROBE_RETRY_SECONDS):
            return dataclasses.replace(cached, cached=True)
        result = _probe_now(endpoint, settings)
        with _probes_lock:
            _probes[key] = result
        if result.available:
            log.info("pixel-buffer service at %s answers (version %s)", endpoint.display,
                     result.version or "unknown")
        return result


def _probe_now(endpoint: TileEndpoint, settings: PixelBufferSettings) -> Probe:
    now = time.monotonic()
    timeout = min(settings.timeout_seconds, PROBE_TIMEOUT_SECONDS)
    try:
        # No session key here: the probe needs no auth, so none is sent.
        response = requests.options(endpoint.probe_url, timeout=timeout,
                                    verify=tls_verify(settings), allow_redirects=False,
                                    headers={"User-Agent": USER_AGENT})
    except requests.RequestException as exc:
        return Probe(False, f"{type(exc).__name__}", now)
    with response:
        if response.status_code != 200:
            return Probe(False, f"OPTIONS answered HTTP {response.status_code}", now)
        try:
            body = json.loads(response.content)
        except ValueError:
            return Probe(False, "OPTIONS did not answer JSON", now)
    if not isinstance(body, dict) or body.get("provider") != PROVIDER:
        return Probe(False, f"OPTIONS did not name provider {PROVIDER}", now)
    return Probe(True, "", now, str(body.get("version", "")))


# -- tiles -------------------------------------------------------------------------------


class RetryableFailure(Exception):
    """A failure worth retrying (5xx, 429, timeout, dropped connection, short body)."""


class BadTileRequest(OmeroError):
    """The service refused a request this package built (HTTP 400): a bug to report."""


class TileNotServed(TransportUnavailable):
    """The service could not serve an image Ice can read (HTTP 404, or 403 for a live session).

    ``image_id`` names the image, ``status`` the HTTP status, ``service`` the tile URL
    (without credentials). Transient: the next read transport serves the image.
    """

    def __init__(self, message: str, *, image_id: int, status: int, service: str,
                 hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.image_id = image_id
        self.status = status
        self.service = service

    def again(self) -> TileNotServed:
        """The same error, new (so one raised for every later read keeps a short traceback)."""
        return TileNotServed(self.message, image_id=self.image_id, status=self.status,
                             service=self.service, hint=self.hint)


class SessionRefused(AuthError):
    """The service answered 401/403: it could not join the session (``status``)."""

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        super().__init__(message, hint=hint)
        self.status = status


#: What to do when no other read transport is configured after the pixel buffer.
FALLBACK_HINT = ("Add \"ice\" after \"pixelbuffer\" in transports.read so images the "
                 "pixel-buffer service cannot serve are read through Ice.")


@dataclass(frozen=True)
class TileQuery:
    """One tile request: a plane, a region and the service's resolution number."""

    image_id: int
    z: int
    c: int
    t: int
    region: Region
    #: The service's numbering (0 = smallest); ``None`` leaves it to the service.
    resolution: int | None = None

    def params(self) -> dict[str, int]:
        r = self.region
        out = {"x": r.x, "y": r.y, "w": r.w, "h": r.h}
        if self.resolution is not None:
            out["resolution"] = self.resolution
        return out


class TileClient:
    """One keep-alive ``requests.Session`` to one service, shared by worker threads.

    Holds the session key privately and sends it only with requests to its endpoint.
    """

    def __init__(self, endpoint: TileEndpoint, session_key: str,
                 settings: PixelBufferSettings) -> None:
        self.endpoint = endpoint
        self.settings = settings
        self._headers = {SESSION_HEADER: session_key, "User-Agent": USER_AGENT,
                         "Accept": "application/octet-stream"}
        self.session = requests.Session()
        self.session.verify = tls_verify(settings)
        # Pool as many connections as tiles may be in flight, all to one host.
        adapter = HTTPAdapter(pool_connections=1, pool_maxsize=settings.concurrency)
        self.session.mount("http://", adapter)
        self.session.mount("https://", adapter)

    def __repr__(self) -> str:
        return f"TileClient({self.endpoint.display!r})"

    def fetch(self, query: TileQuery, expected_bytes: int) -> bytes:
        """One attempt at one tile's raw bytes (blocking).

        Raises ``SessionRefused`` (401/403), ``TileNotServed`` (404), ``BadTileRequest`` (400),
        ``TransportUnavailable`` (redirects and other unexpected answers, which no retry
        fixes) and ``RetryableFailure`` for what a retry may fix; the caller turns
        exhausted retries into ``ServerError``.
        """
        url = self.endpoint.tile_url(query.image_id, query.z, query.c, query.t)
        try:
            response = self.session.get(url, params=query.params(), headers=self._headers,
                                        timeout=self.settings.timeout_seconds,
                                        allow_redirects=False, stream=True)
        except requests.Timeout:
            raise RetryableFailure("the request timed out") from None
        except requests.RequestException as exc:
            raise RetryableFailure(f"the connection failed ({type(exc).__name__})") from None
        try:
            status = response.status_code
            if status == 200:
                try:
                    # Read straight from urllib3: one read of the whole body instead of
                    # requests' 10 KiB chunks; the connection goes back to the pool.
                    body: bytes = response.raw.read(decode_content=True)
                except Exception as exc:  # urllib3's ProtocolError, IncompleteRead, OSError…
                    raise RetryableFailure(
                        f"the body was cut off ({type(exc).__name__})") from None
                if len(body) != expected_bytes:
                    raise RetryableFailure(
                        f"the body was {len(body)} bytes, not {expected_bytes}")
                return body
            raise self._status_error(status, url, query, self._drain(response))
        finally:
            response.close()

    def _drain(self, response: requests.Response) -> str:
        """A short error body's text; reading it lets the connection be reused."""
        length = response.headers.get("Content-Length", "")
        if not length.isdigit() or int(length) > MAX_ERROR_BODY:
            return ""
        try:
            raw: bytes = response.raw.read(decode_content=True)
        except Exception:  # the reason is a courtesy; the status decides what happens
            return ""
        text = " ".join(raw.decode("utf-8", "replace").split())[:200]
        # A service has no business echoing the key, but if one did it stops here.
        return text.replace(self._headers[SESSION_HEADER], "***")

    def _status_error(self, status: int, url: str, query: TileQuery, reason: str
                      ) -> Exception:
        what = f"image {query.image_id} (z={query.z}, c={query.c}, t={query.t})"
        where = self.endpoint.display
        if status in (401, 403):
            return SessionRefused(
                f"The pixel-buffer service at {where} refused the session while reading "
                f"{what} (HTTP {status}).",
                status=status, hint="The session may have expired; log in again.")
        if status == 404:
            # The service answers 404 for any failure of its tile handler, not only for
            # images that do not exist (see the module's docstring).
            return TileNotServed(
                f"The pixel-buffer service at {where} could not serve {what} (HTTP 404: "
                "it answers so for any failure, e.g. a pyramid not built yet).",
                image_id=query.image_id, status=404, service=where, hint=FALLBACK_HINT)
        if status == 400:
            path = urlsplit(url).path
            return BadTileRequest(
                f"The pixel-buffer service at {where} rejected "
                f"GET {path}?{urlencode(query.params())} as a bad request (HTTP 400"
                f"{': ' + reason if reason else ''}). "
                "This is a bug in cellprofiler-omero worth reporting.",
                hint="Please report it with this message; meanwhile set "
                     "transports.read = [\"ice\"].")
        if status == 429 or status >= 500:
            return RetryableFailure(f"the service answered HTTP {status}")
        # A redirect or another client error: most likely the configured URL is wrong.
        # Transient, so the next read transport serves instead.
        return TransportUnavailable(
            f"The pixel-buffer service at {where} answered HTTP {status} for {what}.",
            hint="Check pixelbuffer.servers: the URL should be the service's root or "
                 "end in /tile, and redirects are not followed.")

    def close(self) -> None:
        """Close the pooled connections."""
        self.session.close()
