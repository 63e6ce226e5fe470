"""``omero.cmd`` requests through ``ServiceFactory.submit``: ``Delete2`` of images.

A real server runs a graph request in the background and answers ``submit`` with a
``Handle``; clients poll ``getResponse`` (omero-py's ``CmdCallbackI`` does so first,
then waits for ``finished``). Here the work is done before ``submit`` answers, so the
first poll sees the response. Refusals come back as an ``omero.cmd.GraphException``
response (an ``ERR``), as omero-blitz's graph requests answer them, not as exceptions.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import TYPE_CHECKING, Any

import Ice
import omero
import omero.cmd

from cellprofiler_omero.emulator import modelmap
from cellprofiler_omero.emulator.icebase import api_usage, servant
from cellprofiler_omero.emulator.services import roi as rois
from cellprofiler_omero.emulator.services.common import Caller, SessionServant

if TYPE_CHECKING:
    from cellprofiler_omero.emulator.services.sessions import _ServiceFactory

log = logging.getLogger(__name__)

#: What ``Delete2Response.deletedObjects`` calls an image, as a real server does.
_IMAGE_CLASS = "ome.model.core.Image"


@servant(omero.cmd.Handle)
class HandleI(SessionServant):
    """The handle of one finished request."""

    def __init__(self, factory: _ServiceFactory, request: Any, response: Any,
                 status: Any) -> None:
        super().__init__(factory.ctx, factory.session_uuid or "", None, factory)
        self.request = request
        self.response = response
        self.status = status

    def addCallback(self, callback: Any, current: Ice.Current) -> None:
        return None  # finished already: the client's first poll finds the response

    def removeCallback(self, callback: Any, current: Ice.Current) -> None:
        return None

    def getRequest(self, current: Ice.Current) -> Any:
        return self.request

    def getResponse(self, current: Ice.Current) -> Any:
        return self.response

    def getStatus(self, current: Ice.Current) -> Any:
        return self.status

    def cancel(self, current: Ice.Current) -> bool:
        return False  # a finished request cannot be cancelled

    def close(self, current: Ice.Current) -> None:
        if self.factory is not None:
            self.factory.release_stateful(current.id)


def submit(factory: _ServiceFactory, request: Any, current: Ice.Current) -> Any:
    """Run ``request`` and return a proxy to its ``Handle``."""
    caller = factory.caller(current)
    started = int(time.time() * 1000)
    if isinstance(request, omero.cmd.OriginalMetadataRequest):
        from cellprofiler_omero.emulator.services.metadata import original_metadata

        response = original_metadata(factory, caller, request)
    elif isinstance(request, omero.cmd.Delete2):
        response = _delete2(factory, caller, request)
    else:
        # One grep-able line per gap, as icebase logs unimplemented operations.
        log.info("not implemented by the emulator: submit(%s)", type(request).__name__)
        raise api_usage(f"{type(request).__name__} requests are not implemented by the "
                        "emulator (only Delete2 and OriginalMetadataRequest).")
    flags = [omero.cmd.State.FAILURE] if isinstance(response, omero.cmd.ERR) else []
    status = omero.cmd.Status(category="", name="", flags=flags, parameters={},
                              currentStep=1, steps=1, startTime=started,
                              stepStartTimes=[started], stepStopTimes=[started],
                              stopTime=int(time.time() * 1000))
    handle = HandleI(factory, request, response, status)
    assert factory.identity is not None
    identity = Ice.Identity(f"Handle-{uuid.uuid4()}", factory.identity.category)
    prx = factory.ctx.add_servant(handle, identity)
    with factory._lock:
        factory.stateful[Ice.identityToString(identity)] = prx
    return omero.cmd.HandlePrx.uncheckedCast(prx)


def _refusal(message: str) -> Any:
    return omero.cmd.GraphException(category="omero.cmd.Delete2", name="graph-fail",
                                    parameters={"message": message}, message=message)


def _delete2(factory: _ServiceFactory, caller: Caller, request: Any) -> Any:
    store = factory.ctx.store
    targets: dict[str, list[int]] = dict(request.targetObjects or {})
    image_ids: list[int] = []
    annotation_ids: list[int] = []
    file_ids: list[int] = []
    link_ids: list[int] = []
    shorts = {name.rsplit(".", 1)[-1].removesuffix("I") for name in targets}
    roi_kinds = {"Roi", "Shape", *modelmap.SHAPE_KINDS}
    if shorts & roi_kinds:
        if shorts - roi_kinds:
            raise api_usage("The emulator's Delete2 takes ROIs and shapes alone, not "
                            "with other objects in one request.")
        return _delete_rois(factory, caller, targets, bool(request.dryRun))
    for name, ids in targets.items():
        short = name.rsplit(".", 1)[-1].removesuffix("I")
        if short == "Image":
            image_ids.extend(int(i) for i in ids)
        elif short == "Annotation" or short in modelmap.ANNOTATION_KINDS:
            annotation_ids.extend(int(i) for i in ids)
        elif short == "OriginalFile":
            file_ids.extend(int(i) for i in ids)
        elif short in _ANNOTATION_LINKS:
            link_ids.extend(int(i) for i in ids)
        else:
            raise api_usage(f"Delete2 of {short} is not implemented by the emulator "
                            "(only images, annotations and original files).")
    if link_ids:
        if image_ids or annotation_ids or file_ids:
            raise api_usage("The emulator's Delete2 takes annotation links alone, not with "
                            "other objects in one request.")
        return _delete_annotation_links(factory, caller, link_ids, bool(request.dryRun))
    if annotation_ids or file_ids:
        if image_ids:
            raise api_usage("The emulator's Delete2 takes images, or annotations and files, "
                            "not both in one request.")
        return _delete_annotations_and_files(factory, caller, annotation_ids, file_ids,
                                             bool(request.dryRun))
    images = []
    for image_id in image_ids:
        image = store.get(image_id, "Image")
        if image is None:
            continue  # nothing to delete
        if not factory.visible(caller, image):
            return _refusal(f"cannot read ome.model.core.Image[{image_id}]")
        if image.owner_id != caller.user.id and not caller.user.admin:
            return _refusal(f"not permitted to delete ome.model.core.Image[{image_id}]")
        images.append(image)
    # An image's ROIs and their shapes go with it (omero-blitz's delete graph).
    on_images, their_shapes = rois.rois_of_images(store, [i.id for i in images])
    deleted = rois.deleted_objects(on_images, their_shapes)
    if images:
        deleted[_IMAGE_CLASS] = [i.id for i in images]
    if request.dryRun:
        return omero.cmd.Delete2Response(deletedObjects=deleted)
    store.delete_many([o.id for o in (*on_images, *their_shapes)])
    # Every user's rendering settings of the image go with its pixels.
    store.delete_many([r.id for r in store.by_parents(["RenderingDef"],
                                                      [i.id for i in images])])
    for image in images:
        # Annotations only this image used go with it, as the default graph policy does.
        orphans = [link.child_id for link in store.links_from("ImageAnnotationLink",
                                                              [image.id])]
        store.delete(image.id)
        factory.ctx.pixels.remove(image.id)
        for ann_id in orphans:
            ann = store.get(ann_id)
            # Tags and files are shared things a graph delete keeps; others go if orphaned.
            if ann is None or ann.kind not in ("MapAnnotation", "CommentAnnotation"):
                continue
            if not any(store.links_to(kind, [ann_id]) for kind in _ANNOTATION_LINKS):
                store.delete(ann_id)
    return omero.cmd.Delete2Response(deletedObjects=deleted)


def _delete_rois(factory: _ServiceFactory, caller: Caller, targets: dict[str, list[int]],
                 dry_run: bool) -> Any:
    """ROIs (with their shapes) and single shapes. A ROI left without shapes stays: the
    emulator does not apply omero-blitz's orphan rules (not read) to ROIs."""
    store = factory.ctx.store
    found: dict[int, Any] = {}
    shapes: dict[int, Any] = {}
    for name, ids in targets.items():
        short = name.rsplit(".", 1)[-1].removesuffix("I")
        for oid in ids:
            obj = store.get(int(oid))
            if obj is None or not (obj.kind == short or (
                    short == "Shape" and obj.kind in modelmap.SHAPE_KINDS)):
                continue  # nothing to delete
            java = f"{rois.JAVA_PACKAGE}.{obj.kind}[{obj.id}]"
            if not factory.visible(caller, obj):
                return _refusal(f"cannot read {java}")
            if obj.owner_id != caller.user.id and not caller.user.admin:
                return _refusal(f"not permitted to delete {java}")
            (found if obj.kind == "Roi" else shapes)[obj.id] = obj
    for shape in store.by_parents(modelmap.SHAPE_KINDS, list(found)):
        shapes[shape.id] = shape
    deleted = rois.deleted_objects(list(found.values()), list(shapes.values()))
    if not dry_run:
        store.delete_many([*found, *shapes])
    return omero.cmd.Delete2Response(deletedObjects=deleted)


