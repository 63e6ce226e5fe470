"""IAdmin (who am I, users, groups) and IConfig (server settings clients ask for)."""

from __future__ import annotations

from typing import Any

import Ice
import omero
import omero.api
import omero.sys
from omero.rtypes import rlong

from cellprofiler_omero.emulator import modelmap
from cellprofiler_omero.emulator.icebase import (
    api_usage,
    internal,
    security_violation,
    servant,
)
from cellprofiler_omero.emulator.services.common import SessionServant
from cellprofiler_omero.emulator.store import User

ADMIN_PRIVILEGES = ["Chgrp", "Chown", "DeleteFile", "DeleteManagedRepo", "DeleteOwned",
                    "DeleteScriptRepo", "ModifyGroup", "ModifyGroupMembership", "ModifyUser",
                    "ReadSession", "Sudo", "WriteFile", "WriteManagedRepo", "WriteOwned",
                    "WriteScriptRepo"]


def _not_found(kind: str, key: Any) -> omero.ApiUsageException:
    return api_usage(f"No such {kind}: {key}")


def event_context(servant_obj: SessionServant, current: Ice.Current) -> omero.sys.EventContext:
    """The caller's EventContext (IAdmin and every stateful service answer it)."""
    caller = servant_obj.caller(current)
    store = servant_obj.ctx.store
    session = caller.session
    grp = store.group(session.group_id)
    ec = omero.sys.EventContext()
    ec.shareId = -1
    ec.sessionId = abs(hash(session.uuid)) % 2**53
    ec.sessionUuid = session.uuid
    ec.userId = caller.user.id
    ec.userName = caller.user.omename
    ec.groupId = session.group_id
    ec.groupName = grp.name if grp else ""
    ec.isAdmin = caller.user.admin
    ec.adminPrivileges = ADMIN_PRIVILEGES if caller.user.admin else []
    ec.eventId = -1
    ec.eventType = "User"
    ec.memberOfGroups = store.member_groups(caller.user.id)
    ec.leaderOfGroups = store.leader_groups(caller.user.id)
    ec.groupPermissions = modelmap.permissions(grp.perms if grp else "rw----")
    return ec


@servant(omero.api.IAdmin)
class AdminI(SessionServant):
    """IAdmin: the event context and read-only user and group lookups."""

    def getEventContext(self, current: Ice.Current) -> omero.sys.EventContext:
        return event_context(self, current)

    def _user(self, user: User | None, key: Any) -> Any:
        if user is None:
            raise _not_found("experimenter", key)
        exp = modelmap.experimenter(user)
        for gid in self.ctx.store.member_groups(user.id):
            grp = self.ctx.store.group(gid)
            if grp is not None:
                gem = omero.model.GroupExperimenterMapI()
                gem.parent = modelmap.group(grp)
                gem.child = omero.model.ExperimenterI(rlong(user.id), False)
                gem.owner = omero.rtypes.rbool(gid in self.ctx.store.leader_groups(user.id))
                exp.addGroupExperimenterMap(gem)
        return exp

    def getExperimenter(self, user_id: int, current: Ice.Current) -> Any:
        return self._user(self.ctx.store.user(user_id), user_id)

    def lookupExperimenter(self, name: str, current: Ice.Current) -> Any:
        return self._user(self.ctx.store.user_by_name(name), name)

    def lookupExperimenters(self, current: Ice.Current) -> list[Any]:
        return [self._user(u, u.id) for u in self.ctx.store.users()]

    def _group(self, group_id: int | None, key: Any) -> Any:
        grp = self.ctx.store.group(group_id) if group_id is not None else None
        if grp is None:
            raise _not_found("group", key)
        return modelmap.group(grp)

    def getGroup(self, group_id: int, current: Ice.Current) -> Any:
        return self._group(group_id, group_id)

    def lookupGroup(self, name: str, current: Ice.Current) -> Any:
        grp = self.ctx.store.group_by_name(name)
        return self._group(grp.id if grp else None, name)

    def _group_with_members(self, grp: Any) -> Any:
        """A group with its memberships and their experimenters loaded, as AdminImpl's
        ``lookupGroups``/``containedGroups`` fetch them (``join fetch g.groupExperimenterMap
        m join fetch m.child``); ``omero group list`` counts owners and members from them."""
        g = modelmap.group(grp)
        for user_id in self.ctx.store.group_members(grp.id):
            user = self.ctx.store.user(user_id)
            if user is not None:
                leader = grp.id in self.ctx.store.leader_groups(user_id)
                g.addGroupExperimenterMap(modelmap.membership(
                    user_id * 1000 + grp.id, g, self._user(user, user_id), leader))
        return g

    def lookupGroups(self, current: Ice.Current) -> list[Any]:
        return [self._group_with_members(g) for g in self.ctx.store.groups()]

    def containedGroups(self, user_id: int, current: Ice.Current) -> list[Any]:
        groups = [self.ctx.store.group(g) for g in self.ctx.store.member_groups(user_id)]
        return [self._group_with_members(g) for g in groups if g is not None]

    def containedExperimenters(self, group_id: int, current: Ice.Current) -> list[Any]:
        return [self._user(self.ctx.store.user(u), u)
                for u in self.ctx.store.group_members(group_id)]

    def getMemberOfGroupIds(self, exp: Any, current: Ice.Current) -> list[int]:
        return self.ctx.store.member_groups(exp.id.val)

    def getLeaderOfGroupIds(self, exp: Any, current: Ice.Current) -> list[int]:
        return self.ctx.store.leader_groups(exp.id.val)

    def getDefaultGroup(self, user_id: int, current: Ice.Current) -> Any:
        user = self.ctx.store.user(user_id)
        if user is None:
            raise _not_found("experimenter", user_id)
        return self._group(user.default_group, user.default_group)

    def getSecurityRoles(self, current: Ice.Current) -> omero.sys.Roles:
        return omero.sys.Roles(rootId=0, rootName="root", systemGroupId=0,
                               systemGroupName="system", userGroupId=1, userGroupName="user",
                               guestId=1, guestName="guest", guestGroupId=2,
                               guestGroupName="guest")

    def getAdminPrivileges(self, exp: Any, current: Ice.Current) -> list[Any]:
        user = self.ctx.store.user(exp.id.val)
        if user is None or not user.admin:
            return []
        out = []
        for name in ADMIN_PRIVILEGES:
            p = omero.model.AdminPrivilegeI()
            p.value = omero.rtypes.rstring(name)
            out.append(p)
        return out

    def getCurrentAdminPrivileges(self, current: Ice.Current) -> list[Any]:
        caller = self.caller(current)
        return self.getAdminPrivileges(omero.model.ExperimenterI(rlong(caller.user.id), False),
                                       current)

    def canUpdate(self, obj: Any, current: Ice.Current) -> bool:
        caller = self.caller(current)
        stored = self.ctx.store.get(obj.id.val)
        if stored is None:
            return False
        return caller.user.admin or stored.owner_id == caller.user.id


