"""The emulator process: an Ice server (SSL + plain TCP) and the pixel-buffer HTTP server.

``Context`` holds what every servant shares: the store, pixel files, faults, the
object adapter and the servant registry (one servant locator serves every
identity, so sessions can be dropped wholesale when they end).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import Ice
import numpy as np
import omero
import omero.api
import omero.grid

from cellprofiler_omero.emulator.certs import ensure_certificate
from cellprofiler_omero.emulator.faults import Faults
from cellprofiler_omero.emulator.icebase import Servant, arrive, interface_name, servant
from cellprofiler_omero.emulator.network import CallCounter, Network
from cellprofiler_omero.emulator.pixels import (
    PixelFiles,
    PixelsShape,
    pyramid_levels,
    requires_pyramid,
)
from cellprofiler_omero.emulator.store import Obj, Store

log = logging.getLogger(__name__)


@dataclass
class ServerOptions:
    """How the emulator listens and behaves."""

    data_dir: Path
    host: str = "127.0.0.1"
    port: int = 4064
    insecure_port: int = 0
    http_port: int = 8082
    session_timeout_s: float = 600.0
    pyramid_threshold: int = 3192
    ice_threads: int = 16
    control_token: str = ""
    #: Server settings (``omero.*`` keys) that override the defaults, as a site's config.
    config: dict[str, str] = field(default_factory=dict)


class _Locator(Ice.ServantLocator):
    """Finds the servant for any identity in the context's registry."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx

    def locate(self, current: Ice.Current) -> tuple[Any, Any]:
        found = self.ctx.lookup(current.id)
        # Every call passes here (ice_isA and ice_ping too): count it, as one round trip.
        interface = interface_name(found) if found is not None else "ObjectNotExist"
        arrive(self.ctx, interface, current.operation, getattr(found, "session_uuid", None))
        return found, None

    def finished(self, current: Ice.Current, servant: Any, cookie: Any) -> None:
        return None

    def deactivate(self, category: str) -> None:
        return None


class _ConnectionWatcher(Ice.ConnectionCallback):
    def __init__(self, on_closed: Callable[[Any], None]) -> None:
        self.on_closed = on_closed

    def heartbeat(self, con: Any) -> None:
        return None

    def closed(self, con: Any) -> None:
        try:
            self.on_closed(con)
        except Exception:  # a failing cleanup must not break Ice's thread
            log.exception("cleanup after a closed connection failed")


