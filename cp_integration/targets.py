"""Turning what a user types in a module setting into an OMERO container id."""

from __future__ import annotations

from cellprofiler_omero.core import refs
from cellprofiler_omero.core.errors import InvalidReference
from cellprofiler_omero.core.refs import Kind

PARENT_KINDS = ("Project", "Dataset", "Screen", "Plate", "Well", "Image")


def parse_target(text: str, kind: str) -> int:
    """The id of a ``kind`` named by ``text``: a bare id, ``Dataset:5`` or any OMERO link."""
    value = text.strip()
    if value.isdigit():
        return int(value)
    try:
        ref = refs.parse_one(value)
    except InvalidReference:
        raise InvalidReference(
            f"{text!r} does not name an OMERO {kind}.",
            hint=f"Enter the {kind}'s id (e.g. 123) or paste its OMERO.web link.") from None
    expected = Kind(kind if kind != "Acquisition" else "PlateAcquisition")
    if ref.kind is not expected:
        raise InvalidReference(f"{text!r} names a {ref.kind.value}, not a {kind}.",
                               hint=f"Enter a {kind} id or link.")
    return ref.id