#: What IConfig answers; ``omero.router.insecure`` is filled in by the server at start.
DEFAULT_CONFIG = {
    "omero.db.name": "omero",
    "omero.pixeldata.max_plane_width": "3192",
    "omero.pixeldata.max_plane_height": "3192",
    "omero.pixeldata.tile_width": "256",
    "omero.pixeldata.tile_height": "256",
    "omero.sessions.timeout": "600000",
    "omero.sessions.maximum": "0",
    "omero.sessions.max_user_time_to_idle": "6000000",
    "omero.sessions.max_user_time_to_live": "0",
    "omero.client.ui.tree.orphans.enabled": "true",
    "omero.client.ui.tree.orphans.name": "Orphaned Images",
    "omero.client.viewer.roi_limit": "2000",
    "omero.client.viewer.initial_zoom_level": "0",
    "omero.client.viewer.interpolate_pixels": "true",
    "omero.client.download_as.max_size": "144000000",
    "omero.client.web.host": "",
    "omero.mail.config": "false",
    "omero.policy.binary_access": "+read,+write,+image,+plate",
    "omero.version": "5.6.10-emulator",
}

# Who may read which key, as ome/omero-common's ``ome/config.xml`` declares it
# (``ome.system.Preference`` beans): ``all`` keys answer everyone, ``hidden`` keys
# answer no one (not even an administrator), and every other key -- declared
# without a visibility or not declared at all -- answers administrators only.
VISIBLE_TO_ALL = frozenset({
    "omero.version", "omero.upgrades.url", "omero.qa.feedback", "omero.router.insecure",
    "omero.security.password_required", "omero.cluster.read_only.runtime.db",
    "omero.cluster.read_only.runtime.repo", "omero.bioformats.version",
    "omero.bioformats.vcs_revision", "omero.bioformats.date", "omero.server.nodedescriptors",
    "omero.db.authority", "omero.db.uuid", "omero.mail.config",
    "omero.pixeldata.backoff", "omero.pixeldata.tile_width", "omero.pixeldata.tile_height",
    "omero.pixeldata.max_plane_width", "omero.pixeldata.max_plane_height",
    "omero.pixeldata.max_plane_float_override", "omero.pixeldata.max_tile_length",
    "omero.pixeldata.max_projection_bytes",
    "omero.client.scripts_to_ignore", "omero.client.ui.tree.orphans.enabled",
    "omero.client.ui.tree.orphans.name", "omero.client.ui.tree.orphans.description",
    "omero.client.ui.menu.dropdown.leaders.label",
    "omero.client.ui.menu.dropdown.leaders.enabled",
    "omero.client.ui.menu.dropdown.colleagues.label",
    "omero.client.ui.menu.dropdown.colleagues.enabled",
    "omero.client.ui.menu.dropdown.everyone.label",
    "omero.client.ui.menu.dropdown.everyone.enabled",
    "omero.client.viewer.roi_limit", "omero.client.viewer.initial_zoom_level",
    "omero.client.web.host", "omero.client.viewer.interpolate_pixels",
    "omero.client.download_as.max_size", "omero.client.ui.tree.type_order",
    "omero.client.browser.thumb_default_size",
    "omero.sessions.timeout", "omero.sessions.maximum",
    "omero.sessions.max_user_time_to_idle", "omero.sessions.max_user_time_to_live",
})
HIDDEN = frozenset({
    "omero.security.filter.bitand", "omero.db.host", "omero.db.name", "omero.db.user",
    "omero.db.pass", "omero.db.driver", "omero.db.poolsize", "omero.db.dialect",
})
#: Declared keys without a visibility (``admin``, the Preference default).
ADMIN_ONLY = frozenset({"omero.data.dir"})
#: Old names the server still resolves (``PreferenceContext.resolveAlias``).
ALIASES = {
    "ome.security.filter.bitand": "omero.security.filter.bitand",
    "ome.security.password_required": "omero.security.password_required",
    "database.host": "omero.db.host", "database.name": "omero.db.name",
    "database.user": "omero.db.user", "hibernate.connection.username": "omero.db.user",
    "hibernate.connection.password": "omero.db.pass",
    "hibernate.connection.driver_class": "omero.db.driver",
    "c3p0.maxPoolSize": "omero.db.poolsize", "hibernate.dialect": "omero.db.dialect",
}
#: The keys ``getConfigValues`` looks through: only declared preferences.
DECLARED = VISIBLE_TO_ALL | HIDDEN | ADMIN_ONLY


