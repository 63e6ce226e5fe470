"""The process's OMERO session as CellProfiler uses it.

Settings, each layer overriding the ones after it: explicit arguments
(``settings(overrides)``) > the OMERO reader's settings in CellProfiler's File ▸
Configure Readers (``Reader.OMERO.*``) *that the user set* > environment variables >
the TOML settings file > defaults. A reader setting the user never set is absent from
CellProfiler's configuration (its dialog writes only what was changed), so the reader's
own defaults never hide the environment or the file: a headless cluster run can choose
``CELLPROFILER_OMERO_TRANSPORTS_READ=pixelbuffer,ice``. Analysis workers see the same
layers: CellProfiler hands them its preferences (only the values that are set,
``preferences_as_dict``), and they inherit the environment, so the file too.

Once connected, the session is exported to child processes (analysis workers) through
a private hand-off file. A worker joins it on first use (``SessionManager.connection``),
and that join is retried like every login, with backoff, within ``retry.budget_seconds``:
one dropped call while a worker logs in does not fail the run.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from cellprofiler_omero.core import session as core_session
from cellprofiler_omero.core.config import Settings, load_settings, load_settings_with_origins
from cellprofiler_omero.core.errors import AuthError, ConfigError
from cellprofiler_omero.core.hookspecs import hookimpl
from cellprofiler_omero.core.refs import ObjectRef
from cellprofiler_omero.core.roles import SessionInfo
from cellprofiler_omero.core.session import SessionManager

log = logging.getLogger(__name__)

READER_NAME = "OMERO"

#: Reader setting → the package setting it stands for.
READER_KEYS: dict[str, str] = {"use_tokens": "auth.use_token",
                               "show_token_message": "auth.show_token_message",
                               "transports": "transports.read"}


def _precedence_help(key: str, default: str) -> str:
    section, _, name = READER_KEYS[key].partition(".")
    env = f"CELLPROFILER_OMERO_{section.upper()}_{name.upper()}"
    return (f"\n\nWhich value counts: a value set here (analysis workers get it too) wins "
            f"over the environment variable ``{env}``, which wins over ``{name}`` in the "
            f"``[{section}]`` section of the settings file (``$CELLPROFILER_OMERO_CONFIG``, "
            f"else ``~/.config/cellprofiler-omero/config.toml``), which wins over the "
            f"default ({default}). Until you change it here, the value shown is the one "
            f"those give.")


#: (key, label, description, type, default) as CellProfiler's reader settings expect; the
#: defaults are the package's (``reader_settings()`` shows what applies instead).
READER_SETTINGS: list[tuple[str, str, str, type, Any]] = [
    ("use_tokens", "Use OMERO tokens",
     "Log in with a saved omero-user-token for the server when there is one "
     "(Plugins ▸ Connect to OMERO ▸ Set Token, or `cellprofiler-omero login --save-token`)."
     + _precedence_help("use_tokens", "on"),
     bool, True),
    ("show_token_message", "Say when connected by token",
     "Show (in the GUI) or log (headless) a message naming the server when CellProfiler "
     "connects with a saved token. Untick for 'do not show again'."
     + _precedence_help("show_token_message", "on"), bool, True),
    ("transports", "Transports for reading",
     "Comma-separated transports to read pixels with, tried in order, e.g. "
     "'pixelbuffer, ice'. Use 'ice' unless your server runs omero-ms-pixel-buffer."
     + _precedence_help("transports", "'ice'")
     + " Clear the field to hand the choice back to the environment and the settings file.",
     str, "ice"),
]

def user_reader_settings() -> dict[str, Any]:
    """The OMERO reader settings the user set in CellProfiler (its dialog, or the
    preferences CellProfiler handed to this analysis worker), by reader key. Settings
    left at their defaults are absent, and so is a transports field naming none."""
    try:
        from cellprofiler_core.preferences import config_read_typed
    except ImportError:  # CellProfiler is not installed: nothing can have been set
        return {}
    found: dict[str, Any] = {}
    for key, _, _, kind, _ in READER_SETTINGS:
        try:
            value = config_read_typed(f"Reader.{READER_NAME}.{key}", kind)
        except Exception:  # CellProfiler has no usable configuration in this process
            value = None
        if value is None or (kind is str and not str(value).replace(",", "").strip()):
            continue  # unset, or a text field cleared to hand the choice back
        found[key] = value
    return found


def _application_layer() -> dict[str, tuple[Any, str]]:
    """The user's reader settings as package settings, each naming where it came from."""
    layer: dict[str, tuple[Any, str]] = {}
    for key, value in user_reader_settings().items():
        if key == "transports":
            value = [name.strip() for name in str(value).split(",") if name.strip()]
        layer[READER_KEYS[key]] = (value, f"CellProfiler's reader setting "
                                          f"Reader.{READER_NAME}.{key}")
    return layer


def settings_with_origins(overrides: Mapping[str, Any] | None = None
                          ) -> tuple[Settings, dict[str, str]]:
    """``settings(overrides)`` plus where each non-default value came from."""
    return load_settings_with_origins(overrides, application=_application_layer())


def settings(overrides: Mapping[str, Any] | None = None) -> Settings:
    """The package settings in CellProfiler: ``overrides`` > the reader settings the user
    set > environment > settings file > defaults."""
    return settings_with_origins(overrides)[0]


