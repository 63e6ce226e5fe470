"""One anyio event loop per process, and a blocking portal for synchronous callers.

CellProfiler calls readers from plain worker threads; they reach the async core
with ``runtime.run(async_fn, *args)``. The loop lives in a daemon thread, started
on first use (again after a fork) and stopped at interpreter exit, after the
shutdown callbacks registered with ``on_shutdown`` (closing sessions) have run.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import queue
import threading
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import anyio
from anyio.abc import TaskGroup
from anyio.from_thread import BlockingPortal

log = logging.getLogger(__name__)
T = TypeVar("T")

_lock = threading.RLock()  # re-entrant: a finaliser may run while it is held
_portal: BlockingPortal | None = None
_thread: threading.Thread | None = None
_pid: int | None = None
_shutdown_callbacks: list[Callable[[], Awaitable[Any]]] = []
_background: TaskGroup | None = None  # tasks that run until the loop stops
_atexit_registered = False


def _loop_main(ready: queue.Queue[BlockingPortal | BaseException]) -> None:
    async def main() -> None:
        global _background
        async with BlockingPortal() as portal, anyio.create_task_group() as background:
            _background = background
            ready.put(portal)
            await portal.sleep_until_stopped()
            # Background tasks (keep-alive) end with the loop.
            background.cancel_scope.cancel()

    try:
        anyio.run(main)
    except BaseException as exc:  # pragma: no cover - surfaced to the starter
        ready.put(exc)


def portal() -> BlockingPortal:
    """The process's portal, starting the loop thread if needed."""
    global _portal, _thread, _pid, _atexit_registered
    with _lock:
        if _portal is not None and _pid == os.getpid() and _thread is not None \
                and _thread.is_alive():
            return _portal
        ready: queue.Queue[BlockingPortal | BaseException] = queue.Queue()
        thread = threading.Thread(target=_loop_main, args=(ready,), daemon=True,
                                  name="cellprofiler-omero-loop")
        thread.start()
        result = ready.get()
        if isinstance(result, BaseException):
            raise RuntimeError("The cellprofiler-omero event loop failed to start.") from result
        _portal, _thread, _pid = result, thread, os.getpid()
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
        return _portal


def running() -> BlockingPortal | None:
    """The portal if the loop runs in this process already, else ``None`` (never starts it)."""
    if _portal is not None and _pid == os.getpid() and _thread is not None \
            and _thread.is_alive():
        return _portal
    return None


def in_loop_thread() -> bool:
    return _thread is not None and threading.current_thread() is _thread


def run(func: Callable[..., Awaitable[T]], *args: Any) -> T:
    """Run ``await func(*args)`` on the process loop and return its result (blocking)."""
    if in_loop_thread():
        raise RuntimeError(
            "runtime.run() was called from the event loop itself; await the coroutine instead."
        )
    return portal().call(func, *args)


def spawn(func: Callable[[], Awaitable[None]], name: str) -> None:
    """Start ``await func()`` in the background on the process loop (from the loop thread).

    The task is cancelled when the loop stops; it should end itself earlier with a
    cancel scope. A failure is logged, never raised: one background task (keep-alive)
    must not stop the loop that every read runs on.
    """
    if not in_loop_thread() or _background is None:
        raise RuntimeError("runtime.spawn() must be called on the cellprofiler-omero loop.")

    async def guarded() -> None:
        try:
            await func()
        except Exception:
            log.exception("background task %s failed", name)

    _background.start_soon(guarded, name=name)


def on_shutdown(callback: Callable[[], Awaitable[Any]]) -> None:
    """Run ``await callback()`` on the loop before it stops (last registered runs first)."""
    _shutdown_callbacks.append(callback)


def shutdown(timeout: float = 10.0) -> None:
    """Run the shutdown callbacks and stop the loop; safe to call more than once."""
    global _portal, _thread
    with _lock:
        current, thread = _portal, _thread
        _portal, _thread = None, None
    if current is None or thread is None or not thread.is_alive() or _pid != os.getpid():
        return
    callbacks = list(reversed(_shutdown_callbacks))
    for callback in callbacks:
        try:
            current.call(callback)
        except Exception as exc:
            log.warning("shutdown step failed: %s", exc)
    with contextlib.suppress(Exception):  # already stopping
        current.call(current.stop)
    thread.join(timeout)