class Context:
    """State shared by all servants of one emulator."""

    def __init__(self, options: ServerOptions) -> None:
        self.options = options
        data = options.data_dir
        data.mkdir(parents=True, exist_ok=True)
        self.store = Store(data / "omero.sqlite")
        self.store.default_tti_ms = int(options.session_timeout_s * 1000)
        if self.store.get_meta("uuid") is None:
            self.store.set_meta("uuid", str(uuid.uuid4()))
        self.pixels = PixelFiles(data / "pixels")
        self.files_dir = data / "files"
        self.files_dir.mkdir(exist_ok=True)
        self.faults = Faults()
        #: Ice calls and HTTP requests answered, and the network they pretend to cross.
        self.calls = CallCounter()
        self.network = Network()
        self.config: dict[str, str] = {}
        self.adapter: Any = None
        self._servants: dict[str, Any] = {}
        self._factories: dict[str, Any] = {}  # identity string → ServiceFactoryI
        self._lock = threading.RLock()
        self._dirty: set[int] = set()
        #: image id → the RawPixelsStore holding that image's pyramid write lock.
        self.pyramid_writers: dict[int, Any] = {}

    # -- servant registry ----------------------------------------------------------------

    def add_servant(self, obj: Any, identity: Ice.Identity) -> Any:
        with self._lock:
            self._servants[Ice.identityToString(identity)] = obj
        return self.adapter.createProxy(identity)

    def remove_servant(self, identity: Ice.Identity) -> None:
        with self._lock:
            self._servants.pop(Ice.identityToString(identity), None)

    def has_servant(self, identity: Ice.Identity) -> bool:
        with self._lock:
            return Ice.identityToString(identity) in self._servants

    def lookup(self, identity: Ice.Identity) -> Any:
        with self._lock:
            return self._servants.get(Ice.identityToString(identity))

    # -- sessions --------------------------------------------------------------------------

    def open_service_factory(self, session_uuid: str, con: Any) -> Any:
        from cellprofiler_omero.emulator.services.sessions import ServiceFactoryI

        identity = Ice.Identity(session_uuid, f"sf-{uuid.uuid4()}")
        sf = ServiceFactoryI(self, session_uuid, identity)
        key = Ice.identityToString(identity)
        with self._lock:
            self._factories[key] = sf
        return self.add_servant(sf, identity)

    def destroy_service_factory(self, key: str) -> None:
        with self._lock:
            sf = self._factories.pop(key, None)
        if sf is None:
            return
        for identity in sf.all_identities():
            servant_obj = self.lookup(identity)
            closer = getattr(servant_obj, "release", None)
            if closer is not None:
                try:
                    closer()
                except Exception:
                    log.exception("closing a service failed")
            self.remove_servant(identity)
        self.remove_servant(sf.identity)
        if not sf.detach and self.store.change_refcount(sf.session_uuid, -1) <= 0:
            session = self.store.session(sf.session_uuid)
            if session is not None and not session.user_session:
                self.store.close_session(sf.session_uuid)

    def forget_session(self, session_uuid: str) -> None:
        """Drop every servant of a session that has ended (expired or closed)."""
        with self._lock:
            keys = [k for k, sf in self._factories.items() if sf.session_uuid == session_uuid]
        for key in keys:
            with self._lock:
                sf = self._factories.pop(key, None)
            if sf is None:
                continue
            for identity in sf.all_identities():
                # Ending a session closes its stateful services on a real server too
                # (a pyramid writer then releases its lock and finishes its pyramid).
                closer = getattr(self.lookup(identity), "release", None)
                if closer is not None:
                    try:
                        closer()
                    except Exception:
                        log.exception("closing a service failed")
                self.remove_servant(identity)
            self.remove_servant(sf.identity)

    def watch_connection(self, con: Any, on_closed: Callable[[Any], None]) -> None:
        if con is not None:
            con.setCallback(_ConnectionWatcher(on_closed))

    def file_path(self, file_id: int) -> Path:
        """Where an OriginalFile's bytes live."""
        return self.files_dir / str(file_id)

    # -- images ----------------------------------------------------------------------------

    def setting(self, key: str, default: str) -> str:
        """A server setting: the site's value (``server_config``), else the default.

        Readable before ``IceServer.start`` fills ``config`` (the seeder runs first).
        """
        value = self.options.config.get(key) or self.config.get(key)
        return value if value else default

    def pixel_limits(self) -> tuple[int, int, bool]:
        """``max_plane_width``, ``max_plane_height`` and ``max_plane_float_override``."""
        side = str(self.options.pyramid_threshold)
        return (int(self.setting("omero.pixeldata.max_plane_width", side)),
                int(self.setting("omero.pixeldata.max_plane_height", side)),
                self.setting("omero.pixeldata.max_plane_float_override",
                             "true").lower() == "true")

    def tile_size(self) -> tuple[int, int]:
        """The pyramid tile size (``omero.pixeldata.tile_width`` / ``tile_height``)."""
        return (int(self.setting("omero.pixeldata.tile_width", "256")),
                int(self.setting("omero.pixeldata.tile_height", "256")))

    def pyramid_delay_s(self) -> float:
        """How long a newly written pyramid stays unreadable (emulator-only setting)."""
        return int(self.setting("omero.pixeldata.emulator_pyramid_delay_ms", "1000")) / 1000

    def create_image(self, *, name: str, description: str, owner_id: int, group_id: int,
                     size_x: int, size_y: int, size_z: int, size_c: int, size_t: int,
                     pixel_type: str, channels: list[dict[str, Any]],
                     phys: tuple[float | None, float | None, float | None] = (None, None, None),
                     complete: bool = True, extra: dict[str, Any] | None = None) -> Obj:
        """A new image with allocated (zeroed) pixel files and its pyramid levels.

        Whether it is a pyramid follows ``PixelsService.requiresPixelsPyramid`` (plane
        area over ``max_plane_width × max_plane_height``, floats exempt). Its pixel data
        does not exist yet (``pixelFile`` / ``pyramid``): the first write through a
        RawPixelsStore, or ``write_pixels`` (the seeder), creates it.
        """
        width, height, float_override = self.pixel_limits()
        pyramid = requires_pyramid(size_x, size_y, pixel_type, width, height, float_override)
        levels = pyramid_levels(size_x, size_y, pyramid, self.tile_size()[0])
        data = {"sizeX": size_x, "sizeY": size_y, "sizeZ": size_z, "sizeC": size_c,
                "sizeT": size_t, "pixelsType": pixel_type, "channels": channels,
                "levels": [list(level) for level in levels], "physX": phys[0],
                "physY": phys[1], "physZ": phys[2], "complete": complete,
                "requiresPyramid": pyramid, **(extra or {})}
        if pyramid:
            data["pyramid"] = "missing"
        else:
            data["pixelFile"] = False
        image = self.store.create("Image", name, owner_id, group_id, data=data,
                                  description=description)
        shape = PixelsShape(size_x, size_y, size_z, size_c, size_t, pixel_type)
        self.pixels.create(image.id, shape, levels)
        return image

    def write_pixels(self, image_id: int, pixels: np.ndarray) -> None:
        """Write a native ``(T, C, Z, Y, X)`` array and finish the image (pyramid, stats).

        As an import whose pyramid is already built: readable at once.
        """
        image = self.store.get(image_id, "Image")
        assert image is not None
        shape, levels = _shape_levels(image)
        arr = self.pixels.array(image_id, shape, 0, levels, writable=True)
        arr[...] = pixels.astype(shape.dtype, copy=False)
        arr.flush()
        self.finish_image(image_id, pyramid_delay_s=0.0)

    def mark_dirty(self, image_id: int) -> None:
        """Pixels of ``image_id`` were written; finish it on the next save or close."""
        with self._lock:
            self._dirty.add(image_id)

    def finish_if_dirty(self, image_id: int) -> None:
        with self._lock:
            if image_id not in self._dirty:
                return
            self._dirty.discard(image_id)
        if self.store.get(image_id, "Image") is not None:  # not deleted meanwhile
            self.finish_image(image_id)

    def mark_pixel_file(self, image_id: int) -> None:
        """The image's ROMIO pixel file now exists: later stores get read-only buffers."""
        with self._lock:
            image = self.store.get(image_id, "Image")
            if image is not None and not image.data.get("pixelFile", True):
                self.store.update(image_id, data={**image.data, "pixelFile": True})

    def set_pyramid_state(self, image_id: int, state: str, **extra: Any) -> None:
        """Record a pyramid's state (``missing``, ``building``, ``ready``, ``empty``)."""
        with self._lock:
            image = self.store.get(image_id, "Image")
            assert image is not None
            self.store.update(image_id, data={**image.data, "pyramid": state, **extra})

    def pyramid_wait_s(self, image: Obj) -> float:
        """Seconds until a new pyramid is readable (0: readable now, or no pyramid)."""
        if image.data.get("pyramid") != "building":
            return 0.0
        return max(0.0, float(image.data.get("pyramidReadyAt", 0.0)) - time.time())

    def finish_image(self, image_id: int, *, pyramid_delay_s: float | None = None) -> None:
        """After pixels were written: build the pyramid, record channel ranges, mark complete.

        A pyramid then stays unreadable for ``pyramid_delay_s`` (default: the
        ``omero.pixeldata.emulator_pyramid_delay_ms`` setting), as while a real
        server's pixel-data service builds it.
        """
        image = self.store.get(image_id, "Image")
        assert image is not None
        shape, levels = _shape_levels(image)
        self.pixels.flush(image_id)
        self.pixels.build_pyramid(image_id, shape, levels)
        arr = self.pixels.array(image_id, shape, 0, levels)
        data = dict(image.data)
        channels = [dict(ch) for ch in data["channels"]]
        for c, ch in enumerate(channels):
            lo, hi = np.inf, -np.inf
            for t in range(shape.size_t):
                for z in range(shape.size_z):
                    for row in range(0, shape.size_y, 2048):
                        block = arr[t, c, z, row:row + 2048]
                        lo = min(lo, float(block.min()))
                        hi = max(hi, float(block.max()))
            ch["min"], ch["max"] = lo, hi
        data["channels"] = channels
        data["complete"] = True
        if len(levels) > 1:
            delay = self.pyramid_delay_s() if pyramid_delay_s is None else pyramid_delay_s
            data["pyramid"] = "building" if delay > 0 else "ready"
            data["pyramidReadyAt"] = time.time() + delay
        else:
            data["pixelFile"] = True
        self.store.update(image_id, data=data)

    # -- services --------------------------------------------------------------------------

    def make_service(self, name: str, factory: Any) -> Any:
        """A new servant of service ``name`` for the factory's session."""
        from cellprofiler_omero.emulator.services import registry

        cls = registry.SERVICES.get(name)
        if cls is None:
            cls = _generic_servant(name)
        return cls(self, factory.session_uuid, None, factory)


