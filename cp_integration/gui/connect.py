"""Logging in from CellProfiler's window: the Connect dialog, tokens and the token message.

Three ways in, one dialog:

* *Plugins ▸ Connect to OMERO* joins with the saved omero-user-token when there is one
  for a server (and "Use OMERO tokens" is on), else opens the dialog;
* *Plugins ▸ Connect to OMERO (no token)* always opens the dialog (to switch server or
  user);
* a pipeline that needs OMERO while nothing is connected opens it by itself
  (``ensure_connected``, called on the GUI thread).

The dialog stays open on failure with the reason in red (wrong password, unreachable
server, certificate problem), and after success offers *Set Token*.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from typing import Any

import wx

from cellprofiler_omero.core import runtime, tokens
from cellprofiler_omero.core.errors import OmeroError
from cellprofiler_omero.core.roles import SessionInfo
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.cp_integration import session
from cellprofiler_omero.cp_integration.gui import bridge
from cellprofiler_omero.cp_integration.gui.source import error_text

log = logging.getLogger(__name__)

DIALOG_TITLE = "Connect to OMERO"
TOKEN_MESSAGE_TITLE = "Connected to OMERO"
TOKEN_WARNING = ("Never save a token on a shared account: whoever uses this account "
                 "is logged in to OMERO as you.")
DEFAULT_PORT = 4064
STATUS_WIDTH = 440

# Where the dialog remembers the last server and user (CellProfiler's own configuration).
_LAST = {"host": ("Reader.OMERO.last_server", str), "port": ("Reader.OMERO.last_port", int),
         "user": ("Reader.OMERO.last_user", str)}
# Analysis workers resolve links that carry no Ice port to this default server; the GUI
# points it at the server it connected to (the hand-off names the same one).
_ENV_HOST, _ENV_PORT = "CELLPROFILER_OMERO_SERVER_HOST", "CELLPROFILER_OMERO_SERVER_PORT"
_saved_env: dict[str, str | None] = {}

_RED, _GREEN = wx.Colour(176, 0, 0), wx.Colour(0, 110, 0)


# -- state shared by every way of connecting -------------------------------------------------

def manager() -> SessionManager:
    """The process's session manager (created with the OMERO reader's settings)."""
    return session.manager()


def main_frame() -> Any | None:
    """CellProfiler's main window, or ``None`` before it exists."""
    app = wx.GetApp()
    if app is None:
        return None
    return getattr(app, "frame", None) or app.GetTopWindow()


def _config(key: str, kind: type) -> Any:
    try:
        from cellprofiler_core.preferences import config_read_typed

        return config_read_typed(key, kind)
    except Exception:  # no configuration (tests without CellProfiler's preferences)
        return None


def _config_write(key: str, value: Any, kind: type) -> None:
    try:
        from cellprofiler_core.preferences import config_write_typed

        config_write_typed(key, value, kind)
    except Exception as exc:  # remembering is a convenience; never fail a login on it
        log.debug("could not write %s: %s", key, exc)


def remembered() -> tuple[str, int, str]:
    """Server, port and user to offer: the last ones used, else the configured server."""
    settings = manager().settings
    host = _config(*_LAST["host"]) or settings.server.host or ""
    port = _config(*_LAST["port"]) or settings.server.port or DEFAULT_PORT
    user = _config(*_LAST["user"]) or ""
    return str(host), int(port), str(user)


def publish(mgr: SessionManager) -> None:
    """Hand the session to analysis workers started from now on, and remember the server."""
    session.after_connect(mgr)
    info = mgr.info
    if info is None:
        return
    for name, value in ((_ENV_HOST, info.server.host), (_ENV_PORT, str(info.server.port))):
        _saved_env.setdefault(name, os.environ.get(name))
        os.environ[name] = value


def unpublish() -> None:
    """Undo ``publish`` (the hand-off file itself is removed by ``SessionManager.close``)."""
    for name, value in list(_saved_env.items()):
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _saved_env.clear()


def saved_token(host: str | None = None) -> tokens.Token | None:
    """The saved token (for ``host`` when given), when tokens are in use."""
    if not session.reader_setting("use_tokens"):
        return None
    try:
        token = tokens.read_token(manager().settings.auth.token_dir)
    except OmeroError as exc:
        log.warning("ignoring the saved OMERO token: %s", exc)
        return None
    if token is None or (host and token.host.lower() != host.lower()):
        return None
    return token


# -- the dialog ----------------------------------------------------------------------------------

