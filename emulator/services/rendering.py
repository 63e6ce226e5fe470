"""A minimal RenderingEngine (so ``ImageWrapper.getChannels()`` works) and ThumbnailStore.

Rendering maps each channel's global range to its colour and adds the channels, the
way OMERO's default settings do; thumbnails are JPEGs of the smallest resolution
level that is at least the size asked for.
"""

from __future__ import annotations

import io
from typing import Any

import Ice
import numpy as np
import omero
import omero.api
import omero.model
from omero.rtypes import rint, rlong, rstring
from PIL import Image

from cellprofiler_omero.emulator import modelmap
from cellprofiler_omero.emulator.icebase import api_usage, servant
from cellprofiler_omero.emulator.services.common import Caller, StatefulServant
from cellprofiler_omero.emulator.services.pixels import levels_of, shape_of
from cellprofiler_omero.emulator.store import Obj


def render(ctx: Any, image: Obj, longest: int, z: int | None = None, t: int = 0,
           settings: dict[int, dict[str, Any]] | None = None) -> Image.Image:
    """An RGB rendering of ``image`` whose longest side is ``longest`` pixels."""
    shape = shape_of(image)
    levels = levels_of(image)
    level = 0
    for index, (x, y) in enumerate(levels):
        if max(x, y) >= longest:
            level = index
    x, y = levels[level]
    arr = ctx.pixels.array(image.id, shape, level, levels)
    zz = shape.size_z // 2 if z is None else z
    rgb = np.zeros((y, x, 3), dtype=np.float32)
    for c, ch in enumerate(image.data["channels"]):
        opts = (settings or {}).get(c, {})
        if not opts.get("active", True):
            continue
        plane = np.asarray(arr[t, c, zz], dtype=np.float32)
        lo = float(opts.get("start", ch.get("min", plane.min())))
        hi = float(opts.get("end", ch.get("max", plane.max())))
        scaled = np.clip((plane - lo) / max(hi - lo, 1e-9), 0, 1)
        color = opts.get("rgba") or ch.get("color") or [255, 255, 255, 255]
        if len(image.data["channels"]) == 1:
            color = [255, 255, 255, 255]
        rgb += scaled[..., None] * (np.array(color[:3], dtype=np.float32) / 255.0)
    out = Image.fromarray((np.clip(rgb, 0, 1) * 255).astype(np.uint8), "RGB")
    scale = longest / max(x, y)
    size = (max(1, round(x * scale)), max(1, round(y * scale)))
    return out.resize(size, Image.Resampling.BILINEAR)


def jpeg(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=85)
    return buf.getvalue()


class _ImageBound(StatefulServant):
    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.image: Obj | None = None

    def _bind(self, caller: Caller, pixels_id: int) -> Obj:
        image = self.ctx.store.get(modelmap.image_id_of_pixels(pixels_id), "Image")
        if image is None or not self.visible(caller, image):
            raise api_usage(f"Pixels:{pixels_id} does not exist or cannot be read.")
        self.image = image
        return image

    def _image(self) -> Obj:
        if self.image is None:
            raise api_usage("Set the pixels first.")
        return self.image


