"""OMERO.iviewer's rendering requests, through the real OMERO.web in front of the emulator.

Every request is one the viewer's JavaScript sends (``image_data``, ``imgData``,
``luts``, ``render_image`` with ``c=``/``maps=``, ``render_image_region`` with
``tile=``, ``histogram_json``, ``saveImgRDef``, ``get_image_rdefs_json``), and the
assertions are pixel facts: a window brightens, reverse inverts, a LUT recolours, a tile
is its region of the plane, a histogram counts the plane, saved settings come back.
The seed's 3-channel Z stack is used (its settings may change without touching the
images the browser tests look at).
"""

from __future__ import annotations

import io
import json
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from cellprofiler_omero.emulator.services.enums_scripts import LUTS

if TYPE_CHECKING:
    from cellprofiler_omero.commands.web import OmeroWeb
    from tests.web.conftest import WebEmulator, WebSession

Z = 4  # the Z stack's middle plane (8 planes)


def _png(answer: Any) -> np.ndarray:
    assert answer.status_code == 200, answer.text[:300]
    return np.asarray(Image.open(io.BytesIO(answer.content)).convert("RGB"), dtype=np.int32)


def _plane(web_emulator: WebEmulator, image_id: int, c: int) -> tuple[np.ndarray, Any]:
    """The raw plane and channel statistics, read over Ice as omero-py reads them."""
    from omero.gateway import BlitzGateway

    emu = web_emulator.emulator
    conn = BlitzGateway("demo", "demo", host=emu.host, port=emu.port)
    assert conn.connect()
    try:
        image = conn.getObject("Image", image_id)
        plane = image.getPrimaryPixels().getPlane(Z, c, 0)
        ch = image.getChannels(noRE=True)[c]
        return plane, (float(ch.getStatsInfo().getGlobalMin()),
                       float(ch.getStatsInfo().getGlobalMax()))
    finally:
        conn.close()


def _stack(web_emulator: WebEmulator, image_id: int, c: int) -> np.ndarray:
    """Every section of channel ``c`` (as floats), read over Ice."""
    from omero.gateway import BlitzGateway

    emu = web_emulator.emulator
    conn = BlitzGateway("demo", "demo", host=emu.host, port=emu.port)
    assert conn.connect()
    try:
        pixels = conn.getObject("Image", image_id).getPrimaryPixels()
        return np.array([pixels.getPlane(z, c, 0) for z in range(pixels.getSizeZ())],
                        dtype=np.float64)
    finally:
        conn.close()


