"""Every way a user names an OMERO object, parsed into one frozen ``ObjectRef``.

Accepted forms (case-insensitive where OMERO is):

* legacy CellProfiler: ``omero:iid=123``
* command-line style: ``Image:123``, ``Dataset:7`` (as the ``omero`` CLI prints them)
* OMERO.web object tokens: ``image-123``, ``image.id-123``
* OMERO.web URLs, with any path prefix (``/omero/webclient/…`` behind a proxy):
  ``…/webclient/?show=image-1|image-2`` (``show`` anywhere among the parameters,
  ``type-N`` or ``type.id-N``), ``…/webclient/img_detail/N/``,
  ``…/webgateway/img_detail/N/``, ``…/iviewer/?images=1,2`` (also
  ``omero_iviewer``), ``…/webgateway/render_image[_region]/N/…``,
  ``…/render_thumbnail/[size/S/]N/``, ``…/render_birds_eye_view/N/``,
  ``…/imgData/N/`` and the JSON API ``…/api/v0/m/images/N/`` (also datasets,
  projects, screens, plates, wells).

Containers (Project, Dataset, Screen, Plate, Well, plate acquisition) parse to refs
of their kind so they can be expanded into images later. A web URL's port is the
web server's, never the Ice port, so ``ObjectRef.port`` stays ``None`` for them.
Anything that names nothing raises ``InvalidReference`` quoting the input.
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass, field
from urllib.parse import parse_qsl, urlsplit

from cellprofiler_omero.core.errors import InvalidReference

MAX_ID = 2**63 - 1


class Kind(enum.Enum):
    """The OMERO object types a reference may name."""

    IMAGE = "Image"
    DATASET = "Dataset"
    PROJECT = "Project"
    SCREEN = "Screen"
    PLATE = "Plate"
    WELL = "Well"
    ACQUISITION = "PlateAcquisition"

    @property
    def is_container(self) -> bool:
        return self is not Kind.IMAGE


# Names as they appear in web tokens, CLI objects and API paths.
_KIND_NAMES: dict[str, Kind] = {
    "image": Kind.IMAGE,
    "images": Kind.IMAGE,
    "dataset": Kind.DATASET,
    "datasets": Kind.DATASET,
    "project": Kind.PROJECT,
    "projects": Kind.PROJECT,
    "screen": Kind.SCREEN,
    "screens": Kind.SCREEN,
    "plate": Kind.PLATE,
    "plates": Kind.PLATE,
    "well": Kind.WELL,
    "wells": Kind.WELL,
    "acquisition": Kind.ACQUISITION,
    "run": Kind.ACQUISITION,
    "plateacquisition": Kind.ACQUISITION,
}


@dataclass(frozen=True)
class ObjectRef:
    """One OMERO object: its kind, id and, when the text named it, its server.

    ``host`` is the server's host name as written (lower-cased); ``port`` is an
    Ice port only when the text gave one explicitly for Ice. ``web_base`` (the
    OMERO.web root the URL came from) is kept for building links but is not part
    of the reference's identity.
    """

    kind: Kind
    id: int
    host: str | None = None
    port: int | None = None
    web_base: str | None = field(default=None, compare=False)

    def __str__(self) -> str:
        where = f"@{self.host}" if self.host else ""
        return f"{self.kind.value}:{self.id}{where}"


_LEGACY = re.compile(r"^omero:(?://)?iid=([0-9]+)$", re.IGNORECASE)
_CLI = re.compile(r"^([A-Za-z]+):([0-9]+)$")
_TOKEN = re.compile(r"^([A-Za-z]+)(?:\.id)?-([0-9]+)$", re.IGNORECASE)
_IMAGE_PATHS = re.compile(
    r"/(?:img_detail|render_image|render_image_region|render_birds_eye_view|imgData"
    r"|render_split_channel|render_ome_tiff|archived_files)/([0-9]+)(?:/|$)",
    re.IGNORECASE,
)
_THUMBNAIL = re.compile(r"/render_thumbnail/(?:size/[0-9]+/)?([0-9]+)(?:/|$)", re.IGNORECASE)
_API = re.compile(r"/api/v[0-9]+/m/([a-z]+)/([0-9]+)(?:/|$)", re.IGNORECASE)
_WEB_APPS = re.compile(r"/(webclient|webgateway|iviewer|omero_iviewer|api)(?:/|$)", re.IGNORECASE)


#: Longest id text that can be in range (2**63 - 1 has 19 digits); longer text is refused
#: before ``int()``, which raises its own ``ValueError`` past 4300 digits.
_MAX_ID_DIGITS = len(str(MAX_ID))
#: Inputs longer than this are shown shortened in messages (one readable error line).
_QUOTE_LIMIT = 120


def _quote(text: str) -> str:
    """``repr(text)``, shortened in the middle when long (a 5,000-digit id stays one line)."""
    if len(text) <= _QUOTE_LIMIT:
        return repr(text)
    half = _QUOTE_LIMIT // 2
    return f"{text[:half] + '…' + text[-half:]!r} ({len(text)} characters)"


def _check_id(text: str, original: str) -> int:
    """The id ``text`` (ASCII digits) as an int, or ``InvalidReference`` when out of range.

    OMERO ids are Java ``long``s, so anything above ``2**63 - 1`` names nothing.
    """
    digits = text.lstrip("0") or "0"
    if len(digits) > _MAX_ID_DIGITS or int(digits) > MAX_ID:
        raise InvalidReference(
            f"{_quote(original)} names an object id too large for OMERO ({len(digits)} digits).",
            hint=f"OMERO ids are whole numbers from 0 to {MAX_ID} (64-bit); check the link.",
        )
    return int(digits)


def _kind_of(name: str) -> Kind | None:
    return _KIND_NAMES.get(name.lower())


def _from_token(token: str, original: str, host: str | None, web_base: str | None
                ) -> ObjectRef | None:
    match = _TOKEN.match(token.strip())
    if not match:
        return None
    kind = _kind_of(match.group(1))
    if kind is None:
        return None
    return ObjectRef(kind, _check_id(match.group(2), original), host, None, web_base)


def _bad(text: str, why: str) -> InvalidReference:
    return InvalidReference(
        f"{_quote(text)} does not name an OMERO image or container ({why}).",
        hint="Use an OMERO.web link such as https://server/webclient/?show=image-123, "
        "'omero:iid=123' or 'Image:123'.",
    )


def _redacted(text: str, netloc: str) -> str:
    """``text`` with the password of a ``user:password@`` part replaced by ``***``."""
    userinfo, at, rest = netloc.rpartition("@")
    user, colon, _ = userinfo.partition(":")
    if not (at and colon):
        return text
    return text.replace(netloc, f"{user}:***@{rest}", 1)


def _refuse_ambiguous_server(text: str, netloc: str, path: str) -> None:
    """Refuse links whose server a browser and this parser could read differently.

    Python's ``urlsplit`` and browsers (the WHATWG URL standard) disagree on a
    backslash: browsers read it as ``/``, so ``https://a\\@b/…`` opens ``a`` where
    ``urlsplit`` finds ``b``. A ``user@`` part is never in an OMERO link either;
    guessing would send a session to a server the user did not mean.
    """
    if "\\" in netloc or "\\" in path:
        raise InvalidReference(
            f"{_quote(_redacted(text, netloc))} contains a backslash, which browsers read "
            "as '/' and this parser would not: it is unclear which server it names.",
            hint="Copy the link again from the browser's address bar, or give the object "
                 "as 'Image:123' with --server.")
    if "@" in netloc:
        server = netloc.rpartition("@")[2]
        raise InvalidReference(
            f"{_quote(_redacted(text, netloc))} has a user name (or password) before the "
            f"server {server!r}; OMERO links name no user.",
            hint="Remove the part up to '@' from the link (log in with "
                 "`cellprofiler-omero login --user NAME` instead).")


def _parse_url(text: str) -> tuple[ObjectRef, ...]:
    try:
        parts = urlsplit(text)
        host = parts.hostname
    except ValueError as exc:
        raise _bad(text, f"not a valid URL: {exc}") from None
    if parts.scheme.lower() not in ("http", "https"):
        raise _bad(text, "not an http(s) URL")
    _refuse_ambiguous_server(text, parts.netloc, parts.path)
    if not host:
        raise _bad(text, "the URL has no server")
    path = parts.path
    app = _WEB_APPS.search(path)
    if app is None:
        raise _bad(text, "not an OMERO.web address")
    web_base = f"{parts.scheme.lower()}://{parts.netloc}{path[: app.start()]}/"
    params = parse_qsl(parts.query, keep_blank_values=True)
    refs: list[ObjectRef] = []

    for key, value in params:
        if key.lower() == "show":
            for token in value.split("|"):
                ref = _from_token(token, text, host, web_base)
                if ref is not None:
                    refs.append(ref)
    if refs:
        return tuple(dict.fromkeys(refs))

    app_name = app.group(1).lower()
    if app_name in ("iviewer", "omero_iviewer"):
        for key, value in params:
            if key.lower() == "images":
                for item in value.split(","):
                    item = item.strip()
                    if item.isdigit() and item.isascii():
                        refs.append(ObjectRef(Kind.IMAGE, _check_id(item, text), host, None,
                                              web_base))
        if refs:
            return tuple(dict.fromkeys(refs))

    for pattern in (_IMAGE_PATHS, _THUMBNAIL):
        match = pattern.search(path)
        if match and match.group(1).isascii():
            return (ObjectRef(Kind.IMAGE, _check_id(match.group(1), text), host, None, web_base),)

    match = _API.search(path)
    if match and match.group(2).isascii():
        kind = _kind_of(match.group(1))
        if kind is not None:
            return (ObjectRef(kind, _check_id(match.group(2), text), host, None, web_base),)

    raise _bad(text, "the URL names no image or container")


def parse(text: str) -> tuple[ObjectRef, ...]:
    """Parse ``text`` into the one or more objects it names, in the order given.

    Raises ``InvalidReference`` (a ``ValueError``) quoting ``text`` when it names
    nothing; never raises anything else for a ``str``.
    """
    if not isinstance(text, str):
        raise InvalidReference(f"{text!r} is not text.", hint="Pass a URL or 'Image:123'.")
    stripped = text.strip()
    if not stripped:
        raise _bad(text, "it is empty")

    match = _LEGACY.match(stripped)
    if match and match.group(1).isascii():
        return (ObjectRef(Kind.IMAGE, _check_id(match.group(1), text)),)

    match = _CLI.match(stripped)
    if match and match.group(2).isascii():
        kind = _kind_of(match.group(1))
        if kind is not None:
            return (ObjectRef(kind, _check_id(match.group(2), text)),)

    if match is None and "://" not in stripped:
        ref = _from_token(stripped, text, None, None)
        if ref is not None and ref.id >= 0:
            return (ref,)

    if "://" in stripped:
        return _parse_url(stripped)
    if "@" in stripped:
        # ``Image:5@host`` is how an ObjectRef prints, not a form anything should guess
        # a server from (nor ``user@host``).
        raise _bad(text, "a server cannot be named with '@'; give it with --server HOST")
    raise _bad(text, "unrecognised form")


def parse_one(text: str) -> ObjectRef:
    """Parse ``text`` that must name exactly one object."""
    refs = parse(text)
    if len(refs) != 1:
        raise InvalidReference(
            f"{_quote(text)} names {len(refs)} objects where one was expected.",
            hint="Give one object per reference.",
        )
    return refs[0]


def parse_image(text: str) -> ObjectRef:
    """Parse ``text`` that must name exactly one image."""
    ref = parse_one(text)
    if ref.kind is not Kind.IMAGE:
        raise InvalidReference(
            f"{_quote(text)} names a {ref.kind.value}, not an image.",
            hint="Expand containers into image URLs first (`cellprofiler-omero urls`).",
        )
    return ref


def is_image_reference(text: str) -> bool:
    """True when ``text`` names exactly one OMERO image (used by the reader's claim)."""
    try:
        parse_image(text)
    except InvalidReference:
        return False
    return True


def legacy_url(ref: ObjectRef) -> str:
    """The ``omero:iid=N`` form CellProfiler's earlier plugins used (images only)."""
    if ref.kind is not Kind.IMAGE:
        raise InvalidReference(f"{ref} is not an image; only images have an omero:iid form.")
    return f"omero:iid={ref.id}"


def web_url(ref: ObjectRef, web_base: str | None = None) -> str:
    """An OMERO.web link that opens ``ref`` (``…/webclient/?show=image-N``).

    ``web_base`` is the OMERO.web root, e.g. ``https://omero.example.org/``; the
    reference's own base is used when none is given.
    """
    base = web_base or ref.web_base
    if not base:
        if not ref.host:
            raise InvalidReference(
                f"{ref} has no server to build a web link for.",
                hint="Configure server.web_url or pass web_base.",
            )
        base = f"https://{ref.host}/"
    if not base.endswith("/"):
        base += "/"
    token = "acquisition" if ref.kind is Kind.ACQUISITION else ref.kind.value.lower()
    return f"{base}webclient/?show={token}-{ref.id}"
