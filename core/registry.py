"""The plugin manager: built-in and third-party transports, chosen per role by settings.

Built-in transports are registered the same way as third-party ones, through the
entry-point group ``cellprofiler_omero`` of the installed distribution, so the core
imports no transport.

Threads: factory hooks may block (an Ice login, an HTTP probe, creating a table on
the server), so they never run on the event loop. ``connect`` is a blocking call the
session manager runs in a worker thread; ``open_uploader`` and ``open_table_writer``
are coroutines that hop to a worker thread themselves; a ``FallbackPixelSource``
opens its transport's source in a worker thread on first read. What the hooks return
is used on the event loop (its methods are coroutines). Sources and sinks are async
context managers (``async with await registry.open_uploader(conn) as sink:``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import numpy as np
import pluggy

from cellprofiler_omero.core import hookspecs
from cellprofiler_omero.core.config import ROLES, Settings
from cellprofiler_omero.core.errors import ConfigError, NoTransport, OmeroError
from cellprofiler_omero.core.model import ImageMeta, PixelRequest, TableSchema, TableTarget
from cellprofiler_omero.core.refs import ObjectRef
from cellprofiler_omero.core.roles import (
    AnnotationSink,
    AsyncClosing,
    Connection,
    Credentials,
    ImageSink,
    PixelSource,
    RoiSink,
    RoiSource,
    ServerAddress,
    TableSink,
)

log = logging.getLogger(__name__)
T = TypeVar("T")


class Registry:
    """Loads plugins and picks, per role, the first transport that serves."""

    def __init__(self, settings: Settings, *, load_entry_points: bool = True) -> None:
        self.settings = settings
        self.pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self.pm.add_hookspecs(hookspecs)
        if load_entry_points:
            self.pm.load_setuptools_entrypoints(hookspecs.PROJECT_NAME)

    @property
    def hook(self) -> Any:
        """Observer hooks: ``registry.hook.omero_image_uploaded(...)``."""
        return self.pm.hook

    def register(self, plugin: object, name: str) -> None:
        """Register a plugin object or module under the transport name ``name``."""
        self.pm.register(plugin, name=name)

    def names(self) -> list[str]:
        """Names of every registered plugin."""
        return sorted(name for name, _ in self.pm.list_name_plugin())

    def order(self, role: str) -> tuple[str, ...]:
        if role not in ROLES:
            raise ValueError(f"Unknown role {role!r}; roles are {', '.join(ROLES)}.")
        return tuple(getattr(self.settings.transports, role))

    def _caller(self, name: str, hook_name: str, role: str) -> Callable[..., Any] | None:
        plugin = self.pm.get_plugin(name)
        if plugin is None:
            raise ConfigError(
                f"Transport {name!r} named in 'transports.{role}' is not installed.",
                hint=f"Installed: {', '.join(self.names()) or 'none'}.",
            )
        if not any(impl.plugin is plugin
                   for impl in getattr(self.pm.hook, hook_name).get_hookimpls()):
            return None
        others = [p for _, p in self.pm.list_name_plugin() if p is not plugin]
        caller: Callable[..., Any] = self.pm.subset_hook_caller(hook_name, remove_plugins=others)
        return caller

    def first(self, role: str, hook_name: str, names: tuple[str, ...] | None = None,
              **kwargs: Any) -> tuple[str, Any]:
        """Ask ``role``'s transports in order; ``(name, result)`` of the first that serves."""
        reasons: list[str] = []
        failures: list[OmeroError] = []
        attempts: list[tuple[str, str]] = []
        for name in names if names is not None else self.order(role):
            caller = self._caller(name, hook_name, role)
            if caller is None:
                reasons.append(f"{name}: does not offer {role}")
                attempts.append((name, "not offered"))
                continue
            try:
                result = caller(**kwargs)
            except OmeroError as exc:
                if not exc.transient:
                    raise
                log.warning("transport %s failed for %s (%s); trying the next", name, role, exc)
                reasons.append(f"{name}: {exc}")
                attempts.append((name, exc.message))
                failures.append(exc)
                continue
            if result is None:
                log.info("transport %s declined %s", name, role)
                reasons.append(f"{name}: declined")
                attempts.append((name, "declined"))
                continue
            log.info("transport %s serves %s", name, role)
            return name, result
        raise NoTransport(
            f"No transport could {role}: " + "; ".join(reasons) + ".",
            hint=f"Check 'transports.{role}' in the settings and that the server is reachable.",
            causes=tuple(failures), attempts=tuple(attempts), role=role,
        )

    def connect(self, address: ServerAddress, credentials: Credentials) -> Connection:
        """Open a connection with the first transport of ``transports.connect`` that can."""
        _, conn = self.first("connect", "omero_connect", address=address,
                             credentials=credentials, settings=self.settings)
        return conn

    def open_reader(self, connection: Connection, image: ObjectRef, meta: ImageMeta
                    ) -> FallbackPixelSource:
        """A pixel source that falls through the read transports on transient failures."""
        return FallbackPixelSource(self, connection, image, meta)

    async def open_uploader(self, connection: Connection) -> ImageSink:
        """An image sink from the first transport of ``transports.upload`` that serves
        (its factory hook runs in a worker thread)."""
        def blocking() -> ImageSink:
            _, sink = self.first("upload", "omero_open_uploader", connection=connection,
                                 settings=self.settings)
            return sink

        return await anyio.to_thread.run_sync(blocking)

    async def open_roi_reader(self, connection: Connection) -> RoiSource:
        """A ROI source from the first transport of ``transports.read`` that offers one
        (its factory hook runs in a worker thread)."""
        def blocking() -> RoiSource:
            _, source = self.first("read", "omero_open_roi_reader", connection=connection,
                                   settings=self.settings)
            return source

        return await anyio.to_thread.run_sync(blocking)

    async def open_roi_writer(self, connection: Connection) -> RoiSink:
        """A ROI sink from the first transport of ``transports.upload`` that serves
        (its factory hook runs in a worker thread)."""
        def blocking() -> RoiSink:
            _, sink = self.first("upload", "omero_open_roi_writer", connection=connection,
                                 settings=self.settings)
            return sink

        return await anyio.to_thread.run_sync(blocking)

    async def open_annotation_writer(self, connection: Connection) -> AnnotationSink:
        """An annotation sink from the first transport of ``transports.upload`` that
        serves (its factory hook runs in a worker thread)."""
        def blocking() -> AnnotationSink:
            _, sink = self.first("upload", "omero_open_annotation_writer",
                                 connection=connection, settings=self.settings)
            return sink

        return await anyio.to_thread.run_sync(blocking)

    async def open_table_writer(self, connection: Connection, target: TableTarget,
                                schema: TableSchema, file_id: int | None = None,
                                names: tuple[str, ...] | None = None
                                ) -> tuple[str, TableSink]:
        """``(transport name, table sink)`` from the first transport of
        ``transports.tables`` (or of ``names``) that serves; ``file_id`` reopens an
        existing table. The factory hook runs in a worker thread."""
        def blocking() -> tuple[str, TableSink]:
            return self.first("tables", "omero_open_table_writer", names=names,
                              connection=connection, target=target, schema=schema,
                              settings=self.settings, file_id=file_id)

        return await anyio.to_thread.run_sync(blocking)


