"""The Glacier2 router, the ServiceFactory behind each login, and ISession.

The router lives on the same object adapter as the services: ``getClientProxy``
returns null, so routed requests come straight to that adapter, and callbacks go
back over the client's own connection. Sessions are reference counted: a login or
a join adds one; destroying a ServiceFactory removes one unless it was detached;
``ISession.closeSession`` removes one and closes the session at zero.
"""

from __future__ import annotations

import logging
import threading
import uuid
from typing import TYPE_CHECKING, Any

import Glacier2
import Ice
import omero
import omero.api
import omero.grid
from omero.rtypes import rint, rlong, rstring, rtime

from cellprofiler_omero.emulator import modelmap
from cellprofiler_omero.emulator.icebase import (
    JAVA_CLASS,
    Servant,
    api_usage,
    security_violation,
    servant,
)
from cellprofiler_omero.emulator.services.common import SessionServant
from cellprofiler_omero.emulator.store import Session, User

#: The real server's guest user (``Roles.getGuestName``/``getGuestId``; the seed's too).
GUEST_NAME = "guest"
GUEST_ID = 1

if TYPE_CHECKING:
    from cellprofiler_omero.emulator.server import Context

log = logging.getLogger(__name__)

ROUTER_ID = Ice.Identity("router", "OMERO.Glacier2")


def _group_from_ctx(ctx: Context, user: User, raw: str | None) -> int:
    groups = ctx.store.member_groups(user.id)
    if raw:
        try:
            gid = int(raw)
        except ValueError:
            grp = ctx.store.group_by_name(raw)
            gid = grp.id if grp else -2
        if gid in groups:
            return gid
    if user.default_group in groups:
        return user.default_group
    return groups[0] if groups else 0


@servant(Glacier2.Router)
class RouterI(Servant):
    """``OMERO.Glacier2/router``: log in, join, and end sessions."""

    def __init__(self, ctx: Context) -> None:
        super().__init__(ctx)
        self._by_connection: dict[str, list[str]] = {}
        self._lock = threading.Lock()

    def getClientProxy(self, current: Ice.Current) -> Any:
        return None

    def getServerProxy(self, current: Ice.Current) -> Any:
        return self.ctx.adapter.createProxy(Ice.Identity("callbacks", "OMERO.Glacier2"))

    def addProxies(self, proxies: list[Any], current: Ice.Current) -> list[Any]:
        return []

    def getCategoryForClient(self, current: Ice.Current) -> str:
        return f"client-{uuid.uuid4()}"

    def getSessionTimeout(self, current: Ice.Current) -> int:
        return self.ctx.store.default_tti_ms // 1000

    def getACMTimeout(self, current: Ice.Current) -> int:
        return 0

    def createSession(self, user_id: str, password: str, current: Ice.Current) -> Any:
        store = self.ctx.store
        session: Session | None = None
        if user_id and user_id == password:
            session = store.live_session(user_id)
            if session is not None:
                store.change_refcount(session.uuid, +1)
        if session is None:
            user = store.check_password(user_id, password)
            if user is None and user_id == GUEST_NAME:
                # A real server keeps the guest's password empty, and an empty stored
                # password matches any password given for a user who needs none; the
                # guest never does (ConfigurablePasswordProvider.comparePasswords,
                # PasswordUtil.isPasswordRequired). OMERO.web logs in as guest/guest.
                user = store.user_by_name(GUEST_NAME)
            if user is None:
                # Same answer for unknown user and wrong password, as a real server gives.
                raise Glacier2.PermissionDeniedException(reason="Password check failed")
            gid = _group_from_ctx(self.ctx, user, current.ctx.get("omero.group"))
            session = store.create_session(user.id, gid, agent=current.ctx.get("omero.agent", ""))
        prx = self.ctx.open_service_factory(session.uuid, current.con)
        with self._lock:
            self._by_connection.setdefault(_con_key(current.con), []).append(
                Ice.identityToString(prx.ice_getIdentity()))
        self.ctx.watch_connection(current.con, self.connection_closed)
        return Glacier2.SessionPrx.uncheckedCast(prx)

    def createSessionFromSecureConnection(self, current: Ice.Current) -> Any:
        raise Glacier2.PermissionDeniedException(reason="Use user name and password.")

    def refreshSession(self, current: Ice.Current) -> None:
        return None

    def destroySession(self, current: Ice.Current) -> None:
        with self._lock:
            ids = self._by_connection.pop(_con_key(current.con), [])
        for sf_id in ids:
            self.ctx.destroy_service_factory(sf_id)

    def connection_closed(self, con: Any) -> None:
        with self._lock:
            ids = self._by_connection.pop(_con_key(con), [])
        for sf_id in ids:
            self.ctx.destroy_service_factory(sf_id)


