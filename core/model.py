"""Small frozen dataclasses that describe images, regions, uploads and tables.

They are the vocabulary shared by the core, the transports and CellProfiler code;
none of them knows a transport.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from cellprofiler_omero.core.errors import UnsupportedData


class PixelType(enum.Enum):
    """OMERO's pixel types, by the names OMERO uses (``PixelsType.value``)."""

    INT8 = "int8"
    UINT8 = "uint8"
    INT16 = "int16"
    UINT16 = "uint16"
    INT32 = "int32"
    UINT32 = "uint32"
    FLOAT = "float"
    DOUBLE = "double"
    BIT = "bit"
    COMPLEX = "complex"
    DOUBLE_COMPLEX = "double-complex"

    @classmethod
    def from_name(cls, name: str) -> PixelType:
        try:
            return cls(name)
        except ValueError:
            raise UnsupportedData(f"Unknown OMERO pixel type {name!r}.") from None

    @classmethod
    def from_dtype(cls, dtype: np.dtype | type) -> PixelType:
        """The OMERO type that stores ``dtype`` values exactly."""
        dt = np.dtype(dtype)
        if dt == np.bool_:
            return cls.BIT
        for member in cls:
            if member in _DTYPES and np.dtype(_DTYPES[member]) == dt.newbyteorder("="):
                return member
        raise UnsupportedData(
            f"No OMERO pixel type stores {dt} values.",
            hint="Convert to uint8/16/32, int8/16/32, float32 or float64 first.",
        )

    @property
    def dtype(self) -> np.dtype:
        """The numpy dtype (native byte order) that holds this type's values."""
        if self not in _DTYPES:
            raise UnsupportedData(
                f"Pixel type {self.value!r} is not supported: complex pixels have no "
                "meaning in a CellProfiler pipeline.",
                hint="Convert the image on the server to a real-valued type.",
            )
        return np.dtype(_DTYPES[self])

    @property
    def wire_dtype(self) -> np.dtype:
        """How OMERO sends the values: big-endian (``bit`` travels as bytes)."""
        if self is PixelType.BIT:
            return np.dtype(np.uint8)
        return self.dtype.newbyteorder(">")

    @property
    def bytes_per_pixel(self) -> int:
        return 1 if self is PixelType.BIT else self.dtype.itemsize

    @property
    def value_range(self) -> tuple[float, float]:
        """The range of representable values, used for CellProfiler's rescale tuple."""
        if self is PixelType.BIT:
            return (0.0, 1.0)
        dt = self.dtype
        if dt.kind in "iu":
            info = np.iinfo(dt)
            return (float(info.min), float(info.max))
        return (0.0, 1.0)


_DTYPES: dict[PixelType, type] = {
    PixelType.INT8: np.int8,
    PixelType.UINT8: np.uint8,
    PixelType.INT16: np.int16,
    PixelType.UINT16: np.uint16,
    PixelType.INT32: np.int32,
    PixelType.UINT32: np.uint32,
    PixelType.FLOAT: np.float32,
    PixelType.DOUBLE: np.float64,
    PixelType.BIT: np.bool_,
}


@dataclass(frozen=True)
class Region:
    """A rectangle of a plane in pixels: origin ``(x, y)``, size ``(w, h)``."""

    x: int
    y: int
    w: int
    h: int

    def __post_init__(self) -> None:
        if self.x < 0 or self.y < 0 or self.w <= 0 or self.h <= 0:
            raise ValueError(f"Invalid region {self}: origin must be >= 0 and size > 0.")

    @property
    def pixels(self) -> int:
        return self.w * self.h


@dataclass(frozen=True)
class Channel:
    """One channel's name and display colour (RGBA, 0–255 each) when known."""

    name: str
    color: tuple[int, int, int, int] | None = None
    emission_wavelength: float | None = None


@dataclass(frozen=True)
class PhysicalSize:
    """Pixel sizes in micrometres; ``None`` where the server has none."""

    x: float | None = None
    y: float | None = None
    z: float | None = None


@dataclass(frozen=True)
class PlatePosition:
    """Where an image sits in a plate: 0-based row and column, field index.

    Row and column are optional in OMERO's model: a well may have neither.
    """

    plate_id: int
    plate_name: str
    well_id: int
    row: int | None
    column: int | None
    field: int
    screen_id: int | None = None
    screen_name: str | None = None

    @property
    def well_name(self) -> str:
        """``A01``-style well label (rows past Z continue AA, AB, …); ``""`` without
        row or column."""
        if self.row is None or self.column is None:
            return ""
        return f"{_row_letters(self.row)}{self.column + 1:02d}"


def _row_letters(row: int) -> str:
    letters = ""
    n = row + 1
    while n:
        n, rem = divmod(n - 1, 26)
        letters = chr(65 + rem) + letters
    return letters


