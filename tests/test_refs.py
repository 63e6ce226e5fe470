"""The reference parser: every accepted form, and nothing but InvalidReference on bad input."""

from __future__ import annotations

import contextlib
from urllib.parse import urlsplit

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cellprofiler_omero.core import refs
from cellprofiler_omero.core.errors import InvalidReference
from cellprofiler_omero.core.refs import Kind, ObjectRef

IM, D, P, S, PL, W, A = (Kind.IMAGE, Kind.DATASET, Kind.PROJECT, Kind.SCREEN, Kind.PLATE,
                        Kind.WELL, Kind.ACQUISITION)
H = "omero.example.org"

CASES: list[tuple[str, list[tuple[Kind, int]], str | None]] = [
    ("omero:iid=12", [(IM, 12)], None),
    ("OMERO:IID=12", [(IM, 12)], None),
    ("  omero:iid=7\n", [(IM, 7)], None),
    ("Image:5", [(IM, 5)], None),
    ("Dataset:3", [(D, 3)], None),
    ("Project:2", [(P, 2)], None),
    ("Screen:9", [(S, 9)], None),
    ("Plate:4", [(PL, 4)], None),
    ("Well:8", [(W, 8)], None),
    ("image-42", [(IM, 42)], None),
    ("image.id-42", [(IM, 42)], None),
    ("dataset-6", [(D, 6)], None),
    (f"https://{H}/webclient/?show=image-1", [(IM, 1)], H),
    (f"https://{H}/webclient/?experimenter=3&show=image-1", [(IM, 1)], H),
    (f"https://{H}/webclient/?show=image-1|image-2", [(IM, 1), (IM, 2)], H),
    (f"https://{H}/webclient/?show=image-1%7Cimage-2", [(IM, 1), (IM, 2)], H),
    (f"https://{H}/webclient/?show=image.id-11", [(IM, 11)], H),
    (f"https://{H}/webclient/?show=dataset-5", [(D, 5)], H),
    (f"https://{H}/webclient/?show=project-5", [(P, 5)], H),
    (f"https://{H}/webclient/?show=screen-5", [(S, 5)], H),
    (f"https://{H}/webclient/?show=plate-5", [(PL, 5)], H),
    (f"https://{H}/webclient/?show=well-5", [(W, 5)], H),
    (f"https://{H}/webclient/?show=acquisition-5", [(A, 5)], H),
    (f"https://{H}/webclient/?show=run-5", [(A, 5)], H),
    (f"https://{H}/webclient/?show=tag-1|image-3", [(IM, 3)], H),
    (f"https://{H}/omero/webclient/?show=image-3", [(IM, 3)], H),
    (f"https://{H}/webclient/img_detail/77/", [(IM, 77)], H),
    (f"https://{H}/webclient/img_detail/77/?dataset=4", [(IM, 77)], H),
    (f"https://{H}/webgateway/img_detail/77", [(IM, 77)], H),
    (f"https://{H}/iviewer/?images=8,9", [(IM, 8), (IM, 9)], H),
    (f"https://{H}/iviewer/?images=8&dataset=2", [(IM, 8)], H),
    (f"https://{H}/omero_iviewer/?images=10", [(IM, 10)], H),
    (f"https://{H}/webgateway/render_image/31/0/0/", [(IM, 31)], H),
    (f"https://{H}/webgateway/render_image_region/31/0/0/?tile=0,0,0", [(IM, 31)], H),
    (f"https://{H}/webgateway/render_thumbnail/31/", [(IM, 31)], H),
    (f"https://{H}/webgateway/render_thumbnail/size/96/31/", [(IM, 31)], H),
    (f"https://{H}/webgateway/render_birds_eye_view/31/", [(IM, 31)], H),
    (f"https://{H}/webgateway/imgData/31/", [(IM, 31)], H),
    (f"https://{H}/api/v0/m/images/31/", [(IM, 31)], H),
    (f"https://{H}/api/v0/m/datasets/4/", [(D, 4)], H),
    (f"https://{H}/api/v0/m/plates/4/", [(PL, 4)], H),
    (f"http://{H}:8080/webclient/?show=image-1", [(IM, 1)], H),
    (f"HTTPS://{H.upper()}/webclient/?show=IMAGE-1", [(IM, 1)], H),
]