def _config_ms(config: dict[str, str], key: str) -> int:
    try:
        return int(config.get(key) or 0)
    except ValueError:
        return 0


def _check_user_timeouts(config: dict[str, str], ttl_ms: int, tti_ms: int) -> None:
    """The limits a user's own session request must keep (``SessionManagerImpl``).

    As the real server's ``parseAndSetTimeouts`` does for an untrusted update: with
    ``omero.sessions.max_user_time_to_live`` unset (0) any timeouts pass; once it is
    set, a time to live of 0 (forever) or above it is refused, and so is a time to idle
    of 0 or above ``omero.sessions.max_user_time_to_idle``. (The idle limit is guarded
    by the time-to-live maximum in the real source too, so a server without a
    time-to-live maximum does not cap idle time either.)
    """
    max_ttl = _config_ms(config, "omero.sessions.max_user_time_to_live")
    max_tti = _config_ms(config, "omero.sessions.max_user_time_to_idle")
    if max_ttl != 0 and (ttl_ms > max_ttl or ttl_ms == 0):
        raise security_violation(f"Cannot modify timeToLive beyond maximum: {max_ttl}")
    if max_ttl != 0 and (tti_ms > max_tti or tti_ms == 0):
        raise security_violation(f"Cannot modify timeToIdle beyond maximum: {max_tti}")


def _con_key(con: Any) -> str:
    return str(id(con)) if con is None else con.toString()


_SERVICES = {
    "getAdminService": "IAdmin", "getConfigService": "IConfig",
    "getContainerService": "IContainer", "getLdapService": "ILdap",
    "getPixelsService": "IPixels", "getProjectionService": "IProjection",
    "getQueryService": "IQuery", "getRenderingSettingsService": "IRenderingSettings",
    "getRepositoryInfoService": "IRepositoryInfo", "getRoiService": "IRoi",
    "getScriptService": "IScript", "getSessionService": "ISession",
    "getShareService": "IShare", "getTimelineService": "ITimeline",
    "getTypesService": "ITypes", "getUpdateService": "IUpdate",
    "getMetadataService": "IMetadata",
}
_STATEFUL = {
    "createExporter": "Exporter", "createJobHandle": "JobHandle",
    "createRawFileStore": "RawFileStore", "createRawPixelsStore": "RawPixelsStore",
    "createRenderingEngine": "RenderingEngine", "createSearchService": "Search",
    "createThumbnailStore": "ThumbnailStore",
}


