"""What the network between a client and this server costs: round trips counted, time added.

``CallCounter`` counts every Ice call and HTTP request the emulator answers, by operation
(``"IUpdate.saveAndReturnArray"``, ``"RawPixelsStore.getTile"``, ``"HTTP GET /tile"``)
and by session, so tests and benchmarks can say how many round trips a client made.
A real server's access log and Ice call tracing hold the same facts.

``Network`` makes the loopback behave like a network of a given latency and bandwidth:
each call waits ``latency_ms`` (one round trip) and its request and reply bytes pass
through two shared links (client → server and server → client), each carrying
``bandwidth_mbit`` at most. Links are shared and first come, first served, so
concurrent calls split the bandwidth as they would on a wire instead of each getting
all of it. Ice message sizes are computed from the values (``ice_size``): byte
sequences exactly, other values at their Ice encoding sizes (close, not exact); TCP/IP
framing is not counted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass, fields
from typing import Any

import Ice

#: Ice's message header (magic, versions, type, compression, size) plus a request id.
_ICE_HEADER = 14 + 4
#: A reply's header: message header, request id, reply status, encapsulation header.
ICE_REPLY_OVERHEAD = _ICE_HEADER + 1 + 6


class CallCounter:
    """Thread-safe counts of calls by operation, overall and per session key."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._all: dict[str, int] = {}
        self._by_session: dict[str, dict[str, int]] = {}

    def count(self, operation: str, session: str | None = None) -> None:
        """One more call of ``operation`` (by the session with key ``session``, if known)."""
        with self._lock:
            self._all[operation] = self._all.get(operation, 0) + 1
            if session:
                per = self._by_session.setdefault(session, {})
                per[operation] = per.get(operation, 0) + 1

    def counts(self, session: str | None = None) -> dict[str, int]:
        """Calls since the start or the last reset: all, or one session's."""
        with self._lock:
            if session is None:
                return dict(self._all)
            return dict(self._by_session.get(session, {}))

    def reset(self) -> None:
        with self._lock:
            self._all.clear()
            self._by_session.clear()


@dataclass
class NetworkSettings:
    """The network the emulator pretends to be behind (0 means none of that cost)."""

    #: Added to every Ice call and HTTP request: one round trip's time.
    latency_ms: float = 0.0
    #: Bits per second, in millions, of each direction of the link (0: unlimited).
    bandwidth_mbit: float = 0.0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> NetworkSettings:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown network settings: {', '.join(sorted(unknown))}")
        settings = cls(**{k: float(v) for k, v in data.items()})
        if settings.latency_ms < 0 or settings.bandwidth_mbit < 0:
            raise ValueError("latency_ms and bandwidth_mbit cannot be negative")
        return settings


class Link:
    """One direction of a wire: transfers queue behind each other at ``rate`` bytes/s."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._free_at = 0.0
        self.rate = 0.0

    def carry(self, nbytes: int) -> None:
        """Wait until ``nbytes`` have crossed the link, after whatever was queued first."""
        if self.rate <= 0 or nbytes <= 0:
            return
        with self._lock:
            now = time.monotonic()
            start = max(now, self._free_at)
            self._free_at = start + nbytes / self.rate
            until = self._free_at
        wait = until - now
        if wait > 0:
            time.sleep(wait)


class Network:
    """The emulator's network settings and its two links."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.settings = NetworkSettings()
        self.upstream = Link()
        self.downstream = Link()

    def set(self, settings: NetworkSettings) -> None:
        with self._lock:
            self.settings = settings
            rate = settings.bandwidth_mbit * 1e6 / 8
            self.upstream.rate = rate
            self.downstream.rate = rate

    def snapshot(self) -> dict[str, float]:
        with self._lock:
            return asdict(self.settings)

    @property
    def shaping(self) -> bool:
        """Whether transfers cost time (sizes need computing only then)."""
        return self.settings.bandwidth_mbit > 0

    def round_trip(self) -> None:
        """Wait one round trip's latency."""
        latency = self.settings.latency_ms
        if latency > 0:
            time.sleep(latency / 1000.0)

    def request(self, nbytes: int) -> None:
        """A request of ``nbytes`` travels from the client to the server."""
        self.upstream.carry(nbytes)

    def reply(self, nbytes: int) -> None:
        """A reply of ``nbytes`` travels from the server to the client."""
        self.downstream.carry(nbytes)


def ice_request_size(operation: str, current: Any, args: Iterable[Any]) -> int:
    """Bytes of an Ice request message carrying ``args`` (header, identity, operation…)."""
    identity = getattr(current, "id", None)
    header = _ICE_HEADER + 6 + 2 + len(operation) + 1
    if identity is not None:
        header += len(identity.name) + len(identity.category) + 2
    context = getattr(current, "ctx", None) or {}
    header += 1 + sum(len(k) + len(v) + 2 for k, v in context.items())
    return header + sum(ice_size(a) for a in args)


def ice_reply_size(result: Any) -> int:
    """Bytes of an Ice reply message carrying ``result``."""
    return ICE_REPLY_OVERHEAD + ice_size(result)


def _size_prefix(n: int) -> int:
    return 1 if n < 255 else 5


def ice_size(value: Any) -> int:
    """The Ice encoding size of ``value``, close enough to time its transfer.

    Exact for byte sequences and strings; numbers at their wire widths (ints as 8 bytes:
    the value alone does not say int or long); objects as their fields plus a type id
    or index; each object once, as the encoding sends shared objects once.
    """
    seen: set[int] = set()
    total = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        if item is None or isinstance(item, bool):
            total += 1
        elif isinstance(item, bytes | bytearray | memoryview):
            n = len(item)
            total += n + _size_prefix(n)
        elif isinstance(item, str):
            n = len(item.encode("utf-8", "replace"))
            total += n + _size_prefix(n)
        elif isinstance(item, int | float):
            total += 8
        elif hasattr(item, "nbytes") and hasattr(item, "dtype"):  # numpy arrays, scalars
            total += int(item.nbytes) + 5
        elif isinstance(item, list | tuple):
            total += _size_prefix(len(item))
            if item and len(item) > 8 and isinstance(item[0], float | int) and isinstance(
                    item[-1], float | int):
                # A column of numbers: no need to visit each.
                total += 8 * len(item) if not isinstance(item[0], bool) else len(item)
            else:
                stack.extend(item)
        elif isinstance(item, dict):
            total += _size_prefix(len(item))
            stack.extend(item.keys())
            stack.extend(item.values())
        elif isinstance(item, Ice.ObjectPrx):
            total += len(item.ice_toString())
        elif isinstance(item, Ice.EnumBase):
            total += 1
        elif hasattr(item, "__dict__"):
            if id(item) in seen:
                total += 1  # an index to the instance sent before
                continue
            seen.add(id(item))
            total += 4 if isinstance(item, Ice.Object) else 0
            # Name-mangled attributes (``_DetailsI__client``) are Python-side state of
            # omero-py's classes, never Slice data members: they are not sent.
            stack.extend(v for k, v in vars(item).items() if "__" not in k)
        else:
            total += 8
    return total
