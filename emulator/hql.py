"""A small HQL interpreter over the emulator's store, for the queries OMERO clients send.

It understands the shape BlitzGateway, OMERO.web, omero2pandas and this project use::

    select <items> from <Class> [as] [<alias>]
        {[left [outer] | inner] join [fetch] <path> [as] <alias>}
        [where <condition>] [group by …] [order by <expr> [asc|desc], …]

with ``and``/``or``/``not``, comparisons, ``in (:list)`` and ``in :list``,
``in (select …)``, ``exists (select …)`` (correlated), scalar subqueries (also in the
select list, with ``coalesce``), ``is [not] null``, ``like``, ``||`` and arithmetic,
``case when … then … else … end``, ``lower()``/``upper()``/``concat()``,
``extract(epoch from …)``, ``x.class`` and ``type(x)`` against an entity name,
``index(alias)`` of a joined ordered collection, the aggregates ``count([distinct] x)``,
``min``, ``max``, ``sum``, ``avg``, ``minIndex``, ``maxIndex`` (per ``group by`` group),
``select [distinct] new map(expr as alias, …)`` (one map per row), ``order by`` a select
alias, and properties without an alias (``select max(row) from Well where plate.id =
:id``), as Hibernate accepts them. ``x.details.permissions`` is a ``Perms`` value (the
group's ``perm`` string); a unit-valued property (``p.physicalSizeX``,
``lc.emissionWave``) is a Hibernate component with ``value`` and ``unit`` paths; an
entity the caller selects under a key ending ``_details_permissions`` becomes the
caller's rights (``Graph.permissions_of``).

Rows follow Hibernate's (SQL's) rules, not a kinder set: a join gives one row per
matching element, so an entity joined to a collection comes back once per element —
as the same object, which is why ``findByQuery`` still finds it unique — unless the
query says ``distinct`` or pages a collection fetch. ``join fetch`` of a collection
returns that collection loaded with the elements that matched; other collections
come back unloaded. Anything else raises ``HqlError`` naming the construct, which
the IQuery servant answers as a real server answers HQL it cannot parse
(``omero.QueryException``, "Illegal query:…") and logs at INFO — it never guesses.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

from cellprofiler_omero.emulator.store import Obj, Store, User

PIXELS_ID_OFFSET = 1_000_000  # as modelmap: Pixels ids are image ids plus this


class HqlError(Exception):
    """A query the interpreter does not understand."""


class MissingParameter(HqlError):
    """A named parameter the query uses but the caller did not give."""

    def __init__(self, name: str) -> None:
        super().__init__(f"parameter :{name} is not given")
        self.name = name


class Time(int):
    """A timestamp column (milliseconds since the epoch), sent as ``rtime``."""


class EntityClass(str):
    """An entity's class as HQL names it (``x.class``, ``type(x)``, a bare ``TagAnnotation``).

    Compared by its short name; selected, it comes back as the Java class's full name
    (``ome.model.annotations.TagAnnotation``), which BlitzGateway.countAnnotations
    compares against."""

    @property
    def java_name(self) -> str:
        name = str(self)
        package = "annotations" if name.endswith(("Annotation", "AnnotationLink")) \
            else _PACKAGES.get(name, "core")
        return f"ome.model.{package}.{name}"


#: omero-model's packages of the classes the emulator serves (``core`` otherwise).
_PACKAGES = {
    **dict.fromkeys(("Project", "Dataset", "ProjectDatasetLink", "DatasetImageLink",
                     "Folder"), "containers"),
    **dict.fromkeys(("Screen", "Plate", "Well", "WellSample", "PlateAcquisition",
                     "ScreenPlateLink", "Reagent"), "screen"),
    **dict.fromkeys(("Roi", "Shape", "Mask", "Polygon", "Polyline", "Rectangle", "Ellipse",
                     "Point", "Line", "Label"), "roi"),
    **dict.fromkeys(("Experimenter", "ExperimenterGroup", "GroupExperimenterMap",
                     "Session", "Share", "Event"), "meta"),
    **dict.fromkeys(("Instrument", "Objective", "LightPath"), "acquisition"),
    **dict.fromkeys(("PixelsType", "DimensionOrder"), "enums"),
}


@dataclass(frozen=True)
class Perms:
    """A ``Permissions`` value: the group's ``perm`` string, and what the calling user may
    do when the server worked that out (an entity selected as ``…_details_permissions``).
    A plain ``x.details.permissions`` column carries no restrictions: every ``can…`` is
    true, as omero-blitz's IceMapper answers for a Permissions without them."""

    perm: str
    allowed: dict[str, bool] | None = None

    def __hash__(self) -> int:
        return hash((self.perm, tuple(sorted((self.allowed or {}).items()))))

    def as_map(self) -> dict[str, Any]:
        flags = ("canAnnotate", "canDelete", "canEdit", "canLink", "canChgrp", "canChown")
        allowed = self.allowed or {}
        return {"perm": self.perm, **{f: allowed.get(f, True) for f in flags}}


# ---------------------------------------------------------------------------- tokens

_TOKEN = re.compile(
    r"\s*(?:(?P<str>'(?:[^']|'')*')|(?P<param>:[A-Za-z_][A-Za-z0-9_]*)"
    r"|(?P<num>\d+(?:\.\d+)?)|(?P<op><=|>=|<>|!=|=|<|>)|(?P<concat>\|\|)"
    r"|(?P<arith>[-+/])|(?P<punct>[(),*])"
    r"|(?P<name>[A-Za-z_][A-Za-z0-9_.]*))")

KEYWORDS = {"select", "from", "as", "join", "left", "outer", "inner", "fetch", "where",
            "and", "or", "not", "in", "is", "null", "like", "exists", "order", "by", "asc",
            "desc", "distinct", "group", "between", "ilike", "true", "false", "having",
            "new", "case", "when", "then", "else", "end"}


@dataclass(frozen=True)
class Tok:
    kind: str
    text: str

    @property
    def low(self) -> str:
        return self.text.lower()


def tokenize(text: str) -> list[Tok]:
    out: list[Tok] = []
    pos = 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise HqlError(f"cannot read the query at {text[pos:pos + 20]!r}")
        pos = m.end()
        kind = m.lastgroup
        assert kind is not None
        value = m.group(kind)
        if kind == "name" and value.lower() in KEYWORDS:
            kind = "kw"
        out.append(Tok(kind, value))
    return out


# ---------------------------------------------------------------------------- syntax

@dataclass
class Join:
    path: str
    alias: str
    outer: bool
    fetch: bool = False


@dataclass
class Query:
    select: list[Any]
    distinct: bool
    cls: str
    alias: str
    joins: list[Join]
    where: Any
    order: list[tuple[Any, bool]]
    group: list[Any] = field(default_factory=list)
    #: ``expr as alias`` of the select list (``new map(…)`` included), which ``order by``
    #: may name.
    aliases: dict[str, Any] = field(default_factory=dict)
    #: The condition on each ``group by`` group (over aggregates), or None.
    having: Any = None


#: Functions over all the rows of a group (or of the whole result without ``group by``).
AGGREGATES = ("count", "max", "min", "sum", "avg", "minindex", "maxindex")
#: Ordered (indexed) collections of the OMERO model (``ordered="true"`` in omero-model's
#: mappings): the only ones ``index()``, ``minIndex()`` and ``maxIndex()`` apply to.
INDEXED = {("Well", "wellSamples"), ("Image", "pixels"), ("Pixels", "channels")}


