"""Faults on demand: latency, dropped connections, expiring sessions, HTTP errors.

Deterministic for a given seed. The Ice and HTTP sides consult one ``Faults``
object before each call; tests change it at run time through the control endpoint
(``Emulator.set_faults``) or at start through command-line flags.
"""

from __future__ import annotations

import random
import threading
from dataclasses import asdict, dataclass, field, fields
from typing import Any


@dataclass
class FaultSettings:
    """What to inject. ``ops`` limits Ice faults to these operation names (empty: all)."""

    latency_ms: float = 0.0
    #: Drop the client's connection on the Nth matching Ice call from now (0: never).
    drop_after: int = 0
    #: Drop the client's connection on each matching Ice call with this probability.
    drop_probability: float = 0.0
    #: Answer HTTP tile requests with 500 or 503 with this probability.
    http_error_probability: float = 0.0
    #: Answer the next N HTTP tile requests with an error (then behave).
    http_error_count: int = 0
    #: Close the HTTP connection without answering with this probability.
    http_drop_probability: float = 0.0
    #: Answer HTTP OPTIONS with 500 (the service looks absent).
    http_options_fail: bool = False
    #: The pixel-buffer service cannot join any session (as one configured for another
    #: OMERO server): tile requests with a key answer 403 while Ice accepts the session.
    http_refuse_sessions: bool = False
    #: Images whose pixels the pixel-buffer service cannot read (an I/O failure, e.g. a
    #: binary repository it does not see): their tiles answer 404 while Ice serves them.
    http_unreadable_images: list[int] = field(default_factory=list)
    #: Drop after the call has run (its reply is lost) instead of before.
    drop_after_reply: bool = False
    ops: list[str] = field(default_factory=list)
    seed: int = 0

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> FaultSettings:
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"unknown fault settings: {', '.join(sorted(unknown))}")
        return cls(**data)


class Faults:
    """Thread-safe fault decisions."""

    def __init__(self, settings: FaultSettings | None = None) -> None:
        self._lock = threading.Lock()
        self.set(settings or FaultSettings())

    def set(self, settings: FaultSettings) -> None:
        with self._lock:
            self.settings = settings
            self._rng = random.Random(settings.seed)
            self._calls = 0
            self._http_errors_left = settings.http_error_count

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return asdict(self.settings)

    def _matches(self, op: str) -> bool:
        return not self.settings.ops or op in self.settings.ops

    def ice_latency(self, op: str) -> float:
        with self._lock:
            if self._matches(op):
                return self.settings.latency_ms / 1000.0
            return 0.0

    def ice_drop(self, op: str) -> bool:
        """Whether to drop the connection instead of answering this call."""
        with self._lock:
            s = self.settings
            if not self._matches(op):
                return False
            self._calls += 1
            if s.drop_after and self._calls == s.drop_after:
                return True
            return bool(s.drop_probability) and self._rng.random() < s.drop_probability

    def http_fault(self) -> str | None:
        """``"drop"``, ``"500"``, ``"503"`` or ``None`` for one tile request."""
        with self._lock:
            s = self.settings
            if s.latency_ms:
                pass  # latency is applied by the caller outside the lock
            if self._http_errors_left > 0:
                self._http_errors_left -= 1
                return "503" if self._http_errors_left % 2 else "500"
            if s.http_drop_probability and self._rng.random() < s.http_drop_probability:
                return "drop"
            if s.http_error_probability and self._rng.random() < s.http_error_probability:
                return self._rng.choice(["500", "503"])
            return None

    def http_latency(self) -> float:
        with self._lock:
            return self.settings.latency_ms / 1000.0
