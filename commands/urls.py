"""``urls``: expand images and containers into image URLs, or a LoadData CSV.

The plain list (one URL a line) is what CellProfiler's File ▸ Import ▸ File List and
``cellprofiler --file-list`` read. The LoadData CSV follows CellProfiler's LoadData
column conventions: ``URL_<name>`` holds the image URL and ``Frame_<name>`` the plane
index in OMERO's XYZCT order (``z + size_z * (c + size_c * t)``), which the OMERO
reader turns back into (z, c, t); every channel column names the same image.
"""

from __future__ import annotations

import argparse
import csv
import io
import re
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from cellprofiler_omero.commands import common

if TYPE_CHECKING:
    from cellprofiler_omero.core.annotations import Collision, ImageAnnotations
    from cellprofiler_omero.core.model import ImageMeta
    from cellprofiler_omero.core.refs import ObjectRef
    from cellprofiler_omero.core.session import SessionManager

#: Metadata requests in flight at once (the transport bounds its own calls as well).
META_CONCURRENCY = 8

PLATE_COLUMNS = ("Metadata_Plate", "Metadata_Well", "Metadata_Row", "Metadata_Column",
                 "Metadata_Field")
PLANE_COLUMNS = ("Metadata_Z", "Metadata_T")
IMAGE_COLUMNS = ("Metadata_ImageID", "Metadata_ImageName")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``urls``."""
    urls = sub.add_parser(
        "urls", help="expand images and containers into image URLs or a LoadData CSV",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Print one URL per image, ready for CellProfiler's File ▸ Import ▸ File "
                    "List\nor `cellprofiler -c -r --file-list FILE`. Projects, Datasets, "
                    "Screens, Plates\nand Wells expand into their images, in OMERO's order "
                    "(plates: row, column,\nfield); an image given twice is listed once.\n\n"
                    "With --loaddata, write a CSV for CellProfiler's LoadData module "
                    "instead: per\nchannel a URL_<channel> and a Frame_<channel> column "
                    "(the plane to read), then\nMetadata_Plate, Metadata_Well (A01), "
                    "Metadata_Row (A), Metadata_Column (01) and\nMetadata_Field (1-based) "
                    "for images in plates; Metadata_Z and Metadata_T\n(0-based) when "
                    "images have several planes (one row per plane); and always\n"
                    "Metadata_ImageID and Metadata_ImageName. Channel names come from OMERO "
                    "and\nmust be the same for every image.\n\n"
                    "Key-value pairs on the images (map annotations; --kv-namespace to "
                    "choose\nnamespaces) become Metadata_<key> columns, their tags "
                    "Metadata_Tags (when an\nimage has tags; --no-tags to leave them "
                    "out). Keys are made column names\n(letters, digits, _); a key whose "
                    "name is taken (by a built-in column or\nanother key) gets _2, _3 ... "
                    "in sorted key order, and each such collision is\nreported on stderr. "
                    "Several values of one key on an image are joined by '; '.",
        epilog="examples:\n"
               "  cellprofiler-omero urls Dataset:2 -o files.txt\n"
               "  cellprofiler-omero urls Plate:21 --loaddata -o plate.csv\n"
               "  cellprofiler-omero urls Screen:20 --form legacy\n"
               "  cellprofiler-omero urls 'https://omero.example.org/webclient/?show=image-5"
               "|image-6'")
    common.add_server_options(urls)
    urls.add_argument("refs", nargs="+", metavar="REF",
                      help="images or containers, in any form OMERO shows: Image:5, "
                           "Dataset:2, plate-21, omero:iid=5, an OMERO.web link")
    urls.add_argument("--form", choices=("web", "legacy"), default="web",
                      help="web: OMERO.web links (…/webclient/?show=image-5), which name "
                           "their server; legacy: omero:iid=5, which use the configured "
                           "server (default: web)")
    urls.add_argument("--web-base", metavar="URL",
                      help="OMERO.web root for web links, e.g. https://omero.example.org/ "
                           "(default: the link you gave, else server.web_url from the "
                           "settings, else https://SERVER/)")
    urls.add_argument("--loaddata", action="store_true",
                      help="write a LoadData CSV (see above) instead of a list")
    urls.add_argument("--kv-namespace", action="append", metavar="NS", dest="kv_namespaces",
                      help="with --loaddata: take key-value pairs only from map annotations "
                           "in namespace NS (repeat for several; default: every namespace "
                           "but this package's own, openmicroscopy.org/cellprofiler-omero/…)")
    urls.add_argument("--no-tags", action="store_false", dest="tags",
                      help="with --loaddata: leave the images' tags out (no Metadata_Tags)")
    urls.add_argument("-o", "--output", metavar="FILE", type=Path,
                      help="write to FILE instead of standard output")
    urls.set_defaults(handler=cmd_urls)


def cmd_urls(args: argparse.Namespace) -> int:
    """Expand references into image URLs (or a LoadData CSV) on stdout or ``--output``."""
    from cellprofiler_omero.core import refs
    from cellprofiler_omero.core.errors import NotFound

    # Parse everything before connecting, so a typo fails fast and names itself.
    wanted = [ref for text in args.refs for ref in refs.parse(text)]
    with common.session(args) as manager:
        info = common.connect(manager, args, host=wanted[0].host, port=wanted[0].port)
        images = _expand(manager, wanted)
        if not images:
            raise NotFound(f"{', '.join(map(str, wanted))} hold(s) no images.",
                           hint="Check the references with `cellprofiler-omero ls`.")
        base = args.web_base or manager.settings.server.web_url or f"https://{info.server.host}/"

        def url(image: ObjectRef) -> str:
            if args.form == "legacy":
                return refs.legacy_url(image)
            return refs.web_url(image, args.web_base or image.web_base or base)

        if args.loaddata:
            metas = _metadata(manager, images)
            annotations = _annotations(manager, images, args.kv_namespaces, args.tags)
            # Named namespaces are taken as asked, this package's own ones included.
            text, collisions = loaddata_csv_with_annotations(
                images, metas, url, annotations, tags=args.tags,
                own=bool(args.kv_namespaces))
            for collision in collisions:
                common.note(f"note: {collision}")
        else:
            text = "".join(url(image) + "\n" for image in images)
    if args.output is None:
        sys.stdout.write(text)
    else:
        common.write_output(args.output, text)
        what = "a LoadData CSV of" if args.loaddata else "URLs of"
        common.note(f"wrote {what} {len(images)} image(s) to {args.output}")
    return 0


def _expand(manager: SessionManager, wanted: Sequence[ObjectRef]) -> list[ObjectRef]:
    """Every image the references name, in order, each once."""
    found: dict[ObjectRef, None] = {}
    with common.progress(len(wanted), "expanding", unit="refs") as bar:
        for ref in wanted:
            images = _images_in(manager, ref)
            if not images:
                common.note(f"note: {ref} holds no images")
            found.update(dict.fromkeys(images))
            bar.update(1)
    return list(found)


def _images_in(manager: SessionManager, ref: ObjectRef) -> list[ObjectRef]:
    return common.call(manager, lambda c: c.images_in(ref), ref)


def _metadata(manager: SessionManager, images: Sequence[ObjectRef]) -> list[ImageMeta]:
    """``image_meta`` of every image, several at a time, with a progress bar."""
    import anyio

    results: list[ImageMeta | None] = [None] * len(images)

    async def fetch_all() -> None:
        limiter = anyio.CapacityLimiter(META_CONCURRENCY)
        with common.progress(len(images), "reading metadata", unit="images") as bar:

            async def one(index: int, ref: ObjectRef) -> None:
                async with limiter:
                    results[index] = await manager.call(lambda c: c.image_meta(ref.id), ref)
                bar.update(1)

            try:
                async with anyio.create_task_group() as group:
                    for index, ref in enumerate(images):
                        group.start_soon(one, index, ref)
            except BaseExceptionGroup as failures:
                # Report the first failure as itself: one clear error, not a group.
                raise _first_leaf(failures) from None

    common.run(fetch_all)
    return [meta for meta in results if meta is not None]


def _annotations(manager: SessionManager, images: Sequence[ObjectRef],
                 namespaces: Sequence[str] | None, tags: bool
                 ) -> dict[int, ImageAnnotations]:
    """Key-value pairs, tags and plate positions of every image: the connection asks for
    the whole list in a few batched queries."""
    ids = [ref.id for ref in images]

    async def fetch() -> dict[int, ImageAnnotations]:
        found: dict[int, ImageAnnotations] = await manager.call(
            lambda c: c.image_annotations(ids, namespaces, tags=tags),
            what=f"reading the annotations of {len(ids)} image(s)")
        return found

    return common.run(fetch)


def _first_leaf(group: BaseExceptionGroup) -> BaseException:
    first = group.exceptions[0]
    return _first_leaf(first) if isinstance(first, BaseExceptionGroup) else first


# -- LoadData --------------------------------------------------------------------------------


def channel_columns(names: Sequence[str]) -> list[str]:
    """Channel names as CellProfiler image names: letters, digits, ``_``; unique."""
    columns: list[str] = []
    for index, name in enumerate(names):
        column = re.sub(r"[^0-9A-Za-z_]+", "_", name).strip("_") or f"C{index}"
        if column[0].isdigit():
            column = f"Channel_{column}"
        unique, n = column, 2
        while unique in columns:
            unique, n = f"{column}_{n}", n + 1
        columns.append(unique)
    return columns


def _check_channels(images: Sequence[ObjectRef], metas: Sequence[ImageMeta]) -> None:
    from cellprofiler_omero.core.errors import UnsupportedData

    names = metas[0].channel_names
    for image, meta in zip(images, metas, strict=True):
        if meta.channel_names != names:
            raise UnsupportedData(
                f"The images disagree on channel names: {images[0]} has "
                f"{', '.join(names)} but {image} has {', '.join(meta.channel_names)}.",
                hint="A LoadData CSV has one column per channel; list images with the same "
                     "channels (e.g. one plate or dataset at a time), or drop --loaddata.")


def loaddata_csv(images: Sequence[ObjectRef], metas: Sequence[ImageMeta],
                 url: Callable[[ObjectRef], str]) -> str:
    """The LoadData CSV text: one row per image (per plane when images have several)."""
    return loaddata_csv_with_annotations(images, metas, url, {}, tags=False)[0]


def annotation_columns(annotations: Mapping[int, ImageAnnotations], reserved: Sequence[str],
                       *, tags: bool, own: bool = False
                       ) -> tuple[dict[str, str], list[Collision]]:
    """OMERO key → column name (without ``Metadata_``) for every key on the images, and
    the collisions resolved (see ``core.annotations.metadata_names``)."""
    from cellprofiler_omero.core.annotations import TAGS_KEY, metadata_names

    keys = {key for found in annotations.values() for key in found.values(own=own)}
    return metadata_names(keys, [*reserved, *((TAGS_KEY,) if tags else ())])


def loaddata_csv_with_annotations(
        images: Sequence[ObjectRef], metas: Sequence[ImageMeta],
        url: Callable[[ObjectRef], str], annotations: Mapping[int, ImageAnnotations], *,
        tags: bool, own: bool = False) -> tuple[str, list[Collision]]:
    """The LoadData CSV text with a ``Metadata_<key>`` column per key-value pair key (and
    ``Metadata_Tags`` when ``tags`` and an image has tags), and the name collisions
    resolved on the way.
    ``own``: keep pairs in this package's own namespaces (see ``ImageAnnotations.values``)."""
    from cellprofiler_omero.core.annotations import TAGS_KEY

    _check_channels(images, metas)
    channels = channel_columns(metas[0].channel_names)
    in_plates = any(meta.plate is not None for meta in metas)
    stacks = any(meta.size_z > 1 or meta.size_t > 1 for meta in metas)
    header = [f"{prefix}_{name}" for name in channels for prefix in ("URL", "Frame")]
    header += list(PLATE_COLUMNS if in_plates else ()) + list(PLANE_COLUMNS if stacks else ())
    header += list(IMAGE_COLUMNS)
    builtin = [name.removeprefix("Metadata_") for name in header if name.startswith("Metadata_")]
    # Metadata_Tags only when an image has tags: images without annotations keep the CSV
    # they always had.
    tags = tags and any(found.tags for found in annotations.values())
    names, collisions = annotation_columns(annotations, builtin, tags=tags, own=own)
    keys = sorted(names, key=lambda k: names[k].lower())
    header += [f"Metadata_{names[k]}" for k in keys]
    if tags:
        header.append(f"Metadata_{TAGS_KEY}")
    out = io.StringIO()
    writer = csv.writer(out, lineterminator="\n")
    writer.writerow(header)
    for image, meta in zip(images, metas, strict=True):
        link = url(image)
        for t in range(meta.size_t):
            for z in range(meta.size_z):
                row: list[str | int] = []
                for c in range(len(channels)):
                    row += [link, z + meta.size_z * (c + meta.size_c * t)]
                if in_plates:
                    row += _plate_values(meta)
                if stacks:
                    row += [z, t]
                row += [meta.id, meta.name]
                found = annotations.get(meta.id)
                values = found.values(own=own) if found is not None else {}
                row += [values.get(k, "") for k in keys]
                if tags:
                    row.append(found.tag_value() if found is not None else "")
                writer.writerow(row)
    return out.getvalue(), collisions


def _plate_values(meta: ImageMeta) -> list[str | int]:
    pos = meta.plate
    if pos is None:
        return ["", "", "", "", ""]  # an image outside any plate, listed beside plate images
    well = pos.well_name
    row_letters = well.rstrip("0123456789")
    return [pos.plate_name or str(pos.plate_id), well, row_letters, well[len(row_letters):],
            pos.field + 1]