class Parser:
    def __init__(self, tokens: list[Tok]) -> None:
        self.t = tokens
        self.i = 0

    def peek(self, offset: int = 0) -> Tok | None:
        j = self.i + offset
        return self.t[j] if j < len(self.t) else None

    def at(self, *words: str) -> bool:
        tok = self.peek()
        return tok is not None and tok.low in words and tok.kind in (
            "kw", "punct", "op", "concat", "arith")

    def take(self, *words: str) -> Tok:
        tok = self.peek()
        if tok is None or (words and tok.low not in words):
            raise HqlError(f"expected {' or '.join(words) or 'more'} at "
                           f"{tok.text if tok else 'the end'!r}")
        self.i += 1
        return tok

    def accept(self, *words: str) -> bool:
        if self.at(*words):
            self.i += 1
            return True
        return False

    def name(self) -> str:
        tok = self.take()
        if tok.kind != "name":
            raise HqlError(f"expected a name, found {tok.text!r}")
        return tok.text

    def query(self, nested: bool = False) -> Query:
        select: list[Any] = []
        aliases: dict[str, Any] = {}
        distinct = False
        if self.accept("select"):
            distinct = self.accept("distinct")
            if self.accept("new"):
                # ``new map(expr as alias, …)``: one column, a map per row.
                kind = self.name()
                if kind.lower() != "map":
                    raise HqlError(f"'new {kind}(…)' is not supported by the emulator "
                                   "(only 'new map')")
                self.take("(")
                items = [self.select_item(aliases)]
                while self.accept(","):
                    items.append(self.select_item(aliases))
                self.take(")")
                # Hibernate keys an entry without an alias by its position ("0", "1", …).
                select.append(("map", [(str(i) if key is None else key, node)
                                       for i, (key, node) in enumerate(items)]))
            else:
                select.append(self.select_item(aliases)[1])
                while self.accept(","):
                    select.append(self.select_item(aliases)[1])
        self.take("from")
        cls = self.name()
        self.accept("as")
        alias = cls
        tok = self.peek()
        if tok is not None and tok.kind == "name":
            alias = self.name()
        joins: list[Join] = []
        while self.at("left", "inner", "join"):
            outer = False
            if self.accept("left"):
                self.accept("outer")
                outer = True
            self.accept("inner")
            self.take("join")
            fetch = self.accept("fetch")
            path = self.name()
            self.accept("as")
            jalias = path.rsplit(".", 1)[-1]
            tok = self.peek()
            if tok is not None and tok.kind == "name":
                jalias = self.name()
            joins.append(Join(path, jalias, outer, fetch))
        where = None
        if self.accept("where"):
            where = self.expr()
        group: list[Any] = []
        if self.accept("group"):
            self.take("by")
            group.append(self.operand())
            while self.accept(","):
                group.append(self.operand())
        having = self.expr() if self.accept("having") else None
        order: list[tuple[Any, bool]] = []
        if self.accept("order"):
            self.take("by")
            while True:
                item = self.operand()
                desc = False
                if self.accept("desc"):
                    desc = True
                else:
                    self.accept("asc")
                order.append((item, desc))
                if not self.accept(","):
                    break
        if not select:
            select = [("path", alias)]
        if not nested and self.peek() is not None:
            raise HqlError(f"unexpected {self.peek().text!r}")  # type: ignore[union-attr]
        # ``order by alias`` sorts by the aliased select item (an alias of the from
        # clause keeps its meaning).
        taken = {alias, *(j.alias for j in joins)}
        order = [(aliases[item[1]] if item[0] == "path" and item[1] in aliases
                  and item[1] not in taken else item, desc) for item, desc in order]
        return Query(select, distinct, cls, alias, joins, where, order, group, aliases,
                     having)

    def select_item(self, aliases: dict[str, Any]) -> tuple[str | None, Any]:
        """``expr [as alias]``."""
        node = self.operand()
        key = None
        if self.accept("as"):
            key = self.name()
            if "." in key:
                raise HqlError(f"an alias cannot contain a dot: {key!r}")
            aliases[key] = node
        return key, node

    def expr(self) -> Any:
        left = self.conj()
        while self.accept("or"):
            left = ("or", left, self.conj())
        return left

    def conj(self) -> Any:
        left = self.neg()
        while self.accept("and"):
            left = ("and", left, self.neg())
        return left

    def neg(self) -> Any:
        if self.accept("not"):
            return ("not", self.neg())
        return self.primary()

    def primary(self) -> Any:
        if self.at("exists"):
            self.take("exists")
            self.take("(")
            sub = self.query(nested=True)
            self.take(")")
            return ("exists", sub)
        if self.at("("):
            # A parenthesised condition (not an operand list).
            self.take("(")
            inner = self.expr()
            self.take(")")
            return inner
        left = self.operand()
        negate = self.accept("not")
        if self.accept("in"):
            tok = self.peek()
            if tok is not None and tok.kind == "param":
                # ``in :ids`` without parentheses, as Hibernate accepts a list parameter.
                self.take()
                listed: Any = ("in", left, [("param", tok.text[1:])])
                return ("not", listed) if negate else listed
            self.take("(")
            if self.at("select"):
                sub = self.query(nested=True)
                self.take(")")
                node: Any = ("insub", left, sub)
            else:
                items = [self.operand()]
                while self.accept(","):
                    items.append(self.operand())
                self.take(")")
                node = ("in", left, items)
            return ("not", node) if negate else node
        if self.at("like", "ilike"):
            # PostgreSQL's like is case-sensitive; ilike is not.
            insensitive = self.take().low == "ilike"
            node = ("like", left, self.operand(), insensitive)
            return ("not", node) if negate else node
        if self.accept("between"):
            low = self.operand()
            self.take("and")
            high = self.operand()
            node = ("between", left, low, high)
            return ("not", node) if negate else node
        if self.accept("is"):
            isnot = self.accept("not")
            self.take("null")
            return ("notnull" if isnot else "null", left)
        tok = self.take()
        if tok.kind != "op":
            raise HqlError(f"expected a comparison, found {tok.text!r}")
        return ("cmp", tok.text, left, self.operand())

    def operand(self) -> Any:
        """An expression: terms joined by ``+``, ``-`` and ``||`` (over ``*`` and ``/``)."""
        left = self.term()
        while self.at("+", "-", "||"):
            op = self.take().text
            left = ("bin", op, left, self.term())
        return left

    def term(self) -> Any:
        left = self.factor()
        while self.at("*", "/"):
            op = self.take().text
            left = ("bin", op, left, self.factor())
        return left

    def factor(self) -> Any:
        if self.accept("-"):
            return ("bin", "-", ("lit", 0), self.factor())
        return self.atom()

    def atom(self) -> Any:
        if self.accept("case"):
            return self.case()
        if self.at("(") and (nxt := self.peek(1)) is not None and nxt.low == "select":
            self.take("(")
            sub = self.query(nested=True)
            self.take(")")
            return ("subquery", sub)
        tok = self.take()
        if tok.kind == "param":
            return ("param", tok.text[1:])
        if tok.kind == "str":
            return ("lit", tok.text[1:-1].replace("''", "'"))
        if tok.kind == "num":
            return ("lit", float(tok.text) if "." in tok.text else int(tok.text))
        if tok.kind == "kw" and tok.low in ("true", "false"):
            return ("lit", tok.low == "true")
        if tok.kind == "kw" and tok.low == "null":
            return ("lit", None)
        if tok.kind == "punct" and tok.text == "(":
            inner = self.operand()
            self.take(")")
            return inner
        if tok.kind == "name":
            if self.at("("):
                self.take("(")
                func = tok.low
                if func == "extract":
                    # ``extract(epoch from …)`` (PostgreSQL's, passed through by Hibernate)
                    unit = self.name().lower()
                    self.take("from")
                    source = self.operand()
                    self.take(")")
                    return ("extract", unit, source)
                distinct = self.accept("distinct")
                args: list[Any] = []
                if self.accept("*"):
                    args.append(("lit", 1))
                elif not self.at(")"):
                    args.append(self.operand())
                    while self.accept(","):
                        args.append(self.operand())
                self.take(")")
                return ("func", func, args, distinct)
            return ("path", tok.text)
        raise HqlError(f"unexpected {tok.text!r}")


    def case(self) -> Any:
        """``case when <condition> then <value> … [else <value>] end`` (searched form), or
        ``case <value> when <value> then <value> … end`` (simple form)."""
        subject = None if self.at("when") else self.operand()
        branches: list[tuple[Any, Any]] = []
        while self.accept("when"):
            cond = self.expr() if subject is None else ("cmp", "=", subject, self.operand())
            self.take("then")
            branches.append((cond, self.operand()))
        if not branches:
            raise HqlError("'case' needs at least one 'when … then …'")
        otherwise = self.operand() if self.accept("else") else ("lit", None)
        self.take("end")
        return ("case", branches, otherwise)


