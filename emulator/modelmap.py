"""Stored objects as ``omero.model`` objects, the way a real server sends them.

Every object carries loaded ``details`` (owner, group with permissions, creation
event, and per-viewer permission restrictions), because BlitzGateway's wrappers
read them. Images carry their primary Pixels with type, dimension order and
channels.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import omero
import omero.model
from omero.model.enums import UnitsLength
from omero.rtypes import rbool, rdouble, rint, rlong, rstring, rtime

from cellprofiler_omero.emulator.pixels import BIT_SIZES
from cellprofiler_omero.emulator.store import Group, Obj, Store, User

if TYPE_CHECKING:
    pass

# Restriction flags in PermissionsI._restrictions (omero.constants.permissions order).
LINK, EDIT, DELETE, ANNOTATE, CHGRP, CHOWN = range(6)


def experimenter(user: User, *, loaded: bool = True) -> omero.model.ExperimenterI:
    exp = omero.model.ExperimenterI(rlong(user.id), loaded)
    if loaded:
        exp.omeName = rstring(user.omename)
        exp.firstName = rstring(user.first)
        exp.lastName = rstring(user.last)
        exp.email = rstring(user.email)
        exp.ldap = rbool(False)
    return exp


def unloaded_group(group_id: int) -> omero.model.ExperimenterGroupI:
    return omero.model.ExperimenterGroupI(rlong(group_id), False)


def permissions(perms: str) -> omero.model.PermissionsI:
    return omero.model.PermissionsI(perms)


def group(grp: Group, *, loaded: bool = True) -> omero.model.ExperimenterGroupI:
    g = omero.model.ExperimenterGroupI(rlong(grp.id), loaded)
    if loaded:
        g.name = rstring(grp.name)
        g.description = rstring(grp.description)
        g.ldap = rbool(False)
        details = omero.model.DetailsI()
        details.permissions = permissions(grp.perms)
        g._details = details
    return g


def object_permissions(store: Store, viewer: User | None, owner_id: int, group_id: int
                       ) -> omero.model.PermissionsI:
    grp = store.group(group_id)
    perms = permissions(grp.perms if grp else "rw----")
    if viewer is not None:
        # ome.security.basic.BasicACLVoter.postProcess: admins and the group's leaders
        # may do everything, owners everything their group lets its owners do, members
        # what the group's permissions grant them (annotate in read-annotate groups,
        # also link/edit/delete in read-write ones); in a private group an admin or
        # leader may not link to or annotate a member's objects (isGraphCritical).
        grp_perms = grp.perms if grp else "rw----"
        owner = viewer.id == owner_id
        leader = group_id in store.leader_groups(viewer.id)
        member = group_id in store.member_groups(viewer.id)
        critical = not owner and grp_perms[2] != "r" and (viewer.admin or leader)
        write = viewer.admin or leader or owner or (member and grp_perms[3] == "w")
        can_edit = write
        can_link = write and not critical
        can_annotate = (write or (member and grp_perms[3] in "aw")) and not critical
        can_chgrp = viewer.admin or owner
        can_chown = viewer.admin or leader
        # A restriction is True where the action is *not* allowed.
        perms._restrictions = [not can_link, not can_edit, not can_edit, not can_annotate,
                               not can_chgrp, not can_chown]
    return perms


def details(store: Store, viewer: User | None, owner_id: int, group_id: int, created: float
            ) -> omero.model.DetailsI:
    d = omero.model.DetailsI()
    owner = store.user(owner_id)
    grp = store.group(group_id)
    # Owner and group come without their memberships, as a real server sends them
    # (BlitzGateway's wrappers load those when asked, instead of seeing none).
    if owner is not None:
        d.owner = experimenter(owner)
        unload_collections(d.owner)
    if grp is not None:
        d.group = group(grp)
        unload_collections(d.group)
    event = omero.model.EventI(rlong(1), True)
    event.time = rtime(int(created * 1000))
    d.creationEvent = event
    d.updateEvent = event
    d.permissions = object_permissions(store, viewer, owner_id, group_id)
    return d


def length(value: float | None) -> omero.model.LengthI | None:
    if value is None:
        return None
    return omero.model.LengthI(value, UnitsLength.MICROMETER)


def pixels_type(value: str, type_id: int = 0) -> omero.model.PixelsTypeI:
    pt = omero.model.PixelsTypeI(rlong(type_id or list(BIT_SIZES).index(value) + 1), True)
    pt.value = rstring(value)
    pt.bitSize = rint(BIT_SIZES[value])
    return pt


#: Pixels ids are image ids plus this offset: separate numbers, as on a real server, so a
#: client that confuses the two fails here too instead of only against real OMERO.
PIXELS_ID_OFFSET = 1_000_000


def pixels_id(image_id: int) -> int:
    return image_id + PIXELS_ID_OFFSET


def image_id_of_pixels(pixels: int) -> int:
    return pixels - PIXELS_ID_OFFSET


def pixels(store: Store, viewer: User | None, image: Obj) -> omero.model.PixelsI:
    d = image.data
    px = omero.model.PixelsI(rlong(pixels_id(image.id)), True)
    unload_collections(px)
    px.sizeX, px.sizeY = rint(d["sizeX"]), rint(d["sizeY"])
    px.sizeZ, px.sizeC, px.sizeT = rint(d["sizeZ"]), rint(d["sizeC"]), rint(d["sizeT"])
    px.pixelsType = pixels_type(d["pixelsType"])
    order = omero.model.DimensionOrderI(rlong(1), True)
    order.value = rstring("XYZCT")
    px.dimensionOrder = order
    px.physicalSizeX = length(d.get("physX"))
    px.physicalSizeY = length(d.get("physY"))
    px.physicalSizeZ = length(d.get("physZ"))
    px.significantBits = rint(BIT_SIZES[d["pixelsType"]])
    px.sha1 = rstring("")
    px.image = omero.model.ImageI(rlong(image.id), False)
    px._details = details(store, viewer, image.owner_id, image.group_id, image.created)
    for index, ch in enumerate(d.get("channels", [])):
        if index == 0:
            loaded(px, "channels")
        px.addChannel(channel(store, viewer, image, index, ch))
    return px


def channel(store: Store, viewer: User | None, image: Obj, index: int, ch: dict[str, Any]
            ) -> omero.model.ChannelI:
    c = omero.model.ChannelI(rlong(image.id * 1000 + index), True)
    lc = omero.model.LogicalChannelI(rlong(image.id * 1000 + index), True)
    lc.name = rstring(ch.get("name", f"C{index}"))
    if ch.get("emission") is not None:
        lc.emissionWave = omero.model.LengthI(float(ch["emission"]), UnitsLength.NANOMETER)
    c.logicalChannel = lc
    color = ch.get("color") or [255, 255, 255, 255]
    c.red, c.green, c.blue, c.alpha = (rint(int(v)) for v in color)
    if ch.get("min") is not None:
        stats = omero.model.StatsInfoI(rlong(image.id * 1000 + index), True)
        stats.globalMin = rdouble(float(ch["min"]))
        stats.globalMax = rdouble(float(ch["max"]))
        c.statsInfo = stats
    c.pixels = omero.model.PixelsI(rlong(pixels_id(image.id)), False)
    c._details = details(store, viewer, image.owner_id, image.group_id, image.created)
    return c


_CLASSES: dict[str, Any] = {
    "Project": omero.model.ProjectI,
    "Dataset": omero.model.DatasetI,
    "Screen": omero.model.ScreenI,
    "Plate": omero.model.PlateI,
    "Well": omero.model.WellI,
    "WellSample": omero.model.WellSampleI,
    "Image": omero.model.ImageI,
    "OriginalFile": omero.model.OriginalFileI,
    "FileAnnotation": omero.model.FileAnnotationI,
    "MapAnnotation": omero.model.MapAnnotationI,
    "CommentAnnotation": omero.model.CommentAnnotationI,
    "TagAnnotation": omero.model.TagAnnotationI,
    "PlateAcquisition": omero.model.PlateAcquisitionI,
    "Roi": omero.model.RoiI,
    "Mask": omero.model.MaskI,
    "Polygon": omero.model.PolygonI,
    "Polyline": omero.model.PolylineI,
    "Rectangle": omero.model.RectangleI,
    "Ellipse": omero.model.EllipseI,
    "Point": omero.model.PointI,
    "Line": omero.model.LineI,
    "Label": omero.model.LabelI,
}

#: The concrete Shape classes of omero-model (``ome.model.roi``).
SHAPE_KINDS = ("Mask", "Polygon", "Polyline", "Rectangle", "Ellipse", "Point", "Line",
               "Label")
#: Fields every Shape has (omero-model's ``Shape``): name → value type.
SHAPE_COMMON: dict[str, str] = {
    "theZ": "int", "theT": "int", "theC": "int", "locked": "bool", "fillColor": "int",
    "fillRule": "str", "strokeColor": "int", "strokeDashArray": "str",
    "strokeWidth": "length", "fontFamily": "str", "fontSize": "length", "fontStyle": "str",
    "textValue": "str",
}
#: Each concrete class's own fields (Mask ``bytes`` are kept aside, byte for byte).
SHAPE_FIELDS: dict[str, dict[str, str]] = {
    "Mask": {"x": "double", "y": "double", "width": "double", "height": "double"},
    "Polygon": {"points": "str"},
    "Polyline": {"points": "str", "markerStart": "str", "markerEnd": "str"},
    "Rectangle": {"x": "double", "y": "double", "width": "double", "height": "double"},
    "Ellipse": {"x": "double", "y": "double", "radiusX": "double", "radiusY": "double"},
    "Point": {"x": "double", "y": "double"},
    "Line": {"x1": "double", "y1": "double", "x2": "double", "y2": "double",
             "markerStart": "str", "markerEnd": "str"},
    "Label": {"x": "double", "y": "double"},
}
#: AffineTransform's six coefficients, in the order the store keeps them.
TRANSFORM = ("a00", "a10", "a01", "a11", "a02", "a12")


def shape_fields(kind: str) -> dict[str, str]:
    """Every field of a shape class with its type (common ones first)."""
    return {**SHAPE_COMMON, **SHAPE_FIELDS[kind]}


def _rtype(cls: Any, value: Any) -> Any:
    """An rtype without its generated ``__init__`` (a ROI answer holds hundreds of
    thousands of them; the constructors cost more than the rest of the answer)."""
    r = cls.__new__(cls)
    r._val = value
    return r


def _wrap(kind: str, value: Any) -> Any:
    if value is None:
        return None
    if kind == "int":
        return _rtype(omero.rtypes.RIntI, int(value))
    if kind == "double":
        return _rtype(omero.rtypes.RDoubleI, float(value))
    if kind == "bool":
        return _rtype(omero.rtypes.RBoolI, bool(value))
    if kind == "length":
        number, unit = value
        return omero.model.LengthI(float(number), getattr(UnitsLength, unit))
    return _rtype(omero.rtypes.RStringI, str(value))


_PROTOTYPES: dict[tuple[Any, bool], tuple[dict[str, Any], tuple[str, ...]]] = {}


def _blank(cls: Any, object_id: int, loaded: bool = True) -> Any:
    """An instance of a model class with every field unset and every collection
    unloaded (or an unloaded reference), copied from a prototype: the generated
    ``__init__``, ``unload`` and ``__setattr__`` would cost seconds over the ten
    thousand ROIs of one answer."""
    proto = _PROTOTYPES.get((cls, loaded))
    if proto is None:
        model = cls(None, True)
        unload_collections(model)
        if not loaded:
            model.unload()
        fields = dict(vars(model))
        proto = (fields, tuple(k for k, v in fields.items() if isinstance(v, list)))
        _PROTOTYPES[(cls, loaded)] = proto
    m = cls.__new__(cls)
    fields = m.__dict__
    fields.update(proto[0])
    for key in proto[1]:
        fields[key] = []  # never shared between objects
    fields["_id"] = _rtype(omero.rtypes.RLongI, int(object_id))
    return m


class DetailsCache:
    """``details`` for many objects of few owners and groups (thousands of ROIs and
    shapes in one answer): owner, group and permissions are built once per (owner,
    group), and one ``Details`` is shared by every object of the same owner, group and
    creation time (Ice marshals a shared class instance once, by reference)."""

    def __init__(self, store: Store, viewer: User | None) -> None:
        self.store = store
        self.viewer = viewer
        self._parts: dict[tuple[int, int], tuple[Any, Any, Any]] = {}
        self._made: dict[tuple[int, int, int], Any] = {}

    def __call__(self, owner_id: int, group_id: int, created: float) -> omero.model.DetailsI:
        millis = int(created * 1000)
        made = self._made.get((owner_id, group_id, millis))
        if made is not None:
            return made
        parts = self._parts.get((owner_id, group_id))
        if parts is None:
            full = details(self.store, self.viewer, owner_id, group_id, created)
            parts = (full.owner, full.group, full.permissions)
            self._parts[(owner_id, group_id)] = parts
        made = omero.model.DetailsI()
        made.owner, made.group, made.permissions = parts
        event = omero.model.EventI(rlong(1), True)
        event.time = rtime(millis)
        made.creationEvent = event
        made.updateEvent = event
        self._made[(owner_id, group_id, millis)] = made
        return made


def shape_model(obj: Obj, make_details: Any, roi: Any = None) -> Any:
    """A stored shape as its ``omero.model`` class: every field as it was saved."""
    m = _blank(_CLASSES[obj.kind], obj.id)
    d = obj.data
    fields = m.__dict__
    for name, kind in shape_fields(obj.kind).items():
        value = d.get(name)
        if value is not None:
            fields[f"_{name}"] = _wrap(kind, value)
    if obj.kind == "Mask" and d.get("bytes") is not None:
        import base64

        fields["_bytes"] = base64.b64decode(d["bytes"])
    if d.get("transform") is not None:
        transform = omero.model.AffineTransformI(rlong(obj.id), True)
        for name, value in zip(TRANSFORM, d["transform"], strict=True):
            setattr(transform, f"_{name}", rdouble(value))
        fields["_transform"] = transform
    fields["_roi"] = roi if roi is not None else _unloaded_roi(obj.parent_id)
    fields["_details"] = make_details(obj.owner_id, obj.group_id, obj.created)
    return m


def _unloaded_roi(roi_id: int | None) -> Any:
    return _blank(omero.model.RoiI, roi_id or 0, loaded=False)


def roi_model(obj: Obj, make_details: Any, shapes: list[Obj] | None = None) -> Any:
    """A stored ROI; with ``shapes`` given, its shapes collection loaded with them
    (each shape's ``roi`` is this ROI, as Hibernate returns the graph)."""
    m = _blank(omero.model.RoiI, obj.id)
    fields = m.__dict__
    fields["_name"] = _wrap("str", obj.name) if obj.name else None
    fields["_description"] = _wrap("str", obj.description) if obj.description else None
    if obj.parent_id is not None:
        fields["_image"] = _blank(omero.model.ImageI, obj.parent_id, loaded=False)
    fields["_details"] = make_details(obj.owner_id, obj.group_id, obj.created)
    if shapes is not None:
        fields["_shapesSeq"] = [shape_model(s, make_details, m) for s in shapes]
        fields["_shapesLoaded"] = True
    return m


def roi_models(store: Store, viewer: User | None, rois: list[Obj],
               shapes: list[Obj] | None = None) -> list[Any]:
    """ROIs with their shapes loaded (all of them, or those in ``shapes``), in order."""
    if shapes is None:
        shapes = store.by_parents(SHAPE_KINDS, [r.id for r in rois])
    by_roi: dict[int, list[Obj]] = {}
    for shape in shapes:
        assert shape.parent_id is not None
        by_roi.setdefault(shape.parent_id, []).append(shape)
    make_details = DetailsCache(store, viewer)
    return [roi_model(r, make_details, by_roi.get(r.id, [])) for r in rois]

LINK_CLASSES: dict[str, Any] = {
    "ProjectDatasetLink": omero.model.ProjectDatasetLinkI,
    "DatasetImageLink": omero.model.DatasetImageLinkI,
    "ScreenPlateLink": omero.model.ScreenPlateLinkI,
    "ProjectAnnotationLink": omero.model.ProjectAnnotationLinkI,
    "DatasetAnnotationLink": omero.model.DatasetAnnotationLinkI,
    "ImageAnnotationLink": omero.model.ImageAnnotationLinkI,
    "ScreenAnnotationLink": omero.model.ScreenAnnotationLinkI,
    "PlateAnnotationLink": omero.model.PlateAnnotationLinkI,
    "WellAnnotationLink": omero.model.WellAnnotationLinkI,
    "PlateAcquisitionAnnotationLink": omero.model.PlateAcquisitionAnnotationLinkI,
    "OriginalFileAnnotationLink": omero.model.OriginalFileAnnotationLinkI,
    "RoiAnnotationLink": omero.model.RoiAnnotationLinkI,
}

#: Link class → (parent kind, child kind).
LINK_ENDS: dict[str, tuple[str, str]] = {
    "ProjectDatasetLink": ("Project", "Dataset"),
    "DatasetImageLink": ("Dataset", "Image"),
    "ScreenPlateLink": ("Screen", "Plate"),
    **{f"{k}AnnotationLink": (k, "Annotation") for k in
       ("Project", "Dataset", "Image", "Screen", "Plate", "Well", "PlateAcquisition",
        "OriginalFile", "Roi")},
}

ANNOTATION_KINDS = ("FileAnnotation", "MapAnnotation", "CommentAnnotation", "TagAnnotation")


_UNLOADERS: dict[type, tuple[str, ...]] = {}


def _unloaders(cls: type) -> tuple[str, ...]:
    """The ``unload<Collection>`` methods of a model class (looked up once per class)."""
    found = _UNLOADERS.get(cls)
    if found is None:
        found = tuple(name for name in dir(cls)
                      if name.startswith("unload") and name not in ("unload", "unloadDetails")
                      and hasattr(cls, f"is{name[6:]}Loaded"))
        _UNLOADERS[cls] = found
    return found


def unload_collections(m: Any) -> None:
    """Mark every collection of ``m`` unloaded, as a server does unless a query fetched it."""
    for name in _unloaders(type(m)):
        getattr(m, name)()


def membership(map_id: int, group_model: Any, user_model: Any, leader: bool
               ) -> omero.model.GroupExperimenterMapI:
    """A GroupExperimenterMap: ``user_model`` is a member (a leader if ``leader``) of
    ``group_model``, as ``join fetch g.groupExperimenterMap m join fetch m.child`` gives."""
    gem = omero.model.GroupExperimenterMapI(rlong(map_id), True)
    gem.parent = group_model
    gem.child = user_model
    gem.owner = rbool(leader)
    return gem


def loaded(m: Any, *collections: str) -> Any:
    """Mark collections of ``m`` loaded and empty (before adding what a query fetched)."""
    for name in collections:
        setattr(m, f"_{name}Seq", [])
        setattr(m, f"_{name}Loaded", True)
    return m


def unloaded(kind: str, object_id: int) -> Any:
    return _CLASSES[kind](rlong(object_id), False)


def to_model(store: Store, viewer: User | None, obj: Obj, *, deep: bool = True) -> Any:
    """``obj`` as its ``omero.model`` class, loaded, with details (and nested parts when deep)."""
    if obj.kind == "Roi":
        return roi_model(obj, DetailsCache(store, viewer))  # shapes unloaded, unfetched
    if obj.kind in SHAPE_KINDS:
        return shape_model(obj, DetailsCache(store, viewer))
    cls = _CLASSES[obj.kind]
    m = cls(rlong(obj.id), True)
    unload_collections(m)
    d = obj.data
    if obj.kind not in ("Well", "WellSample", "FileAnnotation", "MapAnnotation",
                        "CommentAnnotation", "TagAnnotation"):
        m.name = rstring(obj.name)
    if obj.kind in ("Project", "Dataset", "Screen", "Plate", "Image", "FileAnnotation",
                    "MapAnnotation", "CommentAnnotation", "TagAnnotation", "PlateAcquisition"):
        m.description = rstring(obj.description)
    m._details = details(store, viewer, obj.owner_id, obj.group_id, obj.created)

    if obj.kind == "Image":
        m.acquisitionDate = rtime(int(obj.created * 1000))
        m.archived = rbool(False)
        m.partial = rbool(False)
        m.series = rint(0)
        if deep:
            loaded(m, "pixels")
            m.addPixels(pixels(store, viewer, obj))
    elif obj.kind == "Plate":
        m.columnNamingConvention = rstring(d.get("columnNaming", "number"))
        m.rowNamingConvention = rstring(d.get("rowNaming", "letter"))
        m.defaultSample = rint(0)
        m.rows = rint(d.get("rows", 0))
        m.columns = rint(d.get("columns", 0))
    elif obj.kind == "Well":
        # Row and column are optional in OMERO's model (a well may have neither).
        m.row = rint(d["row"]) if d.get("row") is not None else None
        m.column = rint(d["column"]) if d.get("column") is not None else None
        plate = store.get(obj.parent_id) if obj.parent_id is not None else None
        if plate is not None:
            # Loaded (shallow), as "join fetch w.plate" gives it.
            m.plate = to_model(store, viewer, plate, deep=False)
        if deep:
            loaded(m, "wellSamples")
            for ws in store.by_parent("WellSample", obj.id):
                m.addWellSample(to_model(store, viewer, ws, deep=True))
    elif obj.kind == "WellSample":
        well = store.get(obj.parent_id) if obj.parent_id is not None else None
        if well is not None:
            m.well = to_model(store, viewer, well, deep=False)
        image = store.get(d["image"], "Image")
        if image is not None:
            m.image = to_model(store, viewer, image, deep=deep) if deep \
                else unloaded("Image", image.id)
        m.posX = length(d.get("posX"))
        m.posY = length(d.get("posY"))
        if d.get("acquisition") is not None:
            m.plateAcquisition = unloaded("PlateAcquisition", d["acquisition"])
    elif obj.kind == "OriginalFile":
        m.path = rstring(d.get("path", ""))
        m.size = rlong(d.get("size", 0))
        m.hash = rstring(d.get("hash", ""))
        m.mimetype = rstring(d.get("mimetype", ""))
        if d.get("hash"):
            algo = omero.model.ChecksumAlgorithmI(rlong(1), True)
            algo.value = rstring("SHA1-160")
            m.hasher = algo
    elif obj.kind in ANNOTATION_KINDS:
        m.ns = rstring(d["ns"]) if d.get("ns") else None
        if obj.kind == "FileAnnotation" and d.get("file") is not None:
            f = store.get(d["file"], "OriginalFile")
            if f is not None:
                m.file = to_model(store, viewer, f)
        elif obj.kind == "MapAnnotation":
            m.setMapValue([omero.model.NamedValue(k, v) for k, v in d.get("map", [])])
        elif obj.kind in ("CommentAnnotation", "TagAnnotation"):
            m.textValue = rstring(d.get("text", ""))
    return m


def link_model(store: Store, viewer: User | None, kind: str, link_id: int, parent: Any,
               child: Any, owner_id: int, group_id: int, created: float) -> Any:
    lk = LINK_CLASSES[kind](rlong(link_id), True)
    lk.parent = parent
    lk.child = child
    lk._details = details(store, viewer, owner_id, group_id, created)
    return lk
