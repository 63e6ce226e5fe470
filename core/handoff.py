"""The worker hand-off: a parent process lends its session to the processes it starts.

CellProfiler starts analysis workers that copy the parent's environment, so the
parent writes its session (host, Ice port, key) to a file only its user can read and
names the file in ``CELLPROFILER_OMERO_SESSION_FILE``. A child finds the variable,
reads the file and joins the same session (``core.session`` does, before trying a
saved token). The file is JSON: ``{"host": ..., "port": ..., "key": ...}``.

A file that others can read is ignored (with a warning): it may have been left or
planted by someone else, and a key is a password.
"""

from __future__ import annotations

import json
import logging
import os
import stat
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cellprofiler_omero.core.roles import ServerAddress

log = logging.getLogger(__name__)

#: The environment variable naming the hand-off file.
HANDOFF_ENV = "CELLPROFILER_OMERO_SESSION_FILE"


@dataclass(frozen=True)
class Handoff:
    """A session handed over by a parent process: where, and its key (not in ``repr``)."""

    address: ServerAddress
    key: str = field(repr=False)


def read_handoff(environ: Mapping[str, str] | None = None) -> Handoff | None:
    """The session a parent handed over, or ``None`` when there is none or it is unusable.

    ``environ`` defaults to ``os.environ``. A file readable by group or others, missing,
    or not holding host, port and key is ignored.
    """
    path = (os.environ if environ is None else environ).get(HANDOFF_ENV)
    if not path:
        return None
    try:
        st = os.stat(path)
        if st.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            log.warning("ignoring session hand-off %s: it is readable by others", path)
            return None
        data = json.loads(Path(path).read_text())
        return Handoff(ServerAddress(str(data["host"]), int(data["port"])), str(data["key"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


class HandoffFile:
    """The hand-off file one process writes for its children (at most one per owner)."""

    def __init__(self) -> None:
        self.path: Path | None = None

    def write(self, handoff: Handoff) -> dict[str, str]:
        """Write ``handoff`` to the (0600) file, name it in ``os.environ`` and return
        the environment a child needs. The same file is rewritten on later calls."""
        if self.path is None:
            fd, name = tempfile.mkstemp(prefix="cellprofiler-omero-", suffix=".session")
            # mkstemp makes the file 0600 already; say so explicitly, as readers insist.
            os.fchmod(fd, stat.S_IRUSR | stat.S_IWUSR)
            os.close(fd)
            self.path = Path(name)
        payload = {"host": handoff.address.host, "port": handoff.address.port,
                   "key": handoff.key}
        self.path.write_text(json.dumps(payload))
        os.environ[HANDOFF_ENV] = str(self.path)
        return {HANDOFF_ENV: str(self.path)}

    def remove(self) -> None:
        """Delete the file and its environment entry (idempotent)."""
        if self.path is None:
            return
        self.path.unlink(missing_ok=True)
        if os.environ.get(HANDOFF_ENV) == str(self.path):
            del os.environ[HANDOFF_ENV]
        self.path = None
