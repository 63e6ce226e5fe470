"""IContainer: images of containers, hierarchies for browsing, child counts."""

from __future__ import annotations

from typing import Any

import Ice
import omero
import omero.api
from omero.rtypes import rlong

from cellprofiler_omero.emulator import modelmap
from cellprofiler_omero.emulator.icebase import api_usage, servant
from cellprofiler_omero.emulator.services.common import Caller, SessionServant
from cellprofiler_omero.emulator.store import Obj


@servant(omero.api.IContainer)
class ContainerI(SessionServant):
    """IContainer over the emulator's store."""

    def _children(self, caller: Caller, link_kind: str, parent_ids: list[int]) -> list[Obj]:
        store = self.ctx.store
        links = store.links_from(link_kind, parent_ids)
        found = store.get_many([lk.child_id for lk in links])
        return [o for o in found if self.visible(caller, o)]

    def image_objs(self, caller: Caller, root_type: str, ids: list[int]) -> list[Obj]:
        store = self.ctx.store
        kind = root_type.rsplit(".", 1)[-1].removesuffix("I")
        if kind == "Image":
            return [o for o in store.get_many(ids, "Image") if self.visible(caller, o)]
        if kind == "Dataset":
            return self._children(caller, "DatasetImageLink", ids)
        if kind == "Project":
            datasets = self._children(caller, "ProjectDatasetLink", ids)
            return self._children(caller, "DatasetImageLink", [d.id for d in datasets])
        raise api_usage(f"getImages does not take {root_type!r} in the emulator.")

    def getImages(self, root_type: str, ids: list[int], options: Any, current: Ice.Current
                  ) -> list[Any]:
        caller = self.caller(current)
        store = self.ctx.store
        return [modelmap.to_model(store, caller.user, o)
                for o in self.image_objs(caller, root_type, list(ids))]

    def getImagesByOptions(self, options: Any, current: Ice.Current) -> list[Any]:
        caller = self.caller(current)
        store = self.ctx.store
        return [modelmap.to_model(store, caller.user, o) for o in store.all("Image")
                if self.visible(caller, o)]

    def getUserImages(self, options: Any, current: Ice.Current) -> list[Any]:
        caller = self.caller(current)
        store = self.ctx.store
        return [modelmap.to_model(store, caller.user, o) for o in store.all("Image")
                if o.owner_id == caller.user.id and self.visible(caller, o)]

    def loadContainerHierarchy(self, root_type: str, ids: list[int], options: Any,
                               current: Ice.Current) -> list[Any]:
        caller = self.caller(current)
        store = self.ctx.store
        kind = root_type.rsplit(".", 1)[-1].removesuffix("I")
        if kind not in ("Project", "Dataset", "Screen", "Plate"):
            raise api_usage(f"loadContainerHierarchy does not take {root_type!r}.")
        roots = store.get_many(ids, kind) if ids else store.all(kind)
        out = []
        for root in roots:
            if not self.visible(caller, root):
                continue
            m = modelmap.to_model(store, caller.user, root)
            modelmap.loaded(m, {"Project": "datasetLinks", "Dataset": "imageLinks",
                                "Screen": "plateLinks"}.get(kind, "annotationLinks"))
            if kind == "Project":
                for ds in self._children(caller, "ProjectDatasetLink", [root.id]):
                    m.linkDataset(modelmap.to_model(store, caller.user, ds))
            elif kind == "Dataset":
                for img in self._children(caller, "DatasetImageLink", [root.id]):
                    m.linkImage(modelmap.to_model(store, caller.user, img))
            elif kind == "Screen":
                for pl in self._children(caller, "ScreenPlateLink", [root.id]):
                    m.linkPlate(modelmap.to_model(store, caller.user, pl))
            out.append(m)
        return out

    def findContainerHierarchies(self, root_type: str, image_ids: list[int], options: Any,
                                 current: Ice.Current) -> list[Any]:
        caller = self.caller(current)
        store = self.ctx.store
        datasets = {lk.parent_id for lk in store.links_to("DatasetImageLink", image_ids)}
        if root_type.rsplit(".", 1)[-1].removesuffix("I") == "Project":
            projects = {lk.parent_id for lk in store.links_to("ProjectDatasetLink", datasets)}
            return self.loadContainerHierarchy("Project", sorted(projects), options, current)
        return [modelmap.to_model(store, caller.user, o)
                for o in store.get_many(sorted(datasets)) if self.visible(caller, o)]

    def getImagesBySplitFilesets(self, included: dict[str, list[int]], options: Any,
                                 current: Ice.Current) -> dict[int, dict[bool, list[int]]]:
        """The filesets the selection would split (fileset id → {True: selected images,
        False: the rest}), as omero-server's PojosImpl answers the webclient's delete and
        move dialogs. The emulator's images have no fileset (none imported from files),
        so no selection splits one: the answer is always empty."""
        self.caller(current)
        return {}

    def getCollectionCount(self, type_name: str, prop: str, ids: list[int], options: Any,
                           current: Ice.Current) -> dict[int, int]:
        caller = self.caller(current)
        link_kind = {"datasetLinks": "ProjectDatasetLink", "imageLinks": "DatasetImageLink",
                     "plateLinks": "ScreenPlateLink"}.get(prop.rsplit(".", 1)[-1])
        if link_kind is None:
            raise api_usage(f"getCollectionCount does not count {prop!r} in the emulator.")
        return {i: len(self._children(caller, link_kind, [i])) for i in ids}

    def createDataSet(self, dataset: Any, images: list[Any], options: Any,
                      current: Ice.Current) -> Any:
        raise api_usage("Use IUpdate to create datasets.")


__all__ = ["ContainerI", "rlong"]
