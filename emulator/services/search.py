"""Search: the stateful full-text search service (OMERO.web's search page, BlitzGateway's
``searchObjects``).

Mirrors ome/omero-server ``ome/services/SearchBean.java`` (state, batches, ``hasNext`` /
``next`` / ``results`` and their refusals), ``ome/services/search/FullText.java`` (what
``byFullText`` and ``byLuceneQueryBuilder`` refuse), ``ome/services/fulltext/FullTextBridge.java``
(which fields an object's document has) and ome/omero-common
``ome/util/search/LuceneQueryBuilder.java`` (how the web form's text becomes a query).

A real server asks Lucene. The emulator has no index: it builds each candidate's document
when a search runs and matches a subset of Lucene's classic query syntax against it —
terms, ``"phrases"``, ``*``/``?`` wildcards, ``field:term``, ``+``/``-``, ``AND``/``OR``/
``NOT``, parentheses and ``field:[from TO to]`` ranges — with OMERO's analyzer rule
(lower-cased runs of letters and digits, so ``field_01`` is the tokens ``field`` and ``01``).
Fuzzy (``~``) and boosts (``^``) are not supported and are refused as a parse error.
Results come in id order (Lucene orders by score).
"""

from __future__ import annotations

import datetime as dt
import fnmatch
import re
from dataclasses import dataclass, field
from typing import Any

import Ice
import omero
import omero.api
from omero.rtypes import unwrap

from cellprofiler_omero.emulator import modelmap
from cellprofiler_omero.emulator.icebase import api_usage, servant
from cellprofiler_omero.emulator.services.common import Caller, StatefulServant
from cellprofiler_omero.emulator.services.metadata import STORED_LINKS, omero_class
from cellprofiler_omero.emulator.store import Obj

#: ``ome.api.Search`` defaults (``DEFAULT_BATCH_SIZE`` …).
DEFAULT_BATCH_SIZE = 1000
#: Classes the emulator stores that a search can return, with their Java names.
JAVA_NAMES = {
    "Project": "ome.model.containers.Project", "Dataset": "ome.model.containers.Dataset",
    "Image": "ome.model.core.Image", "Screen": "ome.model.screen.Screen",
    "Plate": "ome.model.screen.Plate", "Well": "ome.model.screen.Well",
    "PlateAcquisition": "ome.model.screen.PlateAcquisition",
}
_TOKEN = re.compile(r"[^\W_]+")
_WILDCARDS = "*?~"
_NO_BREAK = "_-:"


def java_error(java_class: str, message: str) -> omero.InternalException:
    """A Java runtime exception as omero-blitz's IceMapper hands it on: InternalException
    naming the Java class (``UnsupportedOperationException``, ``IllegalArgumentException``)."""
    return omero.InternalException(serverStackTrace="", serverExceptionClass=java_class,
                                   message=message)


def tokens(text: str) -> list[str]:
    """OMERO's analyzer: lower-cased runs of letters and digits."""
    return _TOKEN.findall(text.lower())


# -- LuceneQueryBuilder ----------------------------------------------------------------------

class InvalidQuery(Exception):
    """``ome.util.search.InvalidQueryException``."""


def build_lucene_query(fields: list[str], date_from: str | None, date_to: str | None,
                       date_type: str, text: str) -> str:
    """The web form's text (and date range) as a Lucene query, as LuceneQueryBuilder does."""
    out, quoted = [], False
    for c in text:
        if c == '"':
            quoted = not quoted
            out.append(c)
        elif quoted or c.isalnum() or c in _WILDCARDS or c in _NO_BREAK:
            out.append(c)
        else:
            out.append(" ")
    terms: list[str] = []
    for match in re.finditer(r'"([^"]*)"|(\S+)', "".join(out)):
        if match.group(1) is not None:
            terms.append(f'"{match.group(1).strip()}"')
        elif not re.fullmatch(r"[*?~]+", match.group(2)):
            terms.append(match.group(2).strip())
    if fields:
        terms = [t if t == "AND" or ":" in t else " ".join(f"{f}:{t}" for f in fields)
                 for t in terms]
    basic = " ".join(_assemble_and(terms)).strip()
    if date_from is None and date_to is None:
        return basic
    start = date_from or "19700101"
    tomorrow = (dt.date.today() + dt.timedelta(days=1)).strftime("%Y%m%d")
    stop = tomorrow if date_to is None else (
        dt.datetime.strptime(date_to, "%Y%m%d") + dt.timedelta(days=1)).strftime("%Y%m%d")
    dates = f"{date_type}:[{start} TO {stop}]"
    return f"({basic}) AND {dates}" if basic else dates