_ANNOTATION_LINKS = tuple(kind for kind, (_, child) in modelmap.LINK_ENDS.items()
                          if child == "Annotation")


def _delete_annotations_and_files(factory: _ServiceFactory, caller: Caller,
                                  annotation_ids: list[int], file_ids: list[int],
                                  dry_run: bool) -> Any:
    """Annotations (with their links) and original files, by omero-blitz's delete rules
    (``graph-rules/blitz-delete-rules.xml``): a FileAnnotation's file goes with it once
    no other annotation uses it, and deleting a file deletes the FileAnnotations on it
    regardless of permissions."""
    store = factory.ctx.store
    annotations: dict[int, Any] = {}
    files: dict[int, Any] = {}
    for ann_id in annotation_ids:
        ann = store.get(ann_id)
        if ann is None or ann.kind not in modelmap.ANNOTATION_KINDS:
            continue  # nothing to delete
        name = f"ome.model.annotations.{ann.kind}[{ann_id}]"
        if not factory.visible(caller, ann):
            return _refusal(f"cannot read {name}")
        if ann.owner_id != caller.user.id and not caller.user.admin:
            return _refusal(f"not permitted to delete {name}")
        annotations[ann.id] = ann
    for file_id in file_ids:
        file = store.get(file_id, "OriginalFile")
        if file is None:
            continue
        name = f"ome.model.core.OriginalFile[{file_id}]"
        if not factory.visible(caller, file):
            return _refusal(f"cannot read {name}")
        if file.owner_id != caller.user.id and not caller.user.admin:
            return _refusal(f"not permitted to delete {name}")
        files[file.id] = file
        for ann in store.find_by_data("FileAnnotation", "file", file.id):
            annotations[ann.id] = ann
    for ann in list(annotations.values()):
        used: int | None = ann.data.get("file") if ann.kind == "FileAnnotation" else None
        if used is None or used in files:
            continue
        users = [a for a in store.find_by_data("FileAnnotation", "file", used)
                 if a.id not in annotations]
        file = store.get(used, "OriginalFile")
        if file is not None and not users:
            files[file.id] = file  # orphaned: deleted regardless of permissions
    links = [link for kind in _ANNOTATION_LINKS for link in store.links_to(kind, annotations)]
    deleted: dict[str, list[int]] = {}
    for link in links:
        deleted.setdefault(f"ome.model.annotations.{link.kind}", []).append(link.id)
    for ann in annotations.values():
        deleted.setdefault(f"ome.model.annotations.{ann.kind}", []).append(ann.id)
    if files:
        deleted["ome.model.core.OriginalFile"] = sorted(files)
    if not dry_run:
        for ann_id in annotations:
            store.delete(ann_id)  # and its links
        for file_id in files:
            store.delete(file_id)
            factory.ctx.file_path(file_id).unlink(missing_ok=True)
    return omero.cmd.Delete2Response(deletedObjects=deleted)


