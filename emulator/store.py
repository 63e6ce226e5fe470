"""The emulator's metadata: users, groups, sessions and objects, in one SQLite file.

Objects of every OMERO class the emulator serves share one table (``objects``) with
a per-class JSON payload; many-to-many links (``ProjectDatasetLink``,
``ImageAnnotationLink``…) share another. Ids come from one sequence, so an id is
unique across classes — which OMERO does not promise but does not forbid either.
The store is shared by the Ice and HTTP sides, from many threads, behind one lock.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

SCHEMA = """
CREATE TABLE IF NOT EXISTS experimenters (
    id INTEGER PRIMARY KEY, omename TEXT UNIQUE NOT NULL, first TEXT, last TEXT,
    email TEXT, salt TEXT, pwhash TEXT, admin INTEGER NOT NULL DEFAULT 0,
    default_group INTEGER);
CREATE TABLE IF NOT EXISTS groups (
    id INTEGER PRIMARY KEY, name TEXT UNIQUE NOT NULL, perms TEXT NOT NULL,
    description TEXT);
CREATE TABLE IF NOT EXISTS members (
    group_id INTEGER NOT NULL, experimenter_id INTEGER NOT NULL,
    owner INTEGER NOT NULL DEFAULT 0, PRIMARY KEY (group_id, experimenter_id));