class ConnectDialog(wx.Dialog):
    """Server, port, user and password; errors stay in the dialog; Set Token after success."""

    def __init__(self, parent: Any, *, host: str = "", port: int = DEFAULT_PORT,
                 user: str = "", notice: str = "", notice_is_error: bool = False) -> None:
        super().__init__(parent, title=DIALOG_TITLE, name="omero_connect_dialog",
                         style=wx.DEFAULT_DIALOG_STYLE)
        self.manager = manager()
        self.info: SessionInfo | None = self.manager.info
        self._busy = False
        self._status_text = ""

        outer = wx.BoxSizer(wx.VERTICAL)
        intro = wx.StaticText(self, label="Log in to an OMERO server to read its images "
                                          "in CellProfiler.")
        outer.Add(intro, 0, wx.ALL, 12)

        grid = wx.FlexGridSizer(cols=2, vgap=8, hgap=10)
        grid.AddGrowableCol(1)
        self.server = wx.TextCtrl(self, value=host, name="server", size=(280, -1))
        self.port = wx.SpinCtrl(self, min=1, max=65535, initial=int(port or DEFAULT_PORT),
                                name="port", size=(120, -1))
        self.user = wx.TextCtrl(self, value=user, name="user")
        self.password = wx.TextCtrl(self, name="password",
                                    style=wx.TE_PASSWORD | wx.TE_PROCESS_ENTER)
        for label, ctrl, flag in (("Server:", self.server, wx.EXPAND),
                                  ("Port:", self.port, 0),
                                  ("User:", self.user, wx.EXPAND),
                                  ("Password:", self.password, wx.EXPAND)):
            grid.Add(wx.StaticText(self, label=label), 0, wx.ALIGN_CENTER_VERTICAL)
            grid.Add(ctrl, 1, flag)
        outer.Add(grid, 0, wx.EXPAND | wx.LEFT | wx.RIGHT, 12)

        # The status line has room for a three-line error, so the dialog never jumps.
        self.status = wx.StaticText(self, label="", name="status")
        line = self.status.GetCharHeight()
        self.status.SetMinSize((STATUS_WIDTH, 3 * line + 4))
        outer.Add(self.status, 0, wx.EXPAND | wx.ALL, 12)

        box = wx.StaticBoxSizer(wx.VERTICAL, self, "Log in automatically next time")
        row = wx.BoxSizer(wx.HORIZONTAL)
        self.set_token = wx.Button(box.GetStaticBox(), label="Set Token", name="set_token")
        self.set_token.SetToolTip("Save an omero-user-token for this server, used by "
                                  "Plugins ▸ Connect to OMERO and by headless runs.")
        row.Add(self.set_token, 0, wx.ALIGN_CENTER_VERTICAL)
        warning = wx.StaticText(box.GetStaticBox(), label="⚠ " + TOKEN_WARNING,
                                name="token_warning")
        warning.Wrap(STATUS_WIDTH - self.set_token.GetBestSize().width - 30)
        row.Add(warning, 1, wx.ALIGN_CENTER_VERTICAL | wx.LEFT, 10)
        box.Add(row, 0, wx.EXPAND | wx.ALL, 6)
        outer.Add(box, 0, wx.EXPAND | wx.LEFT | wx.RIGHT, 12)

        buttons = wx.StdDialogButtonSizer()
        self.connect_button = wx.Button(self, wx.ID_OK, "Connect", name="connect")
        self.close_button = wx.Button(self, wx.ID_CANCEL, "Cancel", name="close")
        buttons.AddButton(self.connect_button)
        buttons.AddButton(self.close_button)
        buttons.Realize()
        outer.Add(buttons, 0, wx.EXPAND | wx.ALL, 12)
        self.SetSizerAndFit(outer)
        self.CentreOnParent()

        self.connect_button.Bind(wx.EVT_BUTTON, self._on_connect)
        self.password.Bind(wx.EVT_TEXT_ENTER, self._on_connect)
        self.close_button.Bind(wx.EVT_BUTTON, self._on_close)
        self.Bind(wx.EVT_CLOSE, self._on_close)
        self.set_token.Bind(wx.EVT_BUTTON, self._on_set_token)

        self.connect_button.SetDefault()
        if self.info is not None:
            self._connected_state(self.info)
        else:
            self.set_token.Disable()
        if notice:
            self.show(notice, error=notice_is_error)
        for ctrl in (self.server, self.user, self.password):
            if not ctrl.GetValue():
                ctrl.SetFocus()
                break
        else:
            self.password.SetFocus()

    # -- helpers ------------------------------------------------------------------------------

    def show(self, text: str, *, error: bool = False, ok: bool = False) -> None:
        """Put ``text`` on the status line: red for errors, green for success."""
        self.status.SetForegroundColour(_RED if error else _GREEN if ok else
                                        wx.SystemSettings.GetColour(wx.SYS_COLOUR_WINDOWTEXT))
        self._status_text = text
        self.status.SetLabel(text)
        self.status.Wrap(STATUS_WIDTH)
        self.Layout()

    @property
    def status_text(self) -> str:
        """The status line as set (without the line breaks wrapping added)."""
        return self._status_text

    def _set_busy(self, busy: bool) -> None:
        self._busy = busy
        for ctrl in (self.server, self.port, self.user, self.password, self.connect_button):
            ctrl.Enable(not busy)
        if busy:
            self.set_token.Disable()

    def _connected_state(self, info: SessionInfo) -> None:
        self.info = info
        self.show(f"Connected to {info.server} as {info.user} (group {info.group}).", ok=True)
        self.set_token.Enable()
        self.close_button.SetLabel("Done")
        self.close_button.SetDefault()

    # -- events -------------------------------------------------------------------------------

    def _on_connect(self, event: Any) -> None:
        if self._busy:
            return
        host = self.server.GetValue().strip()
        port = int(self.port.GetValue())
        user = self.user.GetValue().strip()
        password = self.password.GetValue()
        for value, ctrl, what in ((host, self.server, "the OMERO server's name"),
                                  (user, self.user, "your OMERO user name"),
                                  (password, self.password, "your password")):
            if not value:
                self.show(f"Enter {what}.", error=True)
                ctrl.SetFocus()
                return
        self._set_busy(True)
        self.show(f"Connecting to {host}:{port} as {user}…")

        async def connect() -> SessionInfo:
            return await self.manager.connect(host, port, user=user, password=password)

        bridge.submit(connect, on_done=lambda info, error: self._connected(
            info, error, host, port, user))

    def _connected(self, info: SessionInfo | None, error: BaseException | None, host: str,
                   port: int, user: str) -> None:
        if not self:  # the dialog was closed while connecting; the session still counts
            if error is None:
                publish(manager())
            return
        self._set_busy(False)
        if error is not None or info is None:
            self.info = self.manager.info
            self.show(f"Could not connect: {error_text(error or RuntimeError('no session'))}",
                      error=True)
            self.password.SetFocus()
            self.password.SelectAll()
            return
        publish(self.manager)
        for name, value in (("host", host), ("port", port), ("user", user)):
            _config_write(_LAST[name][0], value, _LAST[name][1])
        self.password.SetValue("")
        self._connected_state(info)

    def _on_set_token(self, event: Any) -> None:
        if self._busy or self.manager.info is None:
            return
        self._set_busy(True)
        self.show("Saving a token…")

        async def save() -> Any:
            return await self.manager.save_token()

        bridge.submit(save, on_done=self._token_saved)

    def _token_saved(self, path: Any, error: BaseException | None) -> None:
        if not self:
            return
        self._set_busy(False)
        info = self.manager.info
        if error is not None or info is None:
            self.show(f"Could not save a token: {error_text(error or RuntimeError('no session'))}",
                      error=True)
            if info is not None:
                self.set_token.Enable()
            return
        self.show(f"Token saved for {info.server}. Next time, Plugins ▸ Connect to OMERO "
                  "logs in with it.", ok=True)
        self.set_token.Disable()
        self.close_button.SetDefault()

    def _on_close(self, event: Any) -> None:
        if self.IsModal():
            self.EndModal(wx.ID_OK if self.manager.info is not None else wx.ID_CANCEL)
        else:
            self.Destroy()


