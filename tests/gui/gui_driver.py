"""Drives CellProfiler's real window from inside its process (run with .venv-gui's Python).

``tests/gui/test_gui.py`` starts it as::

    .venv-gui/bin/python tests/gui/gui_driver.py SCENARIO --out result.json --shots DIR \
        [--port P --closed-port Q] -- [CellProfiler arguments]

The main thread runs CellProfiler through ``cellprofiler_omero.cp_integration.gui.launcher``
(the real main window, plugins loaded from the plugins folder, real menus). A scenario
is a generator run on the GUI thread and resumed by wx timers, so it keeps going while
modal dialogs run their own event loops. Input reaches the windows through the X
server (``wx.UIActionSimulator``: pointer moves, clicks and typed keys); menu entries
are chosen by posting the menu's own command event. Screenshots come from ImageMagick
``import``. Everything observed goes into the JSON result that the test checks.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Generator
from pathlib import Path
from typing import Any

import wx

Step = Generator[Any, Any, Any]


class Wait:
    """Resume the scenario with ``predicate()``'s value once it is truthy."""

    def __init__(self, predicate: Callable[[], Any], timeout: float, what: str) -> None:
        self.predicate, self.timeout, self.what = predicate, timeout, what


class Abort(Exception):
    """Raised by a wait's predicate to fail the scenario at once (an error dialog)."""


class Sleep:
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds


