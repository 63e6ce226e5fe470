"""The browser goes through the connection's role, and extensions through pluggy hooks.

Against the shared emulator, without wx: the GUI browser's data source
(``cp_integration.gui.source``) imports no wx, and the GUI's hooks are driven through
plugin objects registered with the session manager's registry, as the GUI registers its
own.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import pytest

from cellprofiler_omero.core import session as core_session
from cellprofiler_omero.core.errors import AuthError
from cellprofiler_omero.core.hookspecs import hookimpl
from cellprofiler_omero.core.refs import ObjectRef
from cellprofiler_omero.core.roles import SessionInfo
from cellprofiler_omero.core.session import SessionManager
from cellprofiler_omero.emulator import Emulator
from tests.conftest import run


class SessionEvents:
    """A plugin that records every ``omero_session_changed`` call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, SessionInfo | None]] = []

    @hookimpl
    def omero_session_changed(self, old: SessionInfo | None, new: SessionInfo | None,
                              reason: str) -> None:
        self.calls.append((reason, new))

    @property
    def reasons(self) -> list[str]:
        return [reason for reason, _ in self.calls]


@pytest.fixture
def watched(manager: SessionManager) -> SessionEvents:
    events = SessionEvents()
    manager.registry.register(events, "test-session-events")
    return events


def _blitz_groups(blitz: Any) -> list[tuple[int, str]]:
    """The demo user's groups as BlitzGateway lists them, without the built-in ones."""
    conn = blitz()
    roles = conn.getAdminService().getSecurityRoles()
    builtin = {roles.systemGroupId, roles.userGroupId, roles.guestGroupId}
    current = conn.getEventContext().groupId
    # Its query fetch-joins each group's members, so a group may come once per member.
    groups = {g.getId(): g.getName() for g in conn.getGroupsMemberOf()
              if g.getId() not in builtin}
    return sorted(groups.items(), key=lambda g: (g[0] != current, g[1].lower()))


def _blitz_thumbnails(blitz: Any, image_ids: list[int], size: int) -> dict[int, bytes]:
    """Each image's thumbnail from a BlitzGateway session, one ThumbnailStore per image
    (``ImageWrapper.getThumbnail``'s path, with the store call the emulator answers)."""
    from omero.rtypes import rint

    conn = blitz()
    conn.SERVICE_OPTS.setOmeroGroup(-1)
    out = {}
    for image_id in image_ids:
        image = conn.getObject("Image", image_id)
        store = conn.createThumbnailStore()
        try:
            store.setPixelsId(image.getPrimaryPixels().getId(), conn.SERVICE_OPTS)
            out[image_id] = store.getThumbnailByLongestSide(rint(size), conn.SERVICE_OPTS)
        finally:
            store.close()
    return out


# -- browsing through the role -------------------------------------------------------------

def test_browser_data_source_imports_without_wx() -> None:
    import subprocess
    import sys

    # ``None`` in sys.modules makes any ``import wx`` fail, even where wx is installed.
    code = ("import sys\nsys.modules['wx'] = None\n"
            "from cellprofiler_omero.cp_integration.gui.source import BrowseSource\n"
            "print(sorted(m for m, mod in sys.modules.items() if mod is not None\n"
            "             and m.startswith(('wx', 'omero', 'Ice'))))")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"  # nor the Ice transport: only the role


def test_group_listing_renews_a_lapsed_session_and_matches_blitzgateway(
        manager: SessionManager, emulator: Emulator, watched: SessionEvents,
        blitz: Any) -> None:
    from cellprofiler_omero.cp_integration.gui.source import GROUP, BrowseSource

    old_key = run(manager.connection).session_key
    assert emulator.expire_sessions(keys=[old_key]) == 1
    roots = run(BrowseSource(manager).roots)
    assert "renew" in watched.reasons
    assert run(manager.connection).session_key != old_key
    assert [(e.node.id, e.node.name) for e in roots] == _blitz_groups(blitz)
    assert all(e.node.kind == GROUP and e.group_id == e.node.id for e in roots)


