"""IQuery: HQL (through ``hql``), get/find by class and id, projections."""

from __future__ import annotations

import logging
from typing import Any

import Ice
import omero
import omero.api
from omero.rtypes import rbool, rdouble, rlong, robject, rstring, unwrap

from cellprofiler_omero.emulator import hql, modelmap
from cellprofiler_omero.emulator.icebase import api_usage, servant, validation
from cellprofiler_omero.emulator.services.common import Caller, SessionServant

log = logging.getLogger(__name__)


def _params(params: Any) -> tuple[dict[str, Any], int, int | None, int | None]:
    values: dict[str, Any] = {}
    offset, limit, owner = 0, None, None
    if params is not None:
        for key, value in (params.map or {}).items():
            values[key] = unwrap(value)
        flt = params.theFilter
        if flt is not None:
            offset = unwrap(flt.offset) or 0
            limit = unwrap(flt.limit)
            owner = unwrap(flt.ownerId)
            if owner is not None and owner < 0:
                owner = None
    return values, offset, limit, owner


def _rtype(value: Any) -> Any:
    if isinstance(value, hql.View):
        return robject(value.model()) if value.model is not None else rlong(value.fields["id"])
    if value is None:
        return None
    if isinstance(value, bool):
        return rbool(value)
    if isinstance(value, int):
        return rlong(value)
    if isinstance(value, float):
        return rdouble(value)
    if isinstance(value, str):
        return rstring(value)
    return omero.rtypes.wrap(value)


class QueryMixin(SessionServant):
    """Running HQL for any servant that needs it."""

    def graph(self, caller: Caller) -> hql.Graph:
        store = self.ctx.store
        return hql.Graph(store, caller.user, caller.group_id,
                         lambda obj: modelmap.to_model(store, caller.user, obj))

    def hql_rows(self, text: str, params: Any, current: Ice.Current) -> list[list[Any]]:
        caller = self.caller(current)
        values, offset, limit, owner = _params(params)
        try:
            query, rows = hql.execute(self.graph(caller), text, values)
        except hql.HqlError as exc:
            log.info("unsupported HQL: %s (%s)", " ".join(text.split()), exc)
            raise api_usage(f"The emulator does not support this query ({exc}): "
                            f"{' '.join(text.split())}") from None
        if owner is not None:
            rows = [r for r in rows if not isinstance(r[0], hql.View)
                    or r[0].obj is None or r[0].obj.owner_id == owner]
        del query
        if offset or limit is not None:
            rows = rows[offset: None if limit is None else offset + limit]
        return rows


@servant(omero.api.IQuery)
class QueryI(QueryMixin):
    """IQuery over the emulator's store."""

    def findByQuery(self, query: str, params: Any, current: Ice.Current) -> Any:
        found = hql.objects(self.hql_rows(query, params, current))
        return found[0] if found else None

    def findAllByQuery(self, query: str, params: Any, current: Ice.Current) -> list[Any]:
        return hql.objects(self.hql_rows(query, params, current))

    def projection(self, query: str, params: Any, current: Ice.Current) -> list[list[Any]]:
        return [[_rtype(v) for v in row] for row in self.hql_rows(query, params, current)]

    def _by_id(self, klass: str, object_id: int, current: Ice.Current) -> Any:
        cls = klass.rsplit(".", 1)[-1]
        if cls.endswith("I") and cls[:-1] in hql.LINKS | {"Image": 0}:
            cls = cls[:-1]
        params = omero.sys.Parameters()
        params.map = {"id": rlong(object_id)}
        found = hql.objects(self.hql_rows(f"select o from {cls} o where o.id = :id", params,
                                          current))
        return found[0] if found else None

    def get(self, klass: str, object_id: int, current: Ice.Current) -> Any:
        found = self._by_id(klass, object_id, current)
        if found is None:
            raise validation(f"No row with the given identifier exists: {klass}:{object_id}")
        return found

    def find(self, klass: str, object_id: int, current: Ice.Current) -> Any:
        return self._by_id(klass, object_id, current)

    def findAll(self, klass: str, flt: Any, current: Ice.Current) -> list[Any]:
        params = omero.sys.Parameters()
        params.map = {}
        params.theFilter = flt
        cls = klass.rsplit(".", 1)[-1]
        return hql.objects(self.hql_rows(f"select o from {cls} o order by o.id", params,
                                         current))

    def findByString(self, klass: str, field: str, value: str, current: Ice.Current) -> Any:
        params = omero.sys.Parameters()
        params.map = {"v": rstring(value)}
        cls = klass.rsplit(".", 1)[-1]
        found = hql.objects(self.hql_rows(f"select o from {cls} o where o.{field} = :v",
                                          params, current))
        return found[0] if found else None

    def findAllByString(self, klass: str, field: str, value: str, case_sensitive: bool,
                        flt: Any, current: Ice.Current) -> list[Any]:
        params = omero.sys.Parameters()
        params.map = {"v": rstring(value)}
        params.theFilter = flt
        cls = klass.rsplit(".", 1)[-1]
        op = "like" if case_sensitive else "ilike"
        return hql.objects(self.hql_rows(f"select o from {cls} o where o.{field} {op} :v",
                                         params, current))

    def refresh(self, obj: Any, current: Ice.Current) -> Any:
        return self.get(type(obj).__name__, obj.id.val, current)
