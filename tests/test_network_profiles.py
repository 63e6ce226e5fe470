"""Round trips are counted, and a network profile costs what its bandwidth says.

The emulator counts every Ice call and HTTP request it answers (``Emulator.call_counts``)
and, under a network profile (``Emulator.set_network``), makes each call wait its round
trip and the transfer of its bytes. The benchmarks report both; these tests pin the
counts the product makes today (``benchmarks/README.md``, "Round trips").
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import requests

from cellprofiler_omero.emulator import Emulator, EmulatorError


@pytest.fixture
def shaped(emulator: Emulator) -> Iterator[Emulator]:
    """The shared emulator; its network is loopback again after the test."""
    yield emulator
    emulator.set_network()


def test_a_blitz_getobject_is_two_ice_calls_in_its_session(emulator: Emulator, seeded: Any,
                                                           blitz: Any) -> None:
    conn = blitz()
    key = conn.c.getSessionId()
    before = emulator.call_counts(key)
    conn.getObject("Image", seeded["fields"][0])
    after = emulator.call_counts(key)
    made = {op: after[op] - before.get(op, 0) for op in after if after[op] != before.get(op)}
    # BlitzGateway asks its session for a query service once, then runs one query.
    assert made == {"ServiceFactory.getQueryService": 1, "IQuery.findByQuery": 1}
    # The same calls are in the emulator's totals, which a reset zeroes.
    assert emulator.call_counts()["IQuery.findByQuery"] >= 1
    emulator.reset_call_counts()
    assert emulator.call_counts(key) == {}
    conn.getObject("Image", seeded["fields"][0])
    assert emulator.call_counts(key, reset=True) == {"IQuery.findByQuery": 1}
    assert emulator.call_counts(key) == {}


def test_http_tile_requests_are_counted_by_session_and_control_requests_are_not(
        emulator: Emulator, seeded: Any, blitz: Any) -> None:
    conn = blitz()
    key = conn.c.getSessionId()
    emulator.reset_call_counts()
    url = f"{emulator.http_url}/tile/{seeded['fields'][0]}/0/0/0?w=16&h=16"
    assert requests.get(url, headers={"X-OMERO-Session-Key": key}, timeout=30).ok
    assert requests.options(f"{emulator.http_url}/tile/", timeout=30).ok
    emulator.http_requests()
    assert emulator.call_counts(key) == {"HTTP GET /tile": 1}
    assert emulator.call_counts() == {"HTTP GET /tile": 1, "HTTP OPTIONS /tile": 1}


def test_network_settings_are_checked(shaped: Emulator) -> None:
    assert shaped.set_network(latency_ms=2, bandwidth_mbit=1000) == {
        "latency_ms": 2.0, "bandwidth_mbit": 1000.0}
    with pytest.raises(EmulatorError, match="cannot be negative"):
        shaped.set_network(latency_ms=-1)
    assert shaped.set_network() == {"latency_ms": 0.0, "bandwidth_mbit": 0.0}
