"""OMERO.tables, hosted with omero-py's own server-side implementation.

``SharedResources.newTable``/``openTable`` create or find the OriginalFile (mimetype
``OMERO.tables``) and serve it with ``omero.tables.TableI`` over
``omero.hdfstorageV2`` (PyTables), so tables are genuine OMERO.tables HDF5 files
with genuine semantics: fixed columns after ``initialize``, equal-length columns
per ``addData``, string sizes, reserved names.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any

import Ice
import omero
import omero.grid
import omero.hdfstorageV2
import omero.tables
from omero.rtypes import rlong, rstring

from cellprofiler_omero.emulator import modelmap
from cellprofiler_omero.emulator.icebase import (
    api_usage,
    counted,
    drop_reply,
    security_violation,
    servant,
)
from cellprofiler_omero.emulator.services.common import Caller, SessionServant

if TYPE_CHECKING:
    from cellprofiler_omero.emulator.server import Context

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


class _TableFileStore:
    """The RawFileStore that ``TableI.close`` uses to bring its OriginalFile up to date.

    omero-py's ``TableI`` closes a modified table by opening a RawFileStore on its
    OriginalFile, truncating it to the HDF5 file's size, writing nothing at that
    position and calling ``save``. On a real server ``RawFileBean.save`` then sets the
    file's size (and mtime) from disk, and its hash only when the OriginalFile has a
    hasher -- which the Tables service's ``newTable`` never sets. This store does the
    same against the emulator's store.
    """

    def __init__(self, ctx: Context, viewer: Any) -> None:
        self._ctx = ctx
        self._viewer = viewer
        self._file_id: int | None = None

    def _path(self) -> Path:
        if self._file_id is None:
            raise api_usage("Call setFileId first.")
        path: Path = self._ctx.file_path(self._file_id)
        return path

    def setFileId(self, file_id: int, ctx: Any = None) -> None:
        if self._ctx.store.get(file_id, "OriginalFile") is None:
            raise api_usage(f"OriginalFile:{file_id} does not exist.")
        self._file_id = file_id

    def truncate(self, length: int, ctx: Any = None) -> bool:
        path = self._path()
        if not path.exists() or path.stat().st_size <= length:
            return False
        with path.open("r+b") as handle:
            handle.truncate(length)
        return True

    def write(self, buf: Any, position: int, length: int, ctx: Any = None) -> None:
        if length:
            raise api_usage("The table's file store only records sizes.")

    def save(self, ctx: Any = None) -> Any:
        assert self._file_id is not None
        obj = self._ctx.store.get(self._file_id, "OriginalFile")
        assert obj is not None
        path = self._path()
        data = dict(obj.data)
        data["size"] = path.stat().st_size if path.exists() else 0
        if data.get("hash"):  # only a file that has a hasher gets its hash renewed
            data["hash"] = _sha1(path)
        obj = self._ctx.store.update(obj.id, data=data)
        return modelmap.to_model(self._ctx.store, self._viewer, obj)

    def close(self, ctx: Any = None) -> None:
        self._file_id = None


def _sha1(path: Path) -> str:
    digest = hashlib.sha1()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class _Factory:
    """Stands in for the ServiceFactory proxy that TableI asks about write permission
    and, when a modified table closes, for a RawFileStore."""

    def __init__(self, ctx: Context, caller: Caller, can_update: bool) -> None:
        self._ctx = ctx
        self._caller = caller
        self._identity = Ice.Identity(caller.session.uuid, "")
        self._admin = _Admin(can_update)

    def getAdminService(self) -> _Admin:
        return self._admin

    def createRawFileStore(self, ctx: Any = None) -> _TableFileStore:
        return _TableFileStore(self._ctx, self._caller.user)

    def ice_getIdentity(self) -> Ice.Identity:
        return self._identity


@counted(omero.grid.Table)
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
                                    _Factory(self.ctx, caller, can_update),
                                    omero.hdfstorageV2.HDFLIST, read_only=False,
                                    uuid=Ice.generateUUID(), call_context=current.ctx,
                                    adapter=current.adapter)
        # Added to the adapter directly (not through the locator): counted by @counted.
        table.emulator_ctx = self.ctx
        table.session_uuid = caller.session.uuid
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
