"""OMERO.tables, hosted with omero-py's own server-side implementation.

``SharedResources.newTable``/``openTable`` create or find the OriginalFile (mimetype
``OMERO.tables``) and serve it with ``omero.tables.TableI`` over
``omero.hdfstorageV2`` (PyTables), so tables are genuine OMERO.tables HDF5 files
with genuine semantics: fixed columns after ``initialize``, equal-length columns
per ``addData``, string sizes, reserved names.
"""

from __future__ import annotations

import logging
import threading
from typing import Any

import Ice
import omero
import omero.grid
import omero.hdfstorageV2
import omero.tables
from omero.rtypes import rlong, rstring

from cellprofiler_omero.emulator import modelmap
from cellprofiler_omero.emulator.icebase import (
    api_usage,
    drop_reply,
    security_violation,
    servant,
)
from cellprofiler_omero.emulator.services.common import Caller, SessionServant

log = logging.getLogger(__name__)


class _TablesContext:
    """What ``omero.util.SimpleServant`` reads from its server context."""

    def __init__(self, communicator: Any) -> None:
        self.communicator = communicator
        self.stop_event = threading.Event()

    def getSession(self) -> Any:
        raise api_usage("The emulator's tables need no internal session.")


class _Admin:
    def __init__(self, can_update: bool) -> None:
        self._can_update = can_update

    def canUpdate(self, file_obj: Any, ctx: Any = None) -> bool:
        return self._can_update


class _Factory:
    """Stands in for the ServiceFactory proxy that TableI asks about write permission."""

    def __init__(self, session_uuid: str, can_update: bool) -> None:
        self._identity = Ice.Identity(session_uuid, "")
        self._admin = _Admin(can_update)

    def getAdminService(self) -> _Admin:
        return self._admin

    def ice_getIdentity(self) -> Ice.Identity:
        return self._identity


class _FaultyTable(omero.tables.TableI):
    """omero-py's TableI, passing the emulator's fault injector on writes and reads."""

    def __init__(self, faults: Any, *args: Any, **kwargs: Any) -> None:
        self._faults = faults
        super().__init__(*args, **kwargs)

    def _fault(self, op: str, current: Any) -> bool:
        delay = self._faults.ice_latency(op)
        if delay:
            import time

            time.sleep(delay)
        if not self._faults.ice_drop(op):
            return False
        if self._faults.settings.drop_after_reply:
            return True
        drop_reply(current)
        return False

    def addData(self, cols: Any, current: Any = None) -> None:
        lose = self._fault("addData", current)
        super().addData(cols, current)
        if lose:
            drop_reply(current)

    def getNumberOfRows(self, current: Any = None) -> int:
        lose = self._fault("getNumberOfRows", current)
        rows: int = super().getNumberOfRows(current)
        if lose:
            drop_reply(current)
        return rows


@servant(omero.grid.SharedResources)
class SharedResourcesI(SessionServant):
    """Tables only: no processors, no script repository."""

    def areTablesEnabled(self, current: Ice.Current) -> bool:
        return True

    def repositories(self, current: Ice.Current) -> Any:
        repo = omero.model.OriginalFileI(rlong(1), True)
        repo.name = rstring("ManagedRepository")
        repo.path = rstring("/")
        return omero.grid.RepositoryMap(descriptions=[repo], proxies=[None])

    def _serve(self, caller: Caller, file_id: int, current: Ice.Current) -> Any:
        store = self.ctx.store
        obj = store.get(file_id, "OriginalFile")
        assert obj is not None
        can_update = caller.user.admin or obj.owner_id == caller.user.id
        model = modelmap.to_model(store, caller.user, obj)
        path = self.ctx.file_path(file_id)
        communicator = current.adapter.getCommunicator()
        table = _FaultyTable(self.ctx.faults, _TablesContext(communicator), model, str(path),
                                    _Factory(caller.session.uuid, can_update),
                                    omero.hdfstorageV2.HDFLIST, read_only=False,
                                    uuid=Ice.generateUUID(), call_context=current.ctx,
                                    adapter=current.adapter)
        prx = current.adapter.add(table, table.id)
        return omero.grid.TablePrx.uncheckedCast(prx)

    def newTable(self, repo_id: int, path: str, current: Ice.Current) -> Any:
        caller = self.caller(current)
        if not path:
            raise api_usage("A table needs a name.")
        folder, _, name = path.rpartition("/")
        obj = self.ctx.store.create(
            "OriginalFile", name, caller.user.id, self.write_group(caller),
            data={"path": folder + "/" if folder else "/", "mimetype": "OMERO.tables",
                  "size": 0, "hash": ""})
        return self._serve(caller, obj.id, current)

    def openTable(self, file_obj: Any, current: Ice.Current) -> Any:
        caller = self.caller(current)
        if file_obj is None or file_obj.id is None:
            raise api_usage("openTable needs an OriginalFile with an id.")
        file_id = file_obj.id.val
        obj = self.ctx.store.get(file_id, "OriginalFile")
        if obj is None:
            raise api_usage(f"OriginalFile:{file_id} does not exist.")
        if not self.visible(caller, obj):
            raise security_violation(f"Cannot read OriginalFile:{file_id}.")
        if obj.data.get("mimetype") != "OMERO.tables":
            raise api_usage(f"OriginalFile:{file_id} is not an OMERO.table.")
        return self._serve(caller, file_id, current)
