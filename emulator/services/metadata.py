"""IMetadata: annotations of objects, annotations by class and namespace, channel
acquisition data and instruments — what OMERO.web's right-hand panel and BlitzGateway ask.

Mirrors ome/omero-server ``ome/logic/MetadataImpl.java`` (the answers, as its HQL would
give them over the emulator's store) and ome/omero-blitz
``ome/services/blitz/impl/MetadataI.java`` + ``omero/util/IceMapper.java``
(``omeroClass``: class names are checked before the call runs). The emulator keeps no
instruments, light paths, filters or import logs: those answers are the empty ones a real
server gives for an image imported without such metadata.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from typing import Any

import Ice
import omero
import omero.api
import omero.cmd
import omero.model
from omero.rtypes import rlong, rstring, unwrap

from cellprofiler_omero.emulator import modelmap
from cellprofiler_omero.emulator.icebase import api_usage, servant
from cellprofiler_omero.emulator.services.common import Caller, SessionServant
from cellprofiler_omero.emulator.store import Obj

#: Classes with ``annotationLinks`` (omero-model's ``IAnnotated``): those with a link class.
ANNOTATED = frozenset(name.removesuffix("AnnotationLink") for name in dir(omero.model)
                      if name.endswith("AnnotationLink") and not name.startswith("_"))
#: ``omero.constants.metadata.NSINSIGHTTAGSET``: tags in this namespace are tag sets.
NS_TAG_SET = "openmicroscopy.org/omero/insight/tagset"
#: The link classes the emulator stores, by parent class.
STORED_LINKS = {parent: kind for kind, (parent, child) in modelmap.LINK_ENDS.items()
                if child == "Annotation"}


def omero_class(name: str) -> str:
    """The model class ``name`` means (``Image``, ``ImageI``, ``omero.model.Image``,
    ``ome.model.core.Image``), unqualified; else ``ApiUsageException`` as IceMapper's
    ``omeroClass(name, strict=true)`` answers."""
    short = (name or "").rsplit(".", 1)[-1]
    for candidate in (short, short.removesuffix("I")):
        cls = getattr(omero.model, candidate, None)
        if (candidate and isinstance(cls, type) and issubclass(cls, omero.model.IObject)
                and not candidate.startswith("_")):
            return candidate
    raise api_usage(f"{name} does not specify a valid class.")


def member_of(kind: str, cls_name: str) -> bool:
    """HQL's ``x member of <class>``: ``kind`` is ``cls_name`` or one of its subclasses."""
    sub, sup = getattr(omero.model, kind, None), getattr(omero.model, cls_name, None)
    return isinstance(sub, type) and isinstance(sup, type) and issubclass(sub, sup)


def _ids(values: Iterable[Any] | None) -> list[int]:
    return [int(unwrap(v)) for v in values or []]


def _owner_filter(options: Any) -> int | None:
    """``Parameters.getExperimenter()``: the filter's owner id, if any."""
    flt = getattr(options, "theFilter", None)
    owner = unwrap(flt.ownerId) if flt is not None else None
    return int(owner) if owner is not None and owner >= 0 else None


def _ns_ok(ann: Obj, include: list[str] | None, exclude: list[str] | None) -> bool:
    """MetadataImpl's namespace clauses: ``ns in (:include)``, ``ns null or not in (:exclude)``."""
    ns = ann.data.get("ns") or None
    if include and (ns is None or ns not in include):
        return False
    return not (exclude and ns is not None and ns in exclude)


