"""ITypes (enumerations) and IScript (the official scripts: here, the lookup tables).

A real server lists its LUTs as official scripts of mimetype ``text/x-lut`` (files under
``lib/scripts/luts/`` registered as OriginalFiles) and renders a channel with the LUT
whose file name its binding names (``LutProviderImpl`` keys readers by base name).
The emulator ships a handful of them, computed here with the same values as the files
OMERO distributes, as OriginalFiles owned by root in the ``user`` group, made once per
data folder on first use.
"""

from __future__ import annotations

import colorsys
from typing import Any

import Ice
import numpy as np
import omero
import omero.api
import omero.model
from omero.rtypes import rlong, rstring

from cellprofiler_omero.emulator import modelmap
from cellprofiler_omero.emulator.icebase import api_usage, servant
from cellprofiler_omero.emulator.pixels import BIT_SIZES
from cellprofiler_omero.emulator.services.common import SessionServant
from cellprofiler_omero.emulator.store import Obj

LUT_MIMETYPE = "text/x-lut"


def _interpolate(points: list[int]) -> list[int]:
    """ImageJ's ``LutLoader.interpolate``: control points spread over 256 entries."""
    n = len(points)
    out = []
    for i in range(256):
        pos = i * n / 256
        i1 = int(pos)
        i2 = min(i1 + 1, n - 1)
        frac = pos - i1
        out.append(int((1 - frac) * points[i1] + frac * points[i2]))
    return out


def _fire() -> np.ndarray:
    red = [0, 0, 1, 25, 49, 73, 98, 122, 146, 162, 173, 184, 195, 207, 217, 229, 240, 252,
           255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255, 255]
    green = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 14, 35, 57, 79, 101, 117, 133, 147, 161,
             175, 190, 205, 219, 234, 248, 255, 255, 255, 255]
    blue = [0, 61, 96, 130, 165, 192, 220, 227, 210, 181, 151, 122, 93, 64, 35, 5, 0, 0, 0,
            0, 0, 0, 0, 0, 0, 0, 0, 35, 98, 160, 223, 255]
    return np.array([_interpolate(red), _interpolate(green), _interpolate(blue)]).T


def _spectrum() -> np.ndarray:
    return np.array([[round(v * 255) for v in colorsys.hsv_to_rgb(i / 255, 1, 1)]
                     for i in range(256)])


def _rgb332() -> np.ndarray:
    return np.array([[i & 0xE0, (i << 3) & 0xE0, (i << 6) & 0xC0] for i in range(256)])


def _red_green() -> np.ndarray:
    return np.array([[2 * i, 0, 0] if i < 128 else [0, 2 * (i - 128), 0]
                     for i in range(256)])


def _grays() -> np.ndarray:
    return np.repeat(np.arange(256)[:, None], 3, axis=1)


#: LUT file name → (the folder a real server lists it under, its 256 RGB entries).
LUTS: dict[str, tuple[str, np.ndarray]] = {
    "3-3-2_rgb.lut": ("/luts/", _rgb332().astype(np.uint8)),
    "fire.lut": ("/luts/", _fire().astype(np.uint8)),
    "grays.lut": ("/luts/", _grays().astype(np.uint8)),
    "red-green.lut": ("/luts/", _red_green().astype(np.uint8)),
    "spectrum.lut": ("/luts/", _spectrum().astype(np.uint8)),
}

_ROOT_ID = 0
_USER_GROUP_ID = 1


def lut_table(name: str | None) -> np.ndarray | None:
    """The 256×3 uint8 table of a LUT named as a channel binding names it, or None.

    As ``LutProviderImpl``: a name no LUT file has renders as if no LUT were set.
    """
    if not name:
        return None
    entry = LUTS.get(name.rsplit("/", 1)[-1])
    return None if entry is None else entry[1]


def lut_files(ctx: Any) -> list[Obj]:
    """The LUT OriginalFiles, made (with their bytes) the first time they are asked for."""
    with ctx._lock:
        existing = {o.name: o for o in ctx.store.find_by_data("OriginalFile", "mimetype",
                                                                LUT_MIMETYPE)}
        for name, (path, table) in LUTS.items():
            if name in existing:
                continue
            # ImageJ's binary LUT format: 256 reds, 256 greens, 256 blues.
            raw = np.ascontiguousarray(table.T).astype(np.uint8).tobytes()
            obj = ctx.store.create("OriginalFile", name, _ROOT_ID, _USER_GROUP_ID,
                                   data={"path": path, "mimetype": LUT_MIMETYPE,
                                         "size": len(raw), "hash": ""})
            ctx.file_path(obj.id).parent.mkdir(parents=True, exist_ok=True)
            ctx.file_path(obj.id).write_bytes(raw)
            existing[name] = obj
    return sorted(existing.values(), key=lambda o: o.id)


@servant(omero.api.IScript)
class ScriptI(SessionServant):
    """IScript: the official scripts by mimetype. The emulator runs no scripts."""

    def getScriptsByMimetype(self, mimetype: str, current: Ice.Current) -> list[Any]:
        caller = self.caller(current)
        if mimetype != LUT_MIMETYPE:
            return []
        return [modelmap.to_model(self.ctx.store, caller.user, f) for f in lut_files(self.ctx)]

    def getScripts(self, current: Ice.Current) -> list[Any]:
        # A server with no Python scripts uploaded (the emulator has no processor).
        return []

    def getUserScripts(self, accepts: list[Any], current: Ice.Current) -> list[Any]:
        return []