@pytest.mark.parametrize(("text", "expected", "host"), CASES)
def test_reference_forms_parse_to_their_objects(
    text: str, expected: list[tuple[Kind, int]], host: str | None
) -> None:
    parsed = refs.parse(text)
    assert [(r.kind, r.id) for r in parsed] == expected
    assert all(r.host == host for r in parsed)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "   ",
        "omero:iid=",
        "omero:iid=abc",
        "Image:",
        "Tag:5",
        "image-",
        "https://example.org/x.tif",
        "https://example.org/webclient/",
        "https://example.org/webclient/?show=tag-5",
        "ftp://example.org/webclient/?show=image-1",
        "https:///webclient/?show=image-1",
        "https://[::1/webclient/?show=image-1",
        "omero:iid=99999999999999999999999",
        "/path/to/image.tif",
    ],
)
def test_text_naming_nothing_raises_invalid_reference_quoting_it(text: str) -> None:
    with pytest.raises(InvalidReference) as info:
        refs.parse(text)
    assert repr(text) in str(info.value)
    assert isinstance(info.value, ValueError)


def test_web_url_port_is_never_the_ice_port() -> None:
    (ref,) = refs.parse(f"https://{H}:4443/webclient/?show=image-1")
    assert ref.host == H
    assert ref.port is None


def test_web_base_keeps_the_path_prefix_but_not_identity() -> None:
    (a,) = refs.parse(f"https://{H}/omero/webclient/?show=image-3")
    (b,) = refs.parse(f"https://{H}/webclient/img_detail/3/")
    assert a.web_base == f"https://{H}/omero/"
    assert a == b


def test_parse_image_refuses_containers() -> None:
    with pytest.raises(InvalidReference, match="names a Dataset, not an image"):
        refs.parse_image("Dataset:4")


def test_parse_one_refuses_several_objects() -> None:
    with pytest.raises(InvalidReference, match="names 2 objects"):
        refs.parse_one(f"https://{H}/webclient/?show=image-1|image-2")


def test_is_image_reference_claims_images_only() -> None:
    assert refs.is_image_reference("omero:iid=3")
    assert refs.is_image_reference(f"https://{H}/webclient/?show=image-1")
    assert not refs.is_image_reference("https://example.org/x.tif")
    assert not refs.is_image_reference("Dataset:4")
    assert not refs.is_image_reference(f"https://{H}/webclient/?show=image-1|image-2")


def test_web_url_round_trips_through_the_parser() -> None:
    ref = ObjectRef(Kind.PLATE, 12, host=H)
    url = refs.web_url(ref, f"https://{H}/omero")
    assert url == f"https://{H}/omero/webclient/?show=plate-12"
    assert refs.parse_one(url) == ref


def test_legacy_url_round_trips_through_the_parser() -> None:
    ref = ObjectRef(Kind.IMAGE, 5)
    assert refs.parse_one(refs.legacy_url(ref)) == ref


def test_legacy_url_refuses_containers() -> None:
    with pytest.raises(InvalidReference):
        refs.legacy_url(ObjectRef(Kind.DATASET, 5))


@settings(max_examples=3000, deadline=None)
@given(st.text())
def test_fuzzed_text_either_parses_or_raises_invalid_reference(text: str) -> None:
    try:
        parsed = refs.parse(text)
    except InvalidReference:
        return
    assert parsed
    assert all(0 <= r.id < 2**63 for r in parsed)


_pieces = st.sampled_from([
    "https://", "http://", "omero:", "iid=", "webclient/", "?show=", "image-", "dataset-",
    "|", "&", "=", "/", "img_detail/", "iviewer/", "?images=", ",", "host", ":", "[", "]",
    "%7C", "..", "-", "render_thumbnail/size/", "api/v0/m/", "images/", "9", "12", "0",
    "99999999999999999999", " ", "\n", "\x00", "é", "٣", "9" * 5000, "0" * 4400, "@", "\\",
])


@settings(max_examples=3000, deadline=None)
@given(st.lists(_pieces, max_size=12).map("".join))
def test_fuzzed_url_like_text_either_parses_or_raises_invalid_reference(text: str) -> None:
    with contextlib.suppress(InvalidReference):
        refs.parse(text)


# -- ids of any length, links naming a user ------------------------------------------------

#: Every form that carries an id, with ``{}`` where the digits go.
ID_FORMS = [
    "omero:iid={}", "Image:{}", "Dataset:{}", "image-{}", "image.id-{}",
    f"https://{H}/webclient/?show=image-{{}}", f"https://{H}/webclient/?show=image-1|image-{{}}",
    f"https://{H}/webclient/img_detail/{{}}/", f"https://{H}/iviewer/?images={{}}",
    f"https://{H}/webgateway/render_thumbnail/size/96/{{}}/", f"https://{H}/api/v0/m/plates/{{}}/",
]