def _assemble_and(terms: list[str]) -> list[str]:
    if not terms:
        return []
    if len(terms) == 1:
        if terms[0] == "AND":
            raise InvalidQuery("AND expression must be followed by a search term!")
        return terms
    result: list[str] = []
    ands: list[str] = []
    within = False
    i = 0
    while i < len(terms):
        term = terms[i]
        if i < len(terms) - 1:
            if terms[i + 1] == "AND":
                ands.append(term)
                within = True
                i += 1
            elif within:
                ands.append(term)
                within = False
            else:
                if ands:
                    result.append("(" + " AND ".join(f"({t})" for t in ands) + ")")
                    ands = []
                result.append(term)
        elif within:
            ands.append(term)
            within = False
        elif term != "AND":
            result.append(term)
        else:
            raise InvalidQuery("AND expression must be followed by a search term!")
        i += 1
    if ands:
        result.append("(" + " AND ".join(f"({t})" for t in ands) + ")")
    return result


# -- a small Lucene query parser and matcher --------------------------------------------------

Document = dict[str, list[list[str]]]  # field → its values, each as tokens
COMBINED = "combined_fields"


@dataclass
class _Clause:
    occur: str  # "should", "must", "not"
    node: Any


@dataclass
class _Bool:
    clauses: list[_Clause] = field(default_factory=list)


@dataclass
class _Term:
    field: str
    text: str  # as typed: wildcards or a phrase are detected when matching
    phrase: bool = False


@dataclass
class _Range:
    field: str
    low: str
    high: str


class QueryParser:
    """Lucene's classic syntax (the subset the module docstring names)."""

    _LEX = re.compile(r'\s*(?:(\()|(\))|("[^"]*")|(\[[^\]]*\])|([+-])(?=\S)|([^\s()"\[]+))')

    def __init__(self, query: str, allow_leading_wildcard: bool) -> None:
        self.query = query
        self.leading = allow_leading_wildcard
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        while pos < len(query):
            if query[pos:].strip() == "":
                break
            m = self._LEX.match(query, pos)
            if m is None or m.end() == pos:
                raise InvalidQuery(f"Cannot parse '{query}': unexpected character at {pos}")
            kinds = ("(", ")", "phrase", "range", "sign", "word")
            for kind, value in zip(kinds, m.groups(), strict=True):
                if value is not None:
                    self.tokens.append((kind, value))
            pos = m.end()
        self.at = 0

    def parse(self) -> _Bool:
        node = self._query(COMBINED)
        if self.at != len(self.tokens):
            raise InvalidQuery(f"Cannot parse '{self.query}': unbalanced parentheses")
        return node

    def _peek(self) -> tuple[str, str] | None:
        return self.tokens[self.at] if self.at < len(self.tokens) else None

    def _query(self, default_field: str) -> _Bool:
        result = _Bool()
        conj = None
        while (tok := self._peek()) is not None and tok[0] != ")":
            if tok == ("word", "AND") or tok == ("word", "OR"):
                if not result.clauses:
                    raise InvalidQuery(f"Cannot parse '{self.query}': {tok[1]} without a "
                                       "term before it")
                conj = tok[1]
                self.at += 1
                continue
            occur = "should"
            if tok[0] == "sign":
                occur = "must" if tok[1] == "+" else "not"
                self.at += 1
            elif tok == ("word", "NOT"):
                occur = "not"
                self.at += 1
            node = self._clause(default_field)
            if conj == "AND":
                previous = result.clauses[-1]
                if previous.occur == "should":
                    previous.occur = "must"
                if occur == "should":
                    occur = "must"
            result.clauses.append(_Clause(occur, node))
            conj = None
        if conj is not None:
            raise InvalidQuery(f"Cannot parse '{self.query}': {conj} must be followed by a "
                               "search term")
        return result

    def _clause(self, default_field: str) -> Any:
        tok = self._peek()
        if tok is None:
            raise InvalidQuery(f"Cannot parse '{self.query}': Encountered \"<EOF>\"")
        fld = default_field
        if tok[0] == "word" and ":" in tok[1] and not tok[1].startswith(":"):
            name, _, rest = tok[1].partition(":")
            fld = name
            if rest:
                self.tokens[self.at] = ("word", rest)
            else:
                self.at += 1
            tok = self._peek()
            if tok is None:
                raise InvalidQuery(f"Cannot parse '{self.query}': Encountered \"<EOF>\"")
        self.at += 1
        kind, value = tok
        if kind == "(":
            node = self._query(fld)
            if self._peek() != (")", ")"):
                raise InvalidQuery(f"Cannot parse '{self.query}': missing ')'")
            self.at += 1
            return node
        if kind == "phrase":
            return _Term(fld, value[1:-1], phrase=True)
        if kind == "range":
            low, sep, high = value[1:-1].partition(" TO ")
            if not sep:
                raise InvalidQuery(f"Cannot parse '{self.query}': a range needs TO")
            return _Range(fld, low.strip(), high.strip())
        if kind == "word":
            if any(c in value for c in "~^"):
                raise InvalidQuery(f"Cannot parse '{self.query}': fuzzy and boosted terms "
                                   "are not supported by the emulator")
            if value[0] in "*?" and not self.leading:
                raise InvalidQuery(f"Cannot parse '{self.query}': '*' or '?' not allowed as "
                                   "first character in WildcardQuery")
            return _Term(fld, value)
        raise InvalidQuery(f"Cannot parse '{self.query}': Encountered \"{value}\"")