# -- enumerations --------------------------------------------------------------------------

#: Enumeration class → its values in id order, as a fresh OMERO database holds them.
ENUMS: dict[str, tuple[str, ...]] = {
    "Family": ("linear", "polynomial", "exponential", "logarithmic"),
    "RenderingModel": ("rgb", "greyscale"),
    "PixelsType": tuple(BIT_SIZES),
    "DimensionOrder": ("XYZCT", "XYZTC", "XYCTZ", "XYCZT", "XYTCZ", "XYTZC"),
    "Binning": ("1x1", "2x2", "4x4", "8x8", "Other"),
    "Immersion": ("Oil", "Water", "WaterDipping", "Air", "Multi", "Glycerol", "Other"),
    "Medium": ("Air", "Oil", "Water", "Glycerol", "Other"),
    "ArcType": ("Hg", "Xe", "HgXe", "Other"),
    "FilamentType": ("Incandescent", "Halogen", "Other"),
    "LaserType": ("Excimer", "Gas", "MetalVapor", "SolidState", "Dye", "Semiconductor",
                  "FreeElectron", "Other"),
    "Pulse": ("CW", "Single", "QSwitched", "Repetitive", "ModeLocked", "Other"),
    "Illumination": ("Transmitted", "Epifluorescence", "Oblique", "NonLinear", "Other"),
    "ContrastMethod": ("Brightfield", "Phase", "DIC", "HoffmanModulation",
                       "ObliqueIllumination", "PolarizedLight", "Darkfield", "Fluorescence",
                       "Other"),
    "FilterType": ("Dichroic", "LongPass", "ShortPass", "BandPass", "MultiPass",
                   "NeutralDensity", "Tuneable", "Other"),
    "DetectorType": ("CCD", "IntensifiedCCD", "AnalogVideo", "PMT", "Photodiode",
                     "Spectroscopy", "LifetimeImaging", "CorrelationSpectroscopy", "FTIR",
                     "EMCCD", "APD", "CMOS", "EBCCD", "Other"),
    "MicroscopeType": ("Upright", "Inverted", "Dissection", "Electrophysiology", "Other"),
    "AcquisitionMode": ("WideField", "LaserScanningConfocalMicroscopy",
                        "SpinningDiskConfocal", "SlitScanConfocal", "MultiPhotonMicroscopy",
                        "StructuredIllumination", "SingleMoleculeImaging",
                        "TotalInternalReflection", "FluorescenceLifetime", "SpectralImaging",
                        "FluorescenceCorrelationSpectroscopy",
                        "NearFieldScanningOpticalMicroscopy",
                        "SecondHarmonicGenerationImaging", "PALM", "STORM", "STED", "TIRF",
                        "FSM", "LCM", "Other", "BrightField", "SweptFieldConfocal", "SPIM"),
    "LaserMedium": ("Cu", "Ag", "ArFl", "ArCl", "KrFl", "XeFl", "XeCl", "XeBr", "N", "Ar",
                    "Kr", "Xe", "HeNe", "HeCd", "CO", "CO2", "H2O", "HFl", "NdGlass",
                    "NdYAG", "ErGlass", "ErYAG", "HoYLF", "HoYAG", "Ruby", "TiSapphire",
                    "Alexandrite", "Rhodamine6G", "CoumarinC30", "GaAs", "GaAlAs", "EMinus",
                    "Other"),
}


def enum_class(name: str) -> str:
    """The enumeration a class name means, as ``IceMapper.omeroClass`` resolves it:
    ``Family``, ``FamilyI``, ``omero.model.Family`` and ``ome.model.enums.Family`` alike."""
    short = name.rsplit(".", 1)[-1]
    if short not in ENUMS and short.endswith("I") and short[:-1] in ENUMS:
        short = short[:-1]
    if short not in ENUMS:
        raise api_usage(f"{name} does not specify a valid class.")
    return short


def enum_entry(kind: str, value: str) -> Any:
    """One enumeration entry as its ``omero.model`` class, loaded, with its database id."""
    values = ENUMS[kind]
    if kind == "PixelsType":
        return modelmap.pixels_type(value)
    entry = getattr(omero.model, f"{kind}I")(rlong(values.index(value) + 1), True)
    entry.value = rstring(value)
    return entry


@servant(omero.api.ITypes)
class TypesI(SessionServant):
    """ITypes: the enumerations a fresh OMERO database holds (read only)."""

    def allEnumerations(self, type_name: str, current: Ice.Current) -> list[Any]:
        kind = enum_class(type_name)
        return [enum_entry(kind, v) for v in ENUMS[kind]]

    def getEnumeration(self, type_name: str, value: str, current: Ice.Current) -> Any:
        kind = enum_class(type_name)
        if value not in ENUMS[kind]:
            # TypesImpl.getEnumeration names the server-side class.
            raise api_usage(f"An ome.model.enums.{kind} enum does not exist with the "
                            f"value: {value}")
        return enum_entry(kind, value)

    def getEnumerationTypes(self, current: Ice.Current) -> list[str]:
        return [f"omero.model.{k}" for k in ENUMS]

    def getEnumerationsWithEntries(self, current: Ice.Current) -> dict[str, list[Any]]:
        return {f"omero.model.{k}": [enum_entry(k, v) for v in vals]
                for k, vals in ENUMS.items()}
