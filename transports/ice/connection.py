"""An Ice session with one server (``omero.client``) and the metadata it answers.

Blocking omero-py calls run in worker threads through ``call``, which bounds how
many run at once and translates Ice and omero exceptions into the core's errors.
"""

from __future__ import annotations

import functools
import logging
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import anyio
import anyio.to_thread
import Ice
import omero
import omero.clients
import omero.sys
from omero.model.enums import UnitsLength
from omero.rtypes import rint, unwrap

from cellprofiler_omero.core.annotations import ImageAnnotations
from cellprofiler_omero.core.config import Settings
from cellprofiler_omero.core.errors import AuthError, CannotReachServer, NotFound
from cellprofiler_omero.core.model import (
    Channel,
    Group,
    ImageMeta,
    Node,
    Page,
    PhysicalSize,
    PixelType,
    PlatePosition,
)
from cellprofiler_omero.core.refs import Kind, ObjectRef
from cellprofiler_omero.core.roles import Credentials, ServerAddress, SessionInfo
from cellprofiler_omero.transports.ice.errors import translate, wait_for_pyramid

log = logging.getLogger(__name__)
T = TypeVar("T")

ALL_GROUPS = {"omero.group": "-1"}


def params(**values: Any) -> omero.sys.ParametersI:
    p = omero.sys.ParametersI()
    for key, value in values.items():
        if isinstance(value, list | tuple):
            p.addLongs(key, list(value))
        else:
            p.addLong(key, value)
    return p


def _microns(length: Any) -> float | None:
    if length is None:
        return None
    try:
        return float(omero.model.LengthI(length, UnitsLength.MICROMETER).getValue())
    except Exception:  # units OMERO cannot convert (pixels, reference frame)
        return None


def _scalar(value: Any) -> Any:
    """A projected scalar rtype's value (RLong, RString, RDouble…; None for null).

    ``unwrap`` costs ~4 µs per value (``.val`` goes through ``__getattr__``), some 0.3 ms
    per image of metadata rows; the slice's protected member ``_val`` is read directly.
    Only for scalars: a collection's ``_val`` holds rtypes.
    """
    return None if value is None else value._val


def _microns_of(value: float | None, unit: str | None) -> float | None:
    """A projected length (its ``.value`` and ``.unit``, the unit's enum name) in
    microns; None when unset or in a unit OMERO cannot convert (pixels, reference frame)."""
    if value is None or unit is None:
        return None
    if unit == "MICROMETER":  # nearly always: skip building a LengthI
        return float(value)
    unit_enum = getattr(UnitsLength, unit, None)
    if unit_enum is None:
        return None
    return _microns(omero.model.LengthI(float(value), unit_enum))


