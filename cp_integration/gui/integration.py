"""What ``gui.install()`` wires into CellProfiler's window (imported only where wx is).

Runs while CellProfiler loads its plugins, before the main window exists: the menu
entries must be in ``PLUGIN_MENU_ENTRIES`` by then (the window reads them once, when
it is built); everything that needs the window waits for the main loop
(``wx.CallAfter``).
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import wx

from cellprofiler_omero.core import refs, runtime
from cellprofiler_omero.core.errors import AuthError
from cellprofiler_omero.core.hookspecs import hookimpl
from cellprofiler_omero.core.roles import SessionInfo
from cellprofiler_omero.cp_integration import session
from cellprofiler_omero.cp_integration.gui import bridge, browser, connect

log = logging.getLogger(__name__)

#: (key, label, tooltip) of the Plugins menu entries, in menu order.
MENU: tuple[tuple[str, str, str], ...] = (
    ("connect", "Connect to OMERO",
     "Log in with your saved token for the server, or with a password when there is none."),
    ("connect_no_token", "Connect to OMERO (no token)",
     "Log in with a user name and password: to switch server or user."),
    ("browse", "Browse OMERO for images",
     "Browse your groups, projects, datasets, screens and plates, and add images to the "
     "file list."),
    ("disconnect", "Disconnect from OMERO", "End the OMERO session."),
)
#: The wx ids of the menu entries by key (tests post menu events with them).
menu_ids: dict[str, Any] = {}
#: The modules that write to OMERO: a pipeline with one of them needs a session to run.
OMERO_MODULES = {"SaveImagesToOMERO", "ExportToOMEROTable"}
#: After the user cancels the login a reader asked for, further readers fail quietly
#: for this long instead of asking again for every image.
DECLINED_QUIET_SECONDS = 30.0

_installed = False
_login_lock = threading.Lock()
_declined_at = -1e9
_drop_target: Any = None


def install() -> None:
    """Menu entries, hooks and (once the window exists) title, drop target and quit."""
    global _installed
    if _installed:
        return
    _installed = True
    from cellprofiler.gui.plugins_menu import PLUGIN_MENU_ENTRIES

    callbacks: dict[str, Callable[[Any], None]] = {
        "connect": on_connect, "connect_no_token": on_connect_no_token,
        "browse": on_browse, "disconnect": on_disconnect}
    for key, label, tooltip in MENU:
        menu_ids[key] = wx.NewIdRef()
        PLUGIN_MENU_ENTRIES.append((callbacks[key], menu_ids[key], label, tooltip))
    _install_prepare_run()
    _observe()
    if wx.GetApp() is not None:
        wx.CallAfter(attach_to_frame)


# -- menu ----------------------------------------------------------------------------------------

def on_connect(event: Any = None) -> None:
    """Plugins ▸ Connect to OMERO."""
    connect.connect(use_token=True)


def on_connect_no_token(event: Any = None) -> None:
    """Plugins ▸ Connect to OMERO (no token)."""
    connect.open_dialog()


def on_browse(event: Any = None) -> None:
    """Plugins ▸ Browse OMERO for images (connecting first when needed)."""
    if connect.manager().connected:
        browser.open_browser()
        return
    def then(ok: bool) -> None:
        if ok:
            browser.open_browser()

    connect.connect(use_token=True, then=then)


def on_disconnect(event: Any = None) -> None:
    """Plugins ▸ Disconnect from OMERO."""
    if not connect.manager().connected:
        wx.MessageBox("CellProfiler is not connected to OMERO.", "Disconnect from OMERO",
                      wx.ICON_INFORMATION, connect.main_frame())
        return
    connect.disconnect()


# -- the main window -------------------------------------------------------------------------

def attach_to_frame(attempts: int = 50) -> None:
    """Hook the window title, the file list's drop target and quitting (once it exists)."""
    frame = connect.main_frame()
    controller = getattr(frame, "pipeline_controller", None)
    if frame is None or controller is None:
        if attempts > 0:
            wx.CallLater(200, attach_to_frame, attempts - 1)
        return
    if getattr(controller, "_cellprofiler_omero", False):
        return
    controller._cellprofiler_omero = True

    set_title = controller.set_title

    def titled() -> None:
        set_title()
        info = connect.manager().info
        if info is not None:
            frame.SetTitle(f"{frame.GetTitle()} — OMERO: {info.user}@{info.server}")

    controller.set_title = titled

    on_close = controller.on_close

    def closing() -> None:
        try:
            on_close()
        finally:
            end_session("quit")

    controller.on_close = closing
    _install_drop_target(frame, controller)
    update_status()


def _install_drop_target(frame: Any, controller: Any) -> None:
    global _drop_target
    from cellprofiler.gui.pathlist import PathListCtrl

    found = _find(frame, PathListCtrl)
    if found is None:
        log.info("the file list was not found; dropping OMERO links will not work")
        return
    _drop_target = browser.FileListDropTarget(controller)
    found.SetDropTarget(_drop_target)


def _find(window: Any, kind: type) -> Any | None:
    for child in window.GetChildren():
        if isinstance(child, kind):
            return child
        hit = _find(child, kind)
        if hit is not None:
            return hit
    return None