class _ServiceFactory(SessionServant):
    """One login's (or join's) entry point to every service."""

    def __init__(self, ctx: Context, session_uuid: str, identity: Ice.Identity) -> None:
        super().__init__(ctx, session_uuid, identity)
        self.detach = False
        self.callback: Any = None
        self.services: dict[str, Any] = {}
        self.stateful: dict[str, Any] = {}
        self._lock = threading.Lock()

    def _service(self, name: str) -> Any:
        with self._lock:
            prx = self.services.get(name)
            if prx is None:
                assert self.identity is not None
                identity = Ice.Identity(name, self.identity.category)
                prx = self.ctx.add_servant(self.ctx.make_service(name, self), identity)
                self.services[name] = prx
        return prx

    def _stateful(self, name: str) -> Any:
        assert self.identity is not None
        identity = Ice.Identity(f"{name}-{uuid.uuid4()}", self.identity.category)
        prx = self.ctx.add_servant(self.ctx.make_service(name, self), identity)
        with self._lock:
            self.stateful[Ice.identityToString(identity)] = prx
        return getattr(omero.api, f"{name}Prx").uncheckedCast(prx)

    def release_stateful(self, identity: Ice.Identity) -> None:
        key = Ice.identityToString(identity)
        with self._lock:
            self.stateful.pop(key, None)
        self.ctx.remove_servant(identity)

    def all_identities(self) -> list[Ice.Identity]:
        with self._lock:
            prxs = list(self.services.values()) + list(self.stateful.values())
        return [p.ice_getIdentity() for p in prxs]

    def sharedResources(self, current: Ice.Current) -> Any:
        return omero.grid.SharedResourcesPrx.uncheckedCast(
            self._service("SharedResources"))

    def getByName(self, name: str, current: Ice.Current) -> Any:
        short = name.rsplit(".", 1)[-1]
        for op, svc in _SERVICES.items():
            if svc == short:
                return getattr(self, op)(current)
        raise api_usage(f"Unknown service {name!r}.")

    def createByName(self, name: str, current: Ice.Current) -> Any:
        short = name.rsplit(".", 1)[-1]
        for op, svc in _STATEFUL.items():
            if svc == short:
                return getattr(self, op)(current)
        return self.getByName(name, current)

    def setCallback(self, callback: Any, current: Ice.Current) -> None:
        self.callback = callback

    def submit(self, request: Any, current: Ice.Current) -> Any:
        from cellprofiler_omero.emulator.services.commands import submit

        return submit(self, request, current)

    def subscribe(self, topic: str, prx: Any, current: Ice.Current) -> None:
        return None

    def closeOnDestroy(self, current: Ice.Current) -> None:
        self.detach = False

    def detachOnDestroy(self, current: Ice.Current) -> None:
        self.detach = True

    def activeServices(self, current: Ice.Current) -> list[str]:
        with self._lock:
            return list(self.stateful)

    def keepAlive(self, proxy: Any, current: Ice.Current) -> bool:
        if proxy is None:
            return True
        return self.ctx.has_servant(proxy.ice_getIdentity())

    def keepAllAlive(self, proxies: list[Any], current: Ice.Current) -> int:
        dead = 0
        for index, proxy in enumerate(proxies or []):
            if proxy is not None and not self.ctx.has_servant(proxy.ice_getIdentity()):
                dead |= 1 << index
        return dead

    def getSecurityContexts(self, current: Ice.Current) -> list[Any]:
        caller = self.caller(current)
        out = []
        for gid in self.ctx.store.member_groups(caller.user.id):
            grp = self.ctx.store.group(gid)
            if grp is not None:
                out.append(modelmap.group(grp))
        return out

    def setSecurityContext(self, obj: Any, current: Ice.Current) -> Any:
        caller = self.caller(current)
        if not isinstance(obj, omero.model.ExperimenterGroup):
            raise api_usage("Only an ExperimenterGroup can be a security context here.")
        gid = obj.id.val
        if gid not in self.ctx.store.member_groups(caller.user.id) and not caller.user.admin:
            raise security_violation(f"User {caller.user.omename} is not in group {gid}.")
        old = modelmap.unloaded_group(caller.session.group_id)
        assert self.session_uuid is not None
        self.ctx.store.set_session_group(self.session_uuid, gid)
        return old

    def setSecurityPassword(self, password: str, current: Ice.Current) -> None:
        return None

    def destroy(self, current: Ice.Current) -> None:
        assert self.identity is not None
        self.ctx.destroy_service_factory(Ice.identityToString(self.identity))


def _service_getter(name: str) -> Any:
    def get(self: _ServiceFactory, current: Ice.Current) -> Any:
        return getattr(omero.api, f"{name}Prx").uncheckedCast(self._service(name))

    return get


def _stateful_creator(name: str) -> Any:
    def create(self: _ServiceFactory, current: Ice.Current) -> Any:
        return self._stateful(name)

    return create


for _op, _name in _SERVICES.items():
    setattr(_ServiceFactory, _op, _service_getter(_name))
for _op, _name in _STATEFUL.items():
    setattr(_ServiceFactory, _op, _stateful_creator(_name))
ServiceFactoryI = servant(omero.api.ServiceFactory)(_ServiceFactory)


