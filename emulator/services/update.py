"""IUpdate: save new containers, annotations, files and links; rename; delete.

Model objects arrive as omero-py sends them: new objects without ids, existing
ones as (possibly unloaded) references. Links are saved with both ends, and
collections of links on a saved object are followed (``linkDataset`` …).
"""

from __future__ import annotations

import logging
from typing import Any

import Ice
import omero
import omero.api
from omero.rtypes import unwrap

from cellprofiler_omero.emulator import modelmap
from cellprofiler_omero.emulator.icebase import (
    api_usage,
    security_violation,
    servant,
    validation,
)
from cellprofiler_omero.emulator.services import roi as rois
from cellprofiler_omero.emulator.services.common import Caller, SessionServant
from cellprofiler_omero.emulator.services.sessions import GUEST_ID

log = logging.getLogger(__name__)

CONTAINERS = ("Project", "Dataset", "Screen", "Plate")
SAVABLE = (*CONTAINERS, "Image", "OriginalFile", "FileAnnotation", "MapAnnotation",
           "CommentAnnotation", "TagAnnotation")
_COLLECTIONS = {  # kind → (attribute holding links, link kind)
    "Project": [("_datasetLinksSeq", "ProjectDatasetLink")],
    "Dataset": [("_imageLinksSeq", "DatasetImageLink")],
    "Screen": [("_plateLinksSeq", "ScreenPlateLink")],
}


def kind_of(obj: Any) -> str:
    name = type(obj).__name__
    return name[:-1] if name.endswith("I") else name


def _get(obj: Any, attr: str) -> Any:
    value = getattr(obj, f"_{attr}", None)
    return unwrap(value)


def _annotation_data(kind: str, stored: dict[str, Any], obj: Any) -> dict[str, Any]:
    """A stored annotation's fields updated from the loaded object a client saves again
    (ezomero's ``put_map_annotation``: ``MapAnnotationWrapper.setValue`` then ``save``).
    A real server merges the whole object; fields the client left unset are kept."""
    data = dict(stored)
    if _get(obj, "ns") is not None:
        data["ns"] = _get(obj, "ns")
    if kind == "MapAnnotation" and getattr(obj, "_mapValue", None) is not None:
        data["map"] = [[nv.name, nv.value] for nv in obj.getMapValue()]
    elif kind in ("CommentAnnotation", "TagAnnotation") and \
            _get(obj, "textValue") is not None:
        data["text"] = _get(obj, "textValue")
    return data


