"""IQuery: HQL (through ``hql``), get/find by class and id, projections."""

from __future__ import annotations

import logging
from typing import Any

import Ice
import omero
import omero.api
import omero.model
from omero.rtypes import rbool, rdouble, rlong, rmap, robject, rstring, rtime, unwrap

from cellprofiler_omero.emulator import hql, modelmap
from cellprofiler_omero.emulator.icebase import JAVA_CLASS, api_usage, servant, validation
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
    """A projected value as omero-blitz's IceMapper.toRType sends it."""
    if isinstance(value, omero.model.IObject):
        return robject(value)
    if value is None:
        return None
    if isinstance(value, hql.Time):
        return rtime(int(value))
    if isinstance(value, hql.EntityClass):
        return rstring(value.java_name)
    if isinstance(value, hql.Perms):
        return rmap({k: _rtype(v) for k, v in value.as_map().items()})
    if isinstance(value, dict):
        return rmap({str(k): _rtype(v) for k, v in value.items()})
    if isinstance(value, bool):
        return rbool(value)
    if isinstance(value, int):
        return rlong(value)
    if isinstance(value, float):
        return rdouble(value)
    if isinstance(value, str):
        return rstring(value)
    return omero.rtypes.wrap(value)


def illegal_query(text: str, reason: str) -> omero.QueryException:
    """What a real server answers for HQL Hibernate cannot parse (ome.services.query.
    StringQuery: "Illegal query:<query>\n<parser message>", as omero.QueryException)."""
    return omero.QueryException(serverStackTrace="",
                                serverExceptionClass=JAVA_CLASS["QueryException"],
                                message=f"Illegal query:{text}\n{reason}")


def non_unique(query_name: str) -> omero.ApiUsageException:
    """What ome.logic.QueryImpl answers when a findBy method finds more than one object."""
    return api_usage(
        "Query named:\n\n\t" + query_name + "\n\n"
        "has returned more than one Object\n"
        "findBy methods must return a single value.\n"
        "Please try findAllBy methods for queries which return Lists.")


def _unique(rows: list[list[Any]]) -> bool:
    """Hibernate's ``uniqueResult``: at most one row, or the same entity on every row."""
    if len(rows) <= 1:
        return True
    first = rows[0][0] if len(rows[0]) == 1 else None
    return isinstance(first, hql.View) and all(
        len(row) == 1 and isinstance(row[0], hql.View) and row[0].key == first.key
        for row in rows)


class QueryMixin(SessionServant):
    """Running HQL for any servant that needs it."""

    def graph(self, caller: Caller) -> hql.Graph:
        store = self.ctx.store
        # A Well's samples come only when the query fetches them (hql.Models adds them).
        return hql.Graph(store, caller.user, caller.group_id,
                         lambda obj: modelmap.to_model(store, caller.user, obj,
                                                       deep=obj.kind != "Well"))

    def hql_result(self, text: str, params: Any, current: Ice.Current) -> hql.Result:
        caller = self.caller(current)
        values, offset, limit, owner = _params(params)
        graph = self.graph(caller)
        try:
            result = hql.execute(graph, text, values)
        except hql.MissingParameter as exc:
            # StringQuery refuses a named parameter without a value before running.
            raise api_usage(f"Null parameters not allowed: {exc.name}") from None
        except hql.HqlError as exc:
            # One grep-able line per gap; the client gets what a real server answers for
            # HQL it cannot parse.
            log.info("HQL not supported by the emulator: %s (%s)", " ".join(text.split()),
                     exc)
            raise illegal_query(text, f"The emulator does not support this query: {exc}"
                                ) from None
        rows = result.rows
        if owner is not None:
            rows = [r for r in rows if not isinstance(r[0], hql.View)
                    or r[0].obj is None or r[0].obj.owner_id == owner]
        if offset or limit is not None:
            if result.collection_fetch:
                # Hibernate pages a collection fetch in memory over distinct roots
                # ("firstResult/maxResults specified with collection fetch").
                rows = _distinct_roots(rows)
            rows = rows[offset: None if limit is None else offset + limit]
        result.rows = rows
        return result

    def hql_rows(self, text: str, params: Any, current: Ice.Current) -> list[list[Any]]:
        return self.hql_result(text, params, current).rows