class Driver:
    """The scenario's toolbox: waiting, finding windows, input, screenshots, results."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.shots = Path(args.shots)
        self.shots.mkdir(parents=True, exist_ok=True)
        self.results: dict[str, Any] = {"scenario": args.scenario, "checks": {}, "log": [],
                                        "shots": [], "error": None, "finished": False}
        self.sim: Any = None
        self.gen: Step | None = None
        self.t0 = time.monotonic()

    # -- running ------------------------------------------------------------------------------

    def start(self, scenario: Callable[[Driver], Step]) -> None:
        self.sim = wx.UIActionSimulator()
        self.gen = scenario(self)
        self._resume(None)

    def _resume(self, value: Any, error: BaseException | None = None) -> None:
        assert self.gen is not None
        try:
            request = self.gen.throw(error) if error is not None else self.gen.send(value)
        except StopIteration:
            self.results["finished"] = True
            self.log("scenario finished")
            self._quit()
            return
        except BaseException as exc:
            self.results["error"] = "".join(traceback.format_exception(exc))
            self.log(f"scenario failed: {exc!r}")
            self.shot(None, f"{Path(self.args.out).stem}-failure")
            self._quit()
            return
        if isinstance(request, Sleep):
            wx.CallLater(max(1, int(request.seconds * 1000)), self._resume, None)
        elif isinstance(request, Wait):
            self._poll(request, time.monotonic() + request.timeout)
        else:
            wx.CallAfter(self._resume, request)

    def _poll(self, wait: Wait, deadline: float) -> None:
        try:
            value = wait.predicate()
        except Abort as exc:
            self._resume(None, exc)
            return
        except Exception as exc:  # a window vanished while looking at it: try again
            value = None
            last = exc
        else:
            last = None
        if value:
            self._resume(value)
        elif time.monotonic() > deadline:
            detail = f" (last error: {last!r})" if last else ""
            self._resume(None, TimeoutError(f"timed out waiting for {wait.what}{detail}"))
        else:
            wx.CallLater(50, self._poll, wait, deadline)

    def log(self, text: str) -> None:
        line = f"{time.monotonic() - self.t0:7.2f}s {text}"
        self.results["log"].append(line)
        print(f"[driver] {line}", file=sys.stderr, flush=True)

    def check(self, name: str, value: Any) -> Any:
        self.results["checks"][name] = value
        self.log(f"check {name} = {value!r}")
        return value

    def save(self) -> None:
        Path(self.args.out).write_text(json.dumps(self.results, indent=2, default=str))

    def _quit(self) -> None:
        """Quit CellProfiler as a user does (File ▸ Quit), answering "Don't Save"."""
        self.save()
        frame = self.frame
        if frame is None:
            os._exit(3)

        def answer_close_dialog(tries: int = 200) -> None:
            for window in wx.GetTopLevelWindows():
                if window.IsShown() and window.GetTitle() == "Closing CellProfiler":
                    for child in window.GetChildren():
                        if isinstance(child, wx.Button) and child.GetLabel() == "Don't Save":
                            wx.PostEvent(child, wx.CommandEvent(wx.wxEVT_BUTTON, child.GetId()))
                            return
            if tries > 0:
                wx.CallLater(100, answer_close_dialog, tries - 1)

        # A failed scenario may leave a modal dialog open: close it first, as a user would.
        for window in wx.GetTopLevelWindows():
            if isinstance(window, wx.Dialog) and window.IsModal():
                self.log(f"closing the open dialog {window.GetTitle()!r}")
                window.EndModal(wx.ID_CANCEL)
        # A stuck quit must not hang the test run.
        watchdog = threading.Timer(90, lambda: os._exit(4))
        watchdog.daemon = True
        watchdog.start()

        def quit_now() -> None:
            wx.CallLater(100, answer_close_dialog)
            self.log("quitting CellProfiler (File ▸ Quit)")
            self.menu("File", "Quit")

        wx.CallLater(300, quit_now)

    # -- windows -------------------------------------------------------------------------------

    @property
    def frame(self) -> Any:
        app = wx.GetApp()
        return getattr(app, "frame", None) if app is not None else None

    def window(self, name: str | None = None, title: str | None = None) -> Any:
        """A shown top-level window by wx name or title, else None."""
        for window in wx.GetTopLevelWindows():
            if not window or not window.IsShown():
                continue
            if name is not None and window.GetName() == name:
                return window
            if title is not None and window.GetTitle() == title:
                return window
        return None

    def wait_window(self, name: str | None = None, title: str | None = None,
                    timeout: float = 20) -> Wait:
        return Wait(lambda: self.window(name, title), timeout, f"window {name or title}")

    def wait(self, predicate: Callable[[], Any], timeout: float, what: str) -> Wait:
        return Wait(predicate, timeout, what)

    @staticmethod
    def sleep(seconds: float) -> Sleep:
        return Sleep(seconds)

    def menu_labels(self, title: str) -> list[str]:
        bar = self.frame.GetMenuBar()
        index = bar.FindMenu(title)
        if index == wx.NOT_FOUND:
            return []
        return [item.GetItemLabelText() for item in bar.GetMenu(index).GetMenuItems()
                if not item.IsSeparator()]

    def menu(self, title: str, label: str) -> None:
        """Choose a menu entry: the same command event the menu itself sends."""
        bar = self.frame.GetMenuBar()
        item_id = bar.FindMenuItem(title, label)
        if item_id == wx.NOT_FOUND:
            raise LookupError(f"no menu entry {title} ▸ {label}: {self.menu_labels(title)}")
        self.log(f"menu {title} ▸ {label}")
        event = wx.CommandEvent(wx.wxEVT_MENU, item_id)
        event.SetEventObject(self.frame)
        wx.PostEvent(self.frame, event)

    def x_title_exists(self, pattern: str) -> bool:
        """Whether the X server has a window whose name matches ``pattern`` (xdotool)."""
        out = subprocess.run(["xdotool", "search", "--name", pattern], capture_output=True,
                             text=True)
        return bool(out.stdout.strip())

    # -- input -----------------------------------------------------------------------------------

    def point(self, window: Any, rect: Any = None) -> tuple[int, int]:
        rect = rect if rect is not None else window.GetScreenRect()
        return rect.x + rect.width // 2, rect.y + rect.height // 2

    def click(self, window: Any, *, rect: Any = None, double: bool = False,
              ctrl: bool = False) -> Step:
        x, y = self.point(window, rect)
        self.sim.MouseMove(x, y)
        yield Sleep(0.15)
        if ctrl:
            self.sim.KeyDown(wx.WXK_CONTROL)
            yield Sleep(0.05)
        if double:
            self.sim.MouseDblClick()
        else:
            self.sim.MouseClick()
        yield Sleep(0.15)
        if ctrl:
            self.sim.KeyUp(wx.WXK_CONTROL)
            yield Sleep(0.05)

    def type_into(self, ctrl: Any, text: str) -> Step:
        """Click into a text field, select what it holds, type ``text`` with the keyboard."""
        yield from self.click(ctrl)
        self.sim.Char(ord("A"), wx.MOD_CONTROL)
        yield Sleep(0.1)
        self.sim.Text(text.encode())
        yield Wait(lambda: str(ctrl.GetValue()) == text, 5,
                   f"typed {text if 'password' not in ctrl.GetName() else '***'!r}")

    def tree_item(self, tree: Any, parent: Any, prefix: str) -> Any:
        item, cookie = tree.GetFirstChild(parent)
        while item.IsOk():
            if tree.GetItemText(item).startswith(prefix):
                return item
            item, cookie = tree.GetNextChild(parent, cookie)
        return None

    def tree_children(self, tree: Any, parent: Any) -> list[str]:
        out = []
        item, cookie = tree.GetFirstChild(parent)
        while item.IsOk():
            out.append(tree.GetItemText(item))
            item, cookie = tree.GetNextChild(parent, cookie)
        return out

    def item_rect(self, tree: Any, item: Any) -> Any:
        tree.EnsureVisible(item)
        rect = tree.GetBoundingRect(item, textOnly=True)
        origin = tree.ClientToScreen(rect.GetTopLeft())
        return wx.Rect(origin.x, origin.y, rect.width, rect.height)

    def drag(self, source: Any, target: Any, *, rect: Any = None) -> Step:
        """Press on ``source`` (or ``rect``), move in steps onto ``target``, release.

        The pointer is moved by xdotool, another X client: while the drag runs, GTK's
        drag loop holds this thread, and the release must still arrive.
        """
        x0, y0 = self.point(source, rect)
        x1, y1 = self.point(target)
        command = ["xdotool", "mousemove", str(x0), str(y0), "sleep", "0.2", "mousedown",
                   "1", "sleep", "0.2"]
        for i in range(1, 21):
            command += ["mousemove", str(x0 + (x1 - x0) * i // 20),
                        str(y0 + (y1 - y0) * i // 20), "sleep", "0.05"]
        command += ["sleep", "0.3", "mouseup", "1"]
        process = subprocess.Popen(command)
        yield Wait(lambda: process.poll() is not None, 30, "the drag to end")
        yield Sleep(0.5)

    # -- screenshots -------------------------------------------------------------------------------

    def shot(self, window: Any, name: str) -> Path:
        """Capture ``window`` (its screen rectangle) or the whole screen into ``name``.png."""
        path = self.shots / f"{name}.png"
        command = ["import", "-window", "root"]
        if window is not None:
            window.Update()
            rect = window.GetScreenRect()
            command += ["-crop", f"{rect.width}x{rect.height}+{rect.x}+{rect.y}", "+repage"]
        subprocess.run([*command, str(path)], check=False, capture_output=True)
        self.results["shots"].append(path.name)
        self.log(f"screenshot {path.name}")
        return path


def analysis_finished(d: Driver, controller: Any) -> bool:
    """True once the analysis has stopped; ``Abort`` when CellProfiler reports an error."""
    for window in wx.GetTopLevelWindows():
        if isinstance(window, wx.Dialog) and window.IsShown() and window.IsModal():
            texts = [c.GetLabel() for c in window.GetChildren()
                     if isinstance(c, wx.StaticText)]
            d.shot(window, f"{Path(d.args.out).stem}-unexpected-dialog")
            raise Abort(f"dialog {window.GetTitle()!r} during the analysis: {texts}")
    return not controller.is_running()


# -- helpers for the OMERO parts ----------------------------------------------------------

def manager() -> Any:
    from cellprofiler_omero.cp_integration import session

    return session.manager()


def connected() -> bool:
    return manager().info is not None


def file_list(d: Driver) -> list[str]:
    return [getattr(f, "url", f) for f in d.frame.get_pipeline().file_list]


def connect_with_password(d: Driver, dlg: Any, port: int, password: str) -> Step:
    before = dlg.status_text
    yield from d.type_into(dlg.port, str(port))
    yield from d.type_into(dlg.password, password)
    yield from d.click(dlg.connect_button)
    yield d.wait(lambda: not dlg._busy and dlg.status_text != before
                 and not dlg.status_text.startswith("Connecting"), 40, "the login's outcome")


# -- scenarios ------------------------------------------------------------------------------

def first_run(d: Driver) -> Step:
    """Connect with a password (after an unreachable server and a wrong password), Set Token."""
    port, closed = d.args.port, d.args.closed_port
    frame = yield d.wait(lambda: d.frame if d.frame and d.frame.IsShown() else None, 60,
                         "the main window")
    yield d.sleep(1.5)
    d.check("title_before", frame.GetTitle())
    d.check("plugins_menu", d.menu_labels("Plugins"))
    d.shot(None, "01-main-window")
    # The Plugins menu as a user opens it: F10 opens the menu bar, → moves to Plugins.
    d.sim.MouseMove(*d.point(frame))
    yield d.sleep(0.2)
    d.sim.Char(wx.WXK_F10)
    yield d.sleep(0.3)
    for _ in range(3):
        d.sim.Char(wx.WXK_RIGHT)
        yield d.sleep(0.2)
    yield d.sleep(0.5)
    rect = frame.GetScreenRect()
    subprocess.run(["import", "-window", "root", "-crop",
                    f"{rect.width // 2}x{rect.height // 2}+{rect.x}+{rect.y}", "+repage",
                    str(d.shots / "01-plugins-menu.png")], check=False)
    d.results["shots"].append("01-plugins-menu.png")
    # ↓ and Enter choose the first entry, Connect to OMERO (no token saved yet: the dialog).
    d.sim.Char(wx.WXK_DOWN)
    yield d.sleep(0.2)
    d.sim.Char(wx.WXK_RETURN)
    dlg = yield d.wait_window("omero_connect_dialog")
    yield d.sleep(0.5)
    d.shot(dlg, "02-connect-dialog")

    yield from d.type_into(dlg.server, "127.0.0.1")
    yield from d.type_into(dlg.user, "demo")
    yield from connect_with_password(d, dlg, closed, "demo")
    d.check("unreachable_status", dlg.status_text)
    d.check("open_after_unreachable", bool(dlg.IsShown()))
    yield d.sleep(0.4)  # let GTK repaint the changed state
    d.shot(dlg, "03-unreachable-server")

    yield from connect_with_password(d, dlg, port, "not-the-password")
    d.check("wrong_password_status", dlg.status_text)
    d.check("open_after_wrong_password", bool(dlg.IsShown()))
    d.check("password_masked", bool(dlg.password.GetWindowStyle() & wx.TE_PASSWORD))
    yield d.sleep(0.4)  # let GTK repaint the changed state
    d.shot(dlg, "04-wrong-password")

    yield from connect_with_password(d, dlg, port, "demo")
    d.check("connected_status", dlg.status_text)
    d.check("set_token_enabled", bool(dlg.set_token.IsEnabled()))
    d.check("token_warning", dlg.FindWindowByName("token_warning").GetLabel())
    yield d.sleep(0.4)  # let GTK repaint the changed state
    d.shot(dlg, "05-connected")
    yield d.wait(lambda: "OMERO: demo@" in frame.GetTitle(), 10, "the title naming the server")
    d.check("title_connected", frame.GetTitle())
    d.check("x_title_connected", d.x_title_exists(f"OMERO: demo@127.0.0.1:{port}"))

    yield from d.click(dlg.set_token)
    yield d.wait(lambda: dlg.status_text.startswith(("Token saved", "Could not")), 20,
                 "the token")
    d.check("token_status", dlg.status_text)
    yield d.sleep(0.4)  # let GTK repaint the changed state
    d.shot(dlg, "06-token-saved")
    yield from d.click(dlg.close_button)
    yield d.wait(lambda: d.window("omero_connect_dialog") is None, 10, "the dialog to close")
    d.check("connected_after_dialog", connected())


def second_run(d: Driver) -> Step:
    """Token login and its message, do-not-show, readers settings, browse, add, analyse."""
    from cellprofiler_core.preferences import config_read_typed

    frame = yield d.wait(lambda: d.frame if d.frame and d.frame.IsShown() else None, 60,
                         "the main window")
    yield d.sleep(1.0)

    d.menu("Plugins", "Connect to OMERO")
    msg = yield d.wait_window("omero_token_message", timeout=30)
    yield d.sleep(0.5)
    d.check("token_message", msg.message)
    d.shot(msg, "07-token-message")
    yield from d.click(msg.dont_show)
    d.check("dont_show_ticked", bool(msg.dont_show.GetValue()))
    yield from d.click(msg.FindWindowById(wx.ID_OK))
    yield d.wait(lambda: d.window("omero_token_message") is None, 10, "the message to close")
    d.check("show_token_message_setting",
            config_read_typed("Reader.OMERO.show_token_message", bool))
    d.check("login_source", manager().info.source)
    yield d.wait(lambda: "OMERO: demo@" in frame.GetTitle(), 10, "the title")

    d.menu("Plugins", "Disconnect from OMERO")
    yield d.wait(lambda: not connected() and "OMERO" not in frame.GetTitle(), 20,
                 "disconnecting")
    d.check("title_disconnected", frame.GetTitle())
    d.menu("Plugins", "Connect to OMERO")
    yield d.wait(connected, 20, "the token login")
    yield d.sleep(2.0)
    d.check("message_again", d.window("omero_token_message") is not None)

    d.menu("File", "Configure Readers...")
    readers = yield d.wait_window(title="CellProfiler Image Readers")
    names = list(readers.active_readers.GetItems())
    d.check("readers", names)
    index = names.index("OMERO")
    yield from d.click(readers.active_readers,
                       rect=_list_item_rect(readers.active_readers, index))
    yield d.wait(lambda: _reader_settings(readers), 10, "the OMERO reader's settings")
    d.check("reader_settings", _reader_settings(readers))
    yield d.sleep(0.4)  # let GTK repaint the changed state
    d.shot(readers, "08-configure-readers")
    readers.Destroy()

    d.menu("Plugins", "Browse OMERO for images")
    browser = yield d.wait_window("omero_browser")
    tree = browser.tree
    yield d.wait(lambda: browser.pending == 0 and tree.GetChildrenCount(tree.GetRootItem(),
                                                                        False) > 0,
                 30, "the groups")
    root = tree.GetRootItem()
    d.check("groups", d.tree_children(tree, root))
    group = d.tree_item(tree, root, "demo")
    yield d.wait(lambda: browser.pending == 0 and d.tree_item(tree, group, "CellProfiler demo"),
                 30, "the demo group's contents")
    d.check("group_contents", d.tree_children(tree, group))
    project = d.tree_item(tree, group, "CellProfiler demo")
    yield from d.click(tree, rect=d.item_rect(tree, project), double=True)
    yield d.wait(lambda: browser.pending == 0 and d.tree_item(tree, project, "Nuclei"), 30,
                 "the project's datasets")
    dataset = d.tree_item(tree, project, "Nuclei")
    yield from d.click(tree, rect=d.item_rect(tree, dataset), double=True)
    yield d.wait(lambda: browser.pending == 0 and len(d.tree_children(tree, dataset)) == 3
                 and "Loading" not in d.tree_children(tree, dataset)[0], 30, "the images")
    d.check("dataset_images", d.tree_children(tree, dataset))
    first_image, _ = tree.GetFirstChild(dataset)
    yield d.wait(lambda: tree.GetItemImage(first_image) >= 5, 30, "the thumbnails")
    yield from d.click(tree, rect=d.item_rect(tree, first_image))
    yield d.sleep(0.5)
    d.check("image_details", browser.details.GetLabel())
    yield d.sleep(0.4)  # let GTK repaint the changed state
    d.shot(browser, "09-browser-dataset")

    screen = d.tree_item(tree, group, "Demo screen")
    tree.Collapse(project)
    yield from d.click(tree, rect=d.item_rect(tree, screen), double=True)
    yield d.wait(lambda: browser.pending == 0 and d.tree_item(tree, screen, "Plate 1"), 30,
                 "the screen's plates")
    plate = d.tree_item(tree, screen, "Plate 1")
    yield from d.click(tree, rect=d.item_rect(tree, plate), double=True)
    yield d.wait(lambda: browser.pending == 0 and d.tree_item(tree, plate, "Load more"), 30,
                 "the first page of wells")
    d.check("plate_first_page", d.tree_children(tree, plate))
    more = d.tree_item(tree, plate, "Load more")
    yield from d.click(tree, rect=d.item_rect(tree, more), double=True)
    yield d.wait(lambda: browser.pending == 0 and d.tree_item(tree, plate, "B03")
                 and not d.tree_item(tree, plate, "Load more"), 30, "the rest of the wells")
    d.check("plate_all_wells", d.tree_children(tree, plate))
    well = d.tree_item(tree, plate, "A01")
    yield from d.click(tree, rect=d.item_rect(tree, well), double=True)
    yield d.wait(lambda: browser.pending == 0 and d.tree_item(tree, well, "Field 2"), 30,
                 "the well's fields")
    d.check("well_fields", d.tree_children(tree, well))
    field, _ = tree.GetFirstChild(well)
    yield d.wait(lambda: tree.GetItemImage(field) >= 5, 30, "the field thumbnails")
    yield from d.click(tree, rect=d.item_rect(tree, field))
    yield d.sleep(0.5)
    yield d.sleep(0.4)  # let GTK repaint the changed state
    d.shot(browser, "10-browser-plate")

    # Add a Dataset and a Well (5 images) with the button.
    yield from d.click(tree, rect=d.item_rect(tree, dataset))
    yield from d.click(tree, rect=d.item_rect(tree, well), ctrl=True)
    d.check("selected", [e.node.name for e in browser.selected_entries()])
    yield from d.click(browser.add_button)
    yield d.wait(lambda: len(file_list(d)) == 5, 30, "five images in the file list")
    d.check("file_list_after_add", file_list(d))

    # Drag a second well onto the file list (the browser moved off the file list first,
    # as a user would: without a window manager it opens at the screen's corner).
    path_list = _find(frame, "PathListCtrl")
    target = path_list.GetScreenRect()
    browser.SetSize(900, 520)
    browser.Move(target.x + 40, target.y + target.height + 20)
    yield d.sleep(0.8)
    well2 = d.tree_item(tree, plate, "A02")
    yield from d.click(tree, rect=d.item_rect(tree, well2))
    yield from d.drag(tree, path_list, rect=d.item_rect(tree, well2))
    try:
        yield d.wait(lambda: len(file_list(d)) == 7, 20, "the dropped well's images")
        d.check("drag_and_drop", True)
    except TimeoutError:
        d.check("drag_and_drop", False)
    d.check("file_list", file_list(d))
    browser.Close()
    yield d.sleep(1.0)
    d.shot(None, "11-file-list")

    analyze = _button(frame, "Analyze Images")
    yield from d.click(analyze)
    controller = frame.pipeline_controller
    yield d.wait(controller.is_running, 60, "the analysis to start")
    d.check("handoff_file", os.environ.get("CELLPROFILER_OMERO_SESSION_FILE", ""))
    yield d.sleep(2.0)
    d.shot(None, "12-analysis-running")
    yield d.wait(lambda: analysis_finished(d, controller), 600, "the analysis to finish")
    yield d.sleep(1.0)
    d.shot(None, "13-analysis-done")

    d.menu("Plugins", "Disconnect from OMERO")
    yield d.wait(lambda: not connected(), 20, "disconnecting")
    d.check("title_end", frame.GetTitle())


def third_run(d: Driver) -> Step:
    """After a restart, Connect to OMERO logs in by token without the message."""
    yield d.wait(lambda: d.frame if d.frame and d.frame.IsShown() else None, 60,
                 "the main window")
    d.menu("Plugins", "Connect to OMERO")
    yield d.wait(connected, 20, "the token login")
    yield d.sleep(2.0)
    d.check("message_shown", d.window("omero_token_message") is not None)
    d.check("login_source", manager().info.source)


def auto_dialog_run(d: Driver) -> Step:
    """No session, a pipeline that reads OMERO: the dialog opens by itself, then it runs."""
    frame = yield d.wait(lambda: d.frame if d.frame and d.frame.IsShown() else None, 60,
                         "the main window")
    yield d.sleep(1.0)
    d.check("file_list", file_list(d))
    if d.window("omero_connect_dialog") is None:
        yield from d.click(_button(frame, "Analyze Images"))
    dlg = yield d.wait_window("omero_connect_dialog", timeout=30)
    yield d.sleep(0.5)
    d.check("auto_notice", dlg.status_text)
    d.check("auto_server", dlg.server.GetValue())
    d.shot(dlg, d.args.shot_name or "14-dialog-opened-by-the-pipeline")
    yield from d.type_into(dlg.user, "demo")
    yield from connect_with_password(d, dlg, d.args.port, "demo")
    d.check("auto_connected", dlg.status_text)
    yield from d.click(dlg.close_button)
    controller = frame.pipeline_controller
    if not controller.is_running():
        yield d.wait(lambda: d.window("omero_connect_dialog") is None, 10, "the dialog")
        yield from d.click(_button(frame, "Analyze Images"))
    yield d.wait(controller.is_running, 60, "the analysis to start")
    yield d.wait(lambda: analysis_finished(d, controller), 600, "the analysis to finish")
    d.check("analysis_done", True)


def test_mode_run(d: Driver) -> Step:
    """No session; Start Test Mode reads the images here: the reader asks for a login."""
    frame = yield d.wait(lambda: d.frame if d.frame and d.frame.IsShown() else None, 60,
                         "the main window")
    yield d.sleep(1.0)
    d.check("connected_at_start", connected())
    yield from d.click(_button(frame, "Start Test Mode"))
    dlg = yield d.wait_window("omero_connect_dialog", timeout=60)
    yield d.sleep(0.5)
    d.check("reader_notice", dlg.status_text)
    d.shot(dlg, "16-dialog-opened-by-test-mode")
    yield from d.type_into(dlg.user, "demo")
    yield from connect_with_password(d, dlg, d.args.port, "demo")
    d.check("reader_connected", dlg.status_text)
    yield from d.click(dlg.close_button)
    controller = frame.pipeline_controller
    yield d.wait(controller.is_in_debug_mode, 60, "test mode")
    d.check("test_mode", bool(controller.is_in_debug_mode()))
    yield d.sleep(1.0)
    yield from d.click(_button(frame, "Run"))

    def nuclei() -> Any:
        measurements = getattr(controller, "_PipelineController__debug_measurements", None)
        if measurements is None or not measurements.has_feature("Image", "Count_Nuclei"):
            return None
        return measurements["Image", "Count_Nuclei"]

    progress = "Running modules in test mode"
    yield d.wait(lambda: d.window(title=progress) is not None, 30, "test mode to run")
    yield d.wait(lambda: d.window(title=progress) is None, 120, "test mode to finish")
    yield d.sleep(0.5)
    d.check("nuclei_in_test_mode", float(nuclei() or 0))
    d.shot(None, "17-test-mode-ran")
    for window in list(wx.GetTopLevelWindows()):  # the modules' figure windows
        if window is not frame and window.IsShown():
            window.Close()
    yield from d.click(_button(frame, "Exit Test Mode"))
    yield d.wait(lambda: not controller.is_in_debug_mode(), 30, "leaving test mode")


def _find(window: Any, class_name: str) -> Any:
    for child in window.GetChildren():
        if type(child).__name__ == class_name:
            return child
        hit = _find(child, class_name)
        if hit is not None:
            return hit
    return None


def _button(window: Any, label: str) -> Any:
    """The shown button labelled ``label`` among ``window``'s descendants."""
    stack = list(window.GetChildren())
    while stack:
        child = stack.pop()
        if isinstance(child, wx.Button) and child.GetLabel() == label and \
                child.IsShownOnScreen():
            return child
        stack.extend(child.GetChildren())
    raise LookupError(f"no button {label!r}")