def can_read(key: str, *, admin: bool) -> bool:
    """Whether a caller may read ``key`` (``PreferenceContext.canRead``)."""
    if key in VISIBLE_TO_ALL:
        return True
    if key in HIDDEN:
        return False
    return admin


@servant(omero.api.IConfig)
class ConfigI(SessionServant):
    """IConfig: the configuration values clients read, with the real visibility rules."""

    open_ops = frozenset({"getVersion", "getConfigValue", "getClientConfigValues",
                          "getClientConfigDefaults", "getPublicConfigValues"})

    def _admin(self, current: Ice.Current) -> bool:
        return self.caller(current).user.admin

    def getConfigValue(self, key: str, current: Ice.Current) -> str:
        if not key:
            return ""
        key = ALIASES.get(key, key)
        # Keys visible to all need no caller (the operation is open); the others ask
        # who is calling, which needs a live session.
        if not can_read(key, admin=key not in VISIBLE_TO_ALL and self._admin(current)):
            raise security_violation(f"Cannot read configuration: {key}")
        return self.ctx.config.get(key, "")

    def getConfigValues(self, regex: str, current: Ice.Current) -> dict[str, str]:
        import re

        pattern = re.compile(regex)
        admin = self._admin(current)
        return {k: self.ctx.config[k] for k in sorted(DECLARED)
                if k in self.ctx.config and pattern.search(k) and can_read(k, admin=admin)}

    def getClientConfigValues(self, current: Ice.Current) -> dict[str, str]:
        return {k: self.ctx.config[k] for k in sorted(VISIBLE_TO_ALL)
                if k.startswith("omero.client.") and k in self.ctx.config}

    def getClientConfigDefaults(self, current: Ice.Current) -> dict[str, str]:
        # ConfigImpl.getConfigDefaults loads the default property files but returns
        # the map it never filled, so a real server answers nothing here.
        return {}

    def getPublicConfigValues(self, current: Ice.Current) -> dict[str, str]:
        return {k: v for k, v in self.ctx.config.items() if k in VISIBLE_TO_ALL}

    def getVersion(self, current: Ice.Current) -> str:
        # IConfig.VERSION_REGEX: the server answers only the x.y.z part.
        import re

        version = self.ctx.config["omero.version"]
        match = re.match(r"^.*?-?(\d+\.\d+\.\d+)-?.*?$", version)
        if match is None:
            raise internal(f"Bad version format:{version}")
        return match.group(1)

    def getDatabaseUuid(self, current: Ice.Current) -> str:
        return self.ctx.store.get_meta("uuid") or ""

    def getDatabaseTime(self, current: Ice.Current) -> Any:
        import time

        return omero.rtypes.rtime(int(time.time() * 1000))

    def getServerTime(self, current: Ice.Current) -> Any:
        return self.getDatabaseTime(current)
