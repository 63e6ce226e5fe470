"""The OMERO.web launcher, the guest login OMERO.web relies on, and the ``web`` command."""

from __future__ import annotations

import stat
from typing import TYPE_CHECKING

import pytest

if TYPE_CHECKING:
    from cellprofiler_omero.commands.web import OmeroWeb
    from tests.web.conftest import WebEmulator, WebIds, WebSession


def test_demo_logs_in_to_omero_web_and_sees_the_demo_results(
        omero_web: OmeroWeb, web_session: WebSession, web_ids: WebIds) -> None:
    session = web_session("demo", "demo")
    datasets = session.get(omero_web.url + "api/v0/m/datasets/", timeout=60).json()["data"]
    assert web_ids.dataset in {d["@id"] for d in datasets}
    images = session.get(omero_web.url + f"api/v0/m/datasets/{web_ids.dataset}/images/",
                         timeout=60).json()["data"]
    assert {web_ids.image, web_ids.label_image} <= {i["@id"] for i in images}
    me = session.get(omero_web.url + "api/v0/m/experimenters/", timeout=60)
    assert me.status_code == 200
    # Django's secret key is private; the OMERODIR is ours alone.
    key = omero_web.home / "var" / "django_secret_key"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600


def test_a_wrong_password_is_refused_by_omero_web(omero_web: OmeroWeb,
                                                  web_session: WebSession) -> None:
    with pytest.raises(AssertionError, match="refused the login of demo"):
        web_session("demo", "not-the-password", fresh=True)


def test_the_guest_logs_in_with_any_password_as_on_a_real_server(
        web_emulator: WebEmulator) -> None:
    from omero.gateway import BlitzGateway

    emu = web_emulator.emulator
    for password in ("guest", "anything", ""):
        conn = BlitzGateway("guest", password, host=emu.host, port=emu.port)
        try:
            assert conn.connect(), conn.getLastError()
            assert conn.getUser().getName() == "guest"
        finally:
            conn.close()