class IceConnection:
    """The Ice transport's ``Connection``: an ``omero.client`` with a live session."""

    transport = "ice"

    def __init__(self, client: Any, info: SessionInfo, settings: Settings) -> None:
        self.client = client
        self._info = info
        self.settings = settings
        self.limiter = anyio.CapacityLimiter(settings.ice.concurrency)
        self._key = client.getSessionId()
        self._closed = False
        self._lock = threading.Lock()
        self._max_plane: tuple[int, int] | None = None
        self._services: _Services | None = None
        #: RawPixelsStore pools for reads by group id (``reader.pool_for``), closed with
        #: the connection so a detached session keeps no stores open.
        self.store_pools: dict[int, Any] = {}
        self.pool_lock = threading.Lock()

    # -- opening --------------------------------------------------------------------------

    @classmethod
    def open(cls, address: ServerAddress, credentials: Credentials, settings: Settings
             ) -> IceConnection:
        """Log in or join (blocking). Raises ``AuthError``/``ServerError``."""
        props = {
            "omero.host": address.host,
            "omero.port": str(address.port),
            "Ice.MessageSizeMax": str(settings.ice.message_limit_kib),
            # Covers the TCP connect, the SSL handshake and Ice's connection validation:
            # a server that accepts the connection and never answers fails after this.
            "Ice.Override.ConnectTimeout": str(_timeout_ms(settings)),
            "Ice.ThreadPool.Client.SizeMax": str(max(4, settings.ice.concurrency)),
        }
        where = str(address)
        client = omero.client(pmap=[f"--{k}={v}" for k, v in props.items()])
        client.setAgent("cellprofiler-omero")
        try:
            _reach(client)
            if credentials.session_key is not None:
                client.joinSession(credentials.session_key)
            else:
                assert credentials.user is not None and credentials.password is not None
                client.createSession(credentials.user, credentials.password)
            if not settings.server.secure:
                client = cls._insecure(client)
            # As BlitzGateway does: a dropped connection must not end the session; it is
            # ended explicitly by close() (killSession) instead.
            client.getSession().detachOnDestroy()
            ec = client.getSession().getAdminService().getEventContext()
        except (Ice.Exception, omero.ServerError, omero.ClientError) as exc:
            _discard(client)
            if isinstance(exc, _NOT_REACHED):
                raise _cannot_reach(exc, address, settings) from None
            if isinstance(exc, omero.ClientError):
                raise AuthError(f"OMERO on {where} refused the session: {exc}.") from None
            raise translate(exc, "logging in", address) from None
        info = SessionInfo(server=address, user=ec.userName, user_id=ec.userId,
                           group=ec.groupName, group_id=ec.groupId, source=credentials.source,
                           is_admin=ec.isAdmin)
        return cls(client, info, settings)

    @staticmethod
    def _insecure(client: Any) -> Any:
        """Move to the server's plain-TCP router, as BlitzGateway does unless secure.

        A router that cannot be reached (a firewall, a port open only inside the site)
        must not fail a login that already worked: the session then stays on the secure
        connection. The new client is built here rather than by ``createClient`` so a
        failed attempt is discarded at once instead of leaving a communicator behind.
        """
        insecure = client.getSession().getConfigService().getConfigValue(
            "omero.router.insecure")
        if not insecure:
            return client
        if "@omero.host@" in insecure:
            # As omero.client.createClient: the published value names no host.
            host = ""
            router = client.getRouter(client.getCommunicator())
            for endpoint in router.ice_getEndpoints() if router is not None else ():
                host = endpoint.getInfo().host
            insecure = insecure.replace("@omero.host@", host)
        props = client.getPropertyMap()
        props["Ice.Default.Router"] = insecure
        other = omero.client(props)
        other.setAgent("cellprofiler-omero;secure=False")
        try:
            _reach(other)
            other.joinSession(client.getSessionId())
        except (Ice.Exception, omero.ServerError, omero.ClientError) as exc:
            _discard(other)
            log.warning("The server's plain-TCP router (%s) cannot be reached (%s); "
                        "staying on the secure connection.", insecure, type(exc).__name__)
            return client
        # The secure client only served to log in; its reference goes, the session stays.
        client.getSession().closeOnDestroy()
        client.closeSession()
        return other

    # -- Connection protocol --------------------------------------------------------------

    @property
    def info(self) -> SessionInfo:
        return self._info

    @property
    def session_key(self) -> str:
        return str(self._key)

    @property
    def sf(self) -> Any:
        """The session's ServiceFactory, its stateless services' proxies kept."""
        if self._services is None:
            self._services = _Services(self.client.getSession())
        return self._services

    async def call(self, func: Callable[..., T], *args: Any, what: str) -> T:
        """Run a blocking omero-py call in a worker thread, translating its errors."""

        def run() -> T:
            try:
                return func(*args)
            except (Ice.Exception, omero.ServerError) as exc:
                raise translate(exc, what, self._info.server) from None
            except omero.UnloadedEntityException:
                raise  # a bug in this package's queries, not a session problem
            except omero.ClientError as exc:
                raise AuthError(f"The OMERO client has no session while {what} ({exc}).",
                                hint="Log in again.") from None

        return await anyio.to_thread.run_sync(run, limiter=self.limiter)

    async def ping(self) -> None:
        await self.call(lambda: self.sf.keepAlive(None), what="keeping the session alive")

    async def close(self, *, detach: bool) -> None:
        with self._lock:
            if self._closed:
                return
            self._closed = True

        def run() -> None:
            try:
                with self.pool_lock:
                    pools = list(self.store_pools.values())
                for pool in pools:
                    pool.close_blocking()
                if detach:
                    self.client.getSession().detachOnDestroy()
                    self.client.closeSession()
                else:
                    self.client.killSession()
            finally:
                _discard(self.client)

        await anyio.to_thread.run_sync(run)

    # -- metadata -------------------------------------------------------------------------

    def _query(self) -> Any:
        return self.sf.getQueryService()

    async def image_meta(self, image_id: int) -> ImageMeta:
        # A big image's levels come from a RawPixelsStore, which a real server refuses
        # (MissingPyramidException) until the image's pyramid is built: wait for it.
        return await wait_for_pyramid(
            lambda: self.call(self._image_meta, image_id, what=f"reading image {image_id}"),
            image_id=image_id, wait_seconds=self.settings.ice.pyramid_wait_seconds)

    #: Images per batched metadata query: ``in (:ids)`` lists stay far below what the
    #: database and the Ice message limit take, and one page of rows stays small.
    META_PAGE = 500

    # Projections, not objects: an Image fetched with its pixels, channels, owner and
    # group arrives as some 400 omero.model objects (every one with its Details), and
    # building them costs the client ~9 ms of CPU per image, more than reading a
    # 2048² plane; the same facts as rows cost ~0.5 ms. Even the Pixels alone (for
    # the physical sizes) cost ~2 ms: their units come as component paths instead
    # (``p.physicalSizeX.unit`` is the UnitsLength enum's name on a real server).
    #: One row per channel (one row with null channel columns for an image without).
    _IMAGE_ROWS_HQL = (
        "select i.id, i.name, i.description, p.id, p.sizeX, p.sizeY, p.sizeZ, p.sizeC, "
        "p.sizeT, pt.value, i.details.owner.omeName, i.details.group.name, "
        "i.details.group.id, p.physicalSizeX.value, p.physicalSizeX.unit, "
        "p.physicalSizeY.value, p.physicalSizeY.unit, p.physicalSizeZ.value, "
        "p.physicalSizeZ.unit, index(c), c.red, c.green, c.blue, c.alpha, lc.name, "
        "lc.emissionWave.value from Image i join i.pixels p join p.pixelsType pt "
        "left outer join p.channels c left outer join c.logicalChannel lc "
        "where i.id in (:ids) order by i.id, p.id")

    def _image_meta(self, image_id: int) -> ImageMeta:
        meta = self._image_metas([image_id]).get(image_id)
        if meta is None:
            raise NotFound(
                f"Image {image_id} does not exist on {self._info.server.host}, or "
                f"{self._info.user} may not read it.",
                hint="Check the id, and that the image's group is one of yours.")
        return meta

    async def image_metas(self, image_ids: Sequence[int]) -> dict[int, ImageMeta]:
        """Metadata of many images in a few queries (``META_PAGE`` images per query).

        Images that do not exist or that the user may not read are left out; the
        caller asks ``image_meta`` for those, which says why.
        """
        ids = list(dict.fromkeys(int(i) for i in image_ids))
        out: dict[int, ImageMeta] = {}
        for start in range(0, len(ids), self.META_PAGE):
            page = ids[start:start + self.META_PAGE]
            # Big images' levels need a RawPixelsStore, refused until the pyramid exists.
            out.update(await wait_for_pyramid(
                functools.partial(self.call, self._image_metas, page,
                                  what=f"reading the metadata of {len(page)} images"),
                image_id=page[0], wait_seconds=self.settings.ice.pyramid_wait_seconds))
        return out

    def _image_metas(self, ids: list[int]) -> dict[int, ImageMeta]:
        """One page: the image, Pixels and channel rows and the plate positions, asked
        at once (one round trip of latency, not two)."""
        query, p, ctx = self._query(), params(ids=ids), ALL_GROUPS
        pending_rows = query.begin_projection(self._IMAGE_ROWS_HQL, p, _ctx=ctx)
        pending_wells = query.begin_projection(self._WELLS_HQL, p, _ctx=ctx)
        rows = query.end_projection(pending_rows)
        plates = self._plate_positions_of(query.end_projection(pending_wells))
        by_image: dict[int, list[list[Any]]] = {}
        first_pixels: dict[int, Any] = {}
        for row in rows:
            values = [_scalar(v) for v in row]
            image_id = int(values[0])
            # Only the image's first Pixels (what getPrimaryPixels() gives).
            if first_pixels.setdefault(image_id, values[3]) == values[3]:
                by_image.setdefault(image_id, []).append(values)
        return {image_id: self._meta_of(image_rows, plates.get(image_id))
                for image_id, image_rows in by_image.items()}

    def _meta_of(self, rows: list[list[Any]], plate: PlatePosition | None) -> ImageMeta:
        """An ``ImageMeta`` from an image's rows of ``_IMAGE_ROWS_HQL`` (one per channel)."""
        (image_id, name, description, pixels_id, size_x, size_y, size_z, size_c, size_t,
         ptype, owner, group, group_id, phys_x, unit_x, phys_y, unit_y, phys_z,
         unit_z) = rows[0][:19]
        channels = []
        # Sorted here: HQL allows index() in the select list, not everywhere in ORDER BY.
        for row in sorted(rows, key=lambda r: -1 if r[19] is None else r[19]):
            index, red, green, blue, alpha, ch_name, emission = row[19:]
            if index is None:  # an image without channels: one row of nulls
                continue
            color = None if red is None else (red, green, blue,
                                              alpha if alpha is not None else 255)
            channels.append(Channel(ch_name or f"C{index}", color,
                                    None if emission is None else float(emission)))
        physical = PhysicalSize(_microns_of(phys_x, unit_x), _microns_of(phys_y, unit_y),
                                _microns_of(phys_z, unit_z))
        return ImageMeta(
            id=int(image_id), name=name or f"Image {image_id}",
            size_x=size_x, size_y=size_y, size_z=size_z, size_c=size_c, size_t=size_t,
            pixel_type=PixelType.from_name(ptype), channels=tuple(channels),
            physical_size=physical,
            levels=self._levels(pixels_id, group_id, size_x, size_y),
            owner=owner, group=group, group_id=group_id, plate=plate,
            description=description, pixels_id=pixels_id,
        )

    def _max_plane_size(self) -> tuple[int, int]:
        """The size above which the server keeps a resolution pyramid (read once)."""
        if self._max_plane is None:
            config = self.sf.getConfigService()
            try:
                # Both keys in one call (IConfig.getConfigValues filters by regex and by
                # what this user may read, as getConfigValue does).
                values = config.getConfigValues(
                    r"^omero\.pixeldata\.max_plane_(width|height)$")
                self._max_plane = (
                    int(values.get("omero.pixeldata.max_plane_width") or 0),
                    int(values.get("omero.pixeldata.max_plane_height") or 0))
            except (ValueError, omero.ServerError):
                self._max_plane = (0, 0)
        return self._max_plane

    def max_plane_size(self) -> tuple[int, int]:
        """The server's ``omero.pixeldata.max_plane_width``/``_height`` ((0, 0): unknown).

        Blocking (one Ice call, the first time). The pixel-buffer transport keeps its
        tile requests within it.
        """
        return self._max_plane_size()

    def delete(self, targets: dict[str, list[int]], ctx: dict[str, str], *,
               wait_seconds: float = 60.0) -> bool:
        """Delete objects as OMERO's own clients do (``Delete2``); False if refused or
        not finished within ``wait_seconds``. Blocking; never raises for a refusal."""
        # Imported here: importing omero.cmd before omero.model's package is loaded
        # leaves ``omero.model`` a plain module without ``enums``.
        import omero.cmd

        try:
            handle = self.sf.submit(omero.cmd.Delete2(targetObjects=targets), ctx)
        except omero.ServerError as exc:  # a server without (or refusing) the command
            log.debug("Delete2 of %s refused: %s", targets, type(exc).__name__)
            return False
        try:
            deadline = time.monotonic() + wait_seconds
            response = handle.getResponse()
            while response is None and time.monotonic() < deadline:
                time.sleep(0.1)
                response = handle.getResponse()
            if response is None or isinstance(response, omero.cmd.ERR):
                log.debug("Delete2 of %s failed: %s", targets, response)
                return False
            return True
        finally:
            try:
                handle.close()
            except omero.ServerError as exc:
                log.debug("closing the delete handle failed: %s", type(exc).__name__)

    def _levels(self, pixels_id: int, group_id: int, size_x: int, size_y: int
                ) -> tuple[tuple[int, int], ...]:
        # Planes no larger than the server's maximum have no pyramid: skip the four
        # calls that asking a RawPixelsStore costs (most images read in a pipeline).
        max_w, max_h = self._max_plane_size()
        if max_w and max_h and size_x <= max_w and size_y <= max_h:
            return ((size_x, size_y),)
        ctx = {"omero.group": str(group_id)}
        store = self.sf.createRawPixelsStore(ctx)
        try:
            store.setPixelsId(pixels_id, True, ctx)
            return tuple((d.sizeX, d.sizeY) for d in store.getResolutionDescriptions(ctx))
        finally:
            store.close()

    def _plate_position(self, image_id: int) -> PlatePosition | None:
        """Where the image sits in a plate, or None when it is in none."""
        return self._plate_positions([image_id]).get(image_id)

    def _plate_positions(self, image_ids: list[int]) -> dict[int, PlatePosition]:
        """Where each image sits in a plate (images in none are left out).

        Projections only: an image may sit in several well samples, a plate in several
        screens (and ``findByQuery`` refuses more than one row on a real server). The
        field is the well sample's index in its well's ordered list (``index(ws)``), as
        OMERO.web numbers fields. Of several well samples the lowest id is reported, of
        several screens the one with the lowest id, so the answer never changes between
        calls. A well without row or column gives ``None`` for them.
        """
        return self._plate_positions_of(self._query().projection(
            self._WELLS_HQL, params(ids=image_ids), ALL_GROUPS))

    _WELLS_HQL = (
        "select ws.image.id, index(ws), w.id, w.row, w.column, p.id, p.name from Well w "
        "join w.wellSamples ws join w.plate p where ws.image.id in (:ids) order by ws.id")

    def _plate_positions_of(self, rows: list[Any]) -> dict[int, PlatePosition]:
        """Plate positions from the rows of ``_WELLS_HQL`` (the screens asked here)."""
        query = self._query()
        first: dict[int, list[Any]] = {}
        for row in rows:
            first.setdefault(int(unwrap(row[0])), [unwrap(v) for v in row[1:]])
        if not first:
            return {}
        plate_ids = sorted({int(r[4]) for r in first.values()})
        screens: dict[int, tuple[int, str | None]] = {}
        for plate_id, screen_id, screen_name in (
                [unwrap(v) for v in row] for row in query.projection(
                    "select l.child.id, l.parent.id, l.parent.name from ScreenPlateLink l "
                    "where l.child.id in (:ids) order by l.parent.id",
                    params(ids=plate_ids), ALL_GROUPS)):
            screens.setdefault(int(plate_id), (int(screen_id), screen_name))
        out: dict[int, PlatePosition] = {}
        for image_id, (field, well_id, row, column, plate_id, plate_name) in first.items():
            screen_id, screen_name = screens.get(int(plate_id), (None, None))
            out[image_id] = PlatePosition(
                plate_id=int(plate_id), plate_name=plate_name or "", well_id=int(well_id),
                row=None if row is None else int(row),
                column=None if column is None else int(column),
                field=int(field) if field is not None else 0,
                screen_id=screen_id, screen_name=screen_name)
        return out

    # -- containers -----------------------------------------------------------------------

    async def images_in(self, ref: ObjectRef) -> list[ObjectRef]:
        ids = await self.call(self._image_ids, ref, what=f"listing the images of {ref}")
        return [ObjectRef(Kind.IMAGE, i, ref.host, ref.port, ref.web_base) for i in ids]

    def _ids(self, hql: str, **values: Any) -> list[int]:
        rows = self._query().projection(hql, params(**values), ALL_GROUPS)
        return [int(unwrap(row[0])) for row in rows]

    def _exists(self, kind: Kind, object_id: int) -> None:
        if not self._ids(f"select o.id from {kind.value} o where o.id = :id", id=object_id):
            raise NotFound(
                f"{kind.value} {object_id} does not exist on {self._info.server.host}, or "
                f"{self._info.user} may not read it.")

    def _image_ids(self, ref: ObjectRef) -> list[int]:
        self._exists(ref.kind, ref.id)
        kind, oid = ref.kind, ref.id
        if kind is Kind.IMAGE:
            return [oid]
        if kind is Kind.DATASET:
            return self._ids("select l.child.id from DatasetImageLink l where l.parent.id = :id"
                             " order by lower(l.child.name), l.child.id", id=oid)
        if kind is Kind.PROJECT:
            out: list[int] = []
            for ds in self._ids("select l.child.id from ProjectDatasetLink l where "
                                "l.parent.id = :id order by lower(l.child.name), l.child.id",
                                id=oid):
                out.extend(self._image_ids(ObjectRef(Kind.DATASET, ds)))
            return list(dict.fromkeys(out))
        if kind is Kind.SCREEN:
            out = []
            for plate in self._ids("select l.child.id from ScreenPlateLink l where "
                                   "l.parent.id = :id order by lower(l.child.name), "
                                   "l.child.id", id=oid):
                out.extend(self._image_ids(ObjectRef(Kind.PLATE, plate)))
            return out
        where = {Kind.PLATE: "ws.well.plate.id", Kind.WELL: "ws.well.id",
                 Kind.ACQUISITION: "ws.plateAcquisition.id"}[kind]
        return self._ids(f"select ws.image.id from WellSample ws where {where} = :id "
                         "order by ws.well.row, ws.well.column, ws.id", id=oid)

    async def children(self, ref: ObjectRef | None, offset: int, limit: int) -> Page:
        return await self.call(self._children, ref, offset, limit,
                               what=f"listing {ref or 'your projects and screens'}")

    def _count(self, hql: str, **values: Any) -> int:
        rows = self._query().projection(hql, params(**values), ALL_GROUPS)
        return int(unwrap(rows[0][0])) if rows else 0

    def _page(self, hql: str, offset: int, limit: int, **values: Any) -> list[Any]:
        p = params(**values)
        p.page(offset, limit)
        return list(self._query().findAllByQuery(hql, p, ALL_GROUPS))

    def _listing(self, kinds: Sequence[_Rows], offset: int, limit: int, **values: Any
                 ) -> Page:
        """Rows ``[offset, offset + limit)`` of a listing that shows ``kinds`` one after
        the other: every listing of the browser and of ``ls`` is this one query pair
        (count, then page) per kind."""
        items: list[Node] = []
        total = 0
        for kind in kinds:
            count = self._count(kind.count, **values)
            # This kind holds the listing's rows [total, total + count); fetch the part
            # of the requested rows that falls in it.
            start, end = max(0, offset - total), min(count, offset + limit - total)
            if end > start:
                for n, row in enumerate(self._page(kind.page, start, end - start, **values)):
                    items.append(kind.node(self, row, total + start + n))
            total += count
        return Page(tuple(items), offset, total)

    def _children(self, ref: ObjectRef | None, offset: int, limit: int) -> Page:
        if ref is None:
            return self._listing(_TOP_LEVEL, offset, limit, uid=self._info.user_id)
        self._exists(ref.kind, ref.id)
        if ref.kind is Kind.IMAGE:
            return Page((), offset, 0)
        kinds = _CHILDREN.get(ref.kind)
        if kinds is None:
            raise NotFound(f"Cannot list the children of {ref}.")
        return self._listing(kinds, offset, limit, id=ref.id)

    # -- groups and thumbnails (the GUI browser) --------------------------------------------

    async def groups(self) -> list[Group]:
        return await self.call(self._groups, what="listing your groups")

    def _groups(self) -> list[Group]:
        admin = self.sf.getAdminService()
        ec = admin.getEventContext()
        # Every user may read the security roles (the built-in groups' ids).
        roles = admin.getSecurityRoles()
        builtin = {int(roles.systemGroupId), int(roles.userGroupId), int(roles.guestGroupId)}
        ids = [int(g) for g in ec.memberOfGroups if int(g) not in builtin]
        if not ids:
            return []
        rows = self._query().projection(
            "select g.id, g.name from ExperimenterGroup g where g.id in (:ids)",
            params(ids=ids), ALL_GROUPS)
        uid, current = int(ec.userId), int(ec.groupId)
        out = []
        for row in rows:
            gid = int(unwrap(row[0]))
            count = sum(self._count(kind.count, uid=uid, gid=gid) for kind in _GROUP_LEVEL)
            out.append(Group(gid, str(unwrap(row[1])), count, gid == current))
        out.sort(key=lambda g: (not g.current, g.name.lower(), g.id))
        return out

    async def group_children(self, group_id: int, offset: int, limit: int) -> Page:
        return await self.call(self._group_children, group_id, offset, limit,
                               what=f"listing group {group_id}")

    def _group_children(self, group_id: int, offset: int, limit: int) -> Page:
        return self._listing(_GROUP_LEVEL, offset, limit, uid=self._info.user_id,
                             gid=group_id)

    async def thumbnails(self, image_ids: Sequence[int], size: int) -> dict[int, bytes]:
        if not image_ids:
            return {}
        return await self.call(self._thumbnails, list(image_ids), size,
                               what="loading thumbnails")

    def _thumbnails(self, image_ids: list[int], size: int) -> dict[int, bytes]:
        # The ThumbnailStore works on Pixels ids, which on a real server differ from
        # image ids.
        rows = self._query().projection(
            "select p.id, p.image.id from Pixels p where p.image.id in (:ids)",
            params(ids=image_ids), ALL_GROUPS)
        by_pixels = {int(unwrap(r[0])): int(unwrap(r[1])) for r in rows}
        if not by_pixels:
            return {}
        store = self.sf.createThumbnailStore()
        try:
            # Thumbnails of images from several groups need the all-groups context.
            found = store.getThumbnailByLongestSideSet(rint(size), list(by_pixels),
                                                       ALL_GROUPS)
        finally:
            try:
                store.close()
            except (Ice.Exception, omero.ServerError) as exc:  # keep the thumbnails
                log.debug("closing the thumbnail store failed: %s", type(exc).__name__)
        return {by_pixels[int(pid)]: bytes(data) for pid, data in found.items()
                if int(pid) in by_pixels and data}

    # -- permissions and tokens -----------------------------------------------------------

    async def image_annotations(self, image_ids: Sequence[int],
                                namespaces: Sequence[str] | None = None, *,
                                tags: bool = True) -> dict[int, ImageAnnotations]:
        if not image_ids:
            return {}
        from cellprofiler_omero.transports.ice import annotations

        return await self.call(annotations.image_annotations, self, list(image_ids),
                               list(namespaces) if namespaces else None, tags,
                               what=f"reading the annotations of {len(image_ids)} image(s)")

    async def can_write(self, kind: str, object_id: int) -> bool:
        def run() -> bool:
            obj = self._query().findByQuery(f"select o from {kind} o where o.id = :id",
                                            params(id=object_id), ALL_GROUPS)
            if obj is None:
                raise NotFound(f"{kind} {object_id} does not exist, or "
                               f"{self._info.user} may not read it.")
            return bool(obj.details.permissions.canLink())

        return await self.call(run, what=f"checking write access to {kind} {object_id}")

    async def create_user_session(self, time_to_idle_ms: int) -> str:
        def run() -> str:
            sf = self.sf
            config = sf.getConfigService()
            # Both limits are readable by every user (visibility "all" on a real server).
            max_tti = _config_ms(config, "omero.sessions.max_user_time_to_idle")
            max_ttl = _config_ms(config, "omero.sessions.max_user_time_to_live")
            tti = min(time_to_idle_ms, max_tti) if max_tti > 0 else time_to_idle_ms
            # A site with a time-to-live maximum refuses sessions that live forever (0) or
            # longer: ask for exactly its maximum. Otherwise the token lives until idle.
            ttl = max_ttl if max_ttl > 0 else 0
            group = sf.getAdminService().getEventContext().groupName
            session = sf.getSessionService().createUserSession(ttl, tti, group)
            return str(unwrap(session.getUuid()))

        return await self.call(run, what="creating a session for a token")


