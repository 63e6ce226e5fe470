"""Rules a real OMERO.server enforces, and the emulator with it (issue 12, §1.4 and §1.5).

Each rule is mirrored from the real server's source:

* config visibility -- ome/omero-server ``ome/logic/ConfigImpl.java`` (``getConfigValue``
  raises ``SecurityViolation("Cannot read configuration: KEY")`` when
  ``PreferenceContext.canRead`` says no), ome/omero-common ``ome/system/PreferenceContext.java``
  and ``ome/system/Preference.java`` (``all`` answers everyone, ``hidden`` no one, anything
  else administrators only) and ``src/main/resources/ome/config.xml`` (which keys are which);
* user session limits -- ome/omero-server ``ome/services/sessions/SessionBean.java``
  (``createUserSession`` sets the timeouts through an untrusted update) and
  ``SessionManagerImpl.java`` (``parseAndSetTimeouts``);
* the table's file size -- ome/omero-py ``omero/tables.py`` (``TableI.close`` saves the file
  through a RawFileStore) and ome/omero-server ``ome/services/RawFileBean.java`` (``save``
  sets the size, and the hash only for a file with a hasher).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import omero
import omero.clients
import omero.columns
import omero.grid
import pytest
from omero.rtypes import unwrap

from cellprofiler_omero.emulator import Emulator

MAX_TTL_MS = 3_600_000
MAX_TTI_MS = 1_200_000


@pytest.fixture
def login(emulator: Emulator) -> Iterator[Any]:
    """Plain omero.client sessions on the shared emulator (closed after the test)."""
    made: list[Any] = []

    def make(user: str, password: str, server: Emulator = emulator) -> Any:
        client = omero.client(server.host, server.port)
        made.append(client)
        return client.createSession(user, password)

    yield make
    for client in made:
        client.__del__()


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Emulator]:
    """A server whose site sets the user session limits."""
    config = {"omero.sessions.max_user_time_to_live": str(MAX_TTL_MS),
              "omero.sessions.max_user_time_to_idle": str(MAX_TTI_MS)}
    with Emulator(tmp_path_factory.mktemp("limited"), seed="users",
                  server_config=config) as emu:
        yield emu


# -- config visibility ---------------------------------------------------------------------

@pytest.mark.parametrize("key", [
    "omero.router.insecure", "omero.pixeldata.max_plane_width",
    "omero.pixeldata.tile_height", "omero.sessions.timeout",
    "omero.sessions.max_user_time_to_idle", "omero.sessions.max_user_time_to_live",
    "omero.client.viewer.roi_limit", "omero.version", "omero.mail.config"])
def test_keys_visible_to_all_answer_a_non_admin(login: Any, key: str) -> None:
    sf = login("demo", "demo")
    assert sf.getConfigService().getConfigValue(key) != ""


@pytest.mark.parametrize("key", ["omero.policy.binary_access", "omero.data.dir",
                                 "omero.some.undeclared_key"])
def test_admin_only_keys_are_a_security_violation_for_a_non_admin(login: Any, key: str) -> None:
    sf = login("demo", "demo")
    with pytest.raises(omero.SecurityViolation) as info:
        sf.getConfigService().getConfigValue(key)
    assert info.value.message == f"Cannot read configuration: {key}"


def test_admins_read_admin_only_keys(login: Any) -> None:
    sf = login("root", "omero")
    assert sf.getConfigService().getConfigValue("omero.policy.binary_access")


@pytest.mark.parametrize("user", [("demo", "demo"), ("root", "omero")])
def test_hidden_keys_answer_no_one_not_even_an_admin(login: Any, user: tuple[str, str]) -> None:
    sf = login(*user)
    with pytest.raises(omero.SecurityViolation) as info:
        sf.getConfigService().getConfigValue("omero.db.name")
    assert info.value.message == "Cannot read configuration: omero.db.name"


def test_old_key_names_resolve_to_their_preference_before_the_check(login: Any) -> None:
    sf = login("root", "omero")
    with pytest.raises(omero.SecurityViolation) as info:
        sf.getConfigService().getConfigValue("database.name")
    assert info.value.message == "Cannot read configuration: omero.db.name"


def test_config_values_by_pattern_leave_out_what_the_caller_may_not_read(login: Any) -> None:
    values = login("demo", "demo").getConfigService().getConfigValues(r"^omero\.")
    assert "omero.router.insecure" in values and "omero.sessions.timeout" in values
    assert "omero.db.name" not in values and "omero.policy.binary_access" not in values


def test_client_config_values_answer_a_non_admin(login: Any) -> None:
    values = login("demo", "demo").getConfigService().getClientConfigValues()
    assert values["omero.client.viewer.roi_limit"] == "2000"
    assert all(key.startswith("omero.client.") for key in values)


def test_blitzgateway_logs_in_and_reads_its_settings_as_a_non_admin(blitz: Any) -> None:
    # The default (insecure) login asks for omero.router.insecure and moves to it.
    conn = blitz("demo")
    assert not conn.c.isSecure()
    assert conn.getMaxPlaneSize() == (2048, 2048)
    assert conn.getRoiLimitSetting() == 2000
    assert conn.getClientSettings()["omero.client.viewer.roi_limit"] == "2000"
    assert conn.getDownloadAsMaxSizeSetting() == 144000000
    assert conn.canCreate() is True


# -- user session limits -------------------------------------------------------------------

def test_without_a_time_to_live_maximum_any_user_session_is_allowed(login: Any) -> None:
    # omero.sessions.max_user_time_to_live is 0 by default, and then the real server
    # checks neither timeout (the idle check is guarded by the time-to-live maximum).
    sessions = login("demo", "demo").getSessionService()
    forever = sessions.createUserSession(0, 10**9, "demo")
    assert (unwrap(forever.getTimeToLive()), unwrap(forever.getTimeToIdle())) == (0, 10**9)


def test_a_user_session_that_lives_forever_is_refused_where_the_site_sets_a_maximum(
        login: Any, limited: Emulator) -> None:
    sessions = login("demo", "demo", limited).getSessionService()
    with pytest.raises(omero.SecurityViolation) as info:
        sessions.createUserSession(0, 60_000, "demo")
    assert info.value.message == f"Cannot modify timeToLive beyond maximum: {MAX_TTL_MS}"


def test_a_user_session_living_longer_than_the_maximum_is_refused(
        login: Any, limited: Emulator) -> None:
    sessions = login("demo", "demo", limited).getSessionService()
    with pytest.raises(omero.SecurityViolation,
                       match=f"Cannot modify timeToLive beyond maximum: {MAX_TTL_MS}"):
        sessions.createUserSession(MAX_TTL_MS + 1, 60_000, "demo")


@pytest.mark.parametrize("tti", [MAX_TTI_MS + 1, 0])
def test_idle_time_above_the_maximum_or_unlimited_is_refused_where_the_site_sets_a_maximum(
        login: Any, limited: Emulator, tti: int) -> None:
    sessions = login("demo", "demo", limited).getSessionService()
    with pytest.raises(omero.SecurityViolation) as info:
        sessions.createUserSession(MAX_TTL_MS, tti, "demo")
    assert info.value.message == f"Cannot modify timeToIdle beyond maximum: {MAX_TTI_MS}"


def test_a_user_session_within_the_limits_gets_what_it_asked_for(
        login: Any, limited: Emulator) -> None:
    sessions = login("demo", "demo", limited).getSessionService()
    made = sessions.createUserSession(MAX_TTL_MS, MAX_TTI_MS, "demo")
    assert (unwrap(made.getTimeToLive()), unwrap(made.getTimeToIdle())) == (MAX_TTL_MS,
                                                                            MAX_TTI_MS)
    joined = omero.client(limited.host, limited.port)
    try:
        joined.joinSession(unwrap(made.getUuid()))
        assert joined.getSession().getAdminService().getEventContext().userName == "demo"
    finally:
        joined.__del__()


def test_a_non_admin_reads_the_session_limits(login: Any, limited: Emulator) -> None:
    config = login("demo", "demo", limited).getConfigService()
    assert config.getConfigValue("omero.sessions.max_user_time_to_live") == str(MAX_TTL_MS)
    assert config.getConfigValue("omero.sessions.max_user_time_to_idle") == str(MAX_TTI_MS)


# -- OMERO.tables: the file's size --------------------------------------------------------

def _new_table(sf: Any, name: str) -> Any:
    table = sf.sharedResources().newTable(1, name)
    table.initialize([omero.columns.LongColumnI("ImageNumber", "", []),
                      omero.columns.DoubleColumnI("Area", "", [])])
    table.addData([omero.columns.LongColumnI("ImageNumber", "", list(range(500))),
                   omero.columns.DoubleColumnI("Area", "", [1.5] * 500)])
    return table


def _file(sf: Any, file_id: int) -> Any:
    return sf.getQueryService().get("OriginalFile", file_id, {"omero.group": "-1"})


def _bytes_on_server(sf: Any, file_id: int) -> int:
    store = sf.createRawFileStore()
    try:
        store.setFileId(file_id)
        return int(store.size())
    finally:
        store.close()


def test_a_table_file_has_no_size_until_the_table_is_closed(login: Any) -> None:
    sf = login("demo", "demo")
    table = _new_table(sf, "open.h5")
    file_id = unwrap(table.getOriginalFile().getId())
    assert not unwrap(_file(sf, file_id).getSize())
    table.close()


def test_closing_a_written_table_sets_its_file_size(login: Any) -> None:
    sf = login("demo", "demo")
    table = _new_table(sf, "closed.h5")
    file_id = unwrap(table.getOriginalFile().getId())
    table.close()
    saved = _file(sf, file_id)
    size = unwrap(saved.getSize())
    assert size > 0 and size == _bytes_on_server(sf, file_id)
    # newTable gives the file no hasher, so RawFileBean.save computes no hash for it.
    assert saved.getHasher() is None and not unwrap(saved.getHash())


def test_closing_a_table_opened_only_to_read_changes_nothing(login: Any) -> None:
    sf = login("demo", "demo")
    table = _new_table(sf, "read.h5")
    file_obj = table.getOriginalFile()
    table.close()
    size = unwrap(_file(sf, unwrap(file_obj.getId())).getSize())
    reader = sf.sharedResources().openTable(file_obj)
    assert reader.getNumberOfRows() == 500
    reader.close()
    assert unwrap(_file(sf, unwrap(file_obj.getId())).getSize()) == size

