"""Users, groups and realistic demo data for a fresh emulator (``--seed demo``).

Deterministic from a seed. Users: ``root``/``omero`` (admin), ``demo``/``demo`` and
``other``/``other``, each in a private group of their own, and both in the
read-annotate group ``shared``. ``demo`` owns:

* Project "CellProfiler demo" ▸ Dataset "Nuclei and cytoplasm": 8 two-channel uint16
  1024² fields (DAPI, Cytoplasm) with ground-truth nucleus counts in the description;
* Dataset "Z stack": a 3-channel uint16 Z-stack; Dataset "Histology": an 8-bit RGB;
* Dataset "Pixel types": one image of every OMERO pixel type;
* Dataset "Large": one 8192² uint16 image with a resolution pyramid;
* Screen "Demo screen" ▸ Plate "Plate 1": 2 × 3 wells × 2 fields, two channels;
* in ``shared``: Dataset "Shared data" with one image.

``other`` owns a private Project ▸ Dataset ▸ Image that ``demo`` must not see.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from cellprofiler_omero.emulator import synthetic
from cellprofiler_omero.emulator.store import PRIVATE, READ_ANNOTATE

if TYPE_CHECKING:
    from cellprofiler_omero.emulator.server import Context

log = logging.getLogger(__name__)

DAPI = {"name": "DAPI", "emission": 461.0, "color": [0, 0, 255, 255]}
CYTO = {"name": "Cytoplasm", "emission": 520.0, "color": [0, 255, 0, 255]}


@dataclass(frozen=True)
class SeedOptions:
    """How much demo data to make (tests make less)."""

    seed: int = 1
    fields: int = 8
    field_size: int = 1024
    large_size: int = 8192
    plate_rows: int = 2
    plate_columns: int = 3
    plate_fields: int = 2
    plate_field_size: int = 256
    extra_images: int = 0


def seed_users(ctx: Context) -> dict[str, int]:
    """System groups and the three users; returns user ids by name."""
    store = ctx.store
    if store.user_by_name("root") is not None:
        return {u.omename: u.id for u in store.users()}
    store.add_group("system", PRIVATE, group_id=0)
    store.add_group("user", PRIVATE, group_id=1)
    store.add_group("guest", PRIVATE, group_id=2)
    demo_g = store.add_group("demo", PRIVATE, group_id=3)
    other_g = store.add_group("other", PRIVATE, group_id=4)
    shared_g = store.add_group("shared", READ_ANNOTATE, group_id=5,
                               description="Read-annotate group of demo and other")
    store.add_user("root", "omero", [0, 1], admin=True, user_id=0, first="Root",
                   last="Administrator")
    store.add_user("guest", "", [2, 1], user_id=1, first="Guest", last="Account")
    demo = store.add_user("demo", "demo", [demo_g.id, shared_g.id, 1], user_id=2,
                          first="Demo", last="User", owner_of=[demo_g.id])
    other = store.add_user("other", "other", [other_g.id, shared_g.id, 1], user_id=3,
                           first="Other", last="User", owner_of=[other_g.id])
    return {"root": 0, "demo": demo.id, "other": other.id}


def _image(ctx: Context, name: str, owner: int, group: int, pixels: np.ndarray,
           channels: list[dict[str, Any]], *, phys: tuple[float | None, ...] = (0.65, 0.65,
                                                                                 None),
           description: str = "", extra: dict[str, Any] | None = None) -> int:
    """Create an image from a native ``(T, C, Z, Y, X)`` array; returns its id."""
    t, c, z, y, x = pixels.shape
    ptype = "bit" if pixels.dtype == np.bool_ else {
        np.dtype(np.int8): "int8", np.dtype(np.uint8): "uint8",
        np.dtype(np.int16): "int16", np.dtype(np.uint16): "uint16",
        np.dtype(np.int32): "int32", np.dtype(np.uint32): "uint32",
        np.dtype(np.float32): "float", np.dtype(np.float64): "double"}[pixels.dtype]
    image = ctx.create_image(name=name, description=description, owner_id=owner,
                             group_id=group, size_x=x, size_y=y, size_z=z, size_c=c,
                             size_t=t, pixel_type=ptype, channels=channels,
                             phys=(phys[0], phys[1], phys[2]), extra=extra)
    ctx.write_pixels(image.id, pixels.astype(np.uint8) if ptype == "bit" else pixels)
    return image.id


def seed_demo(ctx: Context, options: SeedOptions = SeedOptions()) -> dict[str, Any]:
    """Create the demo data (once; a seeded store is left alone). Returns what was made."""
    store = ctx.store
    if store.get_meta("seeded") is not None:
        return {}
    users = seed_users(ctx)
    demo, other = users["demo"], users["other"]
    demo_g, other_g, shared_g = 3, 4, 5
    s = options.seed
    made: dict[str, Any] = {}

    project = store.create("Project", "CellProfiler demo", demo, demo_g,
                           description="Synthetic fluorescence data for the demo pipeline")
    fields_ds = store.create("Dataset", "Nuclei and cytoplasm", demo, demo_g,
                             description="Two-channel fields: DAPI nuclei, cytoplasm stain")
    store.link("ProjectDatasetLink", project.id, fields_ds.id, demo, demo_g)
    field_ids = []
    for index in range(options.fields):
        pixels, labels = synthetic.nuclei_and_cells(s * 1000 + index, options.field_size)
        count = int(labels.max())
        iid = _image(ctx, f"field_{index + 1:02d}", demo, demo_g, pixels[None, :, None],
                     [DAPI, CYTO], description=f"{count} nuclei (ground truth)",
                     extra={"nuclei": count})
        store.link("DatasetImageLink", fields_ds.id, iid, demo, demo_g)
        field_ids.append(iid)
    made.update(project=project.id, dataset=fields_ds.id, fields=field_ids)

    zds = store.create("Dataset", "Z stack", demo, demo_g)
    store.link("ProjectDatasetLink", project.id, zds.id, demo, demo_g)
    stack = synthetic.z_stack(s, 256, 8, 3)  # (Z, C, Y, X)
    zid = _image(ctx, "zstack", demo, demo_g, np.transpose(stack, (1, 0, 2, 3))[None],
                 [DAPI, CYTO, {"name": "Spots", "emission": 620.0,
                               "color": [255, 0, 0, 255]}], phys=(0.2, 0.2, 0.5))
    store.link("DatasetImageLink", zds.id, zid, demo, demo_g)
    made["zstack"] = zid

    hds = store.create("Dataset", "Histology", demo, demo_g)
    store.link("ProjectDatasetLink", project.id, hds.id, demo, demo_g)
    rgb = synthetic.rgb(s, 512)
    rid = _image(ctx, "histology_rgb", demo, demo_g, rgb[None, :, None],
                 [{"name": "Red", "color": [255, 0, 0, 255]},
                  {"name": "Green", "color": [0, 255, 0, 255]},
                  {"name": "Blue", "color": [0, 0, 255, 255]}])
    store.link("DatasetImageLink", hds.id, rid, demo, demo_g)
    made["rgb"] = rid

    tds = store.create("Dataset", "Pixel types", demo, demo_g)
    store.link("ProjectDatasetLink", project.id, tds.id, demo, demo_g)
    types: dict[str, int] = {}
    for name, plane in synthetic.every_type(s, 64).items():
        tid = _image(ctx, f"type_{name}", demo, demo_g, plane[None, None, None],
                     [{"name": name}])
        store.link("DatasetImageLink", tds.id, tid, demo, demo_g)
        types[name] = tid
    made["types"] = types

    if options.large_size:
        lds = store.create("Dataset", "Large", demo, demo_g)
        store.link("ProjectDatasetLink", project.id, lds.id, demo, demo_g)
        big = synthetic.large(s, options.large_size)
        lid = _image(ctx, f"large_{options.large_size}", demo, demo_g,
                     big[None, None, None], [DAPI])
        del big
        store.link("DatasetImageLink", lds.id, lid, demo, demo_g)
        made["large"] = lid

    for index in range(options.extra_images):
        plane = np.full((1, 1, 1, 8, 8), index % 65536, dtype=np.uint16)
        eid = _image(ctx, f"extra_{index:04d}", demo, demo_g, plane, [{"name": "C0"}])
        store.link("DatasetImageLink", fields_ds.id, eid, demo, demo_g)

    screen = store.create("Screen", "Demo screen", demo, demo_g)
    plate = store.create("Plate", "Plate 1", demo, demo_g,
                         data={"rows": options.plate_rows, "columns": options.plate_columns,
                               "rowNaming": "letter", "columnNaming": "number"})
    store.link("ScreenPlateLink", screen.id, plate.id, demo, demo_g)
    wells: dict[str, int] = {}
    for row in range(options.plate_rows):
        for column in range(options.plate_columns):
            well = store.create("Well", "", demo, demo_g, parent_id=plate.id,
                                data={"row": row, "column": column})
            label = f"{chr(65 + row)}{column + 1:02d}"
            wells[label] = well.id
            for field in range(options.plate_fields):
                pixels = synthetic.plate_field(s, row, column, field, options.plate_field_size)
                iid = _image(ctx, f"{label}_f{field}", demo, demo_g, pixels[None, :, None],
                             [DAPI, CYTO])
                store.create("WellSample", "", demo, demo_g, parent_id=well.id,
                             data={"image": iid, "posX": float(field * 100), "posY": 0.0})
    made.update(screen=screen.id, plate=plate.id, wells=wells)

    sds = store.create("Dataset", "Shared data", demo, shared_g)
    pixels, _ = synthetic.nuclei_and_cells(s + 77, 256)
    sid = _image(ctx, "shared_field", demo, shared_g, pixels[None, :, None], [DAPI, CYTO])
    store.link("DatasetImageLink", sds.id, sid, demo, shared_g)
    made.update(shared_dataset=sds.id, shared_image=sid)

    op = store.create("Project", "Other's project", other, other_g)
    ods = store.create("Dataset", "Other's dataset", other, other_g)
    store.link("ProjectDatasetLink", op.id, ods.id, other, other_g)
    pixels, _ = synthetic.nuclei_and_cells(s + 99, 128)
    oid = _image(ctx, "other_private", other, other_g, pixels[None, :, None], [DAPI, CYTO])
    store.link("DatasetImageLink", ods.id, oid, other, other_g)
    made.update(other_project=op.id, other_dataset=ods.id, other_image=oid)

    import json

    store.set_meta("seeded", json.dumps(made))
    log.info("seeded demo data: %s", made)
    return made