class FallbackPixelSource(AsyncClosing):
    """Reads through the first read transport that serves; a transient failure moves on.

    The transports after the one serving stay in reserve, so a pixel-buffer service
    that stops answering mid-run hands over to Ice instead of failing the run.
    """

    def __init__(self, registry: Registry, connection: Connection, image: ObjectRef,
                 meta: ImageMeta) -> None:
        self._registry = registry
        self._connection = connection
        self._image = image
        self._meta = meta
        self._remaining = list(registry.order("read"))
        self._source: PixelSource | None = None
        self._name = ""
        self._lock: anyio.Lock | None = None

    @property
    def transport(self) -> str:
        return self._name

    def _open_next(self) -> PixelSource:
        while self._remaining:
            names = (self._remaining.pop(0),)
            try:
                self._name, source = self._registry.first(
                    "read", "omero_open_reader", names=names, connection=self._connection,
                    image=self._image, meta=self._meta, settings=self._registry.settings)
            except NoTransport:
                continue
            self._source = source
            return source
        raise NoTransport(
            f"No read transport could serve image {self._image.id}.",
            hint="Check 'transports.read' in the settings and that the server is reachable.",
        )

    async def metadata(self) -> ImageMeta:
        return self._meta

    async def read(self, request: PixelRequest) -> np.ndarray:
        while True:
            source: PixelSource | None = self._source
            if source is None:
                if self._lock is None:
                    self._lock = anyio.Lock()
                async with self._lock:
                    # Factory hooks may block (the pixel-buffer probe is an HTTP request):
                    # keep them off the event loop, and open one source for concurrent reads.
                    source = self._source or await anyio.to_thread.run_sync(self._open_next)
            assert source is not None
            try:
                return await source.read(request)
            except OmeroError as exc:
                if not exc.transient:
                    raise
                if source is not self._source:
                    continue  # a concurrent read already moved on: read from its choice
                if not self._remaining:
                    raise
                # Once per image, however many concurrent reads saw the failure.
                log.warning("transport %s failed reading image %s (%s); falling back to %s",
                            self._name, self._image.id, exc.message, self._remaining[0])
                self._source = None
                await source.aclose()

    async def aclose(self) -> None:
        if self._source is not None:
            source, self._source = self._source, None
            await source.aclose()