# -- listings: what ``children``, ``group_children`` and ``groups`` count and page ----------

@dataclass(frozen=True)
class _Rows:
    """One kind of row in a listing: ``count`` gives how many, ``page`` the rows in the
    order shown (both with the listing's parameters), ``node`` makes the entry of a row
    given its position in the whole listing."""

    count: str
    page: str
    node: Callable[[IceConnection, Any, int], Node]


#: How many children one container has (``:id`` is the container), by its kind: both a
#: listing's total and each listed container's ``child_count``.
_CHILD_COUNT: dict[str, str] = {
    "Project": "select count(l) from ProjectDatasetLink l where l.parent.id = :id",
    "Dataset": "select count(l) from DatasetImageLink l where l.parent.id = :id",
    "Screen": "select count(l) from ScreenPlateLink l where l.parent.id = :id",
    "Plate": "select count(w) from Well w where w.plate.id = :id",
    "Well": "select count(ws) from WellSample ws where ws.well.id = :id",
}


def _container(kind: str) -> Callable[[IceConnection, Any, int], Node]:
    """The entry of a Project, Dataset, Screen or Plate row, with its child count."""
    def node(conn: IceConnection, obj: Any, _position: int) -> Node:
        oid = int(unwrap(obj.getId()))
        return Node(kind, oid, str(unwrap(obj.getName())),
                    conn._count(_CHILD_COUNT[kind], id=oid))

    return node


