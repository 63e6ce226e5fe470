"""RawFileStore: read and write the bytes of OriginalFiles (attachments, tables)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import Ice
import omero
import omero.api

from cellprofiler_omero.emulator import modelmap
from cellprofiler_omero.emulator.icebase import api_usage, security_violation, servant
from cellprofiler_omero.emulator.services.common import StatefulServant
from cellprofiler_omero.emulator.store import Obj


@servant(omero.api.RawFileStore)
class RawFileStoreI(StatefulServant):
    """RawFileStore over ``DATA/files/<id>`` (tables keep their HDF5 file there too)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.file: Obj | None = None

    def _path(self) -> Path:
        if self.file is None:
            raise api_usage("Call setFileId first.")
        return self.ctx.file_path(self.file.id)

    def setFileId(self, file_id: int, current: Ice.Current) -> None:
        caller = self.caller(current)
        obj = self.ctx.store.get(file_id, "OriginalFile")
        if obj is None:
            raise api_usage(f"OriginalFile:{file_id} does not exist.")
        if not self.visible(caller, obj):
            raise security_violation(f"Cannot read OriginalFile:{file_id}.")
        self.file = obj

    def getFileId(self, current: Ice.Current) -> Any:
        return omero.rtypes.rlong(self.file.id) if self.file else None

    def read(self, position: int, length: int, current: Ice.Current) -> bytes:
        with self._path().open("rb") as handle:
            handle.seek(position)
            return handle.read(length)

    def size(self, current: Ice.Current) -> int:
        path = self._path()
        return path.stat().st_size if path.exists() else 0

    def exists(self, current: Ice.Current) -> bool:
        return self._path().exists()

    def _own(self, current: Ice.Current) -> None:
        caller = self.caller(current)
        assert self.file is not None
        if self.file.owner_id != caller.user.id and not caller.user.admin:
            raise security_violation("The file belongs to another user.")

    def write(self, buf: bytes, position: int, length: int, current: Ice.Current) -> None:
        self._own(current)
        path = self._path()
        mode = "r+b" if path.exists() else "wb"
        with path.open(mode) as handle:
            handle.seek(position)
            handle.write(buf[:length])

    def truncate(self, length: int, current: Ice.Current) -> bool:
        self._own(current)
        with self._path().open("r+b") as handle:
            handle.truncate(length)
        return True

    def save(self, current: Ice.Current) -> Any:
        caller = self.caller(current)
        assert self.file is not None
        path = self._path()
        data = dict(self.file.data)
        data["size"] = path.stat().st_size if path.exists() else 0
        data["hash"] = hashlib.sha1(path.read_bytes()).hexdigest() if path.exists() else ""
        self.file = self.ctx.store.update(self.file.id, data=data)
        return modelmap.to_model(self.ctx.store, caller.user, self.file)