def test_group_counts_are_what_its_pages_hold(manager: SessionManager) -> None:
    from cellprofiler_omero.cp_integration.gui.source import BrowseSource

    source = BrowseSource(manager)
    for root in run(source.roots):
        page = run(source.children, root, 0, 1000)
        assert root.node.child_count == page.total == len(page.items)


def test_group_top_level_is_what_blitzgateway_lists_in_that_group(
        manager: SessionManager, blitz: Any) -> None:
    from cellprofiler_omero.cp_integration.gui.source import BrowseSource

    source = BrowseSource(manager)
    conn = blitz()
    uid = conn.getUserId()
    for root in run(source.roots):
        conn.SERVICE_OPTS.setOmeroGroup(root.node.id)
        expected = []
        for kind, orphans in (("Project", False), ("Dataset", True), ("Screen", False),
                              ("Plate", True)):
            objs = (conn.listOrphans(kind, eid=uid) if orphans
                    else conn.getObjects(kind, opts={"owner": uid}))
            expected += sorted(((kind, o.getId(), o.getName()) for o in objs
                                if o.getDetails().getGroup().getId() == root.node.id),
                               key=lambda k: (k[2].lower(), k[1]))
        page = run(source.children, root, 0, 1000)
        assert [(n.kind, n.id, n.name) for n in page.items] == expected


def test_thumbnails_renew_a_lapsed_session_and_match_blitzgateway(
        manager: SessionManager, emulator: Emulator, watched: SessionEvents,
        seeded: dict[str, Any], blitz: Any) -> None:
    from cellprofiler_omero.cp_integration.gui.source import BrowseSource

    ids = list(seeded["fields"])
    emulator.expire_sessions(keys=[run(manager.connection).session_key])
    thumbs = run(BrowseSource(manager).thumbnails, ids, 64)
    assert "renew" in watched.reasons
    assert thumbs == _blitz_thumbnails(blitz, ids, 64)
    assert all(data[:2] == b"\xff\xd8" for data in thumbs.values())  # JPEG


def test_thumbnails_leave_out_unknown_images(manager: SessionManager,
                                             seeded: dict[str, Any]) -> None:
    from cellprofiler_omero.cp_integration.gui.source import BrowseSource

    first = seeded["fields"][0]
    thumbs = run(BrowseSource(manager).thumbnails, [first, 987654321], 32)
    assert list(thumbs) == [first]


def test_children_of_the_top_level_page_across_projects_and_screens(
        manager: SessionManager) -> None:
    whole = run(lambda: manager.call(lambda c: c.children(None, 0, 1000)))
    kinds = [n.kind for n in whole.items]
    assert kinds == sorted(kinds, key=lambda k: k != "Project") and "Screen" in kinds
    one_by_one = [run(lambda o=o: manager.call(lambda c: c.children(None, o, 1))).items[0]
                  for o in range(whole.total)]
    assert one_by_one == list(whole.items)


# -- the token message, from omero_session_changed ------------------------------------------

@pytest.fixture
def token_manager(manager: SessionManager, settings_for: Any) -> Iterator[SessionManager]:
    """A second manager that logs in with the token the first one saved."""
    run(manager.save_token)
    mgr = SessionManager(settings_for())
    yield mgr
    run(mgr.close)


@pytest.mark.cellprofiler
def test_token_login_is_announced_through_the_session_changed_hook(
        token_manager: SessionManager, caplog: pytest.LogCaptureFixture,
        cellprofiler_plugins: None) -> None:
    from cellprofiler_omero.cp_integration import session

    events = SessionEvents()
    token_manager.registry.register(events, "test-session-events")
    token_manager.registry.register(session.TokenMessageLog(), session.TOKEN_MESSAGE_PLUGIN)
    with caplog.at_level(logging.INFO, logger="cellprofiler_omero.cp_integration.session"):
        run(token_manager.connect)
    (reason, new), = events.calls
    assert new is not None and new.source == "token"
    assert session.is_token_login(new, reason)
    assert [r.getMessage() for r in caplog.records] == [
        f"Connected to OMERO server {new.server.host} as demo using a saved token."]