def _model_values(models: hql.Models, value: Any) -> Any:
    """Views as model objects, also inside a ``new map(…)``."""
    if isinstance(value, dict):
        return {k: _model_values(models, v) for k, v in value.items()}
    return models.value(value)


def _distinct_roots(rows: list[list[Any]]) -> list[list[Any]]:
    out: list[list[Any]] = []
    seen: set[Any] = set()
    for row in rows:
        key = row[0].key if isinstance(row[0], hql.View) else id(row)
        if key not in seen:
            seen.add(key)
            out.append(row)
    return out


@servant(omero.api.IQuery)
class QueryI(QueryMixin):
    """IQuery over the emulator's store (ome.logic.QueryImpl's rules)."""

    def _objects(self, query: str, params: Any, current: Ice.Current) -> list[Any]:
        result = self.hql_result(query, params, current)
        return hql.objects(result.rows, hql.Models(result.fetched))

    def findByQuery(self, query: str, params: Any, current: Ice.Current) -> Any:
        result = self.hql_result(query, params, current)
        if not _unique(result.rows):
            raise non_unique(query)
        found = hql.objects(result.rows, hql.Models(result.fetched))
        return found[0] if found else None

    def findAllByQuery(self, query: str, params: Any, current: Ice.Current) -> list[Any]:
        return self._objects(query, params, current)

    def projection(self, query: str, params: Any, current: Ice.Current) -> list[list[Any]]:
        result = self.hql_result(query, params, current)
        models = hql.Models(result.fetched)
        out = []
        for row in result.rows:
            if len(row) == 1 and isinstance(row[0], dict):
                # ome.logic.QueryImpl.projection: in a row that is one map, an entity
                # under a key ending "_details_permissions" is replaced by its
                # permissions as the caller sees them (canEdit, canLink, …).
                row = [{key: result.graph.permissions_of(v)
                        if key.endswith("_details_permissions") and isinstance(v, hql.View)
                        else v for key, v in row[0].items()}]
            out.append([_rtype(_model_values(models, v)) for v in row])
        return out

    def _by_id(self, klass: str, object_id: int, current: Ice.Current) -> Any:
        cls = klass.rsplit(".", 1)[-1]
        if cls.endswith("I") and cls[:-1] in hql.LINKS | {"Image": 0}:
            cls = cls[:-1]
        params = omero.sys.Parameters()
        params.map = {"id": rlong(object_id)}
        found = self._objects(f"select o from {cls} o where o.id = :id", params, current)
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
        return self._objects(f"select o from {cls} o order by o.id", params, current)

    def findByString(self, klass: str, field: str, value: str, current: Ice.Current) -> Any:
        params = omero.sys.Parameters()
        params.map = {"v": rstring(value)}
        cls = klass.rsplit(".", 1)[-1]
        found = self._objects(f"select o from {cls} o where o.{field} = :v", params, current)
        if len(found) > 1:
            raise non_unique("findByString")
        return found[0] if found else None

    def findAllByString(self, klass: str, field: str, value: str, case_sensitive: bool,
                        flt: Any, current: Ice.Current) -> list[Any]:
        params = omero.sys.Parameters()
        # QueryImpl matches anywhere in the value (MatchMode.ANYWHERE).
        params.map = {"v": rstring(f"%{value}%")}
        params.theFilter = flt
        cls = klass.rsplit(".", 1)[-1]
        op = "like" if case_sensitive else "ilike"
        return self._objects(f"select o from {cls} o where o.{field} {op} :v", params,
                             current)

    def refresh(self, obj: Any, current: Ice.Current) -> Any:
        return self.get(type(obj).__name__, obj.id.val, current)