def update_status() -> None:
    """Refresh the window title (and the browser's status) after a session change."""
    frame = connect.main_frame()
    controller = getattr(frame, "pipeline_controller", None)
    if controller is not None:
        controller.set_title()
    open_browser = browser.current_browser()
    if open_browser is not None:
        open_browser.update_connection()


def end_session(reason: str) -> None:
    """Close the browser and end the session (blocking, bounded): CellProfiler is quitting."""
    browser.close_browser()
    mgr = connect.manager()
    if mgr.connected:
        try:
            runtime.portal().start_task_soon(mgr.close, reason).result(timeout=20)
        except Exception as exc:  # quitting must go on whatever the server does
            log.warning("closing the OMERO session failed: %s", exc)
    connect.unpublish()


class GuiPlugin:
    """The GUI's part in the session manager's plugin registry.

    Follows session changes (title, browser, the "connected by token" message) and
    answers readers that need a login with the Connect dialog.
    """

    @hookimpl
    def omero_session_changed(self, old: SessionInfo | None, new: SessionInfo | None,
                              reason: str) -> None:
        # On the event loop's thread: everything that touches a window is posted.
        bridge.after(_session_changed, old, new)
        if new is not None and session.is_token_login(new, reason):
            bridge.after(connect.show_token_message, new)

    @hookimpl
    def omero_login_needed(self, image: refs.ObjectRef, error: AuthError) -> bool | None:
        # On the reader's thread (a worker thread or the GUI thread), never the loop's.
        return login_for(image, error)


#: The name ``GuiPlugin`` is registered under.
PLUGIN_NAME = "cellprofiler-omero-gui"


def _session_changed(old: SessionInfo | None, new: SessionInfo | None) -> None:
    update_status()
    open_browser = browser.current_browser()
    if open_browser is not None and new is not None and \
            (old is None or old.server != new.server or old.user != new.user):
        open_browser.reload()


def _observe() -> None:
    try:
        registry = connect.manager().registry
    except Exception as exc:  # e.g. a broken settings file: the menu says so when used
        log.warning("cellprofiler-omero: cannot follow the OMERO session: %s", exc)
        return
    if registry.pm.get_plugin(PLUGIN_NAME) is None:
        registry.register(GuiPlugin(), PLUGIN_NAME)


# -- logging in when a pipeline needs it -------------------------------------------------------

def login_for(ref: refs.ObjectRef, error: AuthError) -> bool:
    """Ask the user to log in for ``ref`` (any thread); True when connected afterwards."""
    log.info("reading %s needs a login: %s", ref, error)
    global _declined_at
    on_main = wx.IsMainThread()
    # Worker threads queue up here so only one dialog shows; the main thread never waits
    # for them (one of them may be waiting for the main thread to show the dialog).
    if not on_main:
        _login_lock.acquire()
    try:
        mgr = connect.manager()
        if mgr.info is not None and mgr.info.server.same_host(ref.host):
            return True  # another thread logged in meanwhile
        if time.monotonic() - _declined_at < DECLINED_QUIET_SECONDS:
            return False
        where = f" on {ref.host}" if ref.host else ""
        why = (f"To read image {ref.id}{where}, CellProfiler needs an OMERO session: "
               "log in to continue.")
        try:
            ok = bridge.on_gui_thread(lambda: connect.ensure_connected(ref.host, ref.port,
                                                                       why=why))
        except TimeoutError:
            return False
        if not ok:
            _declined_at = time.monotonic()
        return ok
    finally:
        if not on_main:
            _login_lock.release()


def omero_host_needed(pipeline: Any) -> tuple[bool, str | None]:
    """Whether ``pipeline`` needs OMERO (its file list or modules), and which host if known."""
    for entry in getattr(pipeline, "file_list", None) or ():
        url = getattr(entry, "url", entry)  # CellProfiler's file list holds ImageFiles
        if isinstance(url, str) and url.startswith(("omero:", "http:", "https:")):
            try:
                ref = refs.parse_image(url)
            except ValueError:
                continue
            return True, ref.host
    modules = pipeline.modules() if hasattr(pipeline, "modules") else []
    if any(getattr(m, "module_name", "") in OMERO_MODULES for m in modules):
        return True, None
    return False, None


def _install_prepare_run() -> None:
    """Before a run (not an image-set refresh) of a pipeline that needs OMERO, log in.

    Analysis workers cannot ask for a password, so the GUI logs in first (token or
    dialog); the session then reaches the workers through the hand-off file.
    """
    from cellprofiler_core.pipeline import Pipeline

    original: Callable[..., Any] = Pipeline.prepare_run
    if getattr(original, "_cellprofiler_omero_gui", False):
        return

    @functools.wraps(original)
    def prepare_run(self: Any, workspace: Any, end_module: Any = None) -> Any:
        if end_module is None and wx.GetApp() is not None and wx.IsMainThread():
            needed, host = omero_host_needed(self)
            if needed and not connect.ensure_connected(
                    host, why="This pipeline uses OMERO: log in to continue."):
                return False
        return original(self, workspace, end_module)

    prepare_run._cellprofiler_omero_gui = True  # type: ignore[attr-defined]
    Pipeline.prepare_run = prepare_run
