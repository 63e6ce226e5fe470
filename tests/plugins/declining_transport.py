"""A third-party transport that declines every request (tests observe the fall-through)."""

from __future__ import annotations

from typing import Any

from cellprofiler_omero.plugin import hookimpl

ASKED: list[str] = []


@hookimpl
def omero_open_reader(connection: Any, image: Any, meta: Any, settings: Any) -> None:
    ASKED.append(f"read {image.id}")
    return None
