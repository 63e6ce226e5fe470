"""The Ice transport's hook implementations (registered as ``ice``).

omero-py and Ice are imported by the hooks that need them, not here: settings load
this module to learn its ``[ice]`` section, and that must stay cheap.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING

from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.hookspecs import hookimpl
from cellprofiler_omero.core.model import ImageMeta, TableSchema, TableTarget
from cellprofiler_omero.core.refs import ObjectRef
from cellprofiler_omero.core.roles import Connection, Credentials, ServerAddress
from cellprofiler_omero.transports.ice.settings import IceSettings

if TYPE_CHECKING:
    from cellprofiler_omero.transports.ice.connection import IceConnection
    from cellprofiler_omero.transports.ice.reader import IcePixelSource


@hookimpl
def omero_settings_sections() -> Mapping[str, type]:
    return {"ice": IceSettings}


@hookimpl
def omero_connect(address: ServerAddress, credentials: Credentials, settings: Settings
                  ) -> IceConnection:
    from cellprofiler_omero.transports.ice.connection import IceConnection

    return IceConnection.open(address, credentials, settings)


@hookimpl
def omero_open_reader(connection: Connection, image: ObjectRef, meta: ImageMeta,
                      settings: Settings) -> IcePixelSource | None:
    from cellprofiler_omero.transports.ice.connection import IceConnection
    from cellprofiler_omero.transports.ice.reader import IcePixelSource

    if not isinstance(connection, IceConnection):
        return None
    return IcePixelSource(connection, meta, settings)


@hookimpl
def omero_open_uploader(connection: Connection, settings: Settings) -> object | None:
    from cellprofiler_omero.transports.ice.connection import IceConnection

    if not isinstance(connection, IceConnection):
        return None
    from cellprofiler_omero.transports.ice.uploader import IceImageSink

    return IceImageSink(connection, settings)


@hookimpl
def omero_open_roi_reader(connection: Connection, settings: Settings) -> object | None:
    from cellprofiler_omero.transports.ice.connection import IceConnection

    if not isinstance(connection, IceConnection):
        return None
    from cellprofiler_omero.transports.ice.roi_reader import IceRoiSource

    return IceRoiSource(connection, settings)


@hookimpl
def omero_open_roi_writer(connection: Connection, settings: Settings) -> object | None:
    from cellprofiler_omero.transports.ice.connection import IceConnection

    if not isinstance(connection, IceConnection):
        return None
    from cellprofiler_omero.transports.ice.rois import IceRoiSink

    return IceRoiSink(connection, settings)


@hookimpl
def omero_open_annotation_writer(connection: Connection, settings: Settings
                                 ) -> object | None:
    from cellprofiler_omero.transports.ice.connection import IceConnection

    if not isinstance(connection, IceConnection):
        return None
    from cellprofiler_omero.transports.ice.annotations import IceAnnotationSink

    return IceAnnotationSink(connection, settings)


@hookimpl
def omero_open_table_writer(connection: Connection, target: TableTarget, schema: TableSchema,
                            settings: Settings, file_id: int | None) -> object | None:
    from cellprofiler_omero.transports.ice.connection import IceConnection

    if not isinstance(connection, IceConnection):
        return None
    from cellprofiler_omero.transports.ice.tables import IceTableSink

    return IceTableSink(connection, target, schema, settings, file_id)


@hookimpl
def omero_open_overview_source(connection: Connection, settings: Settings) -> object | None:
    from cellprofiler_omero.transports.ice.connection import IceConnection

    if not isinstance(connection, IceConnection):
        return None
    from cellprofiler_omero.transports.ice.overview import IceOverviewSource

    return IceOverviewSource(connection, settings)