def _values(doc: Document, fld: str) -> list[list[str]]:
    if fld == COMBINED:
        return doc.get(COMBINED, [])
    # Lucene field names are case-sensitive; map-annotation keys are fields of their own.
    return doc.get(fld, [])


def matches(node: Any, doc: Document) -> bool:
    """Does the document match the parsed query?"""
    if isinstance(node, _Bool):
        must = [c for c in node.clauses if c.occur == "must"]
        should = [c for c in node.clauses if c.occur == "should"]
        nots = [c for c in node.clauses if c.occur == "not"]
        if any(matches(c.node, doc) for c in nots):
            return False
        if not all(matches(c.node, doc) for c in must):
            return False
        if must:
            return True
        return any(matches(c.node, doc) for c in should)
    if isinstance(node, _Range):
        return any(node.low <= " ".join(v) <= node.high for v in _values(doc, node.field))
    assert isinstance(node, _Term)
    values = _values(doc, node.field)
    if not node.phrase and any(c in node.text for c in "*?"):
        pattern = node.text.lower()
        return any(fnmatch.fnmatchcase(tok, pattern) for value in values for tok in value)
    wanted = tokens(node.text)
    if not wanted:
        return False
    if node.phrase:
        n = len(wanted)
        return any(value[i:i + n] == wanted for value in values
                   for i in range(len(value) - n + 1))
    # One term the analyzer splits (``field_01``) is an OR of its tokens (Lucene 3.1).
    return any(tok in wanted for value in values for tok in value)


# -- documents -------------------------------------------------------------------------------

def _day(seconds: float) -> str:
    return dt.datetime.fromtimestamp(seconds, dt.UTC).strftime("%Y%m%d")


def document(ctx: Any, obj: Obj) -> Document:
    """An object's fields as FullTextBridge indexes them (those the emulator has)."""
    store = ctx.store
    doc: Document = {}

    def add(fld: str | None, text: str | None) -> None:
        if not text:
            return
        toks = tokens(str(text))
        if fld is not None:
            doc.setdefault(fld, []).append(toks)
        doc.setdefault(COMBINED, []).append(toks)

    add(None, JAVA_NAMES.get(obj.kind, obj.kind))
    add("name", obj.name)
    add("description", obj.description)
    link_kind = STORED_LINKS.get(obj.kind)
    if link_kind is not None:
        links = store.links_from(link_kind, [obj.id])
        for ann in store.get_many([lk.child_id for lk in links]):
            d = ann.data
            add("annotation.type", ann.kind)
            add("annotation.ns", d.get("ns"))
            if ann.kind in ("CommentAnnotation", "TagAnnotation"):
                add("annotation", d.get("text", ""))
                if ann.kind == "TagAnnotation":
                    add("tag", d.get("text", ""))
            elif ann.kind == "MapAnnotation":
                for key, value in d.get("map", []):
                    add(key, value)
                    add("has_key", key)
                    add("annotation", value)
                    add("annotation", key)
            elif ann.kind == "FileAnnotation" and d.get("file") is not None:
                file = store.get(d["file"], "OriginalFile")
                if file is not None:
                    add("file.name", file.name)
                    add("file.path", file.data.get("path"))
                    add("file.format", file.data.get("mimetype"))
                    add("file.mimetype", file.data.get("mimetype"))
    if obj.kind == "Image":
        for ch in obj.data.get("channels", []):
            add("channel.name", ch.get("name"))
        doc.setdefault("acquisitionDate", []).append([_day(obj.created)])
    owner = store.user(obj.owner_id)
    if owner is not None:
        add("details.owner.omeName", owner.omename)
        add("details.owner.firstName", owner.first)
        add("details.owner.lastName", owner.last)
    group = store.group(obj.group_id)
    if group is not None:
        add("details.group.name", group.name)
    doc.setdefault("details.creationEvent.time", []).append([_day(obj.created)])
    return doc


