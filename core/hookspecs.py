"""The pluggy contract between the core and transports (the only module plugins need).

Factory hooks are ``firstresult``: called synchronously, in the order the
configuration names transports; a transport declines by returning ``None`` and
the next one is asked. What they return does the work asynchronously (see
``roles``). Observer hooks are called on every plugin and return nothing.

Threads (each hook says which it runs on):

* Factory hooks (``omero_connect``, ``omero_open_*``) run in a **worker thread**
  (``anyio.to_thread``), never on the event loop: they may block (log in, probe a
  service, create a table). They must not call ``core.runtime.run``.
* What factories return is used on the **event loop's thread** (``core.runtime``):
  its methods are coroutines and must not block; blocking library calls go through
  ``anyio.to_thread.run_sync`` (the Ice transport bounds them with one limiter).
  Sources and sinks are closed with ``aclose()``; derive from
  ``roles.AsyncClosing`` to make them ``async with`` context managers as well.
* Observer hooks (``omero_image_uploaded``, ``omero_table_written``,
  ``omero_rois_saved``, ``omero_session_changed``) run on the event loop's thread:
  return quickly, never block, and hand slow work to another thread.

Raise the core's errors (``core.errors``), not a library's: the core decides by type
whether to try the next transport (``transient``) or to retry (``retryable``).
Plugin authors import everything from ``cellprofiler_omero.plugin``.

A third-party plugin is a module or object with ``@hookimpl`` functions,
registered under a name through the entry-point group ``cellprofiler_omero``::

    [project.entry-points.cellprofiler_omero]
    mytransport = "my_package.plugin"

and chosen by naming it in the settings, e.g. ``transports.read = ["mytransport", "ice"]``.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from collections.abc import Mapping, Sequence

    from cellprofiler_omero.core.config import Settings
    from cellprofiler_omero.core.errors import AuthError
    from cellprofiler_omero.core.model import (
        ImageMeta,
        NewImage,
        TableInfo,
        TableSchema,
        TableTarget,
        UploadedImage,
    )
    from cellprofiler_omero.core.overview import OverviewSource
    from cellprofiler_omero.core.refs import ObjectRef
    from cellprofiler_omero.core.roles import (
        AnnotationSink,
        Connection,
        Credentials,
        ImageSink,
        PixelSource,
        RoiSink,
        RoiSource,
        ServerAddress,
        SessionInfo,
        TableSink,
    )
    from cellprofiler_omero.core.shapes import SavedRoi

PROJECT_NAME = "cellprofiler_omero"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def omero_settings_sections() -> Mapping[str, type] | None:
    """The settings sections this plugin owns: ``{"name": FrozenDataclass}`` (``None``:
    none).

    Each section is a frozen dataclass whose fields (``bool``, ``int``, ``float``,
    ``str``, ``tuple[str, ...]`` or ``Mapping[str, str]``) are the keys of ``[name]``
    in the settings file and of ``CELLPROFILER_OMERO_<NAME>_<KEY>``, with their
    defaults. A ``check(self, settings)`` method, when present, refuses bad values
    with ``ConfigError``. Unknown keys are refused naming the key. Name sections after
    the plugin; a name the core or another plugin uses already is an error.

    Called once per set of installed plugins while settings load, on whatever thread
    loads them, before any connection exists: return the classes, do nothing else.
    """


@hookspec(firstresult=True)
def omero_connect(
    address: ServerAddress, credentials: Credentials, settings: Settings
) -> Connection | None:
    """Open a session on ``address`` with ``credentials``.

    ``address``: the server's host and Ice port. ``credentials``: a user and password,
    or a session key to join (``credentials.source`` says where it came from: a
    password, a session key, a saved token or a parent's hand-off); secret fields
    must never be logged or sent to another host. ``settings``: the process's settings
    (a plugin's own section: ``settings.section(MySettings)``).

    Return a ``Connection``, or ``None`` when this transport cannot connect.
    Raise ``AuthError`` for refused credentials (no other transport is tried), a
    transient error (``CannotReachServer``…) to let the next transport try.

    Runs in a worker thread; may block (up to ``server.connect_timeout_seconds``).
    """


@hookspec(firstresult=True)
def omero_open_reader(
    connection: Connection, image: ObjectRef, meta: ImageMeta, settings: Settings
) -> PixelSource | None:
    """Return a ``PixelSource`` for ``image`` or ``None`` to decline.

    ``connection``: the live session (from any transport's ``omero_connect``: check
    its type or ``transport`` before using transport-specific parts; send its
    ``session_key`` only to ``connection.info.server``'s host). ``image``: the image
    (``image.id``; ``image.host`` when the reference named a server). ``meta``: its
    sizes, pixel type, channels and levels, from the connection, so a pixel-only
    transport needs no metadata endpoint of its own. ``settings``: as for
    ``omero_connect``.

    Runs in a worker thread, once per image and process (on the first read, and
    again after a reconnect or after the previous transport failed transiently); may
    block (a probe of a service). The source's ``read`` runs on the event loop.
    """


@hookspec(firstresult=True)
def omero_open_uploader(connection: Connection, settings: Settings) -> ImageSink | None:
    """Return an ``ImageSink`` that creates images on the connected server, or ``None``.

    ``connection``: the live session (see ``omero_open_reader``). ``settings``: as
    for ``omero_connect``. Called for each upload; the sink is closed after it.

    Runs in a worker thread; may block. The sink's ``upload`` runs on the event loop
    and must make at most one image per ``spec.client_key``, finding an earlier
    attempt's image instead of making a second (uploads are retried).
    """


@hookspec(firstresult=True)
def omero_open_table_writer(
    connection: Connection,
    target: TableTarget,
    schema: TableSchema,
    settings: Settings,
    file_id: int | None,
) -> TableSink | None:
    """Return a ``TableSink`` for a new table attached to ``target``, or ``None``.

    ``connection``: the live session (see ``omero_open_reader``). ``target``: the
    object the table's FileAnnotation is linked to (``target.kind`` such as
    ``"Dataset"``, ``target.id``, optional ``target.namespace``). ``schema``: the
    columns, fixed for the table's life, and ``schema.identity`` (when set, continue
    the table on ``target`` that carries it instead of making another). ``settings``:
    as for ``omero_connect``. ``file_id``: reopen that existing table instead (after
    a reconnect); ``None`` makes (or finds, by identity) one.

    Runs in a worker thread; may block (creating the table on the server).
    """


@hookspec(firstresult=True)
def omero_open_roi_writer(connection: Connection, settings: Settings) -> RoiSink | None:
    """Return a ``RoiSink`` that saves ROIs on the connected server's images, or ``None``.

    ``connection``: the live session (see ``omero_open_reader``). ``settings``: as for
    ``omero_connect``. Asked in the order of ``transports.upload`` (saving ROIs is
    writing to the server, as uploads are). Called for each batch of ROIs (and once to
    check the target image); the sink is closed after it, so it should be cheap to make.

    Runs in a worker thread; may block. The sink's ``target`` and ``save`` run on the
    event loop; ``save`` must make at most one ROI per ``NewRoi.key`` on an image,
    finding an earlier attempt's ROI instead of making a second (batches are retried,
    pipelines rerun, and analysis workers may save the same objects).
    """


@hookspec(firstresult=True)
def omero_open_roi_reader(connection: Connection, settings: Settings) -> RoiSource | None:
    """Return a ``RoiSource`` that reads ROIs of the connected server's images, or ``None``.

    ``connection``: the live session (see ``omero_open_reader``). ``settings``: as for
    ``omero_connect``. Asked in the order of ``transports.read`` (ROIs are read as pixels
    are); called for each image's ROIs and closed after, so it should be cheap to make.

    Runs in a worker thread; may block. The source's ``rois`` runs on the event loop and
    is retried after a lapsed session (it only reads).
    """


@hookspec(firstresult=True)
def omero_open_annotation_writer(connection: Connection, settings: Settings
                                 ) -> AnnotationSink | None:
    """Return an ``AnnotationSink`` that writes key-value pairs on images, or ``None``.

    ``connection``: the live session (see ``omero_open_reader``). ``settings``: as for
    ``omero_connect``. Asked in the order of ``transports.upload`` (annotations are
    writes of new objects, as uploads are); the sink is closed after use.

    Runs in a worker thread; may block. The sink's ``put_key_values`` runs on the
    event loop, must make at most one annotation per ``request.identity`` on an image
    (it is retried), and must write nothing on an image the user may not annotate.
    """


@hookspec(firstresult=True)
def omero_open_overview_source(connection: Connection, settings: Settings
                               ) -> OverviewSource | None:
    """Return an ``OverviewSource`` that finds datasets by name with their images' ROI
    counts, uploaded (label) images and OMERO.tables, or ``None``.

    ``connection``: the live session (see ``omero_open_reader``). ``settings``: as for
    ``omero_connect``. Asked in the order of ``transports.read`` (it only reads); called
    for each look-up (``core.overview.datasets_named``) and closed after, so it should be
    cheap to make.

    Runs in a worker thread; may block. The source's ``datasets_named`` runs on the event
    loop and is retried after a lapsed session.
    """


@hookspec
def omero_image_uploaded(session: SessionInfo, image: UploadedImage, spec: NewImage) -> None:
    """An image was created (or found already created by an earlier attempt).

    ``session``: who uploaded it, where. ``image``: its id, name, dataset, and
    ``reused`` (found, not made). ``spec``: what was asked for (name, channels,
    ``client_key``, provenance).

    Runs on the event loop's thread after the upload: do not block.
    """


@hookspec
def omero_table_written(session: SessionInfo, table: TableInfo, rows_added: int) -> None:
    """A batch of rows was appended to a table.

    ``session``: who wrote it, where. ``table``: the table (file id, annotation id,
    name). ``rows_added``: rows this batch added (rows already on the server from an
    earlier attempt are not counted).

    Runs on the event loop's thread after each batch: do not block.
    """


@hookspec
def omero_rois_saved(session: SessionInfo, image_id: int, rois: Sequence[SavedRoi]) -> None:
    """ROIs were saved on an image (or found saved by an earlier attempt).

    ``session``: who saved them, where. ``image_id``: the image they lie on. ``rois``:
    one ``SavedRoi`` per ROI asked for, in the order asked: its id, its exactly-once
    key, and ``reused`` (an earlier attempt, a rerun or another worker had made it).
    Called once per call of ``core.roi_writing.save_rois`` and image, after every batch
    of that image was saved.

    Runs on the event loop's thread: do not block.
    """


@hookspec
def omero_session_changed(
    old: SessionInfo | None, new: SessionInfo | None, reason: str
) -> None:
    """The process's connection was opened, renewed, switched or closed.

    ``old`` is who was connected before (``None``: nobody), ``new`` who is now (``None``:
    the session was closed). ``new.source`` says how the session was obtained:
    ``"token"`` when a saved omero-user-token logged in (the "connected by token"
    message is shown or logged from this hook), ``"environment"`` for a session handed
    over by a parent process. ``reason``: ``"connect"`` (a login the user or a read
    asked for), ``"renew"`` (a lapsed session renewed, the user did nothing), or when
    closing the closer's reason (``"close"``, ``"switch"``, ``"relogin"``, ``"quit"`` …).

    Called on the event loop's thread (``core.runtime``), inside the session lock:
    do not block and do not call the session manager; hand work to another thread
    (the GUI posts it to the wx main loop).
    """


@hookspec(firstresult=True)
def omero_login_needed(image: ObjectRef, error: AuthError) -> bool | None:
    """A read of ``image`` was refused for want of a session; may the reader try again?

    ``error`` is the refusal (no session and no saved token or hand-off, or a lapsed
    session that could not be renewed). An application that can ask the user to log
    in (the CellProfiler GUI) does so and returns ``True`` once connected, ``False``
    when the user declined; ``None`` leaves the decision to the next plugin. With no
    answer (headless runs, analysis workers) the reader raises ``error``. The reader
    retries the read once after ``True``.

    Called on the thread that asked for the image (a CellProfiler worker or the GUI
    thread), never on the event loop's thread, so an implementation may block until
    the user answers; when called on the GUI thread it must not wait for the GUI
    thread.
    """