@pytest.mark.parametrize("form", ID_FORMS)
@pytest.mark.parametrize("digits", [20, 4300, 4301, 5000, 100_000])
def test_ids_of_any_length_above_a_java_long_are_invalid_references(form: str, digits: int
                                                                    ) -> None:
    text = form.format("9" * digits)
    with pytest.raises(InvalidReference) as info:
        refs.parse(text)
    message = str(info.value)
    assert "too large for OMERO" in message and f"({digits} digits)" in message
    # The message stays one readable line however long the input.
    assert len(message) < 600 and "\n" not in message
    if len(text) > 120:  # long input is shown shortened, with its length
        assert f"({len(text)} characters)" in message
    else:
        assert repr(text) in message


@pytest.mark.parametrize("form", ID_FORMS)
def test_the_largest_java_long_is_the_largest_id(form: str) -> None:
    assert refs.parse(form.format(2**63 - 1))[-1].id == 2**63 - 1
    with pytest.raises(InvalidReference, match="too large"):
        refs.parse(form.format(2**63))


def test_leading_zeros_do_not_count_against_the_id() -> None:
    assert refs.parse_one("omero:iid=" + "0" * 5000 + "7").id == 7
    assert refs.parse_one("Image:" + "0" * 5000).id == 0


@pytest.mark.parametrize(
    ("text", "names"),
    [
        (f"https://user@{H}/webclient/?show=image-1", H),
        (f"https://user:secret@{H}/webclient/?show=image-1", H),
        (f"https://{H}@127.0.0.1/webclient/?show=image-1", "127.0.0.1"),
        ("https://@127.0.0.1/webclient/img_detail/5/", "127.0.0.1"),
    ],
)
def test_links_with_a_user_part_are_refused_not_guessed(text: str, names: str) -> None:
    with pytest.raises(InvalidReference) as info:
        refs.parse(text)
    message = str(info.value)
    assert "user name (or password) before the server" in message
    assert f"{names!r}" in message
    assert "secret" not in message


@pytest.mark.parametrize(
    "text",
    [
        # Browsers open 127.0.0.2 (a backslash is a '/' to them); urlsplit finds 127.0.0.1.
        "https://127.0.0.2\\@127.0.0.1/webclient/?show=image-1",
        f"https://{H}\\webclient/?show=image-1",
        f"https://{H}/webclient\\img_detail/4/",
    ],
)
def test_links_with_a_backslash_are_refused_not_guessed(text: str) -> None:
    with pytest.raises(InvalidReference, match="backslash, which browsers read as '/'"):
        refs.parse(text)


def test_a_server_after_at_outside_a_link_is_refused_with_the_way_to_name_it() -> None:
    for text in ("Image:5@omero.example.org", "demo@omero.example.org"):
        with pytest.raises(InvalidReference, match="give it with --server HOST"):
            refs.parse(text)


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(ID_FORMS), st.integers(min_value=0, max_value=12_000),
       st.sampled_from("0123456789"), st.sampled_from(["", "0", "00"]))
def test_fuzzed_digit_strings_of_any_length_parse_or_raise_invalid_reference(
        form: str, length: int, digit: str, zeros: str) -> None:
    digits = zeros + digit * length or "0"
    significant = digits.lstrip("0") or "0"  # int() itself refuses over 4300 digits
    in_range = len(significant) <= 19 and int(significant) <= 2**63 - 1
    try:
        parsed = refs.parse(form.format(digits))
    except InvalidReference:
        assert not in_range
        return
    assert in_range and parsed[-1].id == int(significant)


_authority = st.text(alphabet="ab.1:@\\[]%/", max_size=12)


@settings(max_examples=1000, deadline=None)
@given(_authority, st.sampled_from(["/webclient/?show=image-1", "/webclient/img_detail/3/",
                                    "\\webclient/?show=image-1"]))
def test_fuzzed_authorities_never_yield_a_host_with_a_user_or_backslash(authority: str,
                                                                        rest: str) -> None:
    try:
        parsed = refs.parse(f"https://{authority}{rest}")
    except InvalidReference:
        return
    for ref in parsed:
        assert ref.host is not None and "@" not in ref.host and "\\" not in ref.host
        assert ref.web_base is not None and "@" not in urlsplit(ref.web_base).netloc