def parse(text: str) -> Query:
    return Parser(tokenize(text)).query()


# ---------------------------------------------------------------------------- views

@dataclass(eq=False)
class View:
    """A read-only node of the object graph that paths walk."""

    kind: str
    fields: dict[str, Any] = field(default_factory=dict)
    lazy: dict[str, Callable[[], Any]] = field(default_factory=dict)
    obj: Obj | None = None
    model: Callable[[], Any] | None = None

    def get(self, name: str) -> Any:
        if name in self.fields:
            return self.fields[name]
        if name in self.lazy:
            value = self.lazy[name]()
            self.fields[name] = value
            return value
        raise HqlError(f"{self.kind} has no field {name!r} in the emulator")

    @property
    def key(self) -> tuple[str, Any]:
        return (self.kind, self.fields.get("id"))

    def __hash__(self) -> int:
        return hash(self.key)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, View) and self.key == other.key


#: omero-model's unit classes (``ome.model.units``): ``@Embedded`` components of their
#: owner's row, a ``value`` (double) and a ``unit`` (a Java enum such as ``UnitsLength``
#: mapped by ``GenericEnumType``). Their views carry no id; omero-py's tables give the
#: symbol a projection of the whole component carries.
UNIT_KINDS = ("Length",)


def unit_view(kind: str, value: float | None, unit: str) -> View | None:
    """A unit component (``kind`` one of ``UNIT_KINDS``), or None when it is unset
    (Hibernate gives null for a component whose columns are all null)."""
    if value is None:
        return None
    return View(kind, {"id": None, "value": float(value), "unit": unit})


def unit_map(view: View) -> dict[str, Any]:
    """A unit component as ``IQuery.projection`` sends it: omero-blitz's
    ``IceMapper.toRType`` maps an ``ome.model.units.Unit`` to a map of its value, its
    unit's enum name and the unit's symbol (a projected ``.unit`` alone is the name)."""
    import omero.model

    unit = view.fields["unit"]
    symbols: dict[str, str] = getattr(omero.model, f"{view.kind}I").SYMBOLS
    return {"value": view.fields["value"], "unit": unit, "symbol": symbols.get(unit)}


ANNOTATION_KINDS = ("FileAnnotation", "MapAnnotation", "CommentAnnotation", "TagAnnotation")
#: HQL class names that select several stored kinds.
CLASS_KINDS = {
    "Annotation": ANNOTATION_KINDS,
    "TextAnnotation": ("CommentAnnotation", "TagAnnotation"),
    "TypeAnnotation": ("FileAnnotation",),
}
LINKS = {  # (kind, collection on parent, collection on child)
    "ProjectDatasetLink": ("Project", "Dataset", "datasetLinks", "projectLinks"),
    "DatasetImageLink": ("Dataset", "Image", "imageLinks", "datasetLinks"),
    "ScreenPlateLink": ("Screen", "Plate", "plateLinks", "screenLinks"),
}
ANNOTATED = ("Project", "Dataset", "Image", "Screen", "Plate", "Well", "PlateAcquisition",
             "OriginalFile", "Roi")
#: omero-model's concrete Shape classes (``Shape`` selects them all).
SHAPE_KINDS = ("Mask", "Polygon", "Polyline", "Rectangle", "Ellipse", "Point", "Line",
               "Label")
CLASS_KINDS["Shape"] = SHAPE_KINDS
EMPTY_CLASSES = {"PlaneInfo", "Thumbnail", "Fileset", "FilesetEntry",
                 "RenderingDef", "Instrument", "Objective", "LightPath", "ExternalInfo",
                 "BooleanAnnotation", "LongAnnotation", "DoubleAnnotation",
                 "TimestampAnnotation", "TermAnnotation", "XmlAnnotation", "ListAnnotation",
                 "Folder", "Share", "ImagingEnvironment", "StageLabel", "ObjectiveSettings",
                 "LogicalChannel", "Reagent", "Experiment", "ShareMember", "PixelsOriginalFileMap"}


