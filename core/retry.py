"""Retries within a time budget: exponential backoff with jitter, for calls safe to repeat.

Which failures are worth another attempt is said by the transports: an error with
``retryable = True`` (a dropped connection, a server that is busy or restarting) is
retried; everything else (permission denied, bad input, wrong password, not found)
is raised at once. ``NoTransport`` is retryable when every transport's failure was.

Waits grow exponentially from ``retry.initial_delay_seconds`` to at most
``retry.max_delay_seconds``, each drawn at random below its bound (full jitter: the
analysis workers of one run, failing together, do not come back in step). No attempt
starts after ``retry.budget_seconds``; then ``RetriesExhausted`` says how many attempts
were made over how long. Built on tenacity (pure Python; no omero or Ice).

Only calls that cannot do anything twice are given to ``retrying``: reads, look-ups,
logins, and writes that look for their own earlier result first (uploads by their
client key, table rows by their key columns).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import anyio
from tenacity import (
    AsyncRetrying,
    RetryCallState,
    RetryError,
    retry_if_exception,
    stop_before_delay,
    wait_random_exponential,
)

from cellprofiler_omero.core.config import RetrySettings
from cellprofiler_omero.core.errors import NoTransport, OmeroError, RetriesExhausted

log = logging.getLogger(__name__)
T = TypeVar("T")


def is_retryable(exc: BaseException) -> bool:
    """Whether another attempt may succeed where ``exc`` failed (the transport says so)."""
    if isinstance(exc, NoTransport):
        return bool(exc.causes) and all(is_retryable(cause) for cause in exc.causes)
    return isinstance(exc, OmeroError) and exc.retryable


def _log_retry(what: str) -> Callable[[RetryCallState], None]:
    def before_sleep(state: RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome is not None else None
        wait = state.next_action.sleep if state.next_action is not None else 0.0
        log.info("%s failed (attempt %d: %s); trying again in %.1f s", what,
                 state.attempt_number, type(exc).__name__, wait)

    return before_sleep


async def retrying(op: Callable[[], Awaitable[T]], *, what: str, settings: RetrySettings,
                   retry_if: Callable[[BaseException], bool] = is_retryable) -> T:
    """``await op()``, again after each failure ``retry_if`` accepts, within the budget.

    ``what`` names the call for the log and the final error ("reading image 5").
    A failure ``retry_if`` refuses is raised as it is; when the budget is spent,
    ``RetriesExhausted`` carries the attempts, the time taken and the last failure.
    """
    if settings.budget_seconds <= 0:
        return await op()  # retries turned off: the first failure is the answer
    started = time.monotonic()
    retryer = AsyncRetrying(
        sleep=anyio.sleep,
        stop=stop_before_delay(settings.budget_seconds),
        wait=wait_random_exponential(multiplier=settings.initial_delay_seconds,
                                     max=settings.max_delay_seconds),
        retry=retry_if_exception(retry_if),
        before_sleep=_log_retry(what),
    )
    try:
        async for attempt in retryer:
            with attempt:
                return await op()
    except RetryError as exc:
        last = exc.last_attempt.exception()
        if not isinstance(last, OmeroError):  # pragma: no cover - retry_if accepts only these
            raise
        raise exhausted(what, exc.last_attempt.attempt_number,
                        time.monotonic() - started, settings, last) from last
    raise AssertionError("unreachable: tenacity either returns or raises")  # pragma: no cover


def exhausted(what: str, attempts: int, elapsed: float, settings: RetrySettings,
              last: OmeroError) -> RetriesExhausted:
    """The error after the budget: what failed, how often, for how long, what to do."""
    return RetriesExhausted(
        f"Gave up {what} after {attempts} attempt{'s' if attempts != 1 else ''} over "
        f"{elapsed:.1f} s (retry budget {settings.budget_seconds:g} s); the last failure: "
        f"{last.message}",
        what=what, attempts=attempts, elapsed_seconds=elapsed,
        budget_seconds=settings.budget_seconds, last_cause=last,
        hint="Check that the OMERO server is up and the network to it is stable, then run "
             "again (work already saved is found, not repeated). To wait longer through "
             "outages, raise retry.budget_seconds (TOML [retry] or "
             "CELLPROFILER_OMERO_RETRY_BUDGET_SECONDS).")