def _image_node(image: Any, name: str | None = None) -> Node:
    px = image.getPrimaryPixels()
    size = tuple(unwrap(getattr(px, f"getSize{a}")()) for a in "XYZCT")
    return Node("Image", unwrap(image.getId()), name or unwrap(image.getName()),
                None, size, unwrap(px.getPixelsType().getValue()))


def _well_node(conn: IceConnection, well: Any, _position: int) -> Node:
    wid = int(unwrap(well.getId()))
    pos = PlatePosition(0, "", wid, unwrap(well.getRow()), unwrap(well.getColumn()), 0)
    # A well without row or column has no label: name it by its id.
    return Node("Well", wid, pos.well_name or f"Well {wid}",
                conn._count(_CHILD_COUNT["Well"], id=wid),
                extra={k: v for k, v in (("row", pos.row), ("column", pos.column))
                       if v is not None})


def _field_node(conn: IceConnection, sample: Any, position: int) -> Node:
    image = sample.getImage()
    return _image_node(image, f"Field {position + 1}: {unwrap(image.getName())}")


def _owned(kind: str, where: str = "") -> _Rows:
    """What the user (``:uid``) owns of ``kind``; ``where`` narrows it (``o`` is the row)."""
    condition = f"o.details.owner.id = :uid{where}"
    return _Rows(f"select count(o) from {kind} o where {condition}",
                 f"select o from {kind} o where {condition} order by lower(o.name), o.id",
                 _container(kind))


