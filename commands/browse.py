"""``ls``: browse Projects ▸ Datasets ▸ Images and Screens ▸ Plates ▸ Wells ▸ Images."""

from __future__ import annotations

import argparse
from typing import TYPE_CHECKING, Any

from cellprofiler_omero.commands import common

if TYPE_CHECKING:
    from cellprofiler_omero.core.model import Node, Page
    from cellprofiler_omero.core.refs import ObjectRef
    from cellprofiler_omero.core.session import SessionManager

DEFAULT_LIMIT = 100

#: What a container's children are called, singular and plural.
_CHILDREN = {"Project": ("dataset", "datasets"), "Dataset": ("image", "images"),
             "Screen": ("plate", "plates"), "Plate": ("well", "wells"),
             "Well": ("field", "fields")}

_REF_HELP = (
    "a Project, Dataset, Screen, Plate, Well or Image, in any form OMERO shows: "
    "Dataset:12, dataset-12, an OMERO.web link (…/webclient/?show=dataset-12), "
    "omero:iid=5. Without REF: your projects and screens.")


def add_parsers(sub: argparse._SubParsersAction) -> None:
    """Register ``ls``."""
    ls = sub.add_parser(
        "ls", help="list your projects and screens, or what a container holds",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Browse OMERO like a folder tree: Projects hold Datasets, Datasets "
                    "hold Images;\nScreens hold Plates, Plates hold Wells, Wells hold one "
                    "Image per field.\nEach line shows the reference to pass on (Kind:id), "
                    "the name, and how many\nchildren a container has, or an image's size "
                    "(X×Y×Z×C×T) and pixel type.\n\n"
                    f"Long lists come in pages of {DEFAULT_LIMIT}; the last line (on stderr) "
                    "says how to see more.",
        epilog="examples:\n"
               "  cellprofiler-omero ls                      your projects and screens\n"
               "  cellprofiler-omero ls Project:1            its datasets\n"
               "  cellprofiler-omero ls Dataset:2 --all      every image, all pages\n"
               "  cellprofiler-omero ls Plate:21 --json      wells A01…, as JSON\n"
               "  cellprofiler-omero ls 'https://omero.example.org/webclient/?show=well-22'")
    common.add_server_options(ls)
    ls.add_argument("ref", nargs="?", metavar="REF", help=_REF_HELP)
    ls.add_argument("--limit", type=common.positive_int, default=DEFAULT_LIMIT, metavar="N",
                    help=f"entries per page (default {DEFAULT_LIMIT})")
    ls.add_argument("--offset", type=common.non_negative_int, default=0, metavar="N",
                    help="skip the first N entries (for the next page)")
    ls.add_argument("--all", action="store_true",
                    help="list every entry, fetching page after page")
    ls.add_argument("--json", action="store_true",
                    help="print JSON for programs: {parent, offset, total, next_offset, items}")
    ls.set_defaults(handler=cmd_ls)


def cmd_ls(args: argparse.Namespace) -> int:
    """List one page (or, with ``--all``, every page) of a container's children."""
    from cellprofiler_omero.core.refs import Kind, parse_one

    # Parse before connecting, so a bad reference fails fast and without a server.
    ref = parse_one(args.ref) if args.ref else None
    with common.session(args) as manager:
        common.connect(manager, args, host=ref.host if ref else None,
                       port=ref.port if ref else None)
        if ref is not None and ref.kind is Kind.IMAGE:
            page = _image_itself(manager, ref)
        elif args.all:
            page = _every_page(manager, ref, args.offset, args.limit)
        else:
            page = _children(manager, ref, args.offset, args.limit)
    if args.json:
        common.print_json(_page_json(ref, page))
    else:
        _print_page(ref, page, complete=args.all)
    return 0


def _image_itself(manager: SessionManager, ref: ObjectRef) -> Page:
    """An image has no children; like ``ls FILE``, list the image itself."""
    from cellprofiler_omero.core.model import Node, Page

    meta = common.call(manager, lambda c: c.image_meta(ref.id), ref)
    size = (meta.size_x, meta.size_y, meta.size_z, meta.size_c, meta.size_t)
    return Page((Node("Image", meta.id, meta.name, None, size, meta.pixel_type.value),), 0, 1)


def _children(manager: SessionManager, ref: ObjectRef | None, offset: int, limit: int
              ) -> Page:
    return common.call(manager, lambda c: c.children(ref, offset, limit), ref)


def _every_page(manager: SessionManager, ref: ObjectRef | None, offset: int, limit: int
                ) -> Page:
    from cellprofiler_omero.core.model import Page

    first = _children(manager, ref, offset, limit)
    items = list(first.items)
    total = first.total
    with common.progress(max(0, total - offset), f"listing {ref or 'top level'}",
                         unit="entries") as bar:
        bar.update(len(items))
        while offset + len(items) < total:
            start = offset + len(items)
            page = _children(manager, ref, start, limit)
            if not page.items:
                break  # the container shrank while we walked it
            items.extend(page.items)
            total = page.total
            bar.update(len(page.items))
    return Page(tuple(items), offset, max(total, offset + len(items)))


# -- output ----------------------------------------------------------------------------------


def _node_json(node: Node) -> dict[str, Any]:
    data: dict[str, Any] = {"ref": f"{node.kind}:{node.id}", "kind": node.kind, "id": node.id,
                            "name": node.name, "child_count": node.child_count}
    if node.size is not None:
        data["size"] = dict(zip("xyzct", node.size, strict=False))
        data["pixel_type"] = node.pixel_type
    for key, value in node.extra.items():
        data.setdefault(key, value)
    return data


def _page_json(ref: ObjectRef | None, page: Page) -> dict[str, Any]:
    end = page.offset + len(page.items)
    return {"parent": str(ref) if ref is not None else None, "offset": page.offset,
            "total": page.total, "next_offset": end if end < page.total else None,
            "items": [_node_json(node) for node in page.items]}


def _contents(node: Node) -> tuple[str, ...]:
    """The columns after REF and NAME: size and type of an image, else a child count."""
    if node.size is not None:
        return "×".join(str(n) for n in node.size), node.pixel_type or ""
    if node.child_count is None:
        return ("",)
    one, many = _CHILDREN.get(node.kind, ("child", "children"))
    return (f"{node.child_count} {one if node.child_count == 1 else many}",)


def _print_page(ref: ObjectRef | None, page: Page, *, complete: bool) -> None:
    where = str(ref) if ref is not None else "Your account"
    if page.total == 0:
        common.note(f"{where} is empty." if ref is not None
                    else "You own no projects or screens.")
        return
    if not page.items:
        common.note(f"Nothing at offset {page.offset}: {where} has {page.total} entries.")
        return
    images = all(node.size is not None for node in page.items)
    header = ("REF", "NAME") + (("SIZE X×Y×Z×C×T", "TYPE") if images else ("CONTENTS",))
    rows = [header] + [(f"{n.kind}:{n.id}", n.name, *_contents(n)) for n in page.items]
    widths = [max(len(row[i]) for row in rows if i < len(row)) for i in range(len(header))]
    # Long names push their own line out rather than widening every line.
    widths[1] = min(widths[1], 40)
    for row in rows:
        print("  ".join(f"{cell:<{width}}" for cell, width in zip(row, widths, strict=False))
              .rstrip())
    end = page.offset + len(page.items)
    if end < page.total and not complete:
        common.note(f"showing {page.offset + 1}–{end} of {page.total}, "
                    f"use --offset {end} or --all")
    elif page.offset > 0:
        common.note(f"showing {page.offset + 1}–{end} of {page.total}")