def _reader_value(current: Settings, key: str) -> Any:
    if key == "use_tokens":
        return current.auth.use_token
    if key == "show_token_message":
        return current.auth.show_token_message
    if key == "transports":
        return ", ".join(current.transports.read)
    raise KeyError(f"no OMERO reader setting {key!r}")


def reader_setting(key: str) -> Any:
    """The value in effect for the reader setting ``key`` (``Reader.OMERO.<key>``): the
    user's when set in CellProfiler, else what the environment, the settings file or the
    defaults give."""
    return _reader_value(settings(), key)


def reader_settings() -> list[tuple[str, str, str, type, Any]]:
    """``READER_SETTINGS`` with each default replaced by the value that applies while the
    user has not set it (environment, settings file, defaults), so File ▸ Configure
    Readers shows what a run will use."""
    try:
        base = load_settings()
    except ConfigError as exc:  # the session reports a broken file when it starts
        log.debug("showing the package defaults as reader defaults: %s", exc)
        return list(READER_SETTINGS)
    return [(key, label, text, kind, _reader_value(base, key))
            for key, label, text, kind, _ in READER_SETTINGS]


def is_token_login(new: SessionInfo | None, reason: str) -> bool:
    """Whether an ``omero_session_changed`` call is a login by saved token that the user
    should hear about: a new connection (not a silent renewal) by token, with the
    ``show_token_message`` setting on."""
    return (new is not None and new.source == "token" and reason == "connect"
            and bool(reader_setting("show_token_message")))


class TokenMessageLog:
    """The "connected by token" message where no window shows it: one log line.

    Registered with every session manager this module makes; the GUI registers its own
    observer, which shows the message in a window as well.
    """

    @hookimpl
    def omero_session_changed(self, old: SessionInfo | None, new: SessionInfo | None,
                              reason: str) -> None:
        if new is not None and is_token_login(new, reason):
            log.info("Connected to OMERO server %s as %s using a saved token.",
                     new.server.host, new.user)


#: The plugin name of ``TokenMessageLog`` in the session manager's registry.
TOKEN_MESSAGE_PLUGIN = "cellprofiler-omero-token-message"


def login_needed(image: ObjectRef, error: AuthError) -> bool:
    """Ask the registered plugins (``omero_login_needed``) whether reading ``image``
    may be tried again after ``error``; False when no plugin answers (headless)."""
    answer = manager().registry.hook.omero_login_needed(image=image, error=error)
    return bool(answer)


def manager() -> SessionManager:
    """The process-wide session manager, created with CellProfiler's reader settings."""
    current = core_session._manager
    if current is None:
        chosen, origins = settings_with_origins()
        # One line saying which layer chose the read transports: what a cluster user
        # needs to see when a run does not read the way they expected.
        log.info("OMERO read transports: %s (from %s)", ", ".join(chosen.transports.read),
                 origins.get("transports.read", "the default"))
        current = SessionManager(chosen)
        current.registry.register(TokenMessageLog(), TOKEN_MESSAGE_PLUGIN)
        from cellprofiler_omero.cp_integration.events import (
            EVENTS_PLUGIN,
            event_log_from_environment,
        )

        events = event_log_from_environment()  # $CELLPROFILER_OMERO_EVENTS_FILE
        if events is not None:
            current.registry.register(events, EVENTS_PLUGIN)
        core_session.set_manager(current)
        from cellprofiler_omero.core import runtime

        runtime.on_shutdown(current.close)
    return current


def _is_cellprofiler_command(argv: list[str]) -> bool:
    """Whether this process is CellProfiler's own command (``cellprofiler …`` or
    ``python -m cellprofiler …``), not an analysis worker, a test run or a library user."""
    if not argv:
        return False
    path = Path(argv[0])
    return path.name == "cellprofiler" or (path.name == "__main__.py"
                                           and path.parent.name == "cellprofiler")


def connect_early() -> bool:
    """Join the session a parent process lent this one (``core.handoff``) in the
    background, while CellProfiler is still loading the pipeline; whether it started.

    Only in a headless run of CellProfiler's command that was handed a session: then
    the session will be used (the parent lent it for this run) and joining asks nobody
    for anything. Joining costs a few dozen round trips plus loading omero-py and Ice,
    about a second at 20 ms per round trip, which would otherwise come after the
    pipeline is loaded, before its first module. A failure is only logged: the first
    read connects again and reports it.
    """
    import os
    import sys

    from cellprofiler_omero.core.handoff import HANDOFF_ENV

    if not os.environ.get(HANDOFF_ENV) or not _is_cellprofiler_command(sys.argv):
        return False
    try:
        from cellprofiler_core.preferences import get_headless
    except ImportError:
        return False
    if not get_headless():
        return False  # the GUI: the user connects (Plugins ▸ Connect to OMERO)
    from cellprofiler_omero.core import runtime

    mgr = manager()

    async def join() -> None:
        try:
            await mgr.connect()
        except Exception as exc:
            log.debug("joining the handed-over OMERO session early failed: %s", exc)
            return
        after_connect(mgr)

    runtime.portal().start_task_soon(join)
    return True


def after_connect(mgr: SessionManager) -> None:
    """Make the session available to analysis workers started from now on."""
    try:
        mgr.export_for_workers()
    except OSError as exc:
        log.warning("could not hand the OMERO session to workers: %s", exc.strerror)
