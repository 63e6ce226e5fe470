"""RenderingEngine and ThumbnailStore, with rendering settings kept per user.

As ome/omero-server's ``RenderingBean`` (and ``omeis.providers.re.Renderer`` under it):

* rendering settings (a RenderingDef) belong to one user and one image; the engine
  looks up the caller's own, else the image owner's (``PixelsImpl.retrieveRndSettings``),
  and ``saveCurrentSettings`` writes the caller's (a new one when it was working on
  someone else's settings); the emulator keeps them as ``RenderingDef`` objects whose
  parent is the image;
* a channel maps its window ``start..end`` through its family onto the codomain
  0..255, may be reversed (a ReverseIntensityContext), and is coloured by its lookup
  table when it names one of the server's LUTs, else by its RGBA colour; channels add;
  the greyscale model shows the first active channel in grey;
* resolution levels are numbered as on a RawPixelsStore (``n - 1`` is full resolution)
  and a region is read at the current level, so a tile of a pyramid is a tile of that
  level; thumbnails use the smallest level at least as large as asked.
"""

from __future__ import annotations

import io
import math
import time
from typing import Any

import Ice
import numpy as np
import omero
import omero.api
import omero.model
import omero.romio
from omero.rtypes import rbool, rdouble, rint, rlong, rstring
from PIL import Image

from cellprofiler_omero.emulator import modelmap
from cellprofiler_omero.emulator.icebase import api_usage, internal, servant, validation
from cellprofiler_omero.emulator.pixels import PixelsShape
from cellprofiler_omero.emulator.services.common import Caller, SessionServant, StatefulServant
from cellprofiler_omero.emulator.services.enums_scripts import ENUMS, enum_entry, lut_table
from cellprofiler_omero.emulator.services.pixels import (
    ROMIO_MAX_BUFFER,
    levels_of,
    shape_of,
    unsupported,
)
from cellprofiler_omero.emulator.store import Obj

RDEF = "RenderingDef"

#: ``RenderingBean.NULL_RENDERER``: every channel call before ``load()``.
NULL_RENDERER = ("RenderingEngine not ready: renderer is null.\nThis method can only be "
                 "called after the renderer is properly initialized (not-null).\nTry "
                 "invoking load(). If this happens after a call to load(), then the "
                 "pixels service might be unavailable.")

_EPSILON = 1e-9

#: ``RenderingSettingsImpl.EPSILON``: a channel whose StatsInfo range is narrower than this
#: gets the pixel type's range as its default window.
STATS_EPSILON = 0.00001

#: ``RenderingSettingsImpl.resetChannelBindings``: only the first three channels are
#: active by default (``channelBinding.setActive(i < 3)``).
DEFAULT_ACTIVE = 3


def _type_range(shape: PixelsShape) -> tuple[float, float]:
    """The range of the pixels' dtype (what a projection clips to)."""
    if shape.pixel_type != "bit" and shape.dtype.kind == "f":
        return float(np.finfo(shape.dtype).min), float(np.finfo(shape.dtype).max)
    return pixels_type_range(shape)  # bit and integral types: the same range


def pixels_type_range(shape: PixelsShape) -> tuple[float, float]:
    """``StatsFactory.initPixelsRange`` (ome/omero-server): the rendering range of a pixel
    type, which ``QuantumStrategy`` also reports as the type's lower and upper bound.

    Integral types span their significant bits (the emulator's Pixels declare all of the
    type's bits); float and double take Bio-Formats' ``FormatTools.defaultMinMax``, the
    range of a Java int, since their real range cannot be rendered.
    """
    if shape.pixel_type == "bit":
        return 0.0, 1.0
    dtype = shape.dtype
    if dtype.kind in "iu":
        info = np.iinfo(dtype)
        return float(info.min), float(info.max)
    return float(-2**31), float(2**31 - 1)


def default_settings(image: Obj) -> dict[str, Any]:
    """``RenderingSettingsImpl.resetDefaults``: middle z, first t, greyscale for one
    channel and rgb otherwise, the first three channels active, linear, no noise
    reduction.

    Each channel's window is its StatsInfo's globalMin..globalMax when it has one, else
    the pixel type's range (``StatsFactory.initPixelsRange``: 0..255 for uint8, 0..65535
    for uint16), and the type's range too when globalMin and globalMax lie within
    ``STATS_EPSILON`` of each other. Computing the statistics (``computeLocationStats``)
    gives the same window: omero-server's ``StatsFactory`` reads StatsInfo and no longer
    bins the pixels, so noise reduction stays off.
    """
    shape = shape_of(image)
    channels = []
    for index, ch in enumerate(image.data["channels"]):
        lo, hi = ch.get("min"), ch.get("max")
        if lo is None or hi is None:
            lo, hi = pixels_type_range(shape)
        if abs(float(lo) - float(hi)) < STATS_EPSILON:
            lo, hi = pixels_type_range(shape)
        channels.append({"active": index < DEFAULT_ACTIVE, "start": float(lo),
                         "end": float(hi),
                         "rgba": list(ch.get("color") or [255, 255, 255, 255]),
                         "lut": None, "reverse": False, "family": "linear",
                         "coefficient": 1.0, "noise": False})
    return {"z": shape.size_z // 2, "t": 0,
            "model": "greyscale" if shape.size_c == 1 else "rgb",
            "cdStart": 0, "cdEnd": 255, "bitResolution": 255, "compression": 0.9,
            "channels": channels, "version": 0}


# -- stored settings -------------------------------------------------------------------------

def user_rdefs(ctx: Any, image: Obj, user_id: int | None) -> list[Obj]:
    """The image's RenderingDefs (of one user when ``user_id`` is given), latest first,
    as ``PixelsImpl.retrieveAllRndSettings`` orders them (by update time)."""
    rdefs = [r for r in ctx.store.by_parent(RDEF, image.id)
             if user_id is None or user_id < 0 or r.owner_id == user_id]
    return sorted(rdefs, key=lambda r: (-float(r.data.get("updated", r.created)), -r.id))