def _list_item_rect(listbox: Any, index: int) -> Any:
    rect = listbox.GetScreenRect()
    height = max(1, listbox.GetCharHeight() + 8)
    return wx.Rect(rect.x + 4, rect.y + index * height + 2, rect.width // 2, height - 4)


def _reader_settings(readers: Any) -> dict[str, Any]:
    """Label → value of the settings shown for the selected reader."""
    out: dict[str, Any] = {}
    label = None
    for child in readers.control_panel.GetChildren():
        if isinstance(child, wx.StaticText):
            label = child.GetLabel().strip().rstrip(":").strip()
        elif isinstance(child, wx.CheckBox | wx.TextCtrl) and label:
            if child.GetLabel().startswith("Enabled"):
                continue
            out[label] = child.GetValue()
    return out


SCENARIOS: dict[str, Callable[[Driver], Step]] = {
    "first": first_run, "second": second_run, "third": third_run, "auto": auto_dialog_run,
    "testmode": test_mode_run}


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--out", required=True)
    parser.add_argument("--shots", required=True)
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--closed-port", type=int, default=0)
    parser.add_argument("--timeout", type=float, default=600)
    parser.add_argument("--shot-name", default="")
    argv = sys.argv[1:]
    split = argv.index("--") if "--" in argv else len(argv)
    args = parser.parse_args(argv[:split])
    args.cellprofiler = argv[split + 1:]
    driver = Driver(args)

    def start_when_shown() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            app = wx.GetApp()
            if app is not None and getattr(app, "frame", None) is not None:
                wx.CallAfter(driver.start, SCENARIOS[args.scenario])
                return
            time.sleep(0.1)
        driver.results["error"] = "CellProfiler's window did not appear"
        driver.save()
        os._exit(5)

    threading.Thread(target=start_when_shown, daemon=True, name="driver-start").start()

    def give_up() -> None:
        driver.results["error"] = f"the scenario did not end within {args.timeout} s"
        driver.save()
        os._exit(6)

    watchdog = threading.Timer(args.timeout, give_up)
    watchdog.daemon = True
    watchdog.start()
    from cellprofiler_omero.cp_integration.gui import launcher

    code = launcher.main(args.cellprofiler)
    driver.results["exit_code"] = code
    driver.results["threads_at_exit"] = [
        t.name for t in threading.enumerate()
        if t is not threading.main_thread() and not t.daemon and t.is_alive()]
    driver.results["all_threads_at_exit"] = [t.name for t in threading.enumerate()]
    driver.save()
    return 0


if __name__ == "__main__":
    sys.exit(main())