@servant(omero.api.RenderingEngine)
class RenderingEngineI(_ImageBound):
    """Enough of RenderingEngine for channel wrappers and simple renders."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        self.settings: dict[int, dict[str, Any]] = {}
        self.z = 0
        self.t = 0
        self.model = "rgb"

    def lookupPixels(self, pixels_id: int, current: Ice.Current) -> None:
        image = self._bind(self.caller(current), pixels_id)
        self.z = image.data["sizeZ"] // 2

    def lookupRenderingDef(self, pixels_id: int, current: Ice.Current) -> bool:
        return True

    def loadRenderingDef(self, rdef_id: int, current: Ice.Current) -> None:
        return None

    def resetDefaultSettings(self, save: bool, current: Ice.Current) -> int:
        self.settings = {}
        return modelmap.pixels_id(self._image().id)

    def load(self, current: Ice.Current) -> None:
        return None

    def saveCurrentSettings(self, current: Ice.Current) -> None:
        return None

    def getRenderingDefId(self, current: Ice.Current) -> int:
        return modelmap.pixels_id(self._image().id)

    def getPixels(self, current: Ice.Current) -> Any:
        return modelmap.pixels(self.ctx.store, self.caller(current).user, self._image())

    def _ch(self, index: int) -> dict[str, Any]:
        return self._image().data["channels"][index]

    def getChannelWindowStart(self, index: int, current: Ice.Current) -> float:
        return float(self.settings.get(index, {}).get("start", self._ch(index).get("min", 0)))

    def getChannelWindowEnd(self, index: int, current: Ice.Current) -> float:
        return float(self.settings.get(index, {}).get("end", self._ch(index).get("max", 255)))

    def setChannelWindow(self, index: int, start: float, end: float, current: Ice.Current
                         ) -> None:
        self.settings.setdefault(index, {}).update(start=start, end=end)

    def getRGBA(self, index: int, current: Ice.Current) -> list[int]:
        return list(self.settings.get(index, {}).get(
            "rgba", self._ch(index).get("color") or [255, 255, 255, 255]))

    def setRGBA(self, index: int, r: int, g: int, b: int, a: int, current: Ice.Current
                ) -> None:
        self.settings.setdefault(index, {})["rgba"] = [r, g, b, a]

    def isActive(self, index: int, current: Ice.Current) -> bool:
        return bool(self.settings.get(index, {}).get("active", True))

    def setActive(self, index: int, active: bool, current: Ice.Current) -> None:
        self.settings.setdefault(index, {})["active"] = active

    def getDefaultZ(self, current: Ice.Current) -> int:
        return self.z

    def getDefaultT(self, current: Ice.Current) -> int:
        return self.t

    def setDefaultZ(self, z: int, current: Ice.Current) -> None:
        self.z = z

    def setDefaultT(self, t: int, current: Ice.Current) -> None:
        self.t = t

    def getModel(self, current: Ice.Current) -> Any:
        m = omero.model.RenderingModelI(rlong(1), True)
        m.value = rstring(self.model)
        return m

    def setModel(self, model: Any, current: Ice.Current) -> None:
        self.model = omero.rtypes.unwrap(model.value) or "rgb"

    def getAvailableModels(self, current: Ice.Current) -> list[Any]:
        out = []
        for i, name in enumerate(("rgb", "greyscale"), start=1):
            m = omero.model.RenderingModelI(rlong(i), True)
            m.value = rstring(name)
            out.append(m)
        return out

    def getAvailableFamilies(self, current: Ice.Current) -> list[Any]:
        f = omero.model.FamilyI(rlong(1), True)
        f.value = rstring("linear")
        return [f]

    def getChannelFamily(self, index: int, current: Ice.Current) -> Any:
        return self.getAvailableFamilies(current)[0]

    def getChannelCurveCoefficient(self, index: int, current: Ice.Current) -> float:
        return 1.0

    def getChannelNoiseReduction(self, index: int, current: Ice.Current) -> bool:
        return False

    def getChannelLookupTable(self, index: int, current: Ice.Current) -> str:
        return ""

    def getChannelStats(self, index: int, current: Ice.Current) -> list[float]:
        ch = self._ch(index)
        return [float(ch.get("min", 0)), float(ch.get("max", 0))]

    def getPixelsTypeLowerBound(self, w: int, current: Ice.Current) -> float:
        info = shape_of(self._image()).dtype
        return float(np.iinfo(info).min) if info.kind in "iu" else 0.0

    def getPixelsTypeUpperBound(self, w: int, current: Ice.Current) -> float:
        info = shape_of(self._image()).dtype
        return float(np.iinfo(info).max) if info.kind in "iu" else 1.0

    def isPixelsTypeSigned(self, current: Ice.Current) -> bool:
        return shape_of(self._image()).dtype.kind in "if"

    def getQuantumDef(self, current: Ice.Current) -> Any:
        q = omero.model.QuantumDefI(rlong(1), True)
        q.cdStart, q.cdEnd, q.bitResolution = rint(0), rint(255), rint(255)
        return q

    def getCompressionLevel(self, current: Ice.Current) -> float:
        return 0.85

    def setCompressionLevel(self, level: float, current: Ice.Current) -> None:
        return None

    def setQuantumStrategy(self, bits: int, current: Ice.Current) -> None:
        return None

    def setCodomainInterval(self, start: int, end: int, current: Ice.Current) -> None:
        return None

    def setQuantizationMap(self, index: int, family: Any, coefficient: float,
                           noise: bool, current: Ice.Current) -> None:
        return None

    def requiresPixelsPyramid(self, current: Ice.Current) -> bool:
        return len(levels_of(self._image())) > 1

    def getResolutionLevels(self, current: Ice.Current) -> int:
        return len(levels_of(self._image()))

    def getResolutionDescriptions(self, current: Ice.Current) -> list[Any]:
        return [omero.api.ResolutionDescription(sizeX=x, sizeY=y)
                for x, y in levels_of(self._image())]

    def getTileSize(self, current: Ice.Current) -> list[int]:
        return [256, 256]

    def renderCompressed(self, plane_def: Any, current: Ice.Current) -> bytes:
        image = self._image()
        longest = max(image.data["sizeX"], image.data["sizeY"])
        return jpeg(render(self.ctx, image, min(longest, 2048), plane_def.z, plane_def.t,
                           self.settings))


@servant(omero.api.ThumbnailStore)
class ThumbnailStoreI(_ImageBound):
    """JPEG thumbnails (for the GUI's browser)."""

    def setPixelsId(self, pixels_id: int, current: Ice.Current) -> bool:
        self._bind(self.caller(current), pixels_id)
        return True

    def setRenderingDefId(self, rdef_id: int, current: Ice.Current) -> None:
        return None

    def getRenderingDefId(self, current: Ice.Current) -> int:
        return modelmap.pixels_id(self._image().id)

    def resetDefaults(self, current: Ice.Current) -> None:
        return None

    def thumbnailExists(self, size_x: Any, size_y: Any, current: Ice.Current) -> bool:
        return True

    def isInProgress(self, current: Ice.Current) -> bool:
        return False

    def getThumbnail(self, size_x: Any, size_y: Any, current: Ice.Current) -> bytes:
        longest = max(omero.rtypes.unwrap(size_x) or 96, omero.rtypes.unwrap(size_y) or 96)
        return jpeg(render(self.ctx, self._image(), longest))

    def getThumbnailByLongestSide(self, size: Any, current: Ice.Current) -> bytes:
        return jpeg(render(self.ctx, self._image(), omero.rtypes.unwrap(size) or 96))

    def getThumbnailWithoutDefault(self, size_x: Any, size_y: Any, current: Ice.Current
                                   ) -> bytes:
        return self.getThumbnail(size_x, size_y, current)

    def _set(self, longest: int, ids: list[int], current: Ice.Current) -> dict[int, bytes]:
        caller = self.caller(current)
        out: dict[int, bytes] = {}
        for pid in ids:
            image = self.ctx.store.get(modelmap.image_id_of_pixels(pid), "Image")
            if image is not None and self.visible(caller, image):
                out[pid] = jpeg(render(self.ctx, image, longest))
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