#: ``children(None)``: the user's Projects, then Screens, in every group.
_TOP_LEVEL = (_owned("Project"), _owned("Screen"))

#: A group's top level (``:gid``): Projects, Datasets in no Project, Screens, Plates in
#: no Screen; a Dataset or Plate that has a parent is shown there.
_IN_GROUP = " and o.details.group.id = :gid"
_GROUP_LEVEL = (
    _owned("Project", _IN_GROUP),
    _owned("Dataset", _IN_GROUP + " and not exists (select l from ProjectDatasetLink l "
                                  "where l.child = o)"),
    _owned("Screen", _IN_GROUP),
    _owned("Plate", _IN_GROUP + " and not exists (select l from ScreenPlateLink l "
                                "where l.child = o)"),
)

#: What each kind of container holds, by kind (``:id`` is the container).
_CHILDREN: dict[Kind, tuple[_Rows, ...]] = {
    Kind.PROJECT: (_Rows(_CHILD_COUNT["Project"],
                         "select d from Dataset d join d.projectLinks l where "
                         "l.parent.id = :id order by lower(d.name), d.id",
                         _container("Dataset")),),
    Kind.DATASET: (_Rows(_CHILD_COUNT["Dataset"],
                         "select i from Image i join fetch i.pixels p join fetch "
                         "p.pixelsType join i.datasetLinks l where l.parent.id = :id "
                         "order by lower(i.name), i.id",
                         lambda conn, image, _position: _image_node(image)),),
    Kind.SCREEN: (_Rows(_CHILD_COUNT["Screen"],
                        "select p from Plate p join p.screenLinks l where "
                        "l.parent.id = :id order by lower(p.name), p.id",
                        _container("Plate")),),
    Kind.PLATE: (_Rows(_CHILD_COUNT["Plate"],
                       "select w from Well w where w.plate.id = :id order by w.row, w.column",
                       _well_node),),
    Kind.WELL: (_Rows(_CHILD_COUNT["Well"],
                      "select ws from WellSample ws join fetch ws.image i join fetch "
                      "i.pixels p join fetch p.pixelsType where ws.well.id = :id "
                      "order by ws.id", _field_node),),
}