def settings_for(ctx: Any, image: Obj, user_id: int) -> Obj | None:
    """``PixelsImpl.retrieveRndSettings``: the user's own, else the image owner's."""
    own = user_rdefs(ctx, image, user_id)
    if own:
        return own[0]
    if user_id != image.owner_id:
        owners = user_rdefs(ctx, image, image.owner_id)
        if owners:
            return owners[0]
    return None


def store_settings(ctx: Any, image: Obj, owner_id: int, settings: dict[str, Any],
                   rdef_id: int | None = None) -> Obj:
    """Write settings as a new RenderingDef of ``owner_id``, or over ``rdef_id``."""
    data = {k: v for k, v in settings.items()}
    data["updated"] = time.time()
    if rdef_id is not None:
        data["version"] = int(settings.get("version", 0)) + 1
        return ctx.store.update(rdef_id, data=data)
    data["version"] = 0
    return ctx.store.create(RDEF, "", owner_id, image.group_id, data=data,
                            parent_id=image.id)


def _channel_settings(image: Obj, stored: dict[str, Any]) -> dict[str, Any]:
    settings = default_settings(image)
    settings.update({k: v for k, v in stored.items() if k != "updated"})
    return settings


def rdef_model(ctx: Any, viewer: Any, rdef: Obj) -> Any:
    """A RenderingDef as ``PixelsImpl``'s query loads it (owner, quantization, model,
    channel bindings with family and codomain contexts)."""
    d = rdef.data
    m = omero.model.RenderingDefI(rlong(rdef.id), True)
    m._details = modelmap.details(ctx.store, viewer, rdef.owner_id, rdef.group_id,
                                  float(d.get("updated", rdef.created)))
    m.version = rint(int(d.get("version", 0)))
    m.pixels = omero.model.PixelsI(rlong(modelmap.pixels_id(rdef.parent_id or 0)), False)
    m.defaultZ, m.defaultT = rint(int(d["z"])), rint(int(d["t"]))
    m.compression = rdouble(float(d.get("compression", 0.9)))
    m.model = enum_entry("RenderingModel", d["model"])
    q = omero.model.QuantumDefI(rlong(rdef.id), True)
    q.cdStart, q.cdEnd = rint(int(d["cdStart"])), rint(int(d["cdEnd"]))
    q.bitResolution = rint(int(d["bitResolution"]))
    m.quantization = q
    m._waveRenderingLoaded = True
    m._waveRenderingSeq = []
    for index, ch in enumerate(d["channels"]):
        cb = omero.model.ChannelBindingI(rlong(rdef.id * 100 + index), True)
        r, g, b, a = (int(v) for v in ch["rgba"])
        cb.red, cb.green, cb.blue, cb.alpha = rint(r), rint(g), rint(b), rint(a)
        cb.active = rbool(bool(ch["active"]))
        cb.inputStart, cb.inputEnd = rdouble(float(ch["start"])), rdouble(float(ch["end"]))
        cb.family = enum_entry("Family", ch.get("family", "linear"))
        cb.coefficient = rdouble(float(ch.get("coefficient", 1.0)))
        cb.noiseReduction = rbool(bool(ch.get("noise", False)))
        cb.lookupTable = rstring(ch["lut"]) if ch.get("lut") else None
        cb._spatialDomainEnhancementLoaded = True
        cb._spatialDomainEnhancementSeq = []
        if ch.get("reverse"):
            cb._spatialDomainEnhancementSeq.append(_reverse_context(rdef.id * 100 + index))
        cb.renderingDef = omero.model.RenderingDefI(rlong(rdef.id), False)
        m._waveRenderingSeq.append(cb)
    return m


def _reverse_context(context_id: int | None) -> Any:
    ctx = omero.model.ReverseIntensityContextI(
        rlong(context_id) if context_id is not None else None, True)
    ctx.reverse = rbool(True)
    return ctx


# -- rendering ---------------------------------------------------------------------------------

def _quantize(plane: np.ndarray, ch: dict[str, Any], cd_start: int, cd_end: int
              ) -> np.ndarray:
    """A channel's values mapped through its window and family onto the codomain."""
    lo, hi = float(ch["start"]), float(ch["end"])
    span = hi - lo
    if abs(span) < _EPSILON:
        norm = (plane >= hi).astype(np.float32)
    else:
        norm = np.clip((plane - lo) / span, 0.0, 1.0)
    family, k = ch.get("family", "linear"), float(ch.get("coefficient", 1.0))
    if family == "polynomial":
        norm = norm ** k
    elif family == "exponential":
        norm = (np.exp(norm ** k) - 1.0) / (math.e - 1.0)
    elif family == "logarithmic":
        norm = np.log1p(norm * (math.e - 1.0))
    out = cd_start + norm * (cd_end - cd_start)
    if ch.get("reverse"):
        # ReverseIntensityMap: the codomain read backwards.
        out = cd_end - out + cd_start
    return np.clip(out, 0, 255)


def render_array(ctx: Any, image: Obj, settings: dict[str, Any], z: int, t: int,
                 level0: int, region: tuple[int, int, int, int] | None, stride: int = 1,
                 planes: dict[int, np.ndarray] | None = None) -> np.ndarray:
    """The RGB (uint8) rendering of a region of one plane at storage level ``level0``
    (or of the given per-channel ``planes``, e.g. projections)."""
    shape = shape_of(image)
    levels = levels_of(image)
    arr = ctx.pixels.array(image.id, shape, level0, levels)
    sx, sy = levels[level0]
    x, y, w, h = region if region is not None else (0, 0, sx, sy)
    step = max(1, stride)
    channels = settings["channels"]
    cd_start, cd_end = int(settings["cdStart"]), int(settings["cdEnd"])
    active = [i for i, ch in enumerate(channels) if ch["active"]]
    out_h, out_w = len(range(0, h, step)), len(range(0, w, step))
    rgb = np.zeros((out_h, out_w, 3), dtype=np.float32)
    if settings["model"] == "greyscale":
        active = active[:1]
    for c in active:
        ch = channels[c]
        source = planes[c] if planes is not None else arr[t, c, z]
        plane = np.asarray(source[y:y + h:step, x:x + w:step], dtype=np.float32)
        q = _quantize(plane, ch, cd_start, cd_end)
        if settings["model"] == "greyscale":
            rgb += q[..., None]
            continue
        table = lut_table(ch.get("lut"))
        if table is not None:
            rgb += table[q.astype(np.int64)].astype(np.float32)
        else:
            r, g, b, a = (float(v) for v in ch["rgba"])
            rgb += q[..., None] * (np.array([r, g, b], dtype=np.float32) / 255.0) * (a / 255.0)
    return np.clip(rgb, 0, 255).astype(np.uint8)


