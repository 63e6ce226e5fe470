"""Between wx's main thread and the rest: OMERO calls off the GUI thread, dialogs onto it.

wx windows may only be touched from the main thread, and OMERO calls block for as long
as the network takes. So the GUI never waits on the network: ``submit`` runs a coroutine
on the process's event loop (``core.runtime``) and hands its outcome back to the main
thread with ``wx.CallAfter``. The reverse direction, ``on_gui_thread``, lets a reader
running in one of CellProfiler's worker threads ask the user to log in and wait for
the answer.
"""

from __future__ import annotations

import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import CancelledError, Future
from typing import Any, TypeVar

import wx

from cellprofiler_omero.core import runtime

T = TypeVar("T")

#: ``on_done(result, error)``: exactly one of them is meaningful.
DoneCallback = Callable[[Any, BaseException | None], None]


def after(func: Callable[..., Any], *args: Any) -> None:
    """``wx.CallAfter`` that does nothing once the application has gone (at exit)."""
    if wx.GetApp() is not None:
        wx.CallAfter(func, *args)


def submit(func: Callable[..., Awaitable[Any]], *args: Any, on_done: DoneCallback
           ) -> Future[Any]:
    """Run ``await func(*args)`` on the event loop; call ``on_done`` on the GUI thread."""
    future: Future[Any] = runtime.portal().start_task_soon(func, *args)

    def done(f: Future[Any]) -> None:
        if f.cancelled():
            after(on_done, None, CancelledError())
            return
        error = f.exception()
        after(on_done, None if error is not None else f.result(), error)

    future.add_done_callback(done)
    return future


def on_gui_thread(func: Callable[[], T], *, start_timeout: float = 60.0) -> T:
    """Call ``func`` on the GUI thread and return its result (directly when already there).

    From another thread the call waits for the main thread to pick the work up; when it
    does not within ``start_timeout`` seconds (the main thread is itself blocked, for
    instance waiting for this thread), ``TimeoutError`` is raised and the work is
    dropped, so a blocked window can never deadlock a reader.
    """
    if wx.IsMainThread():
        return func()
    if wx.GetApp() is None:
        raise TimeoutError("CellProfiler's window has closed.")
    lock = threading.Lock()
    started = threading.Event()
    finished = threading.Event()
    state: dict[str, Any] = {"abandoned": False}

    def run() -> None:
        with lock:
            if state["abandoned"]:
                return
            started.set()
        try:
            state["result"] = func()
        except BaseException as exc:  # handed to the waiting thread, which re-raises it
            state["error"] = exc
        finally:
            finished.set()

    wx.CallAfter(run)
    if not started.wait(start_timeout):
        with lock:
            if not started.is_set():
                state["abandoned"] = True
                raise TimeoutError("CellProfiler's window is busy and did not answer.")
    finished.wait()
    if "error" in state:
        raise state["error"]
    result: T = state["result"]
    return result
