"""The process's OMERO session as CellProfiler uses it.

Settings come from cellprofiler-omero's own configuration, overridden by the OMERO
reader's settings in CellProfiler's File ▸ Configure Readers (``Reader.OMERO.*``),
which CellProfiler also hands to its analysis workers. Once connected, the session
is exported to child processes (analysis workers) through a private hand-off file.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from cellprofiler_omero.core import session as core_session
from cellprofiler_omero.core.config import load_settings
from cellprofiler_omero.core.roles import SessionInfo
from cellprofiler_omero.core.session import SessionManager

log = logging.getLogger(__name__)

READER_NAME = "OMERO"

#: (key, label, description, type, default) as CellProfiler's reader settings expect.
READER_SETTINGS: list[tuple[str, str, str, type, Any]] = [
    ("use_tokens", "Use OMERO tokens",
     "Log in with a saved omero-user-token for the server when there is one "
     "(Plugins ▸ Connect to OMERO ▸ Set Token, or `cellprofiler-omero login --save-token`).",
     bool, True),
    ("show_token_message", "Say when connected by token",
     "Show (in the GUI) or log (headless) a message naming the server when CellProfiler "
     "connects with a saved token. Untick for 'do not show again'.", bool, True),
    ("transports", "Transports for reading",
     "Comma-separated transports to read pixels with, tried in order, e.g. "
     "'pixelbuffer, ice'. Leave as 'ice' unless your server runs omero-ms-pixel-buffer.",
     str, "ice"),
]

#: Called with the session info when a token logs in and the message is wanted (GUI sets it).
token_message_hook: Callable[[SessionInfo], None] | None = None


def reader_setting(key: str) -> Any:
    """The value of ``Reader.OMERO.<key>`` in CellProfiler's configuration (or its default)."""
    default = next(d for k, _, _, _, d in READER_SETTINGS if k == key)
    kind = next(t for k, _, _, t, _ in READER_SETTINGS if k == key)
    try:
        from cellprofiler_core.preferences import config_read_typed

        value = config_read_typed(f"Reader.{READER_NAME}.{key}", kind)
    except Exception:  # no CellProfiler configuration in this process
        return default
    return default if value is None else value


def _overrides() -> dict[str, Any]:
    transports = [t.strip() for t in str(reader_setting("transports")).split(",") if t.strip()]
    out: dict[str, Any] = {"auth.use_token": bool(reader_setting("use_tokens")),
                           "auth.show_token_message": bool(reader_setting("show_token_message"))}
    if transports:
        out["transports.read"] = transports
    return out


def _on_token_login(info: SessionInfo) -> None:
    if not reader_setting("show_token_message"):
        return
    if token_message_hook is not None:
        token_message_hook(info)
    else:
        log.info("Connected to OMERO server %s as %s using a saved token.", info.server.host,
                 info.user)


def manager() -> SessionManager:
    """The process-wide session manager, created with CellProfiler's reader settings."""
    current = core_session._manager
    if current is None:
        settings = load_settings(_overrides())
        current = SessionManager(settings)
        current.on_token_login = _on_token_login
        core_session.set_manager(current)
        from cellprofiler_omero.core import runtime

        runtime.on_shutdown(current.close)
    return current


def after_connect(mgr: SessionManager) -> None:
    """Make the session available to analysis workers started from now on."""
    try:
        mgr.export_for_workers()
    except OSError as exc:
        log.warning("could not hand the OMERO session to workers: %s", exc.strerror)