# -- the token message -----------------------------------------------------------------------

class TokenMessageDialog(wx.Dialog):
    """Says which server a saved token connected to; can be switched off for good."""

    def __init__(self, parent: Any, info: SessionInfo) -> None:
        super().__init__(parent, title=TOKEN_MESSAGE_TITLE, name="omero_token_message")
        outer = wx.BoxSizer(wx.VERTICAL)
        row = wx.BoxSizer(wx.HORIZONTAL)
        icon = wx.ArtProvider.GetBitmap(wx.ART_INFORMATION, wx.ART_MESSAGE_BOX)
        row.Add(wx.StaticBitmap(self, bitmap=icon), 0, wx.ALL, 6)
        self.message = (f"Connected to OMERO server {info.server.host} (port "
                        f"{info.server.port}) as {info.user}, using your saved token.\n\n"
                        "To log in as someone else or to another server, use Plugins ▸ "
                        "Connect to OMERO (no token).")
        text = wx.StaticText(self, name="message", label=self.message)
        text.Wrap(380)
        row.Add(text, 1, wx.ALL, 6)
        outer.Add(row, 1, wx.EXPAND | wx.ALL, 6)
        self.dont_show = wx.CheckBox(self, label="Do not show this message again",
                                     name="dont_show")
        outer.Add(self.dont_show, 0, wx.LEFT | wx.RIGHT, 18)
        buttons = wx.StdDialogButtonSizer()
        ok = wx.Button(self, wx.ID_OK, name="ok")
        buttons.AddButton(ok)
        buttons.Realize()
        outer.Add(buttons, 0, wx.EXPAND | wx.ALL, 12)
        ok.SetDefault()
        ok.SetFocus()
        self.SetSizerAndFit(outer)
        self.CentreOnParent()


