"""Repeated timing of one benchmark pass, and the figures every path reports.

A pass is a function that does the work once and returns how much it moved (bytes,
rows, image sets). Warm-up passes run first and are not timed: they open what a
long-running program would have open already and fill the page cache. The median of
the timed passes is what the ratios use (robust to one slow pass on a busy two-core
machine); the best is kept too.
"""

from __future__ import annotations

import contextlib
import logging
import statistics
import time
import traceback
from collections.abc import Callable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

#: One pass of a path: does the work once, returns how much it moved.
Pass = Callable[[], float]
#: Opens a path (sessions, clients) and yields its pass; closes it on exit.
PathFactory = Callable[[], AbstractContextManager[Pass]]

#: The server's round-trip counter (the harness sets the emulator's ``call_counts``):
#: each timed pass then records the Ice calls and HTTP requests it made, by operation.
#: Read outside the timed window; passes run one at a time, so the difference is theirs.
round_trip_counter: Callable[[], dict[str, int]] | None = None


def _calls_now() -> dict[str, int] | None:
    return None if round_trip_counter is None else round_trip_counter()


def _calls_since(before: dict[str, int] | None) -> dict[str, int] | None:
    """The calls made since ``before`` was read, by operation."""
    if before is None or round_trip_counter is None:
        return None
    after = round_trip_counter()
    return {op: n - before.get(op, 0) for op, n in sorted(after.items())
            if n != before.get(op, 0)}


@dataclass
class Timing:
    """Seconds of each timed pass and the amount one pass moves (bytes, rows…)."""

    amount: float
    unit: str = "MB/s"
    seconds: list[float] = field(default_factory=list)
    extra: dict[str, Any] = field(default_factory=dict)
    #: Round trips of the last timed pass by operation (when a counter is set).
    round_trips: dict[str, int] | None = None

    @property
    def best(self) -> float:
        return min(self.seconds)

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)

    def rate(self, seconds: float) -> float:
        """Amount per second; bytes become MB (10⁶) per second."""
        scale = 1e6 if self.unit == "MB/s" else 1.0
        return self.amount / scale / seconds if seconds > 0 else float("inf")

    def to_json(self) -> dict[str, Any]:
        calls = {} if self.round_trips is None else {
            "round_trips": self.round_trips,
            "round_trips_per_pass": sum(self.round_trips.values())}
        return {"amount": self.amount, "unit": self.unit, "seconds": self.seconds,
                "best_s": self.best, "median_s": self.median,
                "best_rate": self.rate(self.best), "median_rate": self.rate(self.median),
                **calls, **self.extra}


def repeat(one_pass: Pass, *, repetitions: int, warmup: int = 1,
           unit: str = "MB/s") -> Timing:
    """Run ``one_pass`` ``warmup`` times untimed, then ``repetitions`` times timed."""
    amount = 0.0
    for _ in range(warmup):
        amount = float(one_pass())
    timing = Timing(amount, unit)
    for _ in range(repetitions):
        before = _calls_now()
        started = time.perf_counter()
        amount = float(one_pass())
        timing.seconds.append(time.perf_counter() - started)
        calls = _calls_since(before)
        if calls is not None:
            timing.round_trips = calls
    timing.amount = amount
    return timing


def measure(path: PathFactory, *,
            repetitions: int, warmup: int = 1, unit: str = "MB/s") -> dict[str, Any]:
    """Open a path (a context manager yielding its pass), time it, close it.

    A failing path gives ``{"error": …}`` instead of raising: one broken path must not
    cost the figures of the others.
    """
    try:
        with path() as one_pass:
            return repeat(one_pass, repetitions=repetitions, warmup=warmup,
                          unit=unit).to_json()
    except Exception as exc:
        log.debug("path failed:\n%s", traceback.format_exc())
        return {"error": describe(exc)}


def adaptive_rounds(most: int, round_seconds: float, budget_s: float | None,
                    least: int = 3) -> int:
    """Timed rounds: ``most``, fewer when one round is long (``budget_s`` split over
    rounds), never fewer than ``least`` (a median of three at the very least)."""
    if budget_s is None or round_seconds <= 0:
        return most
    return max(min(least, most), min(most, int(budget_s // round_seconds)))


def measure_interleaved(paths: Mapping[str, PathFactory], *, repetitions: int,
                        warmup: int = 1, unit: str = "MB/s",
                        budget_s: float | None = None) -> dict[str, dict[str, Any]]:
    """Time several paths round-robin: pass 1 of each, then pass 2 of each, …

    Paths compared closely (a framework against the bare client) then share whatever
    else the machine was doing at the time — on two cores, shared with the server and
    with other people's work, that drift is larger than the differences measured. A
    path that fails is recorded with its error and leaves the rotation.

    With ``budget_s``, the first timed round (after the warm-up, which pays one-time
    costs) sets how many timed rounds there are: ``repetitions`` at most, fewer when a
    round is long (``adaptive_rounds``), never fewer than three.
    """
    results: dict[str, dict[str, Any]] = {}
    with contextlib.ExitStack() as stack:
        passes: dict[str, Pass] = {}
        for name, path in paths.items():
            try:
                passes[name] = stack.enter_context(path())
            except Exception as exc:
                log.debug("path %s failed to open:\n%s", name, traceback.format_exc())
                results[name] = {"error": describe(exc)}
        timings = {name: Timing(0.0, unit) for name in passes}
        rounds = warmup + repetitions
        round_number = 0
        while round_number < rounds:
            round_started = time.perf_counter()
            for name in list(passes):
                try:
                    before = _calls_now()
                    started = time.perf_counter()
                    amount = float(passes[name]())
                    elapsed = time.perf_counter() - started
                    calls = _calls_since(before)
                except Exception as exc:
                    log.debug("path %s failed:\n%s", name, traceback.format_exc())
                    results[name] = {"error": describe(exc)}
                    del passes[name]
                    continue
                timings[name].amount = amount
                if round_number >= warmup:
                    timings[name].seconds.append(elapsed)
                    if calls is not None:
                        timings[name].round_trips = calls
            if round_number == warmup:  # the first timed round: the warm-up's is slower
                rounds = warmup + adaptive_rounds(
                    repetitions, time.perf_counter() - round_started, budget_s)
            round_number += 1
        for name in passes:
            results[name] = timings[name].to_json()
            results[name]["interleaved_with"] = sorted(set(passes) - {name})
    return {name: results[name] for name in paths}


def describe(exc: BaseException) -> str:
    """One line naming an exception (its first line of text, no traceback)."""
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}"[:300] if text else type(exc).__name__