@pytest.mark.cellprofiler
def test_password_logins_and_renewals_are_not_token_messages(
        manager: SessionManager, watched: SessionEvents, emulator: Emulator,
        cellprofiler_plugins: None) -> None:
    from cellprofiler_omero.cp_integration import session

    run(lambda: manager.connect(user="demo", password="demo"))  # a relogin by password
    emulator.expire_sessions(keys=[run(manager.connection).session_key])
    run(lambda: manager.call(lambda c: c.children(None, 0, 1)))
    assert watched.reasons[-1] == "renew"
    announced = [new for reason, new in watched.calls if session.is_token_login(new, reason)]
    assert announced == []


@pytest.mark.cellprofiler
def test_token_message_switched_off_is_not_announced(
        token_manager: SessionManager, monkeypatch: pytest.MonkeyPatch,
        cellprofiler_plugins: None) -> None:
    from cellprofiler_omero.cp_integration import session

    monkeypatch.setenv("CELLPROFILER_OMERO_AUTH_SHOW_TOKEN_MESSAGE", "false")
    events = SessionEvents()
    token_manager.registry.register(events, "test-session-events")
    run(token_manager.connect)
    (reason, new), = events.calls
    assert new is not None and new.source == "token"
    assert not session.is_token_login(new, reason)


def test_session_manager_has_no_callback_attributes_left() -> None:
    from cellprofiler_omero.cp_integration import session

    assert not hasattr(SessionManager(), "on_token_login")
    assert not hasattr(session, "token_message_hook")


# -- "a read needs a login": omero_login_needed -----------------------------------------------

class LoginPlugin:
    """What the GUI does when a read needs a login: log in (here by password), say yes."""

    def __init__(self, manager: SessionManager, *, answer: bool) -> None:
        self.manager = manager
        self.answer = answer
        self.asked: list[tuple[ObjectRef, AuthError]] = []

    @hookimpl
    def omero_login_needed(self, image: ObjectRef, error: AuthError) -> bool | None:
        self.asked.append((image, error))
        if self.answer:
            run(lambda: self.manager.connect(user="demo", password="demo"))
        return self.answer


@pytest.fixture
def logged_out(settings_for: Any, cellprofiler_plugins: None) -> Iterator[SessionManager]:
    """The process-wide manager CellProfiler code uses, with no session and no token."""
    import cellprofiler_core.preferences as preferences

    preferences.set_headless()
    mgr = SessionManager(settings_for(auth__use_token=False))
    core_session.set_manager(mgr)
    yield mgr
    core_session.set_manager(None)
    run(mgr.close)


def _reader(image_id: int) -> Any:
    from cellprofiler_core.pipeline import ImageFile

    from cellprofiler_omero.cp_integration.reader import OMEROReader

    return OMEROReader(ImageFile(f"omero:iid={image_id}"))


@pytest.mark.cellprofiler
def test_reader_asks_the_login_needed_hook_and_reads_after_the_login(
        logged_out: SessionManager, seeded: dict[str, Any]) -> None:
    plugin = LoginPlugin(logged_out, answer=True)
    logged_out.registry.register(plugin, "test-login")
    image_id = seeded["fields"][0]
    reader = _reader(image_id)
    try:
        data = reader.read(c=0)
    finally:
        reader.close()
    assert data.shape == (512, 512)
    (image, error), = plugin.asked
    assert image.id == image_id and isinstance(error, AuthError)
    assert logged_out.info is not None and logged_out.info.user == "demo"


@pytest.mark.cellprofiler
def test_reader_raises_the_refusal_when_the_login_is_declined(
        logged_out: SessionManager, seeded: dict[str, Any]) -> None:
    plugin = LoginPlugin(logged_out, answer=False)
    logged_out.registry.register(plugin, "test-login")
    reader = _reader(seeded["fields"][0])
    try:
        with pytest.raises(AuthError, match="Not logged in"):
            reader.metadata()
    finally:
        reader.close()  # the shared image reader is bound to this test's manager
    assert len(plugin.asked) == 1 and not logged_out.connected


@pytest.mark.cellprofiler
def test_reader_without_a_login_plugin_raises_at_once(
        logged_out: SessionManager, seeded: dict[str, Any]) -> None:
    reader = _reader(seeded["fields"][0])
    try:
        with pytest.raises(AuthError, match="Not logged in"):
            reader.metadata()
    finally:
        reader.close()