@servant(omero.api.IMetadata)
class MetadataServiceI(SessionServant):
    """IMetadata over the store (ome/omero-server ``MetadataImpl``)."""

    # -- helpers ---------------------------------------------------------------------------

    def _annotation_model(self, caller: Caller, ann: Obj) -> Any:
        return modelmap.to_model(self.ctx.store, caller.user, ann)

    def _visible_annotations(self, caller: Caller, kind: str) -> list[Obj]:
        store = self.ctx.store
        found: list[Obj] = []
        for ann_kind in modelmap.ANNOTATION_KINDS:
            if not member_of(ann_kind, kind):
                continue
            found.extend(a for a in store.all(ann_kind) if self.visible(caller, a))
        return sorted(found, key=lambda a: a.id)

    def _specified(self, caller: Caller, annotation_type: str, include: list[str] | None,
                   exclude: list[str] | None, options: Any) -> list[Obj]:
        """MetadataImpl.getAnnotation without a root: annotations of a class by namespace."""
        kind = omero_class(annotation_type)
        owner = _owner_filter(options)
        out = []
        for ann in self._visible_annotations(caller, kind):
            if owner is not None and ann.owner_id != owner:
                continue
            if not _ns_ok(ann, include, exclude):
                continue
            # loadSpecifiedAnnotations drops file annotations without a file.
            if ann.kind == "FileAnnotation" and self.ctx.store.get(
                    ann.data.get("file") or -1, "OriginalFile") is None:
                continue
            out.append(ann)
        return out

    def _linked(self, caller: Caller, root_kind: str, root_ids: list[int]
                ) -> dict[int, list[Obj]]:
        """Visible roots → their visible annotations (roots the caller cannot see are left
        out, as the security filter leaves them out of the query)."""
        store = self.ctx.store
        out: dict[int, list[Obj]] = {}
        if root_kind == "Experimenter":
            for uid in root_ids:
                if store.user(uid) is not None:
                    out[uid] = []  # the emulator keeps no experimenter annotations
            return out
        link_kind = STORED_LINKS.get(root_kind)
        if link_kind is None:
            return out  # a class the emulator stores no objects of
        roots = [o for o in store.get_many(root_ids) if o.kind == root_kind
                 and self.visible(caller, o)]
        for root in roots:
            out[root.id] = []
        links = store.links_from(link_kind, [r.id for r in roots])
        anns = {a.id: a for a in store.get_many([lk.child_id for lk in links])}
        for link in sorted(links, key=lambda lk: lk.id):
            ann = anns.get(link.child_id)
            if ann is not None and self.visible(caller, ann) and all(
                    a.id != ann.id for a in out[link.parent_id]):
                out[link.parent_id].append(ann)
        return out

    # -- operations ------------------------------------------------------------------------

    def loadAnnotations(self, root_type: str, root_ids: list[int],
                        annotation_types: list[str] | None, annotator_ids: list[int] | None,
                        options: Any, current: Ice.Current) -> dict[int, list[Any]]:
        """Each root's annotations, optionally only some classes and annotators."""
        wanted = {omero_class(t) for t in annotation_types or []}
        caller = self.caller(current)
        ids = _ids(root_ids)
        if not ids:
            return {}
        root_kind = omero_class(root_type)
        if root_kind not in ANNOTATED:
            raise api_usage("Class parameter for loadAnnotation() must be a subclass of "
                            "ome.model.IAnnotated")
        annotators = set(_ids(annotator_ids))
        result: dict[int, list[Any]] = {}
        for root_id, anns in self._linked(caller, root_kind, ids).items():
            # annotationTypes compares the exact class, not subclasses (MetadataImpl).
            result[root_id] = [self._annotation_model(caller, a) for a in anns
                               if (not wanted or a.kind in wanted)
                               and (not annotators or a.owner_id in annotators)]
        return result

    def loadSpecifiedAnnotations(self, annotation_type: str, include: list[str] | None,
                                 exclude: list[str] | None, options: Any,
                                 current: Ice.Current) -> list[Any]:
        caller = self.caller(current)
        return [self._annotation_model(caller, a)
                for a in self._specified(caller, annotation_type, include, exclude, options)]

    def countSpecifiedAnnotations(self, annotation_type: str, include: list[str] | None,
                                  exclude: list[str] | None, options: Any,
                                  current: Ice.Current) -> Any:
        caller = self.caller(current)
        kind = omero_class(annotation_type)
        owner = _owner_filter(options)
        # countSpecifiedAnnotations counts before file annotations without files are dropped.
        return rlong(sum(1 for a in self._visible_annotations(caller, kind)
                         if (owner is None or a.owner_id == owner)
                         and _ns_ok(a, include, exclude)))

    def loadSpecifiedAnnotationsLinkedTo(self, annotation_type: str,
                                         include: list[str] | None,
                                         exclude: list[str] | None, root_type: str,
                                         root_ids: list[int], options: Any,
                                         current: Ice.Current) -> dict[int, list[Any]]:
        kind = omero_class(annotation_type)
        caller = self.caller(current)
        root_kind = omero_class(root_type)
        owner = _owner_filter(options)
        result: dict[int, list[Any]] = {}
        for root_id, anns in self._linked(caller, root_kind, _ids(root_ids)).items():
            chosen = [a for a in anns if member_of(a.kind, kind) and _ns_ok(a, include, exclude)
                      and (owner is None or a.owner_id == owner)]
            if chosen:  # the map has keys only for roots with a matching link
                result[root_id] = [self._annotation_model(caller, a) for a in chosen]
        return result

    def loadAnnotation(self, annotation_ids: list[int], current: Ice.Current) -> list[Any]:
        caller = self.caller(current)
        anns = self.ctx.store.get_many(_ids(annotation_ids))
        return [self._annotation_model(caller, a) for a in anns
                if a.kind in modelmap.ANNOTATION_KINDS and self.visible(caller, a)]

    def loadChannelAcquisitionData(self, ids: list[int], current: Ice.Current) -> list[Any]:
        """The logical channels by id, with their acquisition settings: the emulator has
        none beyond name and emission wavelength, so every other field is empty."""
        caller = self.caller(current)
        store = self.ctx.store
        by_image: dict[int, list[int]] = {}
        for lc_id in _ids(ids):
            by_image.setdefault(lc_id // 1000, []).append(lc_id % 1000)
        out = []
        for image in store.get_many(list(by_image), "Image"):
            if not self.visible(caller, image):
                continue
            channels = image.data.get("channels", [])
            for index in sorted(set(by_image[image.id])):
                if index >= len(channels):
                    continue
                ch = modelmap.channel(store, caller.user, image, index, channels[index])
                lc = ch.logicalChannel
                lc._details = ch._details
                out.append(lc)
        return out

    def loadInstrument(self, instrument_id: int, current: Ice.Current) -> Any:
        self.caller(current)
        return None  # the emulator keeps no instruments: the query finds nothing

    def loadTagContent(self, tag_ids: list[int], options: Any, current: Ice.Current
                       ) -> dict[int, list[Any]]:
        """Per tag, the projects, datasets, images, screens and plates it is on."""
        caller = self.caller(current)
        store = self.ctx.store
        result: dict[int, list[Any]] = {}
        for tag_id in _ids(tag_ids):
            objs: list[Any] = []
            for parent in ("Image", "Dataset", "Plate", "Project", "Screen"):
                links = store.links_to(STORED_LINKS[parent], [tag_id])
                for obj in store.get_many([lk.parent_id for lk in links], parent):
                    if self.visible(caller, obj):
                        objs.append(modelmap.to_model(store, caller.user, obj))
            result[tag_id] = objs
        return result

    def getTaggedObjectsCount(self, tag_ids: list[int], options: Any, current: Ice.Current
                              ) -> dict[int, int]:
        caller = self.caller(current)
        store = self.ctx.store
        counts: dict[int, int] = {}
        for tag_id in _ids(tag_ids):
            n = 0
            for parent in ("Image", "Dataset", "Project", "Screen", "Plate"):
                links = store.links_to(STORED_LINKS[parent], [tag_id])
                n += sum(1 for o in store.get_many([lk.parent_id for lk in links], parent)
                         if self.visible(caller, o))
            counts[tag_id] = n
        return counts

    def loadTagSets(self, options: Any, current: Ice.Current) -> list[Any]:
        """Tag sets (tags in the tag-set namespace) and, with ``orphan``, the other tags.

        The emulator stores no tag-to-tag links, so every tag outside a tag set is an orphan.
        """
        caller = self.caller(current)
        owner = _owner_filter(options)
        orphan = bool(unwrap(getattr(getattr(options, "theOptions", None), "orphan", None)))
        tag_set_ns = NS_TAG_SET
        out = []
        for tag in self._visible_annotations(caller, "TagAnnotation"):
            if owner is not None and tag.owner_id != owner:
                continue
            if tag.data.get("ns") == tag_set_ns or orphan:
                out.append(self._annotation_model(caller, tag))
        return out

    def loadAnnotationsUsedNotOwned(self, annotation_type: str, user_id: int,
                                    current: Ice.Current) -> list[Any]:
        """Annotations of others that ``user_id`` linked to images, datasets, projects,
        screens or plates."""
        kind = omero_class(annotation_type)
        caller = self.caller(current)
        return [self._annotation_model(caller, a)
                for a in self._used_not_owned(caller, kind, int(user_id))]

    def countAnnotationsUsedNotOwned(self, annotation_type: str, user_id: int,
                                     current: Ice.Current) -> Any:
        kind = omero_class(annotation_type)
        caller = self.caller(current)
        return rlong(len(self._used_not_owned(caller, kind, int(user_id))))

    def _used_not_owned(self, caller: Caller, kind: str, user_id: int) -> list[Obj]:
        store = self.ctx.store
        seen: dict[int, Obj] = {}
        for parent in ("Image", "Dataset", "Project", "Screen", "Plate"):
            for ann in self._visible_annotations(caller, kind):
                if ann.owner_id == user_id or ann.id in seen:
                    continue
                if any(lk.owner_id == user_id
                       for lk in store.links_to(STORED_LINKS[parent], [ann.id])):
                    seen[ann.id] = ann
        return list(seen.values())

    def loadLogFiles(self, root_type: str, ids: list[int], current: Ice.Current
                     ) -> dict[int, list[Any]]:
        """Import logs by image or fileset: the emulator's images have no fileset."""
        kind = omero_class(root_type)
        self.caller(current)
        if kind not in ("Image", "Fileset"):
            raise api_usage("can load log files only by Fileset or Image")
        return {}


# -- OriginalMetadataRequest -----------------------------------------------------------------

#: ``omero.constants.namespaces.NSCOMPANIONFILE`` and
#: ``omero.constants.annotation.file.ORIGINALMETADATA``.
NS_COMPANION_FILE = "openmicroscopy.org/omero/import/companionFile"
ORIGINAL_METADATA_FILE = "original_metadata.txt"
_SECTION = re.compile(r"\s*\[\s*(.+?)\s*\]\s*")


def original_metadata(factory: Any, caller: Caller, request: Any) -> Any:
    """``submit(OriginalMetadataRequest)``, as omero-blitz ``OriginalMetadataRequestI``.

    The image's fileset would be read with Bio-Formats; the emulator's images have no
    fileset, so (as for an image imported before filesets existed) the answer comes from
    an ``original_metadata.txt`` companion file annotation if the image has one, and is
    otherwise empty: no fileset id, no annotation id, empty global and series maps.
    The request runs with ``omero.group`` -1: any image the caller can read.
    """
    store = factory.ctx.store
    empty = omero.cmd.OriginalMetadataResponse(filesetId=None, fileAnnotationId=None,
                                               globalMetadata={}, seriesMetadata={})
    image = store.get(int(request.imageId), "Image")
    if image is None or not store.can_read(caller.user, image.owner_id, image.group_id):
        return empty
    links = store.links_from("ImageAnnotationLink", [image.id])
    for ann in sorted(store.get_many([lk.child_id for lk in links]), key=lambda a: a.id):
        if ann.kind != "FileAnnotation" or ann.data.get("ns") != NS_COMPANION_FILE:
            continue
        if not store.can_read(caller.user, ann.owner_id, ann.group_id):
            continue
        file = store.get(ann.data.get("file") or -1, "OriginalFile")
        if file is None or file.name != ORIGINAL_METADATA_FILE:
            continue
        global_md: dict[str, Any] = {}
        series_md: dict[str, Any] = {}
        sections = {"GlobalMetadata": global_md, "SeriesMetadata": series_md}
        section: dict[str, Any] | None = None
        path = factory.ctx.file_path(file.id)
        text = path.read_text("utf-8", errors="replace") if path.exists() else ""
        for line in text.splitlines():
            header = _SECTION.fullmatch(line)
            if header:
                section = sections.get(header.group(1))
            elif section is not None:
                pair = _split_on_equals(line)
                if pair is not None:
                    section[pair[0]] = rstring(pair[1])
        return omero.cmd.OriginalMetadataResponse(
            filesetId=None, fileAnnotationId=rlong(ann.id), globalMetadata=global_md,
            seriesMetadata=series_md)
    return empty


def _split_on_equals(line: str) -> tuple[str, str] | None:
    """Split ``key=value`` at the least-nested ``=`` (the last one at that depth)."""
    index, smallest, depth = None, None, 0
    for i, c in enumerate(line):
        if c in "([{":
            depth += 1
        elif c in ")]}":
            depth -= 1
        elif c == "=" and (smallest is None or depth <= smallest):
            index, smallest = i, depth
    if index is None:
        return None
    return line[:index].strip(), line[index + 1:].strip()