@dataclass(frozen=True)
class ImageMeta:
    """What a reader needs to know about one image before reading pixels.

    ``levels`` lists every resolution level as ``(size_x, size_y)``, level 0 the
    full resolution and each further level smaller (the order of OME-Zarr and
    OMERO's ``getResolutionDescriptions``), whatever a transport numbers natively.
    """

    id: int
    name: str
    size_x: int
    size_y: int
    size_z: int
    size_c: int
    size_t: int
    pixel_type: PixelType
    channels: tuple[Channel, ...]
    physical_size: PhysicalSize = PhysicalSize()
    levels: tuple[tuple[int, int], ...] = ()
    owner: str | None = None
    group: str | None = None
    group_id: int | None = None
    plate: PlatePosition | None = None
    dataset_ids: tuple[int, ...] = ()
    description: str | None = None
    #: The image's Pixels id (not the image id: OMERO numbers them separately).
    pixels_id: int | None = None

    @property
    def channel_names(self) -> tuple[str, ...]:
        return tuple(ch.name for ch in self.channels)

    def level_size(self, level: int) -> tuple[int, int]:
        """``(size_x, size_y)`` of resolution ``level`` (0 = full)."""
        levels = self.levels or ((self.size_x, self.size_y),)
        if not 0 <= level < len(levels):
            raise IndexError(
                f"Image {self.id} has {len(levels)} resolution level(s); level {level} "
                f"does not exist (0 is full resolution)."
            )
        return levels[level]

    def check_plane(self, *, z: int, c: int, t: int) -> None:
        """Raise ``IndexError`` naming the bad index when (z, c, t) is outside the image."""
        for axis, value, size in (("z", z, self.size_z), ("c", c, self.size_c),
                                  ("t", t, self.size_t)):
            if not 0 <= value < size:
                raise IndexError(
                    f"Image {self.id} ({self.name!r}) has {size} {axis} plane(s); "
                    f"{axis}={value} is out of range (0-based)."
                )


@dataclass(frozen=True)
class PixelRequest:
    """One read: planes ``z`` × channels ``c`` at time ``t``, a region and a level.

    The answer is an array shaped ``(len(z), len(c), h, w)`` in the image's dtype.
    """

    z: tuple[int, ...]
    c: tuple[int, ...]
    t: int = 0
    region: Region | None = None
    level: int = 0


@dataclass(frozen=True)
class NewImage:
    """What an uploader needs besides the pixels (shaped ``(T, Z, C, Y, X)``).

    ``client_key`` makes the upload idempotent: a retry with the same key finds
    the image made by an earlier attempt instead of creating a second one.
    """

    name: str
    client_key: str
    channel_names: tuple[str, ...] = ()
    description: str = ""
    dataset_id: int | None = None
    physical_size: PhysicalSize = PhysicalSize()
    source_image_ids: tuple[int, ...] = ()
    source_urls: tuple[str, ...] = ()


@dataclass(frozen=True)
class UploadedImage:
    """An image an uploader made (or found already made, ``reused=True``)."""

    id: int
    name: str
    dataset_id: int | None
    reused: bool = False


class ColumnKind(enum.Enum):
    """OMERO.tables column types this package writes."""

    LONG = "long"
    DOUBLE = "double"
    STRING = "string"
    BOOL = "bool"
    IMAGE = "image"
    ROI = "roi"
    WELL = "well"
    PLATE = "plate"


@dataclass(frozen=True)
class ColumnSpec:
    """One column: name, kind, and for strings the maximum length in bytes."""

    name: str
    kind: ColumnKind
    size: int = 0
    description: str = ""


@dataclass(frozen=True)
class TableSchema:
    """The columns of one OMERO.table, fixed at creation (OMERO cannot add columns)."""

    name: str
    columns: tuple[ColumnSpec, ...]
    #: Identifies the table across runs (see ``core.tables.table_identity``): a sink
    #: given one first looks for a table carrying it on the target and continues that
    #: one, so a rerun never makes a second table for the same run and label.
    identity: str = ""

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(col.name for col in self.columns)

    @property
    def has_image_column(self) -> bool:
        return any(col.kind is ColumnKind.IMAGE for col in self.columns)


@dataclass(frozen=True)
class TableTarget:
    """Where a table is attached: an object kind name (``Dataset``…) and its id."""

    kind: str
    id: int
    namespace: str | None = None


@dataclass(frozen=True)
class TableInfo:
    """A table on the server: its file, its annotation and how many rows it holds."""

    file_id: int
    annotation_id: int | None
    rows: int
    name: str
    #: True when an earlier run (or another process of this run) made the table.
    reused: bool = False


@dataclass(frozen=True)
class Node:
    """One entry of a browsed tree (CLI ``ls``, the GUI browser)."""

    kind: str
    id: int
    name: str
    child_count: int | None = None
    size: tuple[int, ...] | None = None
    pixel_type: str | None = None
    extra: dict[str, str | int] = field(default_factory=dict, compare=False)


@dataclass(frozen=True)
class Page:
    """A page of nodes; ``total`` counts all of them, not only this page."""

    items: tuple[Node, ...]
    offset: int
    total: int

    @property
    def has_more(self) -> bool:
        return self.offset + len(self.items) < self.total


@dataclass(frozen=True)
class Group:
    """One of the user's groups, as a browser shows it at the top of the tree."""

    id: int
    name: str
    #: How many containers the user owns at the group's top level (what
    #: ``Connection.group_children`` pages through).
    child_count: int
    #: True for the group the session is in now.
    current: bool = False


def planes_of(size_z: int, size_c: int, size_t: int) -> Sequence[tuple[int, int, int]]:
    """Every (z, c, t) of an image in OMERO's XYZCT order."""
    return [(z, c, t) for t in range(size_t) for c in range(size_c) for z in range(size_z)]