class _Services:
    """A ServiceFactory whose stateless services are asked for once per connection.

    Each ``getQueryService()`` is a remote call; BlitzGateway keeps the proxies it got,
    and so does this: every call saved is one less that a flaky network can drop, and
    retries (``core.retry``) repeat whole operations. Everything else is the factory's.
    """

    _STATELESS = frozenset({"getQueryService", "getUpdateService", "getAdminService",
                            "getConfigService", "getPixelsService", "getContainerService",
                            "getSessionService", "getMetadataService"})

    def __init__(self, sf: Any) -> None:
        self._sf = sf
        self._proxies: dict[str, Any] = {}
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._sf, name)
        if name not in self._STATELESS:
            return attr

        def service(*args: Any) -> Any:
            if args:  # a call context: not what is cached
                return attr(*args)
            with self._lock:
                if name not in self._proxies:
                    self._proxies[name] = attr()
                return self._proxies[name]

        return service


def _config_ms(config: Any, key: str) -> int:
    """A server setting in milliseconds; 0 when unset or not a number."""
    try:
        return int(config.getConfigValue(key) or 0)
    except ValueError:
        return 0


#: Ice's failures to establish a connection (ConnectionRefused is a ConnectFailed,
#: ConnectTimeout the one where the server never answered).
_NOT_REACHED = (Ice.ConnectFailedException, Ice.ConnectTimeoutException, Ice.DNSException)