class Graph:
    """Builds views over the store for one query, as seen by one user."""

    def __init__(self, store: Store, user: User, group_id: int,
                 to_model: Callable[[Any], Any]) -> None:
        self.store = store
        self.user = user
        self.group_id = group_id
        self.to_model = to_model
        self._cache: dict[int, View] = {}
        self._members: dict[int, View] = {}
        self._people: dict[tuple[str, int], View] = {}
        self._readable: dict[tuple[int, int], bool] = {}
        #: Shapes by ROI id, loaded for many ROIs at once (see ``_roi_shapes``).
        self._shapes: dict[int, list[Obj]] = {}
        self._pending_rois: list[int] = []
        self._details: Any = None
        self._rights: dict[tuple[int, int], Perms] = {}

    # -- visibility ----------------------------------------------------------------------

    def visible(self, obj: Obj | None) -> bool:
        if obj is None:
            return False
        if self.group_id != -1 and obj.group_id != self.group_id:
            return False
        # Asked once per owner and group: a query over thousands of shapes repeats them.
        key = (obj.owner_id, obj.group_id)
        readable = self._readable.get(key)
        if readable is None:
            readable = self.store.can_read(self.user, obj.owner_id, obj.group_id)
            self._readable[key] = readable
        return readable

    # -- roots -----------------------------------------------------------------------------

    def candidates(self, cls: str, ids: list[int] | None,
                   parents: tuple[str, list[int]] | None = None) -> Iterator[View]:
        if cls in ("Experimenter", "ExperimenterGroup", "PixelsType", "DimensionOrder",
                   "GroupExperimenterMap", "Session"):
            yield from self._system(cls, ids)
            return
        if cls == "Pixels" or cls == "Channel":
            if ids is not None and cls == "Pixels":
                ids = [i - PIXELS_ID_OFFSET for i in ids]
            elif ids is not None:
                ids = [i // 1000 for i in ids]
            images = (self.store.get_many(ids) if ids is not None else self.store.all("Image"))
            for img in images:
                if img.kind == "Image" and self.visible(img):
                    view = self.view(img)
                    if cls == "Pixels":
                        yield view.get("pixels")[0]
                    else:
                        yield from view.get("pixels")[0].get("channels")
            return
        if cls in LINKS or cls.endswith("AnnotationLink"):
            yield from self._links(cls, ids, parents[1] if parents is not None
                                   and parents[0] == "parent" else None)
            return
        if cls in EMPTY_CLASSES:
            return
        kinds = CLASS_KINDS.get(cls, (cls,))
        if cls not in CLASS_KINDS and cls not in (
                "Project", "Dataset", "Image", "Screen", "Plate", "Well", "WellSample",
                "OriginalFile", "PlateAcquisition", "Roi", *SHAPE_KINDS, *ANNOTATION_KINDS):
            raise HqlError(f"class {cls!r} is not served by the emulator")
        if ids is None and parents is not None and (
                (kinds == ("Roi",) and parents[0] == "image")
                or (set(kinds) <= set(SHAPE_KINDS) and parents[0] in ("roi", "roi.image"))):
            # ROIs by image, shapes by ROI (or by the ROIs of an image): the parent
            # column, instead of every ROI or shape in the store.
            path, parent_ids = parents
            if path == "roi.image":
                parent_ids = [r.id for r in self.store.by_parents(("Roi",), parent_ids)]
            objs = self.store.by_parents(kinds, parent_ids)
        elif ids is not None:
            objs = [o for o in self.store.get_many(ids) if o.kind in kinds]
        else:
            objs = [o for k in kinds for o in self.store.all(k)]
        if kinds == ("Roi",):
            self._pending_rois = [o.id for o in objs]
        for obj in objs:
            if self.visible(obj):
                yield self.view(obj)

    def _system(self, cls: str, ids: list[int] | None) -> Iterator[View]:
        if cls == "Experimenter":
            for u in self.store.users():
                if ids is None or u.id in ids:
                    yield self.user_view(u.id)
        elif cls == "ExperimenterGroup":
            for g in self.store.groups():
                if ids is None or g.id in ids:
                    yield self.group_view(g.id)
        elif cls == "PixelsType":
            from cellprofiler_omero.emulator.pixels import BIT_SIZES

            for index, name in enumerate(BIT_SIZES, start=1):
                if ids is None or index in ids:
                    yield self.enum_view("PixelsType", index, name, bitSize=BIT_SIZES[name])
        elif cls == "DimensionOrder":
            yield self.enum_view("DimensionOrder", 1, "XYZCT")
        elif cls == "GroupExperimenterMap":
            for g in self.store.groups():
                for member in self.store.group_members(g.id):
                    view = self.membership_view(g.id, member)
                    if ids is None or view.fields["id"] in ids:
                        yield view
        else:
            raise HqlError(f"class {cls!r} is not served by the emulator")

    def enum_view(self, kind: str, eid: int, value: str, **extra: Any) -> View:
        from cellprofiler_omero.emulator import modelmap

        def model() -> Any:
            if kind == "PixelsType":
                return modelmap.pixels_type(value, eid)
            import omero.model
            from omero.rtypes import rlong, rstring

            m = omero.model.DimensionOrderI(rlong(eid), True)
            m.value = rstring(value)
            return m

        return View(kind, {"id": eid, "value": value, **extra}, model=model)

    def _links(self, cls: str, ids: list[int] | None, parent_ids: list[int] | None = None
               ) -> Iterator[View]:
        if cls in LINKS:
            kinds = [cls]
        elif cls == "AnnotationLink":
            kinds = [f"{k}AnnotationLink" for k in ANNOTATED]
        else:
            kinds = [cls]
        for kind in kinds:
            parent_kind = LINKS[kind][0] if kind in LINKS else kind[: -len("AnnotationLink")]
            # ``l.parent.id in (:ids)`` names the parents (a ROI's links, not every ROI's);
            # an AnnotationAnnotationLink's parent is any kind of annotation.
            parent_kinds = CLASS_KINDS.get(parent_kind, (parent_kind,))
            parents = ([o for o in self.store.get_many(parent_ids) if o.kind in parent_kinds]
                       if parent_ids is not None
                       else [o for k in parent_kinds for o in self.store.all(k)])
            for obj in parents:
                if not self.visible(obj):
                    continue
                for link in self.store.links_from(kind, [obj.id]):
                    if ids is not None and link.id not in ids:
                        continue
                    view = self.link_view(kind, link)
                    if view is not None:
                        yield view

    # -- views ----------------------------------------------------------------------------

    def view(self, obj: Obj) -> View:
        cached = self._cache.get(obj.id)
        if cached is not None:
            return cached
        store = self.store
        f: dict[str, Any] = {"id": obj.id, "name": obj.name, "description": obj.description}
        lazy: dict[str, Callable[[], Any]] = {
            "details": lambda: self.details_view(obj.owner_id, obj.group_id, obj.created),
        }
        d = obj.data
        if obj.kind in LINKS_BY_CHILD or obj.kind in LINKS_BY_PARENT:
            for kind, (pk, ck, pcoll, ccoll) in LINKS.items():
                if obj.kind == pk:
                    lazy[pcoll] = self._link_collection(kind, obj.id, parent=True)
                if obj.kind == ck:
                    lazy[ccoll] = self._link_collection(kind, obj.id, parent=False)
        if obj.kind in ANNOTATED:
            lazy["annotationLinks"] = self._link_collection(f"{obj.kind}AnnotationLink",
                                                            obj.id, parent=True)
        if obj.kind == "Image":
            f.update(acquisitionDate=Time(int(obj.created * 1000)), archived=False, series=0,
                     fileset=None, format=None, instrument=None)
            lazy["pixels"] = lambda: [self.pixels_view(obj)]
            lazy["wellSamples"] = lambda: [self.view(o) for o in store.find_by_data(
                "WellSample", "image", obj.id) if self.visible(o)]
        elif obj.kind == "Plate":
            lazy["wells"] = lambda: [self.view(o) for o in store.by_parent("Well", obj.id)
                                     if self.visible(o)]
            lazy["plateAcquisitions"] = lambda: [
                self.view(o) for o in store.by_parent("PlateAcquisition", obj.id)
                if self.visible(o)]
            f.update(rows=d.get("rows"), columns=d.get("columns"))
        elif obj.kind == "Well":
            f.update(row=d.get("row"), column=d.get("column"))
            lazy["plate"] = lambda: self._one(obj.parent_id)
            lazy["wellSamples"] = lambda: [self.view(o) for o in
                                           store.by_parent("WellSample", obj.id)
                                           if self.visible(o)]
        elif obj.kind == "WellSample":
            lazy["well"] = lambda: self._one(obj.parent_id)
            # Hibernate hands a name it cannot map to SQL unchanged, and ``well_index``
            # is WellSample's list-index column there (Well.wellSamples is an ordered
            # list): iviewer's well_images orders by it.
            lazy["well_index"] = lambda: next(
                (i for i, o in enumerate(store.by_parent("WellSample", obj.parent_id or 0))
                 if o.id == obj.id), None)
            lazy["image"] = lambda: self._one(d.get("image"))
            lazy["plateAcquisition"] = lambda: self._one(d.get("acquisition"))
        elif obj.kind == "PlateAcquisition":
            lazy["plate"] = lambda: self._one(obj.parent_id)
            lazy["wellSample"] = lambda: [self.view(o) for o in store.find_by_data(
                "WellSample", "acquisition", obj.id) if self.visible(o)]
        elif obj.kind == "Roi":
            f.update(source=None)
            lazy["image"] = lambda: self._one(obj.parent_id)
            lazy["shapes"] = lambda: [self.view(o) for o in self._roi_shapes(obj.id)
                                      if self.visible(o)]
            lazy["folderLinks"] = lambda: []
        elif obj.kind in SHAPE_KINDS:
            from cellprofiler_omero.emulator.modelmap import shape_fields

            for name, typ in shape_fields(obj.kind).items():
                value = d.get(name)
                f[name] = value[0] if typ == "length" and value is not None else value
            f.update(transform=None, annotationLinks=[])
            lazy["roi"] = lambda: self._one(obj.parent_id)
        elif obj.kind == "OriginalFile":
            f.update(path=d.get("path", ""), mimetype=d.get("mimetype", ""),
                     size=d.get("size", 0), hash=d.get("hash", ""))
        elif obj.kind in ANNOTATION_KINDS:
            f.update(ns=d.get("ns"), textValue=d.get("text"))
            lazy["file"] = lambda: self._one(d.get("file"))
            lazy["mapValue"] = lambda: [View("NamedValue", {"id": None, "name": k, "value": v})
                                        for k, v in d.get("map", [])]
        model: Callable[[], Any] = lambda: self.to_model(obj)  # noqa: E731
        if obj.kind == "Roi":
            model = lambda: _modelmap().roi_model(obj, self.details())  # noqa: E731
        elif obj.kind in SHAPE_KINDS:
            model = lambda: _modelmap().shape_model(obj, self.details())  # noqa: E731
        view = View(obj.kind, f, lazy, obj, model=model)
        self._cache[obj.id] = view
        return view

    def details(self) -> Any:
        """One ``modelmap.DetailsCache`` per query (thousands of ROIs and shapes share
        a few owners and groups)."""
        if self._details is None:
            self._details = _modelmap().DetailsCache(self.store, self.user)
        return self._details

    def _roi_shapes(self, roi_id: int) -> list[Obj]:
        """A ROI's shapes; the first ROI asked loads those of every ROI the query's root
        found, in one look-up instead of one per ROI."""
        if roi_id not in self._shapes:
            batch = [i for i in self._pending_rois if i not in self._shapes]
            if roi_id not in batch:
                batch = [roi_id]
            for i in batch:
                self._shapes[i] = []
            for shape in self.store.by_parents(SHAPE_KINDS, batch):
                assert shape.parent_id is not None
                self._shapes[shape.parent_id].append(shape)
        return self._shapes[roi_id]

    def _one(self, object_id: int | None) -> View | None:
        if object_id is None:
            return None
        cached = self._cache.get(object_id)
        if cached is not None:
            return cached  # views are made only of objects this viewer may see
        obj = self.store.get(object_id)
        if obj is None or not self.visible(obj):
            return None
        return self.view(obj)

    def _link_collection(self, kind: str, object_id: int, *, parent: bool
                         ) -> Callable[[], list[View]]:
        def load() -> list[View]:
            links = (self.store.links_from(kind, [object_id]) if parent
                     else self.store.links_to(kind, [object_id]))
            return [v for lk in links if (v := self.link_view(kind, lk)) is not None]

        return load

    def link_view(self, kind: str, link: Any) -> View | None:
        parent = self.store.get(link.parent_id)
        child = self.store.get(link.child_id)
        if not (self.visible(parent) and self.visible(child)):
            return None
        assert parent is not None and child is not None
        pview, cview = self.view(parent), self.view(child)

        def model() -> Any:
            from cellprofiler_omero.emulator import modelmap

            assert pview.model is not None and cview.model is not None
            return modelmap.link_model(self.store, self.user, kind, link.id, pview.model(),
                                       cview.model(), link.owner_id, link.group_id,
                                       link.created)

        return View(kind, {"id": link.id, "parent": pview, "child": cview},
                    {"details": lambda: self.details_view(link.owner_id, link.group_id,
                                                          link.created)},
                    model=model)

    def pixels_view(self, image: Obj) -> View:
        d = image.data
        iview = self.view(image)
        pt = self.enum_view("PixelsType", 0, d["pixelsType"])

        def model() -> Any:
            from cellprofiler_omero.emulator import modelmap

            return modelmap.pixels(self.store, self.user, image)

        view = View("Pixels", {
            "id": image.id + PIXELS_ID_OFFSET, "sizeX": d["sizeX"], "sizeY": d["sizeY"],
            "sizeZ": d["sizeZ"],
            "sizeC": d["sizeC"], "sizeT": d["sizeT"], "pixelsType": pt, "image": iview,
            # Stored in microns (as modelmap.pixels sends them).
            **{f"physicalSize{axis}": unit_view("Length", d.get(f"phys{axis}"), "MICROMETER")
               for axis in "XYZ"},
            "dimensionOrder": self.enum_view("DimensionOrder", 1, "XYZCT"),
            "thumbnails": [], "planeInfo": [], "settings": [],
        }, {"details": lambda: self.details_view(image.owner_id, image.group_id,
                                                  image.created)}, model=model)
        channels = []

        def channel_model(index: int) -> Callable[[], Any]:
            return lambda: model().getChannel(index)

        for index, ch in enumerate(d.get("channels", [])):
            # As modelmap.channel: the name, the emission wavelength (nm) and the colour
            # are stored; the rest of a LogicalChannel is unset (null).
            emission = ch.get("emission")
            logical = View("LogicalChannel", {
                "id": image.id * 1000 + index, "name": ch.get("name", f"C{index}"),
                "emissionWave": unit_view("Length", emission, "NANOMETER"),
                **dict.fromkeys(("excitationWave", "pinHoleSize", "fluor", "ndFilter",
                                 "contrastMethod", "illumination", "mode",
                                 "photometricInterpretation", "pockelCellSetting",
                                 "samplesPerPixel"))})
            red, green, blue, alpha = ch.get("color") or [255, 255, 255, 255]
            channels.append(View("Channel", {"id": image.id * 1000 + index, "pixels": view,
                                             "logicalChannel": logical, "red": red,
                                             "green": green, "blue": blue, "alpha": alpha,
                                             "lookupTable": None, "statsInfo": None},
                                 model=channel_model(index)))
        view.fields["channels"] = channels
        return view

    def details_view(self, owner_id: int, group_id: int, created: float) -> View:
        grp = self.store.group(group_id)
        when = Time(int(created * 1000))
        return View("Details", {
            "owner": self.user_view(owner_id), "group": self.group_view(group_id),
            "creationEvent": View("Event", {"id": 1, "time": when}),
            "updateEvent": View("Event", {"id": 1, "time": when}),
            "externalInfo": None,
            "permissions": Perms(grp.perms if grp is not None else "rw----"),
        })

    def permissions_of(self, view: View) -> Perms:
        """What the calling user may do with an entity: ome.security.basic.BasicACLVoter's
        postProcess, through the emulator's one permission rule (``modelmap``)."""
        details = view.get("details") if "details" in view.fields or "details" in view.lazy \
            else None
        if details is None:
            raise HqlError(f"{view.kind} has no permissions in the emulator")
        owner_id = _scalar(details.get("owner"))
        group_id = _scalar(details.get("group"))
        # The same for every object of one owner and group (a page of images).
        cached = self._rights.get((owner_id, group_id))
        if cached is not None:
            return cached
        perms = _modelmap().object_permissions(self.store, self.user, owner_id, group_id)
        rights = Perms(str(perms), {"canAnnotate": perms.canAnnotate(),
                                  "canDelete": perms.canDelete(), "canEdit": perms.canEdit(),
                                  "canLink": perms.canLink(), "canChgrp": perms.canChgrp(),
                                  "canChown": perms.canChown()})
        self._rights[(owner_id, group_id)] = rights
        return rights

    def user_view(self, user_id: int) -> View:
        cached = self._people.get(("Experimenter", user_id))
        if cached is not None:
            return cached
        user = self.store.user(user_id)
        if user is None:
            return View("Experimenter", {"id": user_id})
        view = View("Experimenter", {"id": user.id, "omeName": user.omename,
                                     "firstName": user.first, "lastName": user.last,
                                     "email": user.email, "ldap": False},
                    model=lambda: _modelmap().experimenter(user))
        view.lazy["groupExperimenterMap"] = lambda: [
            self.membership_view(g, user.id) for g in self.store.member_groups(user.id)]
        self._people[("Experimenter", user_id)] = view
        return view

    def group_view(self, group_id: int) -> View:
        cached = self._people.get(("ExperimenterGroup", group_id))
        if cached is not None:
            return cached
        grp = self.store.group(group_id)
        if grp is None:
            return View("ExperimenterGroup", {"id": group_id})
        view = View("ExperimenterGroup", {"id": grp.id, "name": grp.name, "ldap": False,
                                          "description": grp.description,
                                          # A group's own permissions are its details'.
                                          "details": View("Details", {
                                              "permissions": Perms(grp.perms)})},
                    model=lambda: _modelmap().group(grp))
        view.lazy["groupExperimenterMap"] = lambda: [
            self.membership_view(grp.id, u) for u in self.store.group_members(grp.id)]
        self._people[("ExperimenterGroup", group_id)] = view
        return view

    def membership_view(self, group_id: int, user_id: int) -> View:
        """One GroupExperimenterMap (a user's membership of a group, leader or not)."""
        map_id = user_id * 1000 + group_id
        cached = self._members.get(map_id)
        if cached is not None:
            return cached
        leader = group_id in self.store.leader_groups(user_id)
        view = View("GroupExperimenterMap", {"id": map_id, "owner": leader},
                    {"parent": lambda: self.group_view(group_id),
                     "child": lambda: self.user_view(user_id)})

        def model() -> Any:
            parent, child = view.get("parent"), view.get("child")
            return _modelmap().membership(map_id, parent.model() if parent.model else None,
                                       child.model() if child.model else None, leader)

        view.model = model
        self._members[map_id] = view
        return view


def _modelmap() -> Any:
    """``modelmap`` (omero.model), imported only when a model object is wanted."""
    from cellprofiler_omero.emulator import modelmap

    return modelmap


LINKS_BY_PARENT = {v[0] for v in LINKS.values()}
LINKS_BY_CHILD = {v[1] for v in LINKS.values()}


# ---------------------------------------------------------------------------- evaluation

Env = dict[str, Any]


class Evaluator:
    def __init__(self, graph: Graph, params: dict[str, Any]) -> None:
        self.graph = graph
        self.params = params
        #: Collections the top-level query fetched: parent view key → property → elements.
        self.fetched: dict[tuple[str, Any], dict[str, list[View]]] = {}
        #: Whether a ``join fetch`` of the top-level query walked into a collection.
        self.collection_fetch = False

    def resolve(self, path: str, env: Env) -> Any:
        head, *rest = path.split(".")
        if head in env:
            value = env[head]
        elif not rest and head[:1].isupper():
            # A bare capitalised name is an entity class (``x.class = TagAnnotation``):
            # OMERO's properties are camelCase.
            return EntityClass(head)
        elif "#root" in env:
            # A property without an alias belongs to the (innermost) root, as in
            # Hibernate's "select max(row) from Well where plate.id = :id".
            value = env[env["#root"]]
            rest = [head, *rest]
        else:
            raise HqlError(f"unknown alias {head!r} in {path!r}")
        for part in rest:
            value = _step(value, part)
        return value

    def value(self, node: Any, env: Env) -> Any:
        kind = node[0]
        if kind == "path":
            return self.resolve(node[1], env)
        if kind == "param":
            if self.params.get(node[1]) is None:
                raise MissingParameter(node[1])
            return self.params[node[1]]
        if kind == "map":
            return {key: self.value(item, env) for key, item in node[1]}
        if kind == "case":
            for cond, result in node[1]:
                if self.test(cond, env):
                    return self.value(result, env)
            return self.value(node[2], env)
        if kind == "extract":
            return _extract(node[1], self.value(node[2], env))
        if kind == "lit":
            return node[1]
        if kind == "bin":
            return _binary(node[1], self.value(node[2], env), self.value(node[3], env))
        if kind == "subquery":
            rows = self.run(node[1], env)
            if len(rows) > 1:
                raise HqlError("a scalar subquery found more than one row")
            return rows[0][0] if rows else None
        if kind == "func":
            name, args = node[1], node[2]
            if name in AGGREGATES:
                raise HqlError(f"{name}() is an aggregate: it belongs in the select clause")
            if name in ("lower", "upper", "str", "trim") and len(args) == 1:
                value = self.value(args[0], env)
                if isinstance(value, str):
                    if name == "lower":
                        return value.lower()
                    if name == "upper":
                        return value.upper()
                    return value.strip() if name == "trim" else value
                return value if name != "str" or value is None else str(_scalar(value))
            if name == "concat" and args:
                return _concat([self.value(arg, env) for arg in args])
            if name == "index" and len(args) == 1:
                return self.index(args[0], env)
            if name == "type" and len(args) == 1:
                # ``type(x)`` and ``type(x.class)`` (BlitzGateway.countAnnotations).
                entity = self.value(args[0], env)
                if isinstance(entity, EntityClass) or entity is None:
                    return entity
                if isinstance(entity, View):
                    return EntityClass(entity.kind)
                raise HqlError("type() needs an entity")
            if name == "abs" and len(args) == 1:
                value = _scalar(self.value(args[0], env))
                return None if value is None else abs(value)
            if name == "size" and len(args) == 1:
                value = self.value(args[0], env)
                return len(value) if isinstance(value, list) else 0
            if name == "coalesce":
                for arg in args:
                    value = self.value(arg, env)
                    if value is not None:
                        return value
                return None
            raise HqlError(f"function {name}() is not supported by the emulator")
        raise HqlError(f"cannot evaluate {kind}")

    def index(self, node: Any, env: Env) -> int:
        """``index(alias)``: the element's position in the ordered collection it joined."""
        alias = node[1] if node[0] == "path" else None
        key = f"#index:{alias}"
        if alias is None or key not in env:
            raise HqlError("index() needs the alias of a joined ordered collection "
                           "(e.g. 'join w.wellSamples ws ... index(ws)')")
        position: int = env[key]
        return position

    def test(self, node: Any, env: Env) -> bool:
        kind = node[0]
        if kind == "and":
            return self.test(node[1], env) and self.test(node[2], env)
        if kind == "or":
            return self.test(node[1], env) or self.test(node[2], env)
        if kind == "not":
            return not self.test(node[1], env)
        if kind == "cmp" and _class_test(node):
            # Hibernate's ``x.class = Entity`` (sent by omero-metadata's deletemap): the
            # right side names an entity class, not a path; the discriminator is the
            # concrete class.
            view = self.resolve(node[2][1].rsplit(".", 1)[0], env)
            same = isinstance(view, View) and view.kind == node[3][1]
            return same if node[1] == "=" else not same
        if kind == "cmp":
            return _compare(node[1], self.value(node[2], env), self.value(node[3], env))
        if kind == "in":
            left = self.value(node[1], env)
            items: list[Any] = []
            for item in node[2]:
                value = self.value(item, env)
                items.extend(value if isinstance(value, list | tuple | set) else [value])
            return any(_compare("=", left, item) for item in items)
        if kind == "insub":
            left = self.value(node[1], env)
            rows = self.run(node[2], env)
            return any(_compare("=", left, row[0]) for row in rows)
        if kind == "exists":
            return bool(self.run(node[1], env, limit=1))
        if kind == "like":
            left, pattern = self.value(node[1], env), self.value(node[2], env)
            if not isinstance(left, str) or not isinstance(pattern, str):
                return False
            regex = "^" + re.escape(pattern).replace("%", ".*").replace("_", ".") + "$"
            flags = re.DOTALL | (re.IGNORECASE if node[3] else 0)
            return re.match(regex, left, flags) is not None
        if kind == "between":
            left = _scalar(self.value(node[1], env))
            low, high = _scalar(self.value(node[2], env)), _scalar(self.value(node[3], env))
            return left is not None and low <= left <= high
        if kind == "null":
            return self.value(node[1], env) in (None, [])
        if kind == "notnull":
            return self.value(node[1], env) not in (None, [])
        raise HqlError(f"cannot test {kind}")

    def bindings(self, query: Query, outer: Env) -> Iterator[Env]:
        ids = _root_ids(query, self.params)
        parents = _root_parents(query, self.params) if ids is None else None
        for root in self.graph.candidates(query.cls, ids, parents):
            env = {**outer, query.alias: root, "#root": query.alias}
            yield from self._join(query, 0, env)

    def _join(self, query: Query, index: int, env: Env) -> Iterator[Env]:
        """Every combination of joined elements (one row each, as SQL joins give)."""
        if index == len(query.joins):
            yield env
            return
        join = query.joins[index]
        try:
            value = self.resolve(join.path, env)
        except HqlError:
            value = None
        elements = value if isinstance(value, list) else ([] if value is None else [value])
        owner, prop = self._collection_of(join.path, env) if isinstance(value, list) \
            else (None, None)
        if join.fetch and isinstance(value, View):
            # A fetched many-to-one (``join fetch s.roi``) comes back loaded in its owner.
            ref_owner, ref_prop = self._collection_of(join.path, env)
            if ref_owner is not None and ref_prop is not None:
                env = {**env, f"#ref:{join.alias}": (ref_owner, REF + ref_prop)}
        if not elements:
            if join.outer:
                # An empty collection fetched by an outer join still comes back loaded.
                empty: Env = {join.alias: None}
                if owner is not None and prop is not None:
                    empty[f"#fetch:{join.alias}"] = (owner, prop)
                yield from self._join(query, index + 1, {**env, **empty})
            return
        for position, element in enumerate(elements):
            extra: Env = {join.alias: element}
            if owner is not None and prop is not None:
                extra[f"#fetch:{join.alias}"] = (owner, prop)
                if (owner.kind, prop) in INDEXED:
                    extra[f"#index:{join.alias}"] = position
            yield from self._join(query, index + 1, {**env, **extra})

    def _collection_of(self, path: str, env: Env) -> tuple[View | None, str | None]:
        """The view owning the collection ``path`` names, and the collection's property."""
        head, _, prop = path.rpartition(".")
        if not head or "." in prop:
            return None, None
        try:
            owner = self.resolve(head, env)
        except HqlError:
            return None, None
        return (owner, prop) if isinstance(owner, View) else (None, None)

    def run(self, query: Query, outer: Env | None = None, limit: int | None = None,
            top: bool = False) -> list[list[Any]]:
        """Rows of selected values (aggregates per ``group by`` group, or over all rows)."""
        matches: list[Env] = []
        for env in self.bindings(query, outer or {}):
            if query.where is not None and not self.test(query.where, env):
                continue
            matches.append(env)
            if limit is not None and len(matches) >= limit and not query.order:
                break
        if top:
            self._record_fetches(query, matches)
        aggregated = any(_has_aggregate(item) for item in query.select)
        if query.group or aggregated or query.having is not None:
            return self._grouped(query, matches)
        if query.order:
            for item, desc in reversed(query.order):
                matches.sort(key=self._sorter(item), reverse=desc)
        rows = [[self.value(item, env) for item in query.select] for env in matches]
        if query.distinct:
            rows = _distinct(rows)
        return rows

    def _record_fetches(self, query: Query, matches: list[Env]) -> None:
        fetch_aliases = [j.alias for j in query.joins if j.fetch]
        for env in matches:
            for alias in fetch_aliases:
                ref = env.get(f"#ref:{alias}")
                if ref is not None:
                    self.fetched.setdefault(ref[0].key, {})[ref[1]] = [env[alias]]
                where = env.get(f"#fetch:{alias}")
                if where is None:
                    continue
                self.collection_fetch = True
                owner, prop = where
                elements = self.fetched.setdefault(owner.key, {}).setdefault(prop, [])
                element = env.get(alias)
                if element is not None and element not in elements:
                    elements.append(element)
        # A fetched collection that matched nothing is loaded and empty, not unloaded.
        for env in matches:
            for alias in fetch_aliases:
                where = env.get(f"#fetch:{alias}")
                if where is not None:
                    self.fetched.setdefault(where[0].key, {}).setdefault(where[1], [])

    def _grouped(self, query: Query, matches: list[Env]) -> list[list[Any]]:
        groups: dict[Any, list[Env]] = {}
        if query.group:
            for env in matches:
                key = tuple(_hashable(_scalar(self.value(g, env))) for g in query.group)
                groups.setdefault(key, []).append(env)
        else:
            for item in query.select:
                if not _has_aggregate(item) and item[0] not in ("lit", "param"):
                    raise HqlError("mixing aggregates and plain values needs group by")
            groups[()] = matches
        members = list(groups.values())
        if query.having is not None:
            members = [envs for envs in members if self.test_group(query.having, envs)]
        if query.order:
            for item, desc in reversed(query.order):
                members.sort(key=self._group_sorter(item), reverse=desc)
        rows = [[self.aggregate(item, envs) for item in query.select] for envs in members]
        return _distinct(rows) if query.distinct else rows

    def test_group(self, node: Any, envs: list[Env]) -> bool:
        """A ``having`` condition on one group: comparisons over its aggregates."""
        kind = node[0]
        if kind == "and":
            return self.test_group(node[1], envs) and self.test_group(node[2], envs)
        if kind == "or":
            return self.test_group(node[1], envs) or self.test_group(node[2], envs)
        if kind == "not":
            return not self.test_group(node[1], envs)
        if kind == "cmp":
            return _compare(node[1], self.aggregate(node[2], envs),
                            self.aggregate(node[3], envs))
        if kind == "in":
            left = self.aggregate(node[1], envs)
            return any(_compare("=", left, self.aggregate(item, envs)) for item in node[2])
        if not envs:
            return False
        return self.test(node, envs[0])

    def aggregate(self, node: Any, envs: list[Env]) -> Any:
        """``node`` over a group of rows: aggregates over all, anything else on the first."""
        if node[0] == "func" and node[1] in AGGREGATES:
            name, args, distinct = node[1], node[2], node[3]
            if name in ("minindex", "maxindex"):
                if len(args) != 1:
                    raise HqlError(f"{name}() takes one alias")
                values = [self.index(args[0], env) for env in envs]
                return (min(values) if name == "minindex" else max(values)) if values else None
            values = [self.value(args[0], env) for env in envs] if args else [1] * len(envs)
            values = [v for v in values if v is not None]
            if distinct:
                unique: dict[Any, Any] = {}
                for v in values:
                    unique.setdefault(_hashable(_scalar(v)), v)
                values = list(unique.values())
            if name == "count":
                return len(values)
            nums = [_scalar(v) for v in values]
            if not nums:
                return None
            if name == "max":
                return max(nums)
            if name == "min":
                return min(nums)
            total = sum(nums)
            return total if name == "sum" else total / len(nums)
        if node[0] == "bin":
            return _binary(node[1], self.aggregate(node[2], envs),
                           self.aggregate(node[3], envs))
        if node[0] == "map":
            return {key: self.aggregate(item, envs) for key, item in node[1]}
        if _has_aggregate(node):
            raise HqlError("an aggregate inside a function is not supported by the emulator")
        return self.value(node, envs[0]) if envs else None

    def _sorter(self, item: Any) -> Callable[[Env], tuple[int, Any]]:
        return lambda env: _sort_key(self.value(item, env))

    def _group_sorter(self, item: Any) -> Callable[[list[Env]], tuple[int, Any]]:
        return lambda envs: _sort_key(self.aggregate(item, envs))


def _has_aggregate(node: Any) -> bool:
    if not isinstance(node, tuple) or not node:
        return False
    if node[0] == "func":
        return node[1] in AGGREGATES or any(_has_aggregate(a) for a in node[2])
    if node[0] == "bin":
        return _has_aggregate(node[2]) or _has_aggregate(node[3])
    if node[0] == "map":
        return any(_has_aggregate(item) for _key, item in node[1])
    if node[0] == "case":
        return (any(_has_aggregate(value) for _cond, value in node[1])
                or _has_aggregate(node[2]))
    return False


def _distinct(rows: list[list[Any]]) -> list[list[Any]]:
    unique: list[list[Any]] = []
    keys: set[Any] = set()
    for row in rows:
        key = tuple(_hashable(v) for v in row)
        if key not in keys:
            keys.add(key)
            unique.append(row)
    return unique


def _concat(values: list[Any]) -> str | None:
    """SQL concatenation: null if any part is null."""
    if any(v is None for v in values):
        return None
    return "".join(str(_scalar(v)) for v in values)


def _binary(op: str, left: Any, right: Any) -> Any:
    if op == "||":
        return _concat([left, right])
    left, right = _scalar(left), _scalar(right)
    if left is None or right is None:
        return None
    if isinstance(left, str) or isinstance(right, str):
        raise HqlError(f"arithmetic {op!r} on text (use || to join text)")
    if op == "+":
        return left + right
    if op == "-":
        return left - right
    if op == "*":
        return left * right
    if right == 0:
        raise HqlError("division by zero")
    if isinstance(left, int) and isinstance(right, int):
        return int(left / right)  # integer division truncates, as in SQL
    return left / right


def _hashable(value: Any) -> Any:
    if isinstance(value, list):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def _extract(unit: str, value: Any) -> Any:
    """``extract(unit from timestamp)`` as PostgreSQL answers it (epoch in seconds)."""
    value = _scalar(value)
    if value is None:
        return None
    if not isinstance(value, Time):
        raise HqlError(f"extract() needs a timestamp, not {value!r}")
    if unit == "epoch":
        return value / 1000
    import datetime

    moment = datetime.datetime.fromtimestamp(value / 1000, datetime.UTC)
    if unit in ("year", "month", "day", "hour", "minute"):
        return getattr(moment, unit)
    if unit == "second":
        return moment.second + moment.microsecond / 1e6
    raise HqlError(f"extract({unit} from …) is not supported by the emulator")


def _root_ids(query: Query, params: dict[str, Any]) -> list[int] | None:
    """Fast path: a top-level ``alias.id in (:ids)`` / ``alias.id = :id`` narrows the roots."""
    node = query.where
    conjuncts: list[Any] = []
    stack = [node] if node is not None else []
    while stack:
        n = stack.pop()
        if n[0] == "and":
            stack.extend([n[1], n[2]])
        else:
            conjuncts.append(n)
    target = ("path", f"{query.alias}.id")
    for n in conjuncts:
        values: list[Any] = []
        if n[0] == "cmp" and n[1] == "=" and n[2] == target:
            values = [n[3]]
        elif n[0] == "in" and n[1] == target:
            values = list(n[2])
        else:
            continue
        ids: list[int] = []
        for v in values:
            raw = params.get(v[1]) if v[0] == "param" else v[1] if v[0] == "lit" else None
            if raw is None:
                break
            ids.extend(int(x) for x in (raw if isinstance(raw, list | tuple | set) else [raw]))
        else:
            return ids
    return None


def _root_parents(query: Query, params: dict[str, Any]) -> tuple[str, list[int]] | None:
    """Fast path for ROIs, shapes and links: a top-level ``r.image.id = :id``
    (``in (:ids)``), ``s.roi.id = …``, ``s.roi.image.id = …`` or ``l.parent.id = …``
    names the parents of the roots."""
    node = query.where
    stack = [node] if node is not None else []
    while stack:
        n = stack.pop()
        if n[0] == "and":
            stack.extend([n[1], n[2]])
            continue
        if n[0] == "cmp" and n[1] == "=":
            left, values = n[2], [n[3]]
        elif n[0] == "in":
            left, values = n[1], list(n[2])
        else:
            continue
        if left[0] != "path":
            continue
        for via in ("image", "roi", "roi.image", "parent"):
            if left[1] != f"{query.alias}.{via}.id":
                continue
            ids: list[int] = []
            for v in values:
                raw = params.get(v[1]) if v[0] == "param" else v[1] if v[0] == "lit" else None
                if raw is None:
                    return None
                ids.extend(int(x) for x in (raw if isinstance(raw, list | tuple | set)
                                            else [raw]))
            return via, ids
    return None


def _class_test(node: Any) -> bool:
    """Whether a comparison is ``path.class = EntityName`` (or ``!=``/``<>``)."""
    left, right = node[2], node[3]
    return (node[1] in ("=", "!=", "<>") and left[0] == "path" and "." in left[1]
            and left[1].rsplit(".", 1)[1] == "class" and right[0] == "path"
            and "." not in right[1])


def _step(value: Any, part: str) -> Any:
    if value is None:
        return None
    if isinstance(value, list):
        out: list[Any] = []
        for item in value:
            stepped = _step(item, part)
            out.extend(stepped if isinstance(stepped, list) else [stepped])
        return out
    if isinstance(value, View):
        if part == "class" and "class" not in value.fields:
            return EntityClass(value.kind)  # Hibernate's discriminator
        return value.get(part)
    raise HqlError(f"cannot read {part!r} of a value")


def _scalar(value: Any) -> Any:
    if isinstance(value, View):
        return value.fields.get("id")
    return value


def _sort_key(value: Any) -> tuple[int, Any]:
    value = _scalar(value)
    if value is None:
        return (1, 0)
    if isinstance(value, str):
        return (0, value)
    return (0, value)


def _compare(op: str, left: Any, right: Any) -> bool:
    if isinstance(left, list):
        return any(_compare(op, item, right) for item in left)
    left, right = _scalar(left), _scalar(right)
    if op == "=":
        return left == right
    if op in ("!=", "<>"):
        return left != right
    if left is None or right is None:
        return False
    try:
        return {"<": left < right, ">": left > right, "<=": left <= right,
                ">=": left >= right}[op]
    except TypeError:
        return False


@dataclass
class Result:
    """What a query found: rows, and the collections its ``join fetch``es loaded."""

    query: Query
    rows: list[list[Any]]
    fetched: dict[tuple[str, Any], dict[str, list[View]]]
    collection_fetch: bool
    #: The graph the query ran over (what the caller may see and do).
    graph: Graph


def execute(graph: Graph, text: str, params: dict[str, Any]) -> Result:
    """Parse and run ``text``."""
    tokens = tokenize(text)
    query = Parser(tokens).query()
    # Hibernate binds every named parameter before the query runs (StringQuery).
    for tok in tokens:
        if tok.kind == "param" and params.get(tok.text[1:]) is None:
            raise MissingParameter(tok.text[1:])
    evaluator = Evaluator(graph, params)
    rows = evaluator.run(query, top=True)
    return Result(query, rows, evaluator.fetched, evaluator.collection_fetch, graph)


#: Marks a fetched many-to-one in ``Result.fetched`` (property → [the one object]).
REF = "="

#: Collections a model of these classes comes with loaded (and empty) from ``modelmap``
#: but a real server sends unloaded unless the query fetched them.
UNLOADED_UNLESS_FETCHED = ("Well", "Experimenter", "ExperimenterGroup")


class Models:
    """Model objects of one query's views.

    Each entity is built once, so the rows Hibernate repeats for a joined collection
    share one object (as they do on a real server: one instance per session), and
    carries the collections the query fetched loaded with what matched.
    """

    def __init__(self, fetched: dict[tuple[str, Any], dict[str, list[View]]]) -> None:
        self.fetched = fetched
        self._cache: dict[tuple[str, Any], Any] = {}

    def of(self, view: View) -> Any:
        key = view.key
        if key in self._cache:
            return self._cache[key]
        assert view.model is not None
        m = view.model()
        self._cache[key] = m
        if view.kind in UNLOADED_UNLESS_FETCHED:
            from cellprofiler_omero.emulator import modelmap

            modelmap.unload_collections(m)
        for prop, elements in self.fetched.get(key, {}).items():
            if prop.startswith(REF):
                name = f"_{prop[len(REF):]}"
                if hasattr(m, name) and elements and elements[0].model is not None:
                    setattr(m, name, self.of(elements[0]))
                continue
            if not hasattr(m, f"_{prop}Loaded"):
                continue  # an embedded list (mapValue) is always part of its object
            setattr(m, f"_{prop}Seq", [self.of(e) for e in elements if e.model is not None])
            setattr(m, f"_{prop}Loaded", True)
        return m

    def value(self, value: Any) -> Any:
        """A selected value as the client receives it (views as model objects)."""
        if isinstance(value, View):
            if value.kind in UNIT_KINDS:
                return unit_map(value)
            return self.of(value) if value.model is not None else value.fields.get("id")
        return value


def objects(rows: Iterable[list[Any]], models: Models | None = None) -> list[Any]:
    """The model objects of the first selected column."""
    models = models or Models({})
    out = []
    for row in rows:
        value = models.value(row[0])
        if value is not None:
            out.append(value)
    return out
