"""What every servant needs: who is calling, in which group, and what they may see."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import Ice
import omero

from cellprofiler_omero.emulator.icebase import Servant, security_violation
from cellprofiler_omero.emulator.store import Obj, Session, User

if TYPE_CHECKING:
    from cellprofiler_omero.emulator.server import Context


@dataclass(frozen=True)
class Caller:
    """The user and session behind one call, and the group it acts in (-1: all)."""

    user: User
    session: Session
    group_id: int


class SessionServant(Servant):
    """A servant that belongs to one session (a service of a ServiceFactory)."""

    def __init__(self, ctx: Context, session_uuid: str, identity: Ice.Identity | None = None,
                 factory: Any = None) -> None:
        super().__init__(ctx)
        self.session_uuid = session_uuid
        self.identity = identity
        self.factory = factory

    def caller(self, current: Ice.Current | None) -> Caller:
        assert self.session_uuid is not None
        session = self.ctx.store.live_session(self.session_uuid, touch=False)
        if session is None:
            raise Ice.ObjectNotExistException()
        user = self.ctx.store.user(session.user_id)
        if user is None:
            raise security_violation("The session's user no longer exists.")
        group_id = session.group_id
        if current is not None and current.ctx:
            raw = current.ctx.get("omero.group")
            if raw not in (None, ""):
                try:
                    group_id = int(raw)
                except ValueError:
                    grp = self.ctx.store.group_by_name(raw)
                    group_id = grp.id if grp else session.group_id
        return Caller(user, session, group_id)

    def visible(self, caller: Caller, obj: Obj | None) -> bool:
        if obj is None:
            return False
        if obj.group_id in (0, 1):
            # BasicACLVoter.allowLoad: the system and "user" groups' objects (the
            # official scripts, LUTs among them) are readable by everyone.
            return True
        if caller.group_id != -1 and obj.group_id != caller.group_id and obj.kind not in (
                "PixelsType",):
            return False
        return self.ctx.store.can_read(caller.user, obj.owner_id, obj.group_id)

    def write_group(self, caller: Caller) -> int:
        """The group new objects go into: the call's group, else the session's."""
        if caller.group_id != -1:
            return caller.group_id
        return caller.session.group_id


class StatefulServant(SessionServant):
    """What every stateful service (RawPixelsStore, RawFileStore …) answers alike."""

    def release(self) -> None:
        """Called when the service closes or its session ends: finish pending work."""

    def close(self, current: Ice.Current) -> None:
        self.release()
        if self.factory is not None:
            self.factory.release_stateful(current.id)

    def getCurrentEventContext(self, current: Ice.Current) -> Any:
        from cellprofiler_omero.emulator.services.admin import event_context

        return event_context(self, current)

    def activate(self, current: Ice.Current) -> None:
        return None

    def passivate(self, current: Ice.Current) -> None:
        return None


def unwrap(value: Any) -> Any:
    return omero.rtypes.unwrap(value)