@servant(omero.api.ISession)
class SessionServiceI(SessionServant):
    """ISession: look up, create and close sessions; reference counts."""

    def _model(self, session: Session) -> Any:
        store = self.ctx.store
        m = omero.model.SessionI(rlong(abs(hash(session.uuid)) % 2**53), True)
        m.uuid = rstring(session.uuid)
        user = store.user(session.user_id)
        if user is not None:
            m.owner = modelmap.experimenter(user)
        m.timeToIdle = rlong(session.tti_ms)
        m.timeToLive = rlong(session.ttl_ms)
        m.started = rtime(int(session.created * 1000))
        m.userAgent = rstring(session.agent)
        m.defaultEventType = rstring("User")
        grp = store.group(session.group_id)
        if grp is not None:
            details = omero.model.DetailsI()
            details.group = modelmap.group(grp)
            if user is not None:
                details.owner = modelmap.experimenter(user)
            m._details = details
        return m

    def getSession(self, session_uuid: str, current: Ice.Current) -> Any:
        caller = self.caller(current)
        session = self.ctx.store.live_session(session_uuid, touch=False)
        if session is None:
            raise omero.RemovedSessionException(serverStackTrace="",
                                                serverExceptionClass=JAVA_CLASS["RemovedSessionException"],
                                                message=f"No session {session_uuid[:4]}…")
        if session.user_id != caller.user.id and not caller.user.admin:
            raise security_violation("Not your session.")
        return self._model(session)

    def getReferenceCount(self, session_uuid: str, current: Ice.Current) -> int:
        session = self.ctx.store.session(session_uuid)
        return 0 if session is None or session.closed else session.refcount

    def createUserSession(self, ttl_ms: int, tti_ms: int, group_name: str,
                          current: Ice.Current) -> Any:
        caller = self.caller(current)
        store = self.ctx.store
        gid = caller.session.group_id
        if group_name:
            grp = store.group_by_name(group_name)
            if grp is None or grp.id not in store.member_groups(caller.user.id):
                raise security_violation(f"Not a member of group {group_name!r}.")
            gid = grp.id
        _check_user_timeouts(self.ctx.config, ttl_ms, tti_ms)
        session = store.create_session(caller.user.id, gid, tti_ms=tti_ms,
                                       ttl_ms=ttl_ms, refcount=0, user_session=True,
                                       agent=current.ctx.get("omero.agent") or "createSession")
        return self._model(session)

    def createSessionWithTimeout(self, principal: Any, ttl_ms: int, current: Ice.Current
                                 ) -> Any:
        caller = self.caller(current)
        session = self.ctx.store.create_session(caller.user.id, caller.session.group_id,
                                                ttl_ms=ttl_ms, refcount=0)
        return self._model(session)

    def closeSession(self, session_model: Any, current: Ice.Current) -> int:
        store = self.ctx.store
        key = session_model.uuid.val
        session = store.session(key)
        if session is None or session.closed:
            raise omero.RemovedSessionException(serverStackTrace="",
                                                serverExceptionClass=JAVA_CLASS["RemovedSessionException"],
                                                message="Session already closed.")
        remaining = store.change_refcount(key, -1)
        if remaining <= 0:
            store.close_session(key)
            self.ctx.forget_session(key)
            return 0
        return remaining

    def getMyOpenSessions(self, current: Ice.Current) -> list[Any]:
        caller = self.caller(current)
        return [self._model(s) for s in self.ctx.store.sessions()
                if s.user_id == caller.user.id and self.ctx.store.live_session(
                    s.uuid, touch=False) is not None]

    def getInput(self, session_uuid: str, key: str, current: Ice.Current) -> Any:
        return None

    def setInput(self, session_uuid: str, key: str, value: Any, current: Ice.Current) -> None:
        return None

    def getInputKeys(self, session_uuid: str, current: Ice.Current) -> list[str]:
        return []

    def getInputs(self, session_uuid: str, current: Ice.Current) -> dict[str, Any]:
        return {}

    def getOutputKeys(self, session_uuid: str, current: Ice.Current) -> list[str]:
        return []

    def getOutputs(self, session_uuid: str, current: Ice.Current) -> dict[str, Any]:
        return {}

    def getOutput(self, session_uuid: str, key: str, current: Ice.Current) -> Any:
        return None

    def setOutput(self, session_uuid: str, key: str, value: Any, current: Ice.Current) -> None:
        return None


__all__ = ["ROUTER_ID", "RouterI", "ServiceFactoryI", "SessionServiceI", "rint"]
