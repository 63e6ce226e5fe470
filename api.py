"""One call per job, for scripts and notebooks: read, list, upload, write a table.

These functions are the CLI's and CellProfiler's machinery behind a blocking call:
the process's one session (``core.session.get_manager``), the settings layers
(file < environment < ``settings=``), and the same login rules. Without
credentials a call uses, in order, the session a parent process handed over and the
token saved by ``cellprofiler-omero login --save-token`` (when its server is the one
wanted). ``connect`` logs in explicitly instead.

The calls run on the package's own event-loop thread, so they work the same in a
plain script and in a Jupyter notebook (whose own loop is left alone). They must
not be called from async code running on that thread (transports, hooks).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

from cellprofiler_omero.core.model import (
    ColumnKind,
    ColumnSpec,
    Region,
    TableInfo,
    TableSchema,
    TableTarget,
    UploadedImage,
)
from cellprofiler_omero.core.refs import Kind, ObjectRef, parse_image, parse_one

if TYPE_CHECKING:
    import pandas as pd

    from cellprofiler_omero.core.roles import SessionInfo
    from cellprofiler_omero.core.session import SessionManager

Ref = str | ObjectRef

__all__ = ["connect", "disconnect", "list_images", "read_image", "save_rois", "upload_image",
           "write_table"]

#: Column names that become OMERO.tables id columns (what OMERO.web and omero2pandas
#: link to objects) when their values are integers.
ID_COLUMNS = {"Image": ColumnKind.IMAGE, "Roi": ColumnKind.ROI, "Well": ColumnKind.WELL,
              "Plate": ColumnKind.PLATE}


def _run(func: Any, *args: Any) -> Any:
    from cellprofiler_omero.core import runtime

    return runtime.run(func, *args)


def _manager() -> SessionManager:
    from cellprofiler_omero.core.session import get_manager

    return get_manager()


def _ref(ref: Ref) -> ObjectRef:
    return ref if isinstance(ref, ObjectRef) else parse_one(ref)


def _session(server: str | None, port: int | None, ref: ObjectRef | None = None
             ) -> SessionManager:
    """The process's manager, connected to ``server`` (else the reference's server,
    else the configured, handed-over or token server)."""
    manager = _manager()
    host = server or (ref.host if ref is not None else None)
    wanted_port = port if port is not None else (ref.port if ref is not None else None)
    _run(lambda: manager.connect(host, wanted_port))
    return manager


def connect(server: str | None = None, port: int | None = None, *, user: str | None = None,
            password: str | None = None, session_key: str | None = None,
            settings: Mapping[str, Any] | None = None) -> SessionInfo:
    """Log in (or join a session) for the calls that follow, and say who is connected.

    ``settings`` are ``{"section.key": value}`` overrides on top of the settings file
    and environment (e.g. ``{"transports.read": ["pixelbuffer", "ice"]}``); giving
    them starts a new session for the process. Without ``user``/``password`` or
    ``session_key``, the handed-over session or the saved token is joined.

    >>> connect("omero.example.org", user="demo", password="…")  # doctest: +SKIP
    """
    from cellprofiler_omero.core import session

    if settings is not None:
        from cellprofiler_omero.core.config import load_settings

        disconnect()
        session.set_manager(session.SessionManager(load_settings(settings)))
    manager = _manager()
    info: SessionInfo = _run(lambda: manager.connect(server, port, user=user,
                                                     password=password,
                                                     session_key=session_key))
    return info


def disconnect() -> None:
    """End the process's session (a token's or a handed-over session stays valid)."""
    from cellprofiler_omero.core import session

    manager = _manager()
    _run(manager.close)
    session.set_manager(None)


def _as_indices(value: int | Sequence[int] | None) -> tuple[int, ...] | None:
    if value is None:
        return None
    if isinstance(value, int | np.integer):
        return (int(value),)
    return tuple(int(v) for v in value)


def read_image(ref: Ref, *, z: int | Sequence[int] = 0, c: int | Sequence[int] | None = None,
               t: int = 0, region: Region | tuple[int, int, int, int] | None = None,
               level: int = 0, server: str | None = None, port: int | None = None
               ) -> np.ndarray:
    """Pixels of one image, named in any form OMERO shows (``Image:5``, ``image-5``,
    ``omero:iid=5``, an OMERO.web link), as a numpy array in the image's dtype.

    The result is shaped ``(Z, C, Y, X)``, without the axes given as a single int:
    ``z=0`` (the default) and all channels give ``(C, Y, X)``; ``z=0, c=1`` gives
    ``(Y, X)``; ``z=[0, 1]`` keeps ``Z``. ``region`` is ``(x, y, width, height)`` of
    the plane; ``level`` a pyramid resolution (0 is full size).

    >>> read_image("https://omero.example.org/webclient/?show=image-5", c=0)  # doctest: +SKIP
    """
    from cellprofiler_omero.core.reading import ImageReader

    image = ref if isinstance(ref, ObjectRef) else parse_image(ref)
    zs = _as_indices(z) or (0,)
    cs = _as_indices(c)
    box = Region(*region) if isinstance(region, tuple) else region
    manager = _session(server, port, image)

    async def read() -> np.ndarray:
        reader = ImageReader(manager, image)
        try:
            return await reader.read(z=zs, c=cs, t=t, region=box, level=level)
        finally:
            await reader.aclose()

    data: np.ndarray = _run(read)
    if isinstance(c, int | np.integer):
        data = data[:, 0]
    if isinstance(z, int | np.integer):
        data = data[0]
    return data


def list_images(ref: Ref, *, server: str | None = None, port: int | None = None
                ) -> list[ObjectRef]:
    """The images a Project, Dataset, Screen, Plate, Well or run holds, in OMERO's order
    (plates: row, column, field), as ``cellprofiler-omero urls`` lists them. An image
    gives itself. Each result has ``.id`` and prints as ``Image:ID``.

    >>> [image.id for image in list_images("Dataset:2")]  # doctest: +SKIP
    """
    target = _ref(ref)
    manager = _session(server, port, target)
    images: list[ObjectRef] = _run(lambda: manager.call(lambda c: c.images_in(target), target))
    return images


def upload_image(array: np.ndarray, *, name: str, dataset: Ref | int | None = None,
                 axes: str | None = None, channel_names: Sequence[str] = (),
                 description: str = "", key: str | None = None,
                 server: str | None = None, port: int | None = None) -> UploadedImage:
    """Create an OMERO image from ``array`` and return it (``.id``, ``.name``).

    2-D arrays are one plane (``YX``), 4-D ``ZYXC`` and 5-D ``TZYXC``; a 3-D array is
    ambiguous, so name its axes (``axes="ZYX"`` or ``"YXC"``). ``dataset`` links the
    image to a dataset (its id, ``Dataset:2`` or a link). With ``key``, calling again
    with the same key finds the image made before instead of making a second one
    (``reused=True``), which makes a retried script safe.

    >>> upload_image(labels, name="nuclei", dataset=2, key="plate1-A01-nuclei")  # doctest: +SKIP
    """
    from cellprofiler_omero.core.uploading import upload

    dataset_id: int | None = None
    if dataset is not None:
        if isinstance(dataset, int):
            dataset_id = dataset
        else:
            target = _ref(dataset)
            if target.kind is not Kind.DATASET:
                raise ValueError(f"{target} is not a dataset; images are linked to datasets.")
            dataset_id = target.id
    manager = _session(server, port)
    result: UploadedImage = _run(lambda: upload(
        manager, np.asarray(array), name=name, axes=axes, dataset_id=dataset_id,
        channel_names=channel_names, description=description, client_key=key))
    return result


def save_rois(image: Ref, labels: np.ndarray, *, name: str = "Objects", shape: str = "mask",
              tolerance: float = 1.0, z: int | None = None, t: int | None = None,
              stroke_color: int | None = None, server: str | None = None,
              port: int | None = None) -> dict[int, int]:
    """Save the objects of a label image as ROIs on an OMERO image: one ROI per object,
    named ``"<name> <number>"``; return ``{object number: ROI id}``.

    ``labels``: 0 for background, the object number inside each object, ``(Y, X)`` (on
    plane ``z``, ``t``) or ``(Z, Y, X)``. ``shape``: ``"mask"`` (exact) or ``"polygon"``
    (the outline, simplified within ``tolerance`` pixels). ``stroke_color``: OMERO's
    RGBA int (``core.roi_encoding.rgba_to_int``). Calling again with the same objects
    finds the ROIs made before instead of making others; objects larger than the image,
    or an image the user may not annotate, are refused before anything is saved.

    >>> save_rois("Image:5", nuclei_labels, name="Nuclei")  # doctest: +SKIP
    """
    from cellprofiler_omero.core.roi_encoding import label_rois
    from cellprofiler_omero.core.roi_writing import save_rois as save
    from cellprofiler_omero.core.shapes import Plane, ShapeKind

    target = image if isinstance(image, ObjectRef) else parse_image(image)
    kinds = {"mask": ShapeKind.MASK, "polygon": ShapeKind.POLYGON}
    if shape.lower() not in kinds:
        raise ValueError(f"shape={shape!r}: use 'mask' or 'polygon'.")
    rois = label_rois(np.asarray(labels), target.id, name, kind=kinds[shape.lower()],
                      tolerance=tolerance, plane=Plane(z=z, t=t), stroke_color=stroke_color)
    manager = _session(server, port, target)
    numbers = list(rois)
    result = _run(lambda: save(manager, [rois[n] for n in numbers]))
    return {number: saved.id for number, saved in zip(numbers, result.rois, strict=True)}


def table_schema(frame: pd.DataFrame, name: str) -> TableSchema:
    """The OMERO.table columns for ``frame``: floats → Double, integers → Long (or an id
    column when named ``Image``, ``Roi``, ``Well`` or ``Plate``), booleans → Bool,
    anything else → String as wide as its longest value (UTF-8 bytes)."""
    columns: list[ColumnSpec] = []
    for label in frame.columns:
        column = str(label)
        series = frame[label]
        kind = series.dtype.kind
        if kind == "b":
            columns.append(ColumnSpec(column, ColumnKind.BOOL))
        elif kind in "iu":
            columns.append(ColumnSpec(column, ID_COLUMNS.get(column, ColumnKind.LONG)))
        elif kind == "f":
            columns.append(ColumnSpec(column, ColumnKind.DOUBLE))
        else:
            widest = max((len(str(v).encode("utf-8")) for v in series
                          if not _missing(v)), default=0)
            columns.append(ColumnSpec(column, ColumnKind.STRING, max(1, widest)))
    return TableSchema(name, tuple(columns))


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and math.isnan(value))


def write_table(frame: pd.DataFrame, target: Ref, *, name: str,
                server: str | None = None, port: int | None = None) -> TableInfo:
    """Write ``frame`` as a new OMERO.table attached to ``target`` (``Dataset:2``,
    ``Plate:3``, ``Image:5``, … or a link) and return it (``file_id``, ``rows``).

    Column types follow ``table_schema``. Integer, boolean and id columns cannot hold
    missing values (OMERO.tables has none there): make such a column float. The
    table reads back with omero2pandas: ``omero2pandas.read_table(file_id=…)``.

    >>> write_table(frame, "Dataset:2", name="measurements")  # doctest: +SKIP
    """
    from cellprofiler_omero.core.tables import TableWriter

    owner = _ref(target)
    schema = table_schema(frame, name)
    manager = _session(server, port, owner)
    columns = {str(label): frame[label].tolist() for label in frame.columns}

    async def write() -> TableInfo:
        writer = TableWriter(manager, TableTarget(owner.kind.value, owner.id), schema)
        await writer.open()
        writer.add_rows(columns)
        return await writer.close()

    info: TableInfo = _run(write)
    return info
