"""OMERO key-value pairs and tags as CellProfiler metadata, and measurements going back.

Transport-neutral: what a ``Connection`` answers for a list of images
(``ImageAnnotations``), how OMERO keys become CellProfiler metadata names (letters,
digits, ``_``; unique; collisions resolved the same way every time and reported), and
what a writer of per-image measurement annotations is asked for (``NewKeyValues``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from cellprofiler_omero.core.model import PlatePosition

#: Namespaces of this package's own annotations (upload provenance, measurements).
OWN_NS_PREFIX = "openmicroscopy.org/cellprofiler-omero/"
#: Namespace of the per-image measurement annotations ExportToOMEROKeyValues writes.
MEASUREMENTS_NS = OWN_NS_PREFIX + "measurements"
#: The metadata name (without ``Metadata_``) of an image's tags, joined by ``VALUE_JOIN``.
TAGS_KEY = "Tags"
#: Several values of one key on one image (two pairs or two annotations) are joined by it.
VALUE_JOIN = "; "


@dataclass(frozen=True)
class KeyValue:
    """One pair of a MapAnnotation linked to an image."""

    key: str
    value: str
    namespace: str | None = None
    annotation_id: int = 0


@dataclass(frozen=True)
class ImageAnnotations:
    """What OMERO says about one image besides its pixels: key-value pairs in annotation
    order (annotation id, then position in the map), tag names, its place in a plate."""

    image_id: int
    pairs: tuple[KeyValue, ...] = ()
    tags: tuple[str, ...] = ()
    plate: PlatePosition | None = None

    def values(self, *, own: bool = False) -> dict[str, str]:
        """Each key once, its values (distinct, in order) joined by ``VALUE_JOIN``.

        Pairs in this package's own namespaces (``OWN_NS_PREFIX``: the measurements a run
        wrote back, upload provenance) are left out unless ``own``: a rerun must not read
        its own results as input metadata (which would also change its run key).
        """
        found: dict[str, list[str]] = {}
        for pair in self.pairs:
            if not own and (pair.namespace or "").startswith(OWN_NS_PREFIX):
                continue
            values = found.setdefault(pair.key, [])
            if pair.value not in values:
                values.append(pair.value)
        return {key: VALUE_JOIN.join(values) for key, values in found.items()}

    def tag_value(self) -> str:
        """The image's tags, sorted, joined by ``VALUE_JOIN`` (``""`` without tags)."""
        return VALUE_JOIN.join(sorted(set(self.tags)))


@dataclass(frozen=True)
class Collision:
    """An OMERO key whose natural metadata name was taken, and the name it got instead."""

    key: str
    wanted: str
    given: str
    taken_by: str
    reserved: bool = False  # taken by a built-in name, not by another key

    def __str__(self) -> str:
        why = (f"{self.wanted} is a built-in name" if self.reserved else
               f"{self.wanted} is taken by OMERO key {self.taken_by!r}")
        return f"OMERO key {self.key!r} is named {self.given} ({why})"


def safe_name(key: str) -> str:
    """``key`` as a CellProfiler metadata name: runs of other characters become ``_``;
    a name starting with a digit gets ``K_`` in front; an empty one is ``Key``."""
    name = re.sub(r"[^0-9A-Za-z_]+", "_", key).strip("_") or "Key"
    return f"K_{name}" if name[0].isdigit() else name


def metadata_names(keys: Iterable[str], reserved: Iterable[str] = ()
                   ) -> tuple[dict[str, str], list[Collision]]:
    """A unique metadata name per OMERO key, and the collisions met on the way.

    Names are compared without case (a database or a spreadsheet column may ignore it).
    ``reserved`` names (the built-in columns, ``Tags``) are never given to a key. Keys
    are named in sorted order, so the same keys always get the same names: the first
    key wanting a name gets it, the next ``<name>_2``, ``<name>_3``…
    """
    taken: dict[str, tuple[str, bool]] = {name.lower(): (name, True) for name in reserved}
    names: dict[str, str] = {}
    collisions: list[Collision] = []
    for key in sorted(set(keys)):
        wanted = safe_name(key)
        given, n = wanted, 2
        while given.lower() in taken:
            given, n = f"{wanted}_{n}", n + 1
        if given != wanted:
            collisions.append(Collision(key, wanted, given, *taken[wanted.lower()]))
        taken[given.lower()] = (key, False)
        names[key] = given
    return names, collisions


def plate_values(plate: PlatePosition | None) -> dict[str, str]:
    """``Plate``, ``Well`` (A01), ``Row`` (A), ``Column`` (01), ``Field`` (1-based) of an
    image in a plate, as ``urls --loaddata`` writes them; ``{}`` outside plates."""
    if plate is None:
        return {}
    well = plate.well_name
    row = well.rstrip("0123456789")
    return {"Plate": plate.plate_name or str(plate.plate_id), "Well": well, "Row": row,
            "Column": well[len(row):], "Field": str(plate.field + 1)}


@dataclass(frozen=True)
class NewKeyValues:
    """A request for one MapAnnotation on an image, made at most once per ``identity``.

    ``identity`` (e.g. ``cellprofiler-omero measurements of run <run key>``) is kept as
    the annotation's description: a writer first looks for this user's annotation in
    ``namespace`` with that description on the image and makes one only when there is
    none, so retries and reruns of one run never add a second.
    """

    image_id: int
    namespace: str
    pairs: tuple[tuple[str, str], ...]
    identity: str


@dataclass(frozen=True)
class WrittenKeyValues:
    """The annotation on ``image_id``; ``reused`` when an earlier attempt had made it."""

    image_id: int
    annotation_id: int
    reused: bool


def pairs_of(values: Mapping[str, object] | Sequence[tuple[str, object]]
             ) -> tuple[tuple[str, str], ...]:
    """Key-value pairs as text, in order (a mapping's order, or the sequence's)."""
    items = values.items() if isinstance(values, Mapping) else values
    return tuple((str(k), "" if v is None else str(v)) for k, v in items)