def _shape_levels(image: Obj) -> tuple[PixelsShape, list[tuple[int, int]]]:
    d = image.data
    shape = PixelsShape(d["sizeX"], d["sizeY"], d["sizeZ"], d["sizeC"], d["sizeT"],
                        d["pixelsType"])
    return shape, [(int(x), int(y)) for x, y in d["levels"]]


_generic_cache: dict[str, type] = {}


def _generic_servant(name: str) -> type:
    """A servant of ``name`` whose every operation answers ApiUsageException at once."""
    if name not in _generic_cache:
        from cellprofiler_omero.emulator.services.common import SessionServant

        module = omero.grid if name == "SharedResources" else omero.api
        skeleton = getattr(module, name)

        class Generic(SessionServant):
            pass

        Generic.__name__ = f"{name}Unimplemented"
        _generic_cache[name] = servant(skeleton)(Generic)
    return _generic_cache[name]


class IceServer:
    """The Ice side: communicator, adapter with SSL and TCP endpoints, the router."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.communicator: Any = None
        self.insecure_port = 0

    def start(self) -> None:
        opts = self.ctx.options
        cert, key = ensure_certificate(opts.data_dir, opts.host)
        init = Ice.InitializationData()
        props = Ice.createProperties()
        for name, value in {
            "Ice.Plugin.IceSSL": "IceSSL:createIceSSL",
            "IceSSL.DefaultDir": str(opts.data_dir),
            "IceSSL.CertFile": cert.name,
            "IceSSL.KeyFile": key.name,
            "IceSSL.VerifyPeer": "0",
            "Ice.ThreadPool.Server.Size": "4",
            "Ice.ThreadPool.Server.SizeMax": str(opts.ice_threads),
            "Ice.ThreadPool.Server.SizeWarn": "0",
            # Real servers refuse messages over 256,000,000 bytes.
            "Ice.MessageSizeMax": "250000",
            "Ice.ACM.Server.Timeout": "0",
            "Ice.Warn.Connections": "0",
            "Ice.Warn.Dispatch": "0",
        }.items():
            props.setProperty(name, value)
        init.properties = props
        self.communicator = Ice.initialize(init)
        # Servants receive model objects and rtypes: register omero-py's factories, as
        # omero.client does for its own communicator.
        import omero.columns
        import omero.ObjectFactoryRegistrar as registrar
        import omero.rtypes

        registrar.registerObjectFactory(self.communicator, None)
        for factory in omero.rtypes.ObjectFactories.values():
            factory.register(self.communicator)
        # Table columns must arrive as omero.columns' implementations (with descriptors).
        for factory in omero.columns.ObjectFactories.values():
            factory.register(self.communicator)
        insecure = opts.insecure_port
        endpoints = f"ssl -h {opts.host} -p {opts.port}:tcp -h {opts.host} -p {insecure}"
        adapter = self.communicator.createObjectAdapterWithEndpoints("OMERO.Emulator", endpoints)
        self.ctx.adapter = adapter
        adapter.addServantLocator(_Locator(self.ctx), "")
        for endpoint in adapter.getEndpoints():
            info = endpoint.getInfo()
            if info.type() == Ice.TCPEndpointType:
                self.insecure_port = info.port
            elif opts.port == 0:
                opts.port = info.port
        self.ctx.config["omero.router.insecure"] = (
            f"OMERO.Glacier2/router:tcp -p {self.insecure_port} -h @omero.host@")
        from cellprofiler_omero.emulator.services.admin import DEFAULT_CONFIG
        from cellprofiler_omero.emulator.services.sessions import ROUTER_ID, RouterI

        for k, v in DEFAULT_CONFIG.items():
            self.ctx.config.setdefault(k, v)
        self.ctx.config["omero.sessions.timeout"] = str(self.ctx.store.default_tti_ms)
        self.ctx.config["omero.pixeldata.max_plane_width"] = str(opts.pyramid_threshold)
        self.ctx.config["omero.pixeldata.max_plane_height"] = str(opts.pyramid_threshold)
        self.ctx.config.update(opts.config)
        self.ctx.add_servant(RouterI(self.ctx), ROUTER_ID)
        adapter.activate()

    def stop(self) -> None:
        if self.communicator is not None:
            self.communicator.destroy()
            self.communicator = None


class SessionReaper(threading.Thread):
    """Closes idle sessions in the background so their servants go away."""

    def __init__(self, ctx: Context, interval: float = 1.0) -> None:
        super().__init__(name="emulator-reaper", daemon=True)
        self.ctx = ctx
        self.interval = interval
        self.stopping = threading.Event()

    def run(self) -> None:
        while not self.stopping.wait(self.interval):
            for session in self.ctx.store.sessions():
                if self.ctx.store.live_session(session.uuid, touch=False) is None:
                    self.ctx.forget_session(session.uuid)


__all__ = ["Context", "IceServer", "Servant", "ServerOptions", "SessionReaper"]