def test_iviewer_renders_windows_reverse_luts_and_tiles_through_omero_web(
        omero_web: OmeroWeb, web_session: WebSession, web_emulator: WebEmulator) -> None:
    session = web_session("demo", "demo")
    url = omero_web.url
    zid = int(web_emulator.ids.seeded["zstack"])

    data = session.get(f"{url}iviewer/image_data/{zid}/", timeout=60).json()
    assert len(data["channels"]) == 3 and data["rdefs"]["model"] == "color"
    assert data["tiles"] is False and data["size"]["z"] == 8
    assert {"linear", "polynomial", "exponential", "logarithmic"} <= set(data["families"])
    gateway = session.get(f"{url}webgateway/imgData/{zid}/", timeout=60).json()
    assert [c["label"] for c in gateway["channels"]] == ["DAPI", "Cytoplasm", "Spots"]

    luts = session.get(f"{url}webgateway/luts/", timeout=60).json()["luts"]
    fire = next(lut for lut in luts if lut["name"] == "fire.lut")
    assert fire["path"] == "/luts/" and fire["png_index"] >= 0
    # The LUT menu's picture: one 10-pixel strip per LUT the server lists, plus one.
    strips = _png(session.get(f"{url}webgateway/luts_png/", timeout=60))
    assert strips.shape[0] == 10 * (len(luts) + 1)

    plane, (lo, hi) = _plane(web_emulator, zid, 0)
    base = f"{url}webgateway/render_image/{zid}/{Z}/0/"
    red = _png(session.get(base, params={"c": f"1|{lo:g}:{hi:g}$FF0000,-2,-3", "m": "c"},
                           timeout=60))
    expected = np.clip((plane.astype(np.float64) - lo) / (hi - lo), 0, 1) * 255
    assert red.shape == (256, 256, 3) and np.abs(red[..., 0] - expected).mean() < 3
    assert red[..., 1:].mean() < 2
    mid = (lo + hi) / 2
    brighter = _png(session.get(base, params={"c": f"1|{lo:g}:{mid:g}$FF0000,-2,-3"},
                                timeout=60))
    assert brighter[..., 0].mean() > red[..., 0].mean() + 10
    reverse = _png(session.get(base, params={
        "c": f"1|{lo:g}:{hi:g}$FF0000,-2,-3",
        "maps": json.dumps([{"reverse": {"enabled": True}}, {}, {}])}, timeout=60))
    assert np.abs(reverse[..., 0] + red[..., 0] - 255).mean() < 4
    lut = _png(session.get(base, params={"c": f"1|{lo:g}:{hi:g}$fire.lut,-2,-3"},
                           timeout=60))
    want = LUTS["fire.lut"][1][np.clip(expected, 0, 255).astype(np.int64)]
    assert np.abs(lut - want).mean() < 4

    # A maximum-intensity projection over every section (OMERO's end is inclusive here).
    stack = _stack(web_emulator, zid, 0)
    projected = _png(session.get(base, params={
        "c": f"1|{lo:g}:{hi:g}$FF0000,-2,-3", "p": f"intmax|0:{len(stack) - 1}"}, timeout=60))
    want_max = np.clip((stack.max(axis=0) - lo) / (hi - lo), 0, 1) * 255
    assert np.abs(projected[..., 0] - want_max).mean() < 3
    assert projected[..., 0].mean() > red[..., 0].mean() + 1  # brighter than one section

    # A tile of a plain image (level 0) is its region of the plane.
    tile = _png(session.get(f"{url}webgateway/render_image_region/{zid}/{Z}/0/", params={
        "tile": "0,1,0,128,128", "c": f"1|{lo:g}:{hi:g}$FF0000,-2,-3"}, timeout=60))
    assert tile.shape == (128, 128, 3)
    assert np.abs(tile[..., 0] - expected[:128, 128:]).mean() < 3

    bins = session.get(f"{url}webgateway/histogram_json/{zid}/channel/0/",
                       params={"theZ": Z, "bins": 16}, timeout=60).json()["data"]
    width = (hi - lo) / 16
    counts = np.bincount(np.minimum(((plane - lo) / width).astype(np.int64), 15).ravel(),
                         minlength=16)
    assert bins == counts.tolist() and sum(bins) == plane.size


def test_saved_rendering_settings_come_back_through_omero_web(
        omero_web: OmeroWeb, web_session: WebSession, web_emulator: WebEmulator) -> None:
    session = web_session("demo", "demo")
    url = omero_web.url
    zid = int(web_emulator.ids.seeded["zstack"])
    channels = "1|100:2000$00FF00,-2|0:500$0000FF,3|0:300$fire.lut"
    maps = json.dumps([{"inverted": {"enabled": True}}, {}, {"inverted": {"enabled": False}}])
    saved = session.post(
        f"{url}webgateway/saveImgRDef/{zid}/", timeout=60,
        data={"c": channels, "maps": maps, "m": "c", "z": Z + 1, "t": 1},
        headers={"X-CSRFToken": session.cookies.get("csrftoken", ""),
                 "Referer": f"{url}iviewer/?images={zid}"})
    assert saved.status_code == 200 and saved.json() == "true", saved.text[:300]

    [rdef] = session.get(f"{url}webgateway/get_image_rdefs_json/{zid}/",
                         timeout=60).json()["rdefs"]
    first, second, third = rdef["c"]
    assert (first["start"], first["end"], first["color"]) == (100, 2000, "00FF00")
    assert first["inverted"] and not second["active"] and third["lut"] == "fire.lut"

    data = session.get(f"{url}iviewer/image_data/{zid}/", timeout=60).json()
    window = data["channels"][0]["window"]
    assert (window["start"], window["end"]) == (100, 2000)
    assert data["channels"][0]["reverseIntensity"] and not data["channels"][1]["active"]
    # Rendering without parameters uses the saved settings.
    base = f"{url}webgateway/render_image/{zid}/{Z}/0/"
    plain = _png(session.get(base, timeout=60))
    explicit = _png(session.get(base, params={"c": channels, "maps": maps}, timeout=60))
    assert np.abs(plain - explicit).mean() < 1 and plain[..., 1].mean() > 10

    # Nothing the viewer asked of the rendering services was left unimplemented.
    log = (web_emulator.emulator.data_dir / "emulator.log").read_text(errors="replace")
    gaps = [line for line in log.splitlines() if "not implemented by the emulator" in line
            and any(f" {s}." in line for s in _RENDERING_SERVICES)]
    assert gaps == []


_RENDERING_SERVICES = ("RenderingEngine", "ThumbnailStore", "IPixels", "RawPixelsStore",
                       "ITypes", "IScript", "IRenderingSettings")