@servant(omero.api.IUpdate)
class UpdateI(SessionServant):
    """IUpdate over the emulator's store."""

    # -- saving ----------------------------------------------------------------------------

    def _ref(self, caller: Caller, obj: Any) -> tuple[str, int]:
        """Save ``obj`` if new, else check it exists; return (kind, id)."""
        if obj is None:
            raise api_usage("A link end is missing.")
        if obj.id is None or unwrap(obj.id) is None:
            return self._save(caller, obj)
        kind = kind_of(obj)
        oid = unwrap(obj.id)
        if kind in ("Pixels", "LogicalChannel", "Channel"):
            return self._update_pixels_part(caller, kind, oid, obj)
        if rois.is_roi_kind(kind):
            return rois.RoiWriter(self).save(caller, obj)
        stored = self.ctx.store.get(oid)
        if stored is None or not self.visible(caller, stored):
            raise api_usage(f"{kind}:{oid} does not exist.")
        if obj.isLoaded() and kind in SAVABLE:
            self._update(caller, stored.kind, oid, obj)
        return stored.kind, oid

    def _save(self, caller: Caller, obj: Any) -> tuple[str, int]:
        kind = kind_of(obj)
        store = self.ctx.store
        if caller.user.id == GUEST_ID and (obj.id is None or unwrap(obj.id) is None):
            # A real server's guest creates nothing (BasicACLVoter.allowCreation), and the
            # refusal names the new object as its toString does (throwCreationViolation).
            raise security_violation(f"not permitted to create {kind}:Hash_{hash(obj)}")
        if kind in modelmap.LINK_ENDS:
            pkind, pid = self._ref(caller, obj.parent)
            _ckind, cid = self._ref(caller, obj.child)
            parent = store.get(pid)
            assert parent is not None
            annotation = kind.endswith("AnnotationLink")
            allowed = (store.can_annotate if annotation else store.can_link)(
                caller.user, parent.owner_id, parent.group_id)
            if not allowed:
                raise security_violation(
                    f"{caller.user.omename} may not link to {pkind}:{pid} "
                    f"(owned by another user in a group that does not allow it).")
            link = store.link(kind, pid, cid, caller.user.id, parent.group_id)
            return kind, link.id
        if obj.id is not None and unwrap(obj.id) is not None:
            if kind in ("Pixels", "LogicalChannel", "Channel"):
                return self._update_pixels_part(caller, kind, unwrap(obj.id), obj)
            return self._ref(caller, obj)
        if kind in ("Well", "WellSample"):
            return self._save_plate_part(caller, kind, obj)
        if rois.is_roi_kind(kind):
            return rois.RoiWriter(self).save(caller, obj)
        if kind not in SAVABLE or kind == "Image":
            raise api_usage(f"The emulator cannot create {kind} objects through IUpdate.")
        group_id = self.write_group(caller)
        data: dict[str, Any] = {}
        name = _get(obj, "name") or ""
        description = _get(obj, "description") or ""
        if kind == "OriginalFile":
            data = {"path": _get(obj, "path") or "", "mimetype": _get(obj, "mimetype") or "",
                    "size": _get(obj, "size") or 0, "hash": _get(obj, "hash") or ""}
        elif kind in modelmap.ANNOTATION_KINDS:
            data = {"ns": _get(obj, "ns")}
            if kind == "FileAnnotation" and getattr(obj, "_file", None) is not None:
                data["file"] = self._ref(caller, obj._file)[1]
            elif kind == "MapAnnotation":
                data["map"] = [[nv.name, nv.value] for nv in (obj.getMapValue() or [])]
            elif kind in ("CommentAnnotation", "TagAnnotation"):
                data["text"] = _get(obj, "textValue") or ""
        elif kind == "Plate":
            data = {"rows": _get(obj, "rows") or 0, "columns": _get(obj, "columns") or 0}
        stored = store.create(kind, name, caller.user.id, group_id, data=data,
                              description=description)
        if kind == "OriginalFile":
            self.ctx.file_path(stored.id).touch()
        self._collections(caller, kind, stored.id, obj)
        return kind, stored.id

    def _save_plate_part(self, caller: Caller, kind: str, obj: Any) -> tuple[str, int]:
        """A new Well in a plate (row and column optional, as in OMERO's model) with its
        new WellSamples, or a new WellSample in a well; each sample names its image."""
        store = self.ctx.store
        parent_attr, parent_kind = ("plate", "Plate") if kind == "Well" else ("well", "Well")
        if getattr(obj, f"_{parent_attr}", None) is None:
            raise validation(f"not-null property references a null or transient value: "
                             f"ome.model.screen.{kind}.{parent_attr}")
        _k, parent_id = self._ref(caller, getattr(obj, f"_{parent_attr}"))
        parent = store.get(parent_id, parent_kind)
        if parent is None:
            raise api_usage(f"{parent_kind}:{parent_id} does not exist.")
        if not store.can_link(caller.user, parent.owner_id, parent.group_id):
            raise security_violation(f"{caller.user.omename} may not add to "
                                     f"{parent_kind}:{parent_id}.")
        if kind == "WellSample":
            image = getattr(obj, "_image", None)
            image_id = self._ref(caller, image)[1] if image is not None else None
            sample = store.create("WellSample", "", caller.user.id, parent.group_id,
                                  parent_id=parent_id, data={"image": image_id})
            return kind, sample.id
        well = store.create("Well", "", caller.user.id, parent.group_id, parent_id=parent_id,
                            data={"row": _get(obj, "row"), "column": _get(obj, "column")})
        for sample in getattr(obj, "_wellSamplesSeq", None) or []:
            sample.well = modelmap.unloaded("Well", well.id)
            self._save_plate_part(caller, "WellSample", sample)
        return kind, well.id

    def _update_pixels_part(self, caller: Caller, kind: str, oid: int, obj: Any
                            ) -> tuple[str, int]:
        """Pixels (physical sizes), LogicalChannel (name) and Channel (colour, and the
        min/max of a StatsInfo saved with it) updates.

        The emulator keeps these inside the image, with ids derived from the image's:
        Pixels ``id``, channels ``id * 1000 + index``.
        """
        image_id, index = ((modelmap.image_id_of_pixels(oid), -1) if kind == "Pixels"
                           else divmod(oid, 1000))
        image = self.ctx.store.get(image_id, "Image")
        if image is None or not self.visible(caller, image):
            raise api_usage(f"{kind}:{oid} does not exist.")
        if image.owner_id != caller.user.id and not caller.user.admin:
            raise security_violation(f"{kind}:{oid} belongs to another user.")
        if not obj.isLoaded():
            return kind, oid
        data = dict(image.data)
        if kind == "Pixels":
            for axis in "XYZ":
                value = getattr(obj, f"_physicalSize{axis}", None)
                if value is not None:
                    from omero.model.enums import UnitsLength

                    data[f"phys{axis}"] = float(omero.model.LengthI(
                        value, UnitsLength.MICROMETER).getValue())
        else:
            channels = [dict(c) for c in data["channels"]]
            if not 0 <= index < len(channels):
                raise api_usage(f"{kind}:{oid} does not exist.")
            if kind == "LogicalChannel" and _get(obj, "name") is not None:
                channels[index]["name"] = _get(obj, "name")
            stats = getattr(obj, "_statsInfo", None) if kind == "Channel" else None
            if stats is not None and stats.isLoaded():
                # Saved through its channel, as IPixels.setChannelGlobalMinMax saves a
                # new StatsInfo (ome/omero-server PixelsImpl).
                channels[index]["min"] = float(_get(stats, "globalMin"))
                channels[index]["max"] = float(_get(stats, "globalMax"))
            if kind == "Channel" and _get(obj, "red") is not None:
                channels[index]["color"] = [_get(obj, a) or 0 for a in
                                            ("red", "green", "blue", "alpha")]
            data["channels"] = channels
        self.ctx.store.update(image_id, data=data)
        return kind, oid

    def _update(self, caller: Caller, kind: str, oid: int, obj: Any) -> None:
        stored = self.ctx.store.get(oid)
        assert stored is not None
        annotation = (_annotation_data(stored.kind, stored.data, obj)
                      if stored.kind in modelmap.ANNOTATION_KINDS else None)
        if stored.owner_id != caller.user.id and not caller.user.admin:
            # Links to another user's object are allowed; changing it is not.
            if _get(obj, "name") not in (None, stored.name) or \
                    annotation not in (None, stored.data):
                raise security_violation(f"{kind}:{oid} belongs to another user.")
            self._collections(caller, kind, oid, obj)
            return
        name = _get(obj, "name")
        description = _get(obj, "description")
        self.ctx.store.update(oid, name=name if name is not None else None,
                              description=description if description is not None else None,
                              data=annotation)
        self._collections(caller, kind, oid, obj)

    def _collections(self, caller: Caller, kind: str, oid: int, obj: Any) -> None:
        pairs = list(_COLLECTIONS.get(kind, []))
        if kind in ("Project", "Dataset", "Image", "Screen", "Plate", "Roi"):
            pairs.append(("_annotationLinksSeq", f"{kind}AnnotationLink"))
        for attr, _link_kind in pairs:
            links = getattr(obj, attr, None)
            if not links:
                continue
            for link in links:
                if link.parent is None or unwrap(link.parent.id) is None:
                    link.parent = modelmap.unloaded(kind, oid)
                self._save(caller, link)

    def _model(self, caller: Caller, kind: str, oid: int) -> Any:
        store = self.ctx.store
        if kind in ("Pixels", "LogicalChannel", "Channel"):
            image = store.get(modelmap.image_id_of_pixels(oid) if kind == "Pixels"
                              else oid // 1000, "Image")
            assert image is not None
            pixels = modelmap.pixels(store, caller.user, image)
            if kind == "Pixels":
                return pixels
            channel = pixels.getChannel(oid % 1000)
            return channel if kind == "Channel" else channel.getLogicalChannel()
        if kind in modelmap.LINK_ENDS:
            link = store.get_link(oid)
            assert link is not None
            parent, child = store.get(link.parent_id), store.get(link.child_id)
            assert parent is not None and child is not None
            return modelmap.link_model(
                store, caller.user, kind, oid,
                modelmap.to_model(store, caller.user, parent, deep=False),
                modelmap.to_model(store, caller.user, child, deep=False),
                link.owner_id, link.group_id, link.created)
        obj = store.get(oid)
        assert obj is not None
        if kind == "Roi":
            return modelmap.roi_models(store, caller.user, [obj])[0]
        return modelmap.to_model(store, caller.user, obj)

    def _models(self, caller: Caller, saved: list[tuple[str, int]]) -> list[Any]:
        """What the save methods return: ROIs (with their shapes) built together, since
        one call may bring thousands of them."""
        roi_ids = [oid for kind, oid in saved if kind == "Roi"]
        built: dict[int, Any] = {}
        if roi_ids:
            store = self.ctx.store
            found = store.get_many(roi_ids, "Roi")
            built = {m.id.val: m for m in modelmap.roi_models(store, caller.user, found)}
        return [built[oid] if kind == "Roi" else self._model(caller, kind, oid)
                for kind, oid in saved]

    def _save_all(self, caller: Caller, objs: list[Any]) -> list[tuple[str, int]]:
        # One transaction per call, as a real server's: a refusal leaves nothing saved.
        with rois.batch(self.ctx.store):
            return [self._save(caller, obj) for obj in objs]

    def saveObject(self, obj: Any, current: Ice.Current) -> None:
        self._save_all(self.caller(current), [obj])

    def saveAndReturnObject(self, obj: Any, current: Ice.Current) -> Any:
        caller = self.caller(current)
        return self._models(caller, self._save_all(caller, [obj]))[0]

    def saveCollection(self, objs: list[Any], current: Ice.Current) -> None:
        self._save_all(self.caller(current), objs)

    def saveArray(self, objs: list[Any], current: Ice.Current) -> None:
        self.saveCollection(objs, current)

    def saveAndReturnArray(self, objs: list[Any], current: Ice.Current) -> list[Any]:
        caller = self.caller(current)
        return self._models(caller, self._save_all(caller, objs))

    def saveAndReturnIds(self, objs: list[Any], current: Ice.Current) -> list[int]:
        return [oid for _kind, oid in self._save_all(self.caller(current), objs)]

    def deleteObject(self, obj: Any, current: Ice.Current) -> None:
        caller = self.caller(current)
        kind = kind_of(obj)
        oid = unwrap(obj.id)
        store = self.ctx.store
        if kind in modelmap.LINK_ENDS:
            link = store.get_link(oid)
            if link is None:
                return
            if link.owner_id != caller.user.id and not caller.user.admin:
                raise security_violation("The link belongs to another user.")
            store.delete_link(oid)
            return
        stored = store.get(oid)
        if stored is None or not self.visible(caller, stored):
            raise api_usage(f"{kind}:{oid} does not exist.")
        if stored.owner_id != caller.user.id and not caller.user.admin:
            raise security_violation(f"{kind}:{oid} belongs to another user.")
        gone = [oid]
        if stored.kind == "Image":
            found, shapes = rois.rois_of_images(store, [oid])
            gone += [o.id for o in (*found, *shapes)]
        elif stored.kind == "Roi":
            gone += [s.id for s in store.by_parents(modelmap.SHAPE_KINDS, [oid])]
        store.delete_many(gone)
        if stored.kind == "Image":
            self.ctx.pixels.remove(oid)

    def indexObject(self, obj: Any, current: Ice.Current) -> None:
        return None
