"""One event loop per process, reachable from plain threads."""

from __future__ import annotations

import threading

import anyio
import pytest

from cellprofiler_omero.core import runtime


async def whoami() -> str:
    await anyio.sleep(0)
    return threading.current_thread().name


def test_run_executes_on_the_loop_thread() -> None:
    assert runtime.run(whoami) == "cellprofiler-omero-loop"


def test_run_works_from_many_plain_threads() -> None:
    results: list[str] = []

    def worker() -> None:
        results.append(runtime.run(whoami))

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == ["cellprofiler-omero-loop"] * 8


def test_the_loop_is_started_once() -> None:
    assert runtime.portal() is runtime.portal()


def test_run_from_inside_the_loop_is_refused() -> None:
    async def nested() -> None:
        runtime.run(whoami)

    with pytest.raises(RuntimeError, match="from the event loop itself"):
        runtime.run(nested)


def test_exceptions_reach_the_caller() -> None:
    async def boom() -> None:
        raise KeyError("x")

    with pytest.raises(KeyError):
        runtime.run(boom)