def jpeg(img: Image.Image, quality: float = 0.85) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=max(1, min(100, round(quality * 100))))
    return buf.getvalue()


def _level_at_least(image: Obj, longest: int) -> int:
    """The storage level (0 = full) of the smallest level whose longest side is at
    least ``longest`` (the full level when none is)."""
    level = 0
    for index, (x, y) in enumerate(levels_of(image)):
        if max(x, y) >= longest:
            level = index
    return level


def render_scaled(ctx: Any, image: Obj, longest: int, settings: dict[str, Any],
                  z: int | None = None, t: int | None = None) -> Image.Image:
    """The whole plane rendered with ``settings``, its longest side ``longest`` pixels."""
    level0 = _level_at_least(image, longest)
    zz = int(settings["z"]) if z is None else z
    tt = int(settings["t"]) if t is None else t
    x, y = levels_of(image)[level0]
    out = Image.fromarray(render_array(ctx, image, settings, zz, tt, level0, None), "RGB")
    scale = longest / max(x, y)
    size = (max(1, round(x * scale)), max(1, round(y * scale)))
    return out if size == (x, y) else out.resize(size, Image.Resampling.BILINEAR)


def tile_size_of(ctx: Any, image: Obj) -> list[int]:
    """``PixelBuffer.getTileSize``: a pyramid's tiles; a ROMIO file's whole rows."""
    if len(levels_of(image)) > 1:
        return [int(v) for v in image.data.get("tileSize") or ctx.tile_size()]
    shape = shape_of(image)
    rows = min(shape.size_y, (ROMIO_MAX_BUFFER // shape.dtype.itemsize) // shape.size_x)
    return [shape.size_x, max(1, rows)]


class _ImageBound(StatefulServant):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.image: Obj | None = None

    def _bind(self, caller: Caller, pixels_id: int) -> Obj:
        image = self.ctx.store.get(modelmap.image_id_of_pixels(pixels_id), "Image")
        if image is None or not self.visible(caller, image):
            raise validation(f"Pixels object with id {pixels_id} not found.")
        self.image = image
        return image

    def _image(self) -> Obj:
        if self.image is None:
            raise api_usage("RenderingEngine not ready: Pixels object not set.")
        return self.image


@servant(omero.api.RenderingEngine)
class RenderingEngineI(_ImageBound):
    """RenderingEngine: per-user rendering settings, LUTs, reverse, pyramids by region."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        #: The RenderingDef being worked on (None: not looked up, or none exists).
        self.rdef: Obj | None = None
        #: Its settings as edited since (saved by saveCurrentSettings).
        self.settings: dict[str, Any] | None = None
        #: Loaded by id (loadRenderingDef): saving then always writes that one.
        self.requested = False
        self.loaded = False
        self.level: int | None = None
        self.compression = 0.85

    # -- lifecycle ---------------------------------------------------------------------------

    def lookupPixels(self, pixels_id: int, current: Ice.Current) -> None:
        self._bind(self.caller(current), pixels_id)
        self.loaded = False
        self.level = None

    def lookupRenderingDef(self, pixels_id: int, current: Ice.Current) -> bool:
        caller = self.caller(current)
        image = self._bind(caller, pixels_id)
        self.requested = False
        self.loaded = False
        self.rdef = settings_for(self.ctx, image, caller.user.id)
        if self.rdef is None:
            self.settings = None
            return False
        self.settings = _channel_settings(image, self.rdef.data)
        return True

    def loadRenderingDef(self, rdef_id: int, current: Ice.Current) -> None:
        caller = self.caller(current)
        image = self._image()
        rdef = self.ctx.store.get(rdef_id, RDEF)
        if rdef is None or not self.visible(caller, rdef):
            raise validation(f"No rendering definition exists with ID: {rdef_id}")
        if rdef.parent_id != image.id:
            raise validation(f"The rendering definition {rdef_id} is incompatible with "
                             f"pixels set {modelmap.pixels_id(image.id)}")
        self.rdef, self.requested, self.loaded = rdef, True, False
        self.settings = _channel_settings(image, rdef.data)

    def load(self, current: Ice.Current) -> None:
        self._image()
        if self.settings is None:
            raise api_usage("RenderingEngine not ready: RenderingDef object not set.")
        self.loaded = True
        if self.level is None:
            self.level = len(levels_of(self._image())) - 1

    def _ready(self) -> dict[str, Any]:
        """``errorIfInvalidState``: pixels, settings and a loaded renderer."""
        self._image()
        if self.settings is None:
            raise api_usage("RenderingEngine not ready: RenderingDef object not set.")
        if not self.loaded:
            raise api_usage(NULL_RENDERER)
        return self.settings

    def _belongs_to_caller(self, caller: Caller) -> bool:
        return self.rdef is not None and self.rdef.owner_id == caller.user.id

    def resetDefaultSettings(self, save: bool, current: Ice.Current) -> int:
        caller = self.caller(current)
        image = self._image()
        save = save and not self.requested
        defaults = default_settings(image)
        if not save:
            self._ready()
            self.settings = defaults
            return self.rdef.id if self.rdef is not None else -1
        if self.rdef is None or not self._belongs_to_caller(caller):
            self.rdef = store_settings(self.ctx, image, caller.user.id, defaults)
        else:
            defaults["version"] = self.rdef.data.get("version", 0)
            self.rdef = store_settings(self.ctx, image, caller.user.id, defaults,
                                       self.rdef.id)
        self.settings = _channel_settings(image, self.rdef.data)
        self.loaded = True
        if self.level is None:
            self.level = len(levels_of(image)) - 1
        return self.rdef.id

    def saveCurrentSettings(self, current: Ice.Current) -> None:
        self._save(self.caller(current),
                   as_new=not self.requested and not self._belongs_to_caller(
                       self.caller(current)))

    def saveAsNewSettings(self, current: Ice.Current) -> int:
        return self._save(self.caller(current), as_new=True)

    def _save(self, caller: Caller, as_new: bool) -> int:
        """``RenderingBean.internalSave``: a copy for the caller, or over the same def."""
        settings = self._ready()
        image = self._image()
        if as_new or self.rdef is None:
            self.rdef = store_settings(self.ctx, image, caller.user.id, settings)
        else:
            self.rdef = store_settings(self.ctx, image, self.rdef.owner_id, settings,
                                       self.rdef.id)
        self.settings = _channel_settings(image, self.rdef.data)
        return self.rdef.id

    def getRenderingDefId(self, current: Ice.Current) -> int:
        if self.rdef is None:
            raise api_usage("No rendering def")
        return self.rdef.id

    def getPixels(self, current: Ice.Current) -> Any:
        self._ready()
        return modelmap.pixels(self.ctx.store, self.caller(current).user, self._image())

    # -- channels ----------------------------------------------------------------------------

    def _ch(self, index: int) -> dict[str, Any]:
        channels = self._ready()["channels"]
        if not 0 <= index < len(channels):
            # The renderer's bindings are a Java array.
            raise omero.InternalException(
                serverStackTrace="", serverExceptionClass=(
                    "java.lang.ArrayIndexOutOfBoundsException"),
                message=f"Index {index} out of bounds for length {len(channels)}")
        ch: dict[str, Any] = channels[index]
        return ch

    def getChannelWindowStart(self, index: int, current: Ice.Current) -> float:
        return float(self._ch(index)["start"])

    def getChannelWindowEnd(self, index: int, current: Ice.Current) -> float:
        return float(self._ch(index)["end"])

    def setChannelWindow(self, index: int, start: float, end: float, current: Ice.Current
                         ) -> None:
        self._ch(index).update(start=float(start), end=float(end))

    def getRGBA(self, index: int, current: Ice.Current) -> list[int]:
        return [int(v) for v in self._ch(index)["rgba"]]

    def setRGBA(self, index: int, r: int, g: int, b: int, a: int, current: Ice.Current
                ) -> None:
        self._ch(index)["rgba"] = [r, g, b, a]

    def isActive(self, index: int, current: Ice.Current) -> bool:
        return bool(self._ch(index)["active"])

    def setActive(self, index: int, active: bool, current: Ice.Current) -> None:
        self._ch(index)["active"] = bool(active)

    def getChannelLookupTable(self, index: int, current: Ice.Current) -> str:
        return self._ch(index).get("lut") or ""

    def setChannelLookupTable(self, index: int, lookup: str | None, current: Ice.Current
                              ) -> None:
        # Any name is kept (as ChannelBinding.lookupTable); one that names no LUT
        # renders with the channel's colour, as LutProviderImpl finds no reader for it.
        self._ch(index)["lut"] = lookup or None

    def getCodomainMapContext(self, index: int, current: Ice.Current) -> list[Any]:
        ch = self._ch(index)
        return [_reverse_context(None)] if ch.get("reverse") else []

    def addCodomainMapToChannel(self, context: Any, index: int, current: Ice.Current
                                ) -> None:
        ch = self._ch(index)
        # Only the reverse-intensity map is kept in the model (RenderingBean.convert).
        if isinstance(context, omero.romio.ReverseIntensityMapContext):
            ch["reverse"] = True

    def removeCodomainMapFromChannel(self, context: Any, index: int, current: Ice.Current
                                     ) -> None:
        ch = self._ch(index)
        if isinstance(context, omero.romio.ReverseIntensityMapContext):
            ch["reverse"] = False

    def getChannelFamily(self, index: int, current: Ice.Current) -> Any:
        return enum_entry("Family", self._ch(index).get("family", "linear"))

    def getChannelCurveCoefficient(self, index: int, current: Ice.Current) -> float:
        return float(self._ch(index).get("coefficient", 1.0))

    def getChannelNoiseReduction(self, index: int, current: Ice.Current) -> bool:
        return bool(self._ch(index).get("noise", False))

    def setQuantizationMap(self, index: int, family: Any, coefficient: float,
                           noise: bool, current: Ice.Current) -> None:
        ch = self._ch(index)
        value = omero.rtypes.unwrap(family.value) if family is not None else None
        if value is None and family is not None and family.id is not None:
            value = ENUMS["Family"][int(omero.rtypes.unwrap(family.id)) - 1]
        if value not in ENUMS["Family"]:
            raise api_usage(f"Unknown family {value!r}.")
        ch.update(family=value, coefficient=float(coefficient), noise=bool(noise))

    def getChannelStats(self, index: int, current: Ice.Current) -> list[float]:
        self._ch(index)
        ch = self._image().data["channels"][index]
        lo, hi = pixels_type_range(shape_of(self._image()))
        return [float(ch.get("min", lo)), float(ch.get("max", hi))]

    def getPixelsTypeLowerBound(self, w: int, current: Ice.Current) -> float:
        self._ready()
        return pixels_type_range(shape_of(self._image()))[0]

    def getPixelsTypeUpperBound(self, w: int, current: Ice.Current) -> float:
        self._ready()
        return pixels_type_range(shape_of(self._image()))[1]

    def isPixelsTypeSigned(self, current: Ice.Current) -> bool:
        self._ready()
        return shape_of(self._image()).pixel_type in ("int8", "int16", "int32", "float",
                                                      "double")

    # -- plane and model ---------------------------------------------------------------------

    def getDefaultZ(self, current: Ice.Current) -> int:
        return int(self._ready()["z"])

    def getDefaultT(self, current: Ice.Current) -> int:
        return int(self._ready()["t"])

    def setDefaultZ(self, z: int, current: Ice.Current) -> None:
        if not 0 <= z < shape_of(self._image()).size_z:
            raise validation(f"The default Z section {z} is out of range.")
        self._ready()["z"] = z

    def setDefaultT(self, t: int, current: Ice.Current) -> None:
        if not 0 <= t < shape_of(self._image()).size_t:
            raise validation(f"The default timepoint {t} is out of range.")
        self._ready()["t"] = t

    def getModel(self, current: Ice.Current) -> Any:
        return enum_entry("RenderingModel", self._ready()["model"])

    def setModel(self, model: Any, current: Ice.Current) -> None:
        value = omero.rtypes.unwrap(model.value) if model is not None else None
        if value is None and model is not None and model.id is not None:
            value = ENUMS["RenderingModel"][int(omero.rtypes.unwrap(model.id)) - 1]
        if value not in ENUMS["RenderingModel"]:
            raise api_usage(f"Unknown rendering model {value!r}.")
        self._ready()["model"] = value

    def getAvailableModels(self, current: Ice.Current) -> list[Any]:
        return [enum_entry("RenderingModel", v) for v in ENUMS["RenderingModel"]]

    def getAvailableFamilies(self, current: Ice.Current) -> list[Any]:
        return [enum_entry("Family", v) for v in ENUMS["Family"]]

    def getQuantumDef(self, current: Ice.Current) -> Any:
        s = self._ready()
        q = omero.model.QuantumDefI(rlong(self.rdef.id if self.rdef else 1), True)
        q.cdStart, q.cdEnd = rint(int(s["cdStart"])), rint(int(s["cdEnd"]))
        q.bitResolution = rint(int(s["bitResolution"]))
        return q

    def setQuantumStrategy(self, bits: int, current: Ice.Current) -> None:
        self._ready()["bitResolution"] = int(bits)

    def setCodomainInterval(self, start: int, end: int, current: Ice.Current) -> None:
        s = self._ready()
        if not 0 <= start < end <= 255:
            raise api_usage(f"The codomain interval [{start}, {end}] is not within "
                            f"[0, 255].")
        s["cdStart"], s["cdEnd"] = int(start), int(end)

    def getCompressionLevel(self, current: Ice.Current) -> float:
        return self.compression

    def setCompressionLevel(self, level: float, current: Ice.Current) -> None:
        self.compression = float(level)

    # -- resolution levels -------------------------------------------------------------------

    def requiresPixelsPyramid(self, current: Ice.Current) -> bool:
        self._ready()
        image = self._image()
        return bool(image.data.get("requiresPyramid", len(levels_of(image)) > 1))

    def getResolutionLevels(self, current: Ice.Current) -> int:
        self._ready()
        return len(levels_of(self._image()))

    def getResolutionLevel(self, current: Ice.Current) -> int:
        self._ready()
        return int(self.level if self.level is not None else len(levels_of(self._image())) - 1)

    def getResolutionDescriptions(self, current: Ice.Current) -> list[Any]:
        self._ready()
        return [omero.api.ResolutionDescription(sizeX=x, sizeY=y)
                for x, y in levels_of(self._image())]

    def setResolutionLevel(self, level: int, current: Ice.Current) -> None:
        self._ready()
        count = len(levels_of(self._image()))
        if count == 1:
            raise unsupported("Cannot set resolution levels on a ROMIO pixel buffer.")
        # BfPixelBuffer asks Bio-Formats for series |level - (n - 1)|, which refuses a
        # resolution it does not have (so -1 fails, while n is read as n - 2).
        resolution = abs(level - (count - 1))
        if resolution >= count:
            raise omero.InternalException(
                serverStackTrace="", serverExceptionClass="java.lang.IllegalArgumentException",
                message=f"Invalid resolution: {resolution}")
        self.level = count - 1 - resolution

    def getTileSize(self, current: Ice.Current) -> list[int]:
        self._ready()
        return tile_size_of(self.ctx, self._image())

    # -- rendering ---------------------------------------------------------------------------

    def _render(self, plane_def: Any) -> np.ndarray:
        settings = self._ready()
        image = self._image()
        shape = shape_of(image)
        z, t = int(plane_def.z), int(plane_def.t)
        if not (0 <= z < shape.size_z and 0 <= t < shape.size_t):
            raise validation(f"The plane z={z} t={t} is outside the image "
                             f"({shape.size_z} z, {shape.size_t} t).")
        if plane_def.slice not in (0, None):
            raise api_usage("Only XY planes are rendered by the emulator.")
        levels = levels_of(image)
        stride = max(0, int(plane_def.stride or 0)) + 1
        region = plane_def.region
        if region is None:
            # A whole pyramid plane: the smallest level of at least 2048 pixels, which
            # stays a manageable image (a real server renders the current level in full).
            level0 = _level_at_least(image, min(2048, max(levels[0]))) \
                if len(levels) > 1 else 0
            return render_array(self.ctx, image, settings, z, t, level0, None, stride)
        level0 = len(levels) - 1 - int(self.level if self.level is not None
                                       else len(levels) - 1)
        sx, sy = levels[level0]
        x, y = int(region.x), int(region.y)
        # RenderingBean.checkPlaneDef: a region past the edge is cut to the plane.
        w, h = min(int(region.width), sx - x), min(int(region.height), sy - y)
        if x < 0 or y < 0 or w <= 0 or h <= 0:
            raise api_usage(f"Region x={region.x} y={region.y} w={region.width} "
                            f"h={region.height} is outside the {sx}×{sy} plane.")
        return render_array(self.ctx, image, settings, z, t, level0, (x, y, w, h), stride)

    def renderCompressed(self, plane_def: Any, current: Ice.Current) -> bytes:
        rgb = self._render(plane_def)
        return jpeg(Image.fromarray(rgb, "RGB"), self.compression)

    def renderAsPackedInt(self, plane_def: Any, current: Ice.Current) -> list[int]:
        return _packed(self._render(plane_def))

    def _project(self, projection: Any, t: int, stepping: int, start: int, end: int
                 ) -> np.ndarray:
        """``RenderingBean.renderProjected*``: each active channel's stack projected as
        ``ProjectionBean.projectStack`` does it, then rendered as one plane."""
        # A ProjectionType enumerator: MAXIMUMINTENSITY, MEANINTENSITY, SUMINTENSITY.
        algorithm = int(getattr(projection, "value", projection))
        settings = self._ready()
        image = self._image()
        shape = shape_of(image)
        if start < 0 or end < 0:
            raise validation("Z interval value cannot be negative.")
        if start >= shape.size_z or end >= shape.size_z:
            raise validation(f"Z interval value cannot be >= {shape.size_z}")
        if stepping <= 0:
            raise validation(f"stepping: {stepping} <= 0")
        if t < 0:
            raise validation(f"timepoint: {t} < 0")
        if t >= shape.size_t:
            raise validation(f"timepoint must be <{shape.size_t}")
        if algorithm not in (0, 1, 2):
            raise omero.InternalException(
                serverStackTrace="", serverExceptionClass="java.lang.IllegalArgumentException",
                message=f"Unknown algorithm: {algorithm}")
        levels = levels_of(image)
        if len(levels) > 1:
            raise unsupported("Not supported.")  # BfPyramidPixelBuffer.getStack
        arr = self.ctx.pixels.array(image.id, shape, 0, levels)
        type_max = _type_range(shape)[1]
        planes: dict[int, np.ndarray] = {}
        for c, ch in enumerate(settings["channels"]):
            if not ch["active"]:
                continue
            if algorithm == 0:
                # Maximum over start..end inclusive, starting from 0.
                stack = np.asarray(arr[t, c, start:end + 1:stepping], dtype=np.float64)
                projected = np.maximum(stack.max(axis=0), 0.0)
            else:
                # Mean and sum run z from start while z < end (the last section is left
                # out), clipped to the pixel type's maximum.
                stack = np.asarray(arr[t, c, start:end:stepping], dtype=np.float64)
                if stack.shape[0] == 0:
                    projected = np.zeros(levels[0][::-1], dtype=np.float64)
                else:
                    projected = stack.sum(axis=0)
                    if algorithm == 1:
                        projected = projected / stack.shape[0]
                projected = np.minimum(projected, type_max)
            if shape.dtype.kind in "iu":
                projected = np.trunc(projected)
            planes[c] = projected
        return render_array(self.ctx, image, settings, 0, t, 0, None, planes=planes)

    def renderProjectedCompressed(self, algorithm: Any, t: int, stepping: int, start: int,
                                  end: int, current: Ice.Current) -> bytes:
        rgb = self._project(algorithm, t, stepping, start, end)
        return jpeg(Image.fromarray(rgb, "RGB"), self.compression)

    def renderProjectedAsPackedInt(self, algorithm: Any, t: int, stepping: int, start: int,
                                   end: int, current: Ice.Current) -> list[int]:
        return _packed(self._project(algorithm, t, stepping, start, end))


def _packed(rgb: np.ndarray) -> list[int]:
    """RGB as the ARGB ints ``renderAsPackedInt`` answers (opaque)."""
    v = rgb.astype(np.uint32)
    packed = (0xFF << 24) | (v[..., 0] << 16) | (v[..., 1] << 8) | v[..., 2]
    return [int(x) for x in packed.astype(np.int32).ravel()]


@servant(omero.api.ThumbnailStore)
class ThumbnailStoreI(_ImageBound):
    """JPEG thumbnails with the caller's rendering settings (else the owner's, else the
    defaults), as ThumbnailBean renders them."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.rdef_id: int | None = None

    def setPixelsId(self, pixels_id: int, current: Ice.Current) -> bool:
        caller = self.caller(current)
        image = self._bind(caller, pixels_id)
        self.rdef_id = None
        # False: no rendering settings yet, neither the caller's nor the owner's
        # (ThumbnailBean, through IPixels.retrieveRndSettings).
        return settings_for(self.ctx, image, caller.user.id) is not None

    def _settings(self, caller: Caller, image: Obj) -> dict[str, Any]:
        rdef = None
        if self.rdef_id is not None and self.image is not None and image.id == self.image.id:
            rdef = self.ctx.store.get(self.rdef_id, RDEF)
        if rdef is None:
            rdef = settings_for(self.ctx, image, caller.user.id)
        return default_settings(image) if rdef is None else _channel_settings(image, rdef.data)

    def setRenderingDefId(self, rdef_id: int, current: Ice.Current) -> None:
        rdef = self.ctx.store.get(rdef_id, RDEF)
        if rdef is None or rdef.parent_id != self._image().id:
            raise validation(f"No rendering definition exists with ID: {rdef_id}")
        self.rdef_id = rdef_id

    def getRenderingDefId(self, current: Ice.Current) -> int:
        caller = self.caller(current)
        if self.rdef_id is not None:
            return self.rdef_id
        rdef = settings_for(self.ctx, self._image(), caller.user.id)
        if rdef is None:
            raise api_usage("No rendering definition")
        return rdef.id

    def resetDefaults(self, current: Ice.Current) -> None:
        caller = self.caller(current)
        image = self._image()
        own = user_rdefs(self.ctx, image, caller.user.id)
        defaults = default_settings(image)
        store_settings(self.ctx, image, caller.user.id, defaults, own[0].id if own else None)

    def thumbnailExists(self, size_x: Any, size_y: Any, current: Ice.Current) -> bool:
        return True

    def isInProgress(self, current: Ice.Current) -> bool:
        return False

    def _thumb(self, caller: Caller, image: Obj, longest: int) -> bytes:
        return jpeg(render_scaled(self.ctx, image, longest, self._settings(caller, image)))

    def getThumbnail(self, size_x: Any, size_y: Any, current: Ice.Current) -> bytes:
        longest = max(omero.rtypes.unwrap(size_x) or 96, omero.rtypes.unwrap(size_y) or 96)
        return self._thumb(self.caller(current), self._image(), longest)

    def getThumbnailByLongestSide(self, size: Any, current: Ice.Current) -> bytes:
        return self._thumb(self.caller(current), self._image(),
                           omero.rtypes.unwrap(size) or 96)

    def getThumbnailWithoutDefault(self, size_x: Any, size_y: Any, current: Ice.Current
                                   ) -> bytes:
        return self.getThumbnail(size_x, size_y, current)

    def getThumbnailDirect(self, size_x: Any, size_y: Any, current: Ice.Current) -> bytes:
        # Rendered afresh, never cached: the same picture here.
        return self.getThumbnail(size_x, size_y, current)

    def getThumbnailForSectionDirect(self, z: int, t: int, size_x: Any, size_y: Any,
                                     current: Ice.Current) -> bytes:
        caller = self.caller(current)
        image = self._image()
        longest = max(omero.rtypes.unwrap(size_x) or 96, omero.rtypes.unwrap(size_y) or 96)
        shape = shape_of(image)
        if not (0 <= z < shape.size_z and 0 <= t < shape.size_t):
            raise api_usage(f"The section z={z} t={t} is outside the image.")
        return jpeg(render_scaled(self.ctx, image, longest, self._settings(caller, image),
                                  z=z, t=t))

    def getThumbnailByLongestSideDirect(self, size: Any, current: Ice.Current) -> bytes:
        return self.getThumbnailByLongestSide(size, current)

    def getThumbnailForSectionByLongestSideDirect(self, z: int, t: int, size: Any,
                                                  current: Ice.Current) -> bytes:
        longest = omero.rtypes.unwrap(size) or 96
        return self.getThumbnailForSectionDirect(z, t, omero.rtypes.rint(longest),
                                                 omero.rtypes.rint(longest), current)

    def _set(self, longest: int, ids: list[int], current: Ice.Current) -> dict[int, bytes]:
        caller = self.caller(current)
        out: dict[int, bytes] = {}
        for pid in ids:
            image = self.ctx.store.get(modelmap.image_id_of_pixels(pid), "Image")
            if image is not None and self.visible(caller, image):
                settings = settings_for(self.ctx, image, caller.user.id)
                chosen = default_settings(image) if settings is None else \
                    _channel_settings(image, settings.data)
                out[pid] = jpeg(render_scaled(self.ctx, image, longest, chosen))
        return out

    def getThumbnailSet(self, size_x: Any, size_y: Any, ids: list[int], current: Ice.Current
                        ) -> dict[int, bytes]:
        longest = max(omero.rtypes.unwrap(size_x) or 96, omero.rtypes.unwrap(size_y) or 96)
        return self._set(longest, ids, current)

    def getThumbnailByLongestSideSet(self, size: Any, ids: list[int], current: Ice.Current
                                     ) -> dict[int, bytes]:
        return self._set(omero.rtypes.unwrap(size) or 96, ids, current)

    def createThumbnails(self, current: Ice.Current) -> None:
        return None

    def createThumbnail(self, size_x: Any, size_y: Any, current: Ice.Current) -> None:
        return None

    def createThumbnailsByLongestSideSet(self, size: Any, ids: list[int],
                                         current: Ice.Current) -> None:
        return None


# -- IRenderingSettings ------------------------------------------------------------------------

_CONTAINERS = ("Project", "Dataset", "Image", "Plate", "Screen", "Pixels", "PlateAcquisition")


def _compatible(source: Obj, target: Obj) -> bool:
    """``RenderingSettingsImpl.sanityCheckPixels``: same pixel type, same number of
    channels, and every emission wavelength of the source found among the target's."""
    if source.data["pixelsType"] != target.data["pixelsType"]:
        return False
    if source.data["sizeC"] != target.data["sizeC"]:
        return False
    waves = [ch.get("emission") for ch in target.data["channels"]]
    return all(ch.get("emission") in waves for ch in source.data["channels"])


def _copy_onto(source: dict[str, Any], target: Obj) -> dict[str, Any]:
    """``RenderingSettingsImpl.applySettings``: z and t where the target has them, the
    model, quantization and every channel binding."""
    settings = default_settings(target)
    shape = shape_of(target)
    if int(source["z"]) < shape.size_z:
        settings["z"] = int(source["z"])
    if int(source["t"]) < shape.size_t:
        settings["t"] = int(source["t"])
    for key in ("model", "cdStart", "cdEnd", "bitResolution", "compression"):
        settings[key] = source[key]
    settings["channels"] = [dict(ch) for ch in source["channels"]]
    return settings


@servant(omero.api.IRenderingSettings)
class RenderingSettingsI(SessionServant):
    """IRenderingSettings: copy, reset and look up rendering settings over sets of images
    (webgateway's copy/paste and iviewer's "Save to All")."""

    def _images(self, caller: Caller, kind: str, ids: list[int]) -> list[Obj]:
        """The readable images in (or named by) the objects ``kind:ids``."""
        short = kind.rsplit(".", 1)[-1].removesuffix("I")
        if short not in _CONTAINERS:
            # checkValidContainerClass throws IllegalArgumentException, which is no
            # ome.conditions class: IceMapper hands it on as InternalException.
            raise internal("Class parameter for changing settings must be in {Project, "
                           "Dataset, Image, Plate, Screen, PlateAcquisition, Pixels}.",
                           "java.lang.IllegalArgumentException")
        store = self.ctx.store
        image_ids: list[int] = []
        if short == "Pixels":
            image_ids = [modelmap.image_id_of_pixels(i) for i in ids]
        elif short == "Image":
            image_ids = list(ids)
        elif short in ("Project", "Dataset"):
            datasets = list(ids) if short == "Dataset" else [
                link.child_id for link in store.links_from("ProjectDatasetLink", ids)]
            image_ids = [link.child_id for link in store.links_from("DatasetImageLink",
                                                                   datasets)]
        else:
            plates = list(ids)
            if short == "Screen":
                plates = [link.child_id for link in store.links_from("ScreenPlateLink", ids)]
            if short == "PlateAcquisition":
                wells = [w.id for w in store.all("Well")]
                samples = [s for s in store.by_parents(["WellSample"], wells)
                           if s.data.get("acquisition") in ids]
            else:
                wells = [w.id for w in store.by_parents(["Well"], plates)]
                samples = store.by_parents(["WellSample"], wells)
            image_ids = [int(s.data["image"]) for s in samples]
        images = store.get_many(image_ids, "Image")
        return [i for i in images if self.visible(caller, i)]

    def _settings_of(self, caller: Caller, image: Obj, anyone: bool = False
                     ) -> dict[str, Any] | None:
        own = user_rdefs(self.ctx, image, caller.user.id)
        if not own and anyone:
            own = user_rdefs(self.ctx, image, None)
        return _channel_settings(image, own[0].data) if own else None

    def _write(self, caller: Caller, image: Obj, settings: dict[str, Any]) -> None:
        own = user_rdefs(self.ctx, image, caller.user.id)
        if own:
            settings = dict(settings, version=own[0].data.get("version", 0))
        store_settings(self.ctx, image, caller.user.id, settings, own[0].id if own else None)

    def applySettingsToSet(self, from_pixels: int, kind: str, ids: list[int],
                           current: Ice.Current) -> dict[bool, list[int]]:
        caller = self.caller(current)
        targets = self._images(caller, kind, ids)
        source = self.ctx.store.get(modelmap.image_id_of_pixels(from_pixels), "Image")
        if source is None or not self.visible(caller, source):
            raise validation(f"No pixels set with ID: {from_pixels}")
        settings = self._settings_of(caller, source, anyone=True)
        done: list[int] = []
        failed: list[int] = []
        if any(t.id == source.id for t in targets):
            done.append(source.id)
        for target in targets:
            if target.id == source.id:
                continue
            if settings is None or not _compatible(source, target):
                failed.append(target.id)
                continue
            self._write(caller, target, _copy_onto(settings, target))
            done.append(target.id)
        return {True: done, False: failed}

    def applySettingsToImages(self, from_pixels: int, ids: list[int], current: Ice.Current
                              ) -> dict[bool, list[int]]:
        return self.applySettingsToSet(from_pixels, "Image", ids, current)

    def applySettingsToDataset(self, from_pixels: int, dataset_id: int, current: Ice.Current
                               ) -> dict[bool, list[int]]:
        return self.applySettingsToSet(from_pixels, "Dataset", [dataset_id], current)

    def applySettingsToProject(self, from_pixels: int, project_id: int, current: Ice.Current
                               ) -> dict[bool, list[int]]:
        return self.applySettingsToSet(from_pixels, "Project", [project_id], current)

    def applySettingsToImage(self, from_pixels: int, image_id: int, current: Ice.Current
                             ) -> bool:
        return image_id in self.applySettingsToSet(from_pixels, "Image", [image_id],
                                                   current)[True]

    def applySettingsToPixels(self, from_pixels: int, to_pixels: int, current: Ice.Current
                              ) -> bool:
        done = self.applySettingsToSet(from_pixels, "Pixels", [to_pixels], current)[True]
        return modelmap.image_id_of_pixels(to_pixels) in done

    def _reset(self, caller: Caller, kind: str, ids: list[int], by_owner: bool) -> list[int]:
        out = []
        for image in self._images(caller, kind, ids):
            settings = None
            if by_owner:
                owners = user_rdefs(self.ctx, image, image.owner_id)
                settings = _channel_settings(image, owners[0].data) if owners else None
            self._write(caller, image, settings or default_settings(image))
            out.append(image.id)
        return out

    def resetDefaultsInSet(self, kind: str, ids: list[int], current: Ice.Current
                           ) -> list[int]:
        return self._reset(self.caller(current), kind, ids, by_owner=False)

    def setOriginalSettingsInSet(self, kind: str, ids: list[int], current: Ice.Current
                                 ) -> list[int]:
        return self._reset(self.caller(current), kind, ids, by_owner=False)

    def resetDefaultsByOwnerInSet(self, kind: str, ids: list[int], current: Ice.Current
                                  ) -> list[int]:
        return self._reset(self.caller(current), kind, ids, by_owner=True)

    def resetDefaultsInImage(self, image_id: int, current: Ice.Current) -> None:
        self.resetDefaultsInSet("Image", [image_id], current)

    def resetDefaultsInDataset(self, dataset_id: int, current: Ice.Current) -> list[int]:
        return self.resetDefaultsInSet("Dataset", [dataset_id], current)

    def setOriginalSettingsInImage(self, image_id: int, current: Ice.Current) -> None:
        self.setOriginalSettingsInSet("Image", [image_id], current)

    def setOriginalSettingsInDataset(self, dataset_id: int, current: Ice.Current
                                     ) -> list[int]:
        return self.setOriginalSettingsInSet("Dataset", [dataset_id], current)

    def getRenderingSettings(self, pixels_id: int, current: Ice.Current) -> Any:
        caller = self.caller(current)
        image = self.ctx.store.get(modelmap.image_id_of_pixels(pixels_id), "Image")
        if image is None or not self.visible(caller, image):
            return None
        own = user_rdefs(self.ctx, image, caller.user.id)
        return rdef_model(self.ctx, caller.user, own[0]) if own else None

    def sanityCheckPixels(self, source: Any, target: Any, current: Ice.Current) -> bool:
        caller = self.caller(current)
        images = [self.ctx.store.get(modelmap.image_id_of_pixels(
            int(omero.rtypes.unwrap(p.id))), "Image") if p is not None else None
            for p in (source, target)]
        if any(i is None or not self.visible(caller, i) for i in images):
            return False
        return _compatible(images[0], images[1])  # type: ignore[arg-type]
