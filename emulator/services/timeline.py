"""ITimeline: what was made in a period (the webclient's History page and calendar).

Mirrors ome/omero-blitz ``ome/services/blitz/impl/TimelineI.java``: the types it knows
(``Project`` and ``Dataset`` by creation/update time, ``Image`` by acquisition date;
another type answers null, or -1 when counted), the filter's defaults (offset 0, limit
50, the caller as owner unless a group is given; owner -1 means anyone), ``merge``
(newest first, one limit over all types) and the event logs of a period, which are the
projects' and datasets' INSERT logs plus one made-up INSERT log per image acquired in
it. The emulator records no update events, so an object's update time is its creation
time, and it stores no RenderingDef history: a RenderingDef period answers as none.
"""

from __future__ import annotations

from typing import Any

import Ice
import omero
import omero.api
import omero.model
from omero.rtypes import rlong, rstring, rtime, unwrap

from cellprofiler_omero.emulator import modelmap
from cellprofiler_omero.emulator.icebase import servant
from cellprofiler_omero.emulator.services.common import Caller, SessionServant
from cellprofiler_omero.emulator.store import Obj

#: The types TimelineI has a period query for (``BYPERIOD``); others answer null.
PERIOD_TYPES = ("Project", "Dataset", "Image", "RenderingDef")
#: TimelineI's default types when none are given (``ALLTYPES``).
ALL_TYPES = ["RenderingDef", "Image", "Project", "Dataset", "Annotation"]
#: The Java classes an EventLog names (``entityType``).
JAVA = {"Project": "ome.model.containers.Project", "Dataset": "ome.model.containers.Dataset",
        "Image": "ome.model.core.Image"}
#: omero.rtypes' rtime_min/rtime_max: an open end of the period.
OPEN = (-(2 ** 63), 2 ** 63 - 1)


class _Filter:
    """``applyDefaults`` of TimelineI: offset, limit, owner and group of the query."""

    def __init__(self, params: Any, caller: Caller) -> None:
        f = getattr(params, "theFilter", None) if params is not None else None
        self.offset = int(unwrap(getattr(f, "offset", None)) or 0)
        limit = unwrap(getattr(f, "limit", None))
        self.limit = 50 if limit is None else int(limit)
        owner = unwrap(getattr(f, "ownerId", None))
        group = unwrap(getattr(f, "groupId", None))
        if group is None:
            if owner is None:
                owner = caller.user.id
            elif owner == -1:
                owner = None  # a wildcard
        self.owner: int | None = owner
        self.group: int | None = group

    def owns(self, obj: Obj) -> bool:
        return ((self.owner is None or obj.owner_id == self.owner)
                and (self.group is None or obj.group_id == self.group))

    def page(self, objs: list[Obj]) -> list[Obj]:
        return objs[self.offset:self.offset + self.limit]


@servant(omero.api.ITimeline)
class TimelineI(SessionServant):
    """ITimeline over the emulator's store (see the module docstring)."""

    def _in_period(self, caller: Caller, kind: str, start: Any, end: Any,
                   flt: _Filter) -> list[Obj]:
        lo = unwrap(start) if start is not None else OPEN[0]
        hi = unwrap(end) if end is not None else OPEN[1]
        if kind == "RenderingDef":
            return []
        # Image by acquisition date (the emulator's is its creation time), the
        # containers by creation/update event: both the object's created time here.
        found = [o for o in self.ctx.store.all(kind)
                 if lo <= int(o.created * 1000) <= hi and flt.owns(o)
                 and self.visible(caller, o)]
        # ORDERBY: newest first.
        return sorted(found, key=lambda o: (o.created, o.id), reverse=True)

    def _types(self, types: list[str] | None) -> list[str]:
        return list(types) if types else list(ALL_TYPES)

    def countByPeriod(self, types: list[str], start: Any, end: Any, params: Any,
                      current: Ice.Current) -> dict[str, int]:
        caller = self.caller(current)
        flt = _Filter(params, caller)
        # One count row per type: the filter's limit does not cut the count.
        return {kind: len(self._in_period(caller, kind, start, end, flt))
                if kind in PERIOD_TYPES else -1 for kind in self._types(types)}

    def getByPeriod(self, types: list[str], start: Any, end: Any, params: Any,
                    merge: bool, current: Ice.Current) -> dict[str, list[Any] | None]:
        caller = self.caller(current)
        flt = _Filter(params, caller)
        found: dict[str, list[Obj] | None] = {
            kind: flt.page(self._in_period(caller, kind, start, end, flt))
            if kind in PERIOD_TYPES else None for kind in self._types(types)}
        if merge:
            # mergeMap: newest first over all the types, one limit for them all.
            entries = sorted(((o.created, kind, o) for kind, objs in found.items()
                              for o in objs or []), key=lambda e: e[0], reverse=True)
            found = {kind: [] for kind in found}
            for _, kind, o in entries[:flt.limit]:
                found[kind].append(o)  # type: ignore[union-attr]
        store = self.ctx.store
        return {kind: None if objs is None else
                [modelmap.to_model(store, caller.user, o) for o in objs]
                for kind, objs in found.items()}

    def getEventLogsByPeriod(self, start: Any, end: Any, params: Any,
                             current: Ice.Current) -> list[Any]:
        caller = self.caller(current)
        flt = _Filter(params, caller)
        logs = []
        containers = [o for kind in ("Dataset", "Project")
                      for o in self._in_period(caller, kind, start, end, flt)]
        images = self._in_period(caller, "Image", start, end, flt)
        for o in flt.page(containers) + flt.page(images):
            log = omero.model.EventLogI()
            log.entityId = rlong(o.id)
            log.entityType = rstring(JAVA[o.kind])
            log.action = rstring("INSERT")
            event = omero.model.EventI()
            event.time = rtime(int(o.created * 1000))
            log.event = event
            logs.append(log)
        return logs

