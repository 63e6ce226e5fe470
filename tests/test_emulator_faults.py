"""Each fault switch of the emulator, seen by an unmodified client."""

from __future__ import annotations

import time
from typing import Any

import Ice
import omero
import omero.clients
import pytest
import requests

from cellprofiler_omero.emulator import Emulator
from tests.conftest import pixels_of


def test_latency_is_added_to_ice_calls(faults: Emulator, blitz: Any) -> None:
    conn = blitz()
    admin = conn.getAdminService()
    faults.set_faults(latency_ms=300, ops=["getEventContext"])
    started = time.monotonic()
    admin.getEventContext()
    assert time.monotonic() - started >= 0.3


def test_connection_is_dropped_on_the_nth_call(faults: Emulator, blitz: Any) -> None:
    conn = blitz()
    query = conn.getQueryService()
    faults.set_faults(drop_after=2, ops=["findAllByQuery"])
    query.findAllByQuery("select p from Project p", None)
    with pytest.raises((Ice.ConnectionLostException, Ice.SocketException)):
        conn.c.sf.getQueryService().findAllByQuery("select p from Project p", None)


def test_connection_drops_with_a_probability(faults: Emulator, emulator: Emulator) -> None:
    faults.set_faults(drop_probability=1.0, ops=["getTile"], seed=3)
    client = omero.client(emulator.host, emulator.port)
    try:
        sf = client.createSession("demo", "demo")
        store = sf.createRawPixelsStore()
        store.setPixelsId(pixels_of(sf, emulator.seeded["fields"][0]), True)
        with pytest.raises((Ice.ConnectionLostException, Ice.SocketException)):
            store.getTile(0, 0, 0, 0, 0, 8, 8)
    finally:
        client.__del__()


def test_expiring_sessions_now_is_seen_by_the_client(faults: Emulator) -> None:
    client = omero.client(faults.host, faults.port)
    try:
        sf = client.createSession("other", "other")
        key = client.getSessionId()
        assert faults.expire_sessions(keys=[key]) == 1
        with pytest.raises(Ice.ObjectNotExistException):
            sf.getAdminService().getEventContext()
    finally:
        client.__del__()


def test_http_errors_with_a_probability(faults: Emulator, seeded: dict[str, Any]) -> None:
    client = omero.client(faults.host, faults.port)
    try:
        client.createSession("demo", "demo")
        faults.set_faults(http_error_probability=1.0)
        response = requests.get(f"{faults.http_url}/tile/{seeded['fields'][0]}/0/0/0",
                                headers={"X-OMERO-Session-Key": client.getSessionId()},
                                timeout=30)
        assert response.status_code in (500, 503)
    finally:
        client.closeSession()


def test_http_errors_for_the_next_n_requests_then_recovers(faults: Emulator,
                                                           seeded: dict[str, Any]) -> None:
    client = omero.client(faults.host, faults.port)
    try:
        client.createSession("demo", "demo")
        headers = {"X-OMERO-Session-Key": client.getSessionId()}
        url = f"{faults.http_url}/tile/{seeded['fields'][0]}/0/0/0"
        faults.set_faults(http_error_count=2)
        codes = [requests.get(url, params={"w": 4, "h": 4}, headers=headers,
                              timeout=30).status_code for _ in range(3)]
        assert codes[:2] != [200, 200] and set(codes[:2]) <= {500, 503} and codes[2] == 200
    finally:
        client.closeSession()


def test_http_connection_drop_is_seen(faults: Emulator, seeded: dict[str, Any]) -> None:
    faults.set_faults(http_drop_probability=1.0)
    with pytest.raises(requests.ConnectionError):
        requests.get(f"{faults.http_url}/tile/{seeded['fields'][0]}/0/0/0", timeout=30)


def test_options_failure_switch(faults: Emulator) -> None:
    faults.set_faults(http_options_fail=True)
    assert requests.options(f"{faults.http_url}/tile/", timeout=30).status_code == 500