CREATE TABLE IF NOT EXISTS objects (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, name TEXT,
    description TEXT, owner_id INTEGER NOT NULL, group_id INTEGER NOT NULL,
    created REAL NOT NULL, parent_id INTEGER, data TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS objects_kind ON objects (kind, id);
CREATE INDEX IF NOT EXISTS objects_parent ON objects (kind, parent_id);
CREATE TABLE IF NOT EXISTS links (
    id INTEGER PRIMARY KEY AUTOINCREMENT, kind TEXT NOT NULL, parent_id INTEGER NOT NULL,
    child_id INTEGER NOT NULL, owner_id INTEGER NOT NULL, group_id INTEGER NOT NULL,
    created REAL NOT NULL);
CREATE INDEX IF NOT EXISTS links_parent ON links (kind, parent_id);
CREATE INDEX IF NOT EXISTS links_child ON links (kind, child_id);
CREATE TABLE IF NOT EXISTS sessions (
    uuid TEXT PRIMARY KEY, experimenter_id INTEGER NOT NULL, group_id INTEGER NOT NULL,
    created REAL NOT NULL, last_access REAL NOT NULL, tti_ms INTEGER NOT NULL,
    ttl_ms INTEGER NOT NULL, refcount INTEGER NOT NULL, closed INTEGER NOT NULL DEFAULT 0,
    agent TEXT, user_session INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
"""

# OMERO's permission strings: owner rw, group r(ead)/a(nnotate)/w(rite), world.
PRIVATE = "rw----"
READ_ONLY = "rwr---"
READ_ANNOTATE = "rwra--"
READ_WRITE = "rwrw--"


@dataclass(frozen=True)
class User:
    id: int
    omename: str
    first: str
    last: str
    email: str
    admin: bool
    default_group: int


@dataclass(frozen=True)
class Group:
    id: int
    name: str
    perms: str
    description: str = ""


@dataclass(frozen=True)
class Session:
    uuid: str
    user_id: int
    group_id: int
    created: float
    last_access: float
    tti_ms: int
    ttl_ms: int
    refcount: int
    closed: bool
    agent: str
    user_session: bool


@dataclass(frozen=True)
class Obj:
    """One stored object: its class (``kind``), ownership and class-specific data."""

    id: int
    kind: str
    name: str
    description: str
    owner_id: int
    group_id: int
    created: float
    parent_id: int | None
    data: dict[str, Any] = field(compare=False)


@dataclass(frozen=True)
class Link:
    id: int
    kind: str
    parent_id: int
    child_id: int
    owner_id: int
    group_id: int
    created: float


def _hash(password: str, salt: str) -> str:
    return hashlib.pbkdf2_hmac("sha256", password.encode(), salt.encode(), 20_000).hex()


class Store:
    """Thread-safe access to the emulator's SQLite metadata."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._lock = threading.RLock()
        self._db = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)
        self.default_tti_ms = 10 * 60 * 1000
        self.max_user_tti_ms = 100 * 60 * 1000

    def close(self) -> None:
        with self._lock:
            self._db.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """A write transaction (re-entrant through the lock, not nested in SQLite)."""
        with self._lock:
            if self._db.in_transaction:
                yield self._db
                return
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _query(self, sql: str, args: Sequence[Any] = ()) -> list[sqlite3.Row]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    # -- meta ----------------------------------------------------------------------------

    def get_meta(self, key: str) -> str | None:
        rows = self._query("SELECT value FROM meta WHERE key=?", (key,))
        return rows[0]["value"] if rows else None

    def set_meta(self, key: str, value: str) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta (key, value) VALUES (?, ?)", (key, value))

    # -- users and groups ------------------------------------------------------------------

    def add_group(self, name: str, perms: str, group_id: int | None = None,
                  description: str = "") -> Group:
        with self.transaction() as db:
            cur = db.execute("INSERT INTO groups (id, name, perms, description) VALUES (?,?,?,?)",
                             (group_id, name, perms, description))
            gid = cur.lastrowid if group_id is None else group_id
        assert gid is not None
        return Group(gid, name, perms, description)

    def add_user(self, omename: str, password: str, groups: Sequence[int], *,
                 admin: bool = False, first: str = "", last: str = "",
                 user_id: int | None = None, owner_of: Sequence[int] = ()) -> User:
        salt = secrets.token_hex(8)
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO experimenters (id, omename, first, last, email, salt, pwhash, admin,"
                " default_group) VALUES (?,?,?,?,?,?,?,?,?)",
                (user_id, omename, first or omename.title(), last or "User", "", salt,
                 _hash(password, salt), int(admin), groups[0] if groups else None))
            uid = cur.lastrowid if user_id is None else user_id
            for gid in groups:
                db.execute("INSERT OR IGNORE INTO members VALUES (?,?,?)",
                           (gid, uid, int(gid in owner_of)))
        assert uid is not None
        user = self.user(uid)
        assert user is not None
        return user

    def add_member(self, group_id: int, user_id: int, owner: bool = False) -> None:
        with self.transaction() as db:
            db.execute("INSERT OR REPLACE INTO members VALUES (?,?,?)",
                       (group_id, user_id, int(owner)))

    @staticmethod
    def _user(row: sqlite3.Row) -> User:
        return User(row["id"], row["omename"], row["first"] or "", row["last"] or "",
                    row["email"] or "", bool(row["admin"]), row["default_group"] or 0)

    def user(self, user_id: int) -> User | None:
        rows = self._query("SELECT * FROM experimenters WHERE id=?", (user_id,))
        return self._user(rows[0]) if rows else None

    def user_by_name(self, omename: str) -> User | None:
        rows = self._query("SELECT * FROM experimenters WHERE omename=?", (omename,))
        return self._user(rows[0]) if rows else None

    def users(self) -> list[User]:
        return [self._user(r) for r in self._query("SELECT * FROM experimenters ORDER BY id")]

    def check_password(self, omename: str, password: str) -> User | None:
        rows = self._query("SELECT * FROM experimenters WHERE omename=?", (omename,))
        if not rows or rows[0]["pwhash"] is None:
            return None
        if not secrets.compare_digest(_hash(password, rows[0]["salt"]), rows[0]["pwhash"]):
            return None
        return self._user(rows[0])

    def group(self, group_id: int) -> Group | None:
        rows = self._query("SELECT * FROM groups WHERE id=?", (group_id,))
        if not rows:
            return None
        r = rows[0]
        return Group(r["id"], r["name"], r["perms"], r["description"] or "")

    def group_by_name(self, name: str) -> Group | None:
        rows = self._query("SELECT id FROM groups WHERE name=?", (name,))
        return self.group(rows[0]["id"]) if rows else None

    def groups(self) -> list[Group]:
        return [g for r in self._query("SELECT id FROM groups ORDER BY id")
                if (g := self.group(r["id"])) is not None]

    def member_groups(self, user_id: int) -> list[int]:
        rows = self._query("SELECT group_id FROM members WHERE experimenter_id=? ORDER BY group_id",
                           (user_id,))
        return [r["group_id"] for r in rows]

    def leader_groups(self, user_id: int) -> list[int]:
        rows = self._query("SELECT group_id FROM members WHERE experimenter_id=? AND owner=1",
                           (user_id,))
        return [r["group_id"] for r in rows]

    def group_members(self, group_id: int) -> list[int]:
        rows = self._query("SELECT experimenter_id FROM members WHERE group_id=?", (group_id,))
        return [r["experimenter_id"] for r in rows]

    # -- sessions ------------------------------------------------------------------------

    @staticmethod
    def _session(row: sqlite3.Row) -> Session:
        return Session(row["uuid"], row["experimenter_id"], row["group_id"], row["created"],
                       row["last_access"], row["tti_ms"], row["ttl_ms"], row["refcount"],
                       bool(row["closed"]), row["agent"] or "", bool(row["user_session"]))

    def create_session(self, user_id: int, group_id: int, *, tti_ms: int | None = None,
                       ttl_ms: int = 0, refcount: int = 1, agent: str = "",
                       user_session: bool = False) -> Session:
        now = time.time()
        key = str(uuid.uuid4())
        with self.transaction() as db:
            db.execute("INSERT INTO sessions VALUES (?,?,?,?,?,?,?,?,0,?,?)",
                       (key, user_id, group_id, now, now,
                        self.default_tti_ms if tti_ms is None else tti_ms, ttl_ms, refcount,
                        agent, int(user_session)))
        session = self.session(key)
        assert session is not None
        return session

    def session(self, key: str) -> Session | None:
        rows = self._query("SELECT * FROM sessions WHERE uuid=?", (key,))
        return self._session(rows[0]) if rows else None

    def live_session(self, key: str, *, touch: bool = True) -> Session | None:
        """The session if it is open and neither idle nor too old; touching renews idleness."""
        with self._lock:
            session = self.session(key)
            if session is None or session.closed:
                return None
            now = time.time()
            idle_ms = (now - session.last_access) * 1000
            age_ms = (now - session.created) * 1000
            if (session.tti_ms > 0 and idle_ms > session.tti_ms) or (
                    session.ttl_ms > 0 and age_ms > session.ttl_ms):
                self._db.execute("UPDATE sessions SET closed=1 WHERE uuid=?", (key,))
                return None
            if touch:
                self._db.execute("UPDATE sessions SET last_access=? WHERE uuid=?", (now, key))
            return session

    def set_session_group(self, key: str, group_id: int) -> None:
        with self.transaction() as db:
            db.execute("UPDATE sessions SET group_id=? WHERE uuid=?", (group_id, key))

    def change_refcount(self, key: str, delta: int) -> int:
        with self.transaction() as db:
            db.execute("UPDATE sessions SET refcount=MAX(refcount+?, 0) WHERE uuid=?",
                       (delta, key))
            row = db.execute("SELECT refcount FROM sessions WHERE uuid=?", (key,)).fetchone()
        return int(row["refcount"]) if row else 0

    def close_session(self, key: str) -> None:
        with self.transaction() as db:
            db.execute("UPDATE sessions SET closed=1, refcount=0 WHERE uuid=?", (key,))

    def expire_session(self, key: str) -> None:
        """Make the session idle-expired now (fault injection, tests)."""
        with self.transaction() as db:
            db.execute("UPDATE sessions SET last_access=0, created=0 WHERE uuid=?", (key,))

    def sessions(self, *, open_only: bool = True) -> list[Session]:
        sql = "SELECT * FROM sessions" + (" WHERE closed=0" if open_only else "")
        return [self._session(r) for r in self._query(sql)]

    # -- objects -------------------------------------------------------------------------

    @staticmethod
    def _obj(row: sqlite3.Row) -> Obj:
        return Obj(row["id"], row["kind"], row["name"] or "", row["description"] or "",
                   row["owner_id"], row["group_id"], row["created"], row["parent_id"],
                   json.loads(row["data"]))

    def create(self, kind: str, name: str, owner_id: int, group_id: int, *,
               data: dict[str, Any] | None = None, description: str = "",
               parent_id: int | None = None) -> Obj:
        with self.transaction() as db:
            cur = db.execute(
                "INSERT INTO objects (kind, name, description, owner_id, group_id, created,"
                " parent_id, data) VALUES (?,?,?,?,?,?,?,?)",
                (kind, name, description, owner_id, group_id, time.time(), parent_id,
                 json.dumps(data or {})))
            oid = cur.lastrowid
        assert oid is not None
        obj = self.get(oid)
        assert obj is not None
        return obj

    def insert_many(self, kind_rows: Sequence[tuple[str, str, str, int, int, int | None,
                                                    dict[str, Any]]],
                    now: float | None = None) -> list[int]:
        """Insert many objects at once (kind, name, description, owner, group, parent,
        data) in one transaction, without reading them back: the ids, in order.

        Thousands of ROIs and shapes arrive in one ``saveAndReturnArray``; one
        transaction keeps that to seconds instead of one commit per object. ``now`` is
        the creation time (one call's objects share one, as they share a server event)."""
        now = time.time() if now is None else now
        ids: list[int] = []
        with self.transaction() as db:
            for kind, name, description, owner_id, group_id, parent_id, data in kind_rows:
                cur = db.execute(
                    "INSERT INTO objects (kind, name, description, owner_id, group_id,"
                    " created, parent_id, data) VALUES (?,?,?,?,?,?,?,?)",
                    (kind, name, description, owner_id, group_id, now, parent_id,
                     json.dumps(data)))
                assert cur.lastrowid is not None
                ids.append(cur.lastrowid)
        return ids

    def by_parents(self, kinds: Sequence[str], parent_ids: Iterable[int]) -> list[Obj]:
        """Objects of any of ``kinds`` whose parent is one of ``parent_ids``, by id."""
        ids = list(dict.fromkeys(int(i) for i in parent_ids))
        found: list[Obj] = []
        kind_marks = ",".join("?" * len(kinds))
        for start in range(0, len(ids), 500):
            chunk = ids[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._query(
                f"SELECT * FROM objects WHERE kind IN ({kind_marks}) AND parent_id IN ({marks})"
                " ORDER BY id", [*kinds, *chunk])
            found.extend(self._obj(r) for r in rows)
        found.sort(key=lambda o: o.id)
        return found

    def delete_many(self, object_ids: Iterable[int]) -> None:
        """Delete objects (and their links) in one transaction."""
        ids = list(object_ids)
        with self.transaction() as db:
            for start in range(0, len(ids), 500):
                chunk = ids[start:start + 500]
                marks = ",".join("?" * len(chunk))
                db.execute(f"DELETE FROM objects WHERE id IN ({marks})", chunk)
                db.execute(f"DELETE FROM links WHERE parent_id IN ({marks})"
                           f" OR child_id IN ({marks})", [*chunk, *chunk])

    def get(self, object_id: int, kind: str | None = None) -> Obj | None:
        rows = self._query("SELECT * FROM objects WHERE id=?", (object_id,))
        if not rows:
            return None
        obj = self._obj(rows[0])
        if kind is not None and obj.kind != kind:
            return None
        return obj

    def get_many(self, ids: Iterable[int], kind: str | None = None) -> list[Obj]:
        id_list = list(dict.fromkeys(int(i) for i in ids))
        if not id_list:
            return []
        found: list[Obj] = []
        for start in range(0, len(id_list), 500):
            chunk = id_list[start:start + 500]
            marks = ",".join("?" * len(chunk))
            rows = self._query(f"SELECT * FROM objects WHERE id IN ({marks})", chunk)
            found.extend(self._obj(r) for r in rows)
        if kind is not None:
            found = [o for o in found if o.kind == kind]
        order = {oid: i for i, oid in enumerate(id_list)}
        return sorted(found, key=lambda o: order[o.id])

    def all(self, kind: str) -> list[Obj]:
        return [self._obj(r) for r in
                self._query("SELECT * FROM objects WHERE kind=? ORDER BY id", (kind,))]

    def by_parent(self, kind: str, parent_id: int) -> list[Obj]:
        rows = self._query("SELECT * FROM objects WHERE kind=? AND parent_id=? ORDER BY id",
                           (kind, parent_id))
        return [self._obj(r) for r in rows]

    def update(self, object_id: int, *, name: str | None = None,
               description: str | None = None, data: dict[str, Any] | None = None,
               parent_id: int | None = None) -> Obj:
        with self.transaction() as db:
            if name is not None:
                db.execute("UPDATE objects SET name=? WHERE id=?", (name, object_id))
            if description is not None:
                db.execute("UPDATE objects SET description=? WHERE id=?",
                           (description, object_id))
            if data is not None:
                db.execute("UPDATE objects SET data=? WHERE id=?", (json.dumps(data), object_id))
            if parent_id is not None:
                db.execute("UPDATE objects SET parent_id=? WHERE id=?", (parent_id, object_id))
        obj = self.get(object_id)
        assert obj is not None
        return obj

    def delete(self, object_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM objects WHERE id=?", (object_id,))
            db.execute("DELETE FROM links WHERE parent_id=? OR child_id=?",
                       (object_id, object_id))

    def find_by_data(self, kind: str, key: str, value: str | int) -> list[Obj]:
        rows = self._query(
            "SELECT * FROM objects WHERE kind=? AND json_extract(data, ?) = ? ORDER BY id",
            (kind, f"$.{key}", value))
        return [self._obj(r) for r in rows]

    # -- links ---------------------------------------------------------------------------

    @staticmethod
    def _link(row: sqlite3.Row) -> Link:
        return Link(row["id"], row["kind"], row["parent_id"], row["child_id"], row["owner_id"],
                    row["group_id"], row["created"])

    def link(self, kind: str, parent_id: int, child_id: int, owner_id: int, group_id: int
             ) -> Link:
        with self.transaction() as db:
            row = db.execute("SELECT * FROM links WHERE kind=? AND parent_id=? AND child_id=?",
                             (kind, parent_id, child_id)).fetchone()
            if row is not None:
                return self._link(row)
            cur = db.execute(
                "INSERT INTO links (kind, parent_id, child_id, owner_id, group_id, created)"
                " VALUES (?,?,?,?,?,?)", (kind, parent_id, child_id, owner_id, group_id,
                                          time.time()))
            lid = cur.lastrowid
            row = db.execute("SELECT * FROM links WHERE id=?", (lid,)).fetchone()
        return self._link(row)

    def get_link(self, link_id: int) -> Link | None:
        rows = self._query("SELECT * FROM links WHERE id=?", (link_id,))
        return self._link(rows[0]) if rows else None

    def links_from(self, kind: str, parent_ids: Iterable[int]) -> list[Link]:
        ids = list(parent_ids)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self._query(
            f"SELECT * FROM links WHERE kind=? AND parent_id IN ({marks}) ORDER BY child_id",
            [kind, *ids])
        return [self._link(r) for r in rows]

    def links_to(self, kind: str, child_ids: Iterable[int]) -> list[Link]:
        ids = list(child_ids)
        if not ids:
            return []
        marks = ",".join("?" * len(ids))
        rows = self._query(
            f"SELECT * FROM links WHERE kind=? AND child_id IN ({marks}) ORDER BY parent_id",
            [kind, *ids])
        return [self._link(r) for r in rows]

    def delete_link(self, link_id: int) -> None:
        with self.transaction() as db:
            db.execute("DELETE FROM links WHERE id=?", (link_id,))

    # -- permissions ---------------------------------------------------------------------

    def can_read(self, user: User, owner_id: int, group_id: int) -> bool:
        """OMERO's read rule: admin; owner; or a member of a group that is not private."""
        if user.admin or owner_id == user.id:
            return True
        group = self.group(group_id)
        if group is None or group_id not in self.member_groups(user.id):
            return False
        return group.perms[2] == "r" or group_id in self.leader_groups(user.id)

    def can_link(self, user: User, owner_id: int, group_id: int) -> bool:
        """Whether ``user`` may link new children into the object (read-write groups, owners)."""
        if user.admin or owner_id == user.id:
            return True
        group = self.group(group_id)
        if group is None or group_id not in self.member_groups(user.id):
            return False
        return group.perms[3] == "w" or group_id in self.leader_groups(user.id)

    def can_annotate(self, user: User, owner_id: int, group_id: int) -> bool:
        if self.can_link(user, owner_id, group_id):
            return True
        group = self.group(group_id)
        return (group is not None and group_id in self.member_groups(user.id)
                and group.perms[3] in "aw")