def show_token_message(info: SessionInfo) -> None:
    """Show the token message (GUI thread) unless the user switched it off meanwhile."""
    if not session.reader_setting("show_token_message"):
        return
    dialog = TokenMessageDialog(main_frame(), info)
    try:
        dialog.ShowModal()
        if dialog.dont_show.GetValue():
            from cellprofiler_core.preferences import config_write_typed

            config_write_typed(f"Reader.{session.READER_NAME}.show_token_message", False, bool)
    finally:
        dialog.Destroy()


# -- flows ---------------------------------------------------------------------------------------

def open_dialog(host: str | None = None, port: int | None = None, *, notice: str = "",
                error: bool = False) -> bool:
    """Show the dialog modally (GUI thread); True when connected afterwards."""
    last_host, last_port, last_user = remembered()
    token = saved_token(host)
    if host and host.lower() != last_host.lower():
        last_port = token.port if token is not None else manager().settings.server.port
    dialog = ConnectDialog(main_frame(), host=host or last_host,
                           port=port or last_port or DEFAULT_PORT, user=last_user,
                           notice=notice, notice_is_error=error)
    try:
        return bool(dialog.ShowModal() == wx.ID_OK)
    finally:
        dialog.Destroy()


def connect(*, use_token: bool = True, then: Callable[[bool], None] | None = None) -> None:
    """The menu's Connect: by token when possible (without blocking the window), else dialog."""
    mgr = manager()
    token = saved_token() if use_token and not mgr.connected else None
    if token is None:
        ok = open_dialog()
        if then is not None:
            then(ok)
        return

    async def join() -> SessionInfo:
        return await mgr.connect(token.host, token.port, use_token=True)

    def joined(info: SessionInfo | None, error: BaseException | None) -> None:
        if error is None:
            publish(mgr)
            ok = True
        else:
            ok = open_dialog(token.host, token.port, error=True,
                             notice=f"Your saved token for {token.host} did not work "
                                    f"({error_text(error)}). Log in with your password.")
        if then is not None:
            then(ok)

    bridge.submit(join, on_done=joined)


def ensure_connected(host: str | None = None, port: int | None = None, *,
                     why: str = "") -> bool:
    """Connected to ``host`` (or any server) when this returns True; GUI thread only.

    Tries the saved token first (briefly blocking, with a busy cursor), then asks with
    the dialog. False when the user cancelled.
    """
    mgr = manager()
    info = mgr.info
    if info is not None and (host is None or info.server.same_host(host)):
        publish(mgr)
        return True
    notice = why
    token = saved_token(host)
    if token is not None:
        try:
            with wx.BusyCursor():
                runtime.run(lambda: mgr.connect(token.host, token.port, use_token=True))
            publish(mgr)
            return True
        except OmeroError as exc:
            notice = (f"Your saved token for {token.host} did not work ({error_text(exc)}). "
                      "Log in with your password.")
    return open_dialog(host, port, notice=notice or "This pipeline reads images from OMERO: "
                       "log in to continue.", error=bool(token))


def disconnect(then: Callable[[], None] | None = None) -> None:
    """End the session (a token's session stays valid for next time)."""
    mgr = manager()

    def done(result: Any, error: BaseException | None) -> None:
        unpublish()
        if error is not None:
            log.warning("disconnecting from OMERO failed: %s", error)
        if then is not None:
            then()

    bridge.submit(mgr.close, "disconnect", on_done=done)