def _delete_annotation_links(factory: _ServiceFactory, caller: Caller, link_ids: list[int],
                             dry_run: bool) -> Any:
    """Annotation links (omero-metadata's deletemap), by omero-blitz's delete rules
    (``graph-rules/blitz-delete-rules.xml``): an unlinked map, list, XML, comment or basic
    annotation that no other link uses goes too; file and tag annotations stay."""
    store = factory.ctx.store
    links = []
    for link_id in link_ids:
        link = store.get_link(link_id)
        if link is None or link.kind not in _ANNOTATION_LINKS:
            continue  # nothing to delete
        name = f"ome.model.annotations.{link.kind}[{link_id}]"
        if link.owner_id != caller.user.id and not caller.user.admin:
            return _refusal(f"not permitted to delete {name}")
        links.append(link)
    gone = {link.id for link in links}
    orphans: dict[int, Any] = {}
    for link in links:
        ann = store.get(link.child_id)
        if ann is None or ann.kind not in ("MapAnnotation", "CommentAnnotation"):
            continue
        others = [other for kind in _ANNOTATION_LINKS
                  for other in store.links_to(kind, [ann.id]) if other.id not in gone]
        if not others:
            orphans[ann.id] = ann
    deleted: dict[str, list[int]] = {}
    for link in links:
        deleted.setdefault(f"ome.model.annotations.{link.kind}", []).append(link.id)
    for ann in orphans.values():
        deleted.setdefault(f"ome.model.annotations.{ann.kind}", []).append(ann.id)
    if not dry_run:
        for link in links:
            store.delete_link(link.id)
        for ann_id in orphans:
            store.delete(ann_id)
    return omero.cmd.Delete2Response(deletedObjects=deleted)