_TIMEOUT_SETTING = "server.connect_timeout_seconds"


def _timeout_ms(settings: Settings) -> int:
    """``server.connect_timeout_seconds`` as Ice's whole milliseconds (at least 1)."""
    return max(1, round(settings.server.connect_timeout_seconds * 1000))


def _reach(client: Any) -> None:
    """Open the connection to the client's router before logging in (blocking).

    ``omero.client.createSession`` tries three times on a connect timeout and then
    reports only "Obtained null object prox"; connecting first fails once, after
    ``Ice.Override.ConnectTimeout``, with Ice's own exception. ``createSession`` then
    reuses the connection.
    """
    client.getRouter(client.getCommunicator()).ice_getConnection()


def _cannot_reach(exc: Exception, address: ServerAddress, settings: Settings
                  ) -> CannotReachServer:
    """The core's error, with the facts, for a connection Ice could not establish."""
    where = str(address)
    reason = type(exc).__name__
    if isinstance(exc, Ice.ConnectTimeoutException):
        seconds = settings.server.connect_timeout_seconds
        env = "CELLPROFILER_OMERO_" + _TIMEOUT_SETTING.replace(".", "_").upper()
        return CannotReachServer(
            f"No answer from {where} within {seconds:g} s.",
            host=address.host, port=address.port, reason=reason, timeout_seconds=seconds,
            setting=_TIMEOUT_SETTING,
            hint=f"Check that {where} is an OMERO server's Ice port (usually 4064) and "
                 f"that no firewall drops the connection; on a slow network raise "
                 f"{_TIMEOUT_SETTING} (or ${env}).")
    return CannotReachServer(
        f"Cannot reach OMERO on {where} ({reason}).",
        host=address.host, port=address.port, reason=reason,
        hint="Check the server name and port, and that the server is up and reachable "
             "from this machine.")


def _discard(client: Any) -> None:
    """Destroy a client's communicator without raising (it may be half-open)."""
    try:
        client.__del__()
    except Exception as exc:  # nothing useful to do about a failing cleanup
        log.debug("discarding client failed: %s", type(exc).__name__)
