"""Concurrent work that fails like sequential work: one clear exception, not a group.

anyio task groups raise ``ExceptionGroup``; callers (and the session manager's
renew-and-retry) expect the library's own errors. ``task_group()`` re-raises the
most telling one: a session failure first, then any ``OmeroError``, then the rest.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator

import anyio
from anyio.abc import TaskGroup

from cellprofiler_omero.core.errors import AuthError, ConnectionLost, OmeroError


def _leaves(group: BaseExceptionGroup) -> list[BaseException]:
    out: list[BaseException] = []
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            out.extend(_leaves(exc))
        else:
            out.append(exc)
    return out


def most_telling(group: BaseExceptionGroup) -> BaseException:
    """The exception of a group that best explains the failure."""
    leaves = _leaves(group)

    def rank(exc: BaseException) -> int:
        if isinstance(exc, AuthError | ConnectionLost):
            return 0
        if isinstance(exc, OmeroError):
            return 1
        if isinstance(exc, Exception):
            return 2
        return 3

    return min(leaves, key=rank)


@contextlib.asynccontextmanager
async def task_group() -> AsyncIterator[TaskGroup]:
    """An anyio task group whose failure is one exception (see ``most_telling``)."""
    try:
        async with anyio.create_task_group() as tg:
            yield tg
    except BaseExceptionGroup as group:
        raise most_telling(group) from None
