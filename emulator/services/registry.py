"""Service name → servant class, for the services the emulator implements."""

from __future__ import annotations

from typing import Any

SERVICES: dict[str, Any] = {}


def _load() -> None:
    from cellprofiler_omero.emulator.services import (
        admin,
        container,
        enums_scripts,
        exporter,
        files,
        metadata,
        pixels,
        query,
        rendering,
        roi,
        search,
        sessions,
        tables,
        timeline,
        update,
    )

    SERVICES.update({
        "IAdmin": admin.AdminI,
        "IConfig": admin.ConfigI,
        "ISession": sessions.SessionServiceI,
        "IQuery": query.QueryI,
        "IContainer": container.ContainerI,
        "IUpdate": update.UpdateI,
        "IMetadata": metadata.MetadataServiceI,
        "Search": search.SearchI,
        "IRoi": roi.RoiServiceI,
        "IPixels": pixels.PixelsServiceI,
        "RawPixelsStore": pixels.RawPixelsStoreI,
        "RawFileStore": files.RawFileStoreI,
        "RenderingEngine": rendering.RenderingEngineI,
        "ThumbnailStore": rendering.ThumbnailStoreI,
        "IRenderingSettings": rendering.RenderingSettingsI,
        "SharedResources": tables.SharedResourcesI,
        "ITypes": enums_scripts.TypesI,
        "IScript": enums_scripts.ScriptI,
        "ITimeline": timeline.TimelineI,
        "Exporter": exporter.ExporterI,
    })


_load()
