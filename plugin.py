"""Everything a transport plugin needs, in one import.

A plugin is a module with ``@hookimpl`` functions (the hooks are documented in
``cellprofiler_omero.core.hookspecs``), installed under the entry-point group
``cellprofiler_omero`` and chosen by name in ``[transports]``::

    from cellprofiler_omero.plugin import hookimpl, ImageMeta, PixelSource, ...

    @hookimpl
    def omero_open_reader(connection, image, meta, settings):
        ...

The names here are the stable surface for plugin authors: the hook marker, the
roles a plugin's objects play (``typing.Protocol``s), the data they exchange, and the
errors the core understands (raise these, never a library's own exception: the core
decides what to retry or fall back on by type). The modules themselves are here too
(``roles``, ``model``, ``errors``) for anything less common. README ▸ "Writing a
transport" is a worked example.
"""

from __future__ import annotations

from cellprofiler_omero.core import errors, model, roles, shapes
from cellprofiler_omero.core.annotations import (
    ImageAnnotations,
    KeyValue,
    NewKeyValues,
    WrittenKeyValues,
)
from cellprofiler_omero.core.config import Settings, positive
from cellprofiler_omero.core.errors import (
    AuthError,
    CannotAnnotate,
    ConfigError,
    ConnectionLost,
    NotFound,
    OmeroError,
    PermissionDenied,
    ServerError,
    TransportUnavailable,
    UnsupportedData,
)
from cellprofiler_omero.core.hookspecs import PROJECT_NAME, hookimpl
from cellprofiler_omero.core.model import (
    Channel,
    ColumnKind,
    ColumnSpec,
    Group,
    ImageMeta,
    NewImage,
    Node,
    Page,
    PhysicalSize,
    PixelRequest,
    PixelType,
    Region,
    TableInfo,
    TableSchema,
    TableTarget,
    UploadedImage,
)
from cellprofiler_omero.core.refs import Kind, ObjectRef
from cellprofiler_omero.core.roi_reading import RoiFilter
from cellprofiler_omero.core.roles import (
    AnnotationSink,
    AsyncClosing,
    Connection,
    Credentials,
    ImageSink,
    PixelSource,
    RoiSink,
    RoiSource,
    RoiTarget,
    ServerAddress,
    SessionInfo,
    TableSink,
)
from cellprofiler_omero.core.shapes import NewRoi, SavedRoi

#: The entry-point group plugins are installed under.
ENTRY_POINT_GROUP = PROJECT_NAME

__all__ = [
    "ENTRY_POINT_GROUP",
    "AnnotationSink",
    "AsyncClosing",
    "AuthError",
    "CannotAnnotate",
    "Channel",
    "ColumnKind",
    "ColumnSpec",
    "ConfigError",
    "Connection",
    "ConnectionLost",
    "Credentials",
    "Group",
    "ImageAnnotations",
    "ImageMeta",
    "ImageSink",
    "KeyValue",
    "Kind",
    "NewImage",
    "NewKeyValues",
    "NewRoi",
    "Node",
    "NotFound",
    "ObjectRef",
    "OmeroError",
    "Page",
    "PermissionDenied",
    "PhysicalSize",
    "PixelRequest",
    "PixelSource",
    "PixelType",
    "Region",
    "RoiFilter",
    "RoiSink",
    "RoiSource",
    "RoiTarget",
    "SavedRoi",
    "ServerAddress",
    "ServerError",
    "SessionInfo",
    "Settings",
    "TableInfo",
    "TableSchema",
    "TableSink",
    "TableTarget",
    "TransportUnavailable",
    "UnsupportedData",
    "UploadedImage",
    "WrittenKeyValues",
    "errors",
    "hookimpl",
    "model",
    "positive",
    "roles",
    "shapes",
]