# -- the service -----------------------------------------------------------------------------

@dataclass
class _Values:
    """``ome.services.search.SearchValues``: the template every new query copies."""

    case_sensitive: bool = False
    batch_size: int = DEFAULT_BATCH_SIZE
    merged_batches: bool = False
    return_unloaded: bool = False
    leading_wildcard: bool = False
    id_only: bool = False
    only_types: list[str] | None = None
    only_ids: list[int] | None = None
    owned_by: tuple[int | None, int | None] | None = None
    not_owned_by: tuple[int | None, int | None] | None = None
    created: tuple[int | None, int | None] | None = None
    modified: tuple[int | None, int | None] | None = None
    order_by: list[str] = field(default_factory=list)

    def copy(self) -> _Values:
        return _Values(**{**self.__dict__, "order_by": list(self.order_by)})


def _owner_group(details: Any) -> tuple[int | None, int | None]:
    owner = getattr(details, "owner", None) if details is not None else None
    group = getattr(details, "group", None) if details is not None else None
    return (unwrap(owner.id) if owner is not None and owner.id is not None else None,
            unwrap(group.id) if group is not None and group.id is not None else None)


def _millis(value: Any) -> int | None:
    raw = unwrap(value)
    return int(raw) if raw is not None else None


@servant(omero.api.Search)
class SearchI(StatefulServant):
    """One search: settings, queued queries and the results not yet handed out."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.values = _Values()
        #: Queued queries: a parsed full-text query (None: finds nothing) or HQL + params.
        self.actions: list[tuple[_Values, _Bool | tuple[str, Any] | None]] = []
        self._batches: list[list[Any]] = []

    # -- queries ---------------------------------------------------------------------------

    def _check_type(self) -> None:
        if self.values.only_types is None or len(self.values.only_types) != 1:
            raise api_usage("Searches by full text are currently limited to a single type.\n"
                            "Plese use Search.onlyType()")

    def _check(self, query: str) -> None:
        """FullText's constructor checks after the type and the empty query, in its order."""
        if query.startswith(("*", "?")) and not self.values.leading_wildcard:
            raise api_usage("Searches starting with a leading wildcard (*,?) can be slow.\n"
                            "Please use setAllowLeadingWildcard() to permit this usage.")
        if query == "*":
            raise api_usage("Wildcard searches (*) must contain more than a single wildcard. ")

    def _queue(self, query: str) -> None:
        if not query:
            self.actions.append((self.values.copy(), None))  # an empty query finds nothing
            return
        try:
            parsed = QueryParser(query, self.values.leading_wildcard).parse()
        except InvalidQuery as exc:
            raise api_usage(f"{query} caused a parse exception: {exc}") from None
        self.actions.append((self.values.copy(), parsed))

    def byFullText(self, query: str, current: Ice.Current) -> None:
        self.caller(current)
        self._check_type()
        if not query:
            raise java_error("java.lang.IllegalArgumentException",
                             "Query string must be non-empty")
        self._check(query)
        self._queue(query)

    def byLuceneQueryBuilder(self, fields: str, date_from: str, date_to: str,
                             date_type: str, query: str, current: Ice.Current) -> None:
        self.caller(current)
        query = query or ""
        self._check_type()
        if not query and not (date_from or "").strip() and not (date_to or "").strip():
            raise java_error("java.lang.IllegalArgumentException",
                             "Query string must be non-empty if no date range is provided")
        self._check(query)
        try:
            start = _date(date_from)
            stop = _date(date_to)
        except ValueError:
            raise api_usage("Invalid date format, dates must be in format YYYYMMDD.") from None
        if date_type == "acquisitionDate" and self.values.only_types != ["Image"]:
            date_type = "details.creationEvent.time"  # import date for non-images
        names = [f.strip() for f in (fields or "").split(",") if f.strip()]
        try:
            built = build_lucene_query(names, start, stop, date_type, query)
        except InvalidQuery as exc:
            raise api_usage(f"Invalid query: {exc}") from None
        self._queue(built)

    def bySomeMustNone(self, some: list[str], must: list[str], none: list[str],
                       current: Ice.Current) -> None:
        """Lucene's ``a b +c -d``, as FullText's SomeMustNone builds it."""
        self.caller(current)
        parts = [*(some or []), *(f"+{t}" for t in must or []), *(f"-{t}" for t in none or [])]
        query = " ".join(parts)
        if not query:
            raise java_error("java.lang.IllegalArgumentException",
                             "Query string must be non-empty")
        self._check_type()
        self._check(query)
        self._queue(query)

    def byHqlQuery(self, query: str, params: Any, current: Ice.Current) -> None:
        """An HQL query whose objects are the results (SearchBean's ``HqlQuery`` action),
        run by the emulator's IQuery when ``hasNext`` reaches it."""
        self.caller(current)
        self.actions.append((self.values.copy(), (query, params)))

    # -- running ---------------------------------------------------------------------------

    def _run(self, caller: Caller, values: _Values, query: _Bool | tuple[str, Any] | None,
             current: Ice.Current) -> list[Any]:
        if query is None:
            return []
        if isinstance(query, tuple):
            from cellprofiler_omero.emulator.services.query import QueryI

            text, params = query
            runner = QueryI(self.ctx, self.session_uuid or "", None, self.factory)
            return list(runner._objects(text, params, current))
        store = self.ctx.store
        kind = (values.only_types or [""])[0]
        if kind not in JAVA_NAMES:
            return []  # a class the emulator stores no objects of
        found = []
        for obj in store.all(kind):
            if not self.visible(caller, obj) or not _filters(values, obj):
                continue
            if matches(query, document(self.ctx, obj)):
                found.append(obj)
        if values.return_unloaded:
            return [modelmap.unloaded(o.kind, o.id) for o in found]
        return [modelmap.to_model(store, caller.user, o, deep=False) for o in found]

    def hasNext(self, current: Ice.Current) -> bool:
        caller = self.caller(current)
        while True:
            while self._batches:
                if self._batches[0]:
                    return True
                self._batches.pop(0)
            if not self.actions:
                return False
            values, query = self.actions.pop(0)
            self._batches.append(self._run(caller, values, query, current))

    def next(self, current: Ice.Current) -> Any:
        if not self.hasNext(current):
            raise api_usage("No element. Please use hasNext().")
        return self._batches[0].pop(0)

    def results(self, current: Ice.Current) -> list[Any]:
        if not self.hasNext(current):
            raise api_usage("No elements. Please use hasNext().")
        out: list[Any] = []
        while self.hasNext(current) and len(out) < self.values.batch_size:
            batch = self._batches[0]
            if batch:
                out.append(batch.pop(0))
            elif not self.values.merged_batches:
                break
            else:
                self._batches.pop(0)
        return out

    def activeQueries(self, current: Ice.Current) -> int:
        return len(self.actions)

    def clearQueries(self, current: Ice.Current) -> None:
        self.actions.clear()

    def resetDefaults(self, current: Ice.Current) -> None:
        self.values = _Values()

    # -- settings --------------------------------------------------------------------------

    def onlyType(self, klass: str, current: Ice.Current) -> None:
        self.values.only_types = [omero_class(klass)]

    def onlyTypes(self, classes: list[str], current: Ice.Current) -> None:
        self.values.only_types = [omero_class(k) for k in classes or []]

    def onlyIds(self, ids: list[int], current: Ice.Current) -> None:
        self.values.only_ids = [int(i) for i in ids] if ids else None

    def onlyOwnedBy(self, details: Any, current: Ice.Current) -> None:
        self.values.owned_by = _owner_group(details) if details is not None else None

    def notOwnedBy(self, details: Any, current: Ice.Current) -> None:
        self.values.not_owned_by = _owner_group(details) if details is not None else None

    def onlyCreatedBetween(self, start: Any, stop: Any, current: Ice.Current) -> None:
        self.values.created = (_millis(start), _millis(stop))

    def onlyModifiedBetween(self, start: Any, stop: Any, current: Ice.Current) -> None:
        # The emulator keeps no update events: an object was last modified when created.
        self.values.modified = (_millis(start), _millis(stop))

    def setBatchSize(self, size: int, current: Ice.Current) -> None:
        self.values.batch_size = int(size)

    def getBatchSize(self, current: Ice.Current) -> int:
        return self.values.batch_size

    def setMergedBatches(self, merge: bool, current: Ice.Current) -> None:
        self.values.merged_batches = bool(merge)

    def isMergedBatches(self, current: Ice.Current) -> bool:
        return self.values.merged_batches

    def setCaseSensitive(self, flag: bool, current: Ice.Current) -> None:
        self.values.case_sensitive = bool(flag)

    def setCaseSentivice(self, flag: bool, current: Ice.Current) -> None:
        self.values.case_sensitive = bool(flag)

    def isCaseSensitive(self, current: Ice.Current) -> bool:
        return self.values.case_sensitive

    def setAllowLeadingWildcard(self, flag: bool, current: Ice.Current) -> None:
        self.values.leading_wildcard = bool(flag)

    def isAllowLeadingWildcard(self, current: Ice.Current) -> bool:
        return self.values.leading_wildcard

    def setReturnUnloaded(self, flag: bool, current: Ice.Current) -> None:
        self.values.return_unloaded = bool(flag)

    def isReturnUnloaded(self, current: Ice.Current) -> bool:
        return self.values.return_unloaded

    def isUseProjections(self, current: Ice.Current) -> bool:
        return False

    def setIdOnly(self, current: Ice.Current) -> None:
        self.values.id_only = True

    def addOrderByAsc(self, path: str, current: Ice.Current) -> None:
        self.values.order_by.append("A" + path)

    def addOrderByDesc(self, path: str, current: Ice.Current) -> None:
        self.values.order_by.append("D" + path)

    def unordered(self, current: Ice.Current) -> None:
        self.values.order_by = []

    def fetchAnnotations(self, classes: list[str], current: Ice.Current) -> None:
        for k in classes or []:
            omero_class(k)  # refused if unknown; the emulator's answers carry no links

    # -- what SearchBean refuses -----------------------------------------------------------

    def setUseProjections(self, flag: bool, current: Ice.Current) -> None:
        raise java_error("java.lang.UnsupportedOperationException", "")

    def allTypes(self, current: Ice.Current) -> None:
        raise java_error("java.lang.UnsupportedOperationException", "")

    def currentMetadata(self, current: Ice.Current) -> Any:
        raise java_error("java.lang.UnsupportedOperationException", "")

    def currentMetadataList(self, current: Ice.Current) -> Any:
        raise java_error("java.lang.UnsupportedOperationException", "")

    def remove(self, current: Ice.Current) -> None:
        raise java_error("java.lang.UnsupportedOperationException",
                         "Cannot remove via ome.api.Search")


def _date(value: str | None) -> str | None:
    if value is None or not value.strip():
        return None
    return dt.datetime.strptime(value.strip(), "%Y%m%d").strftime("%Y%m%d")


def _within(span: tuple[int | None, int | None] | None, millis: int) -> bool:
    if span is None:
        return True
    start, stop = span
    return (start is None or millis >= start) and (stop is None or millis <= stop)


def _filters(values: _Values, obj: Obj) -> bool:
    """SearchAction's criteria: ids, owner or group, created and modified times."""
    if values.only_ids is not None and obj.id not in values.only_ids:
        return False
    if values.owned_by is not None:
        owner, group = values.owned_by
        if (owner is not None and obj.owner_id != owner) or (
                group is not None and obj.group_id != group):
            return False
    if values.not_owned_by is not None:
        owner, group = values.not_owned_by
        if (owner is not None and obj.owner_id == owner) or (
                group is not None and obj.group_id == group):
            return False
    millis = int(obj.created * 1000)
    return _within(values.created, millis) and _within(values.modified, millis)
