"""Exporter: an image as OME-TIFF or OME-XML (OMERO.web's ``render_ome_tiff``, BlitzGateway's
``exportOmeTiff``).

Mirrors ome/omero-blitz ``ome/services/blitz/impl/ExporterI.java``: a small state
machine — ``addImage`` configures, a ``generate`` method writes a temporary file and
answers its length, ``read`` serves it (at most 1 MiB a call) — with its refusals and
their messages: configuring during output, reading before generating, TIFF of other
than one image, an image that needs a pyramid. Bio-Formats' OMETiffWriter becomes
``tifffile`` writing the planes in OMERO's XYZCT order (128 × 128 tiles, BigTIFF past
2 × 2³¹ − 1 bytes as the real one decides). An image the caller may not see counts as
no image, as the real server's metadata query finds none.
"""

from __future__ import annotations

import tempfile
from typing import IO, Any
from xml.etree import ElementTree as ET

import Ice
import numpy as np
import omero
import omero.api

from cellprofiler_omero.emulator.icebase import api_usage, servant
from cellprofiler_omero.emulator.services.common import StatefulServant
from cellprofiler_omero.emulator.services.pixels import levels_of, shape_of
from cellprofiler_omero.emulator.store import Obj

#: ExporterI.MAX_SIZE: the most ``read`` hands out at once.
MAX_SIZE = 1024 * 1024
#: ExporterI.BIG_TIFF_SIZE: data + metadata past this is written as BigTIFF.
BIG_TIFF_SIZE = 2 * (2 ** 31 - 1)
#: OME-XML's Pixels/@Type for the emulator's pixel types.
OME_TYPES = {"float": "float", "double": "double", "bit": "bit"}
OME_NS = "http://www.openmicroscopy.org/Schemas/OME/2016-06"


@servant(omero.api.Exporter)
class ExporterI(StatefulServant):
    """Exporter over the emulator's store and pixel files (see the module docstring)."""

    def __init__(self, *args: Any) -> None:
        super().__init__(*args)
        #: The images added (config state); None once a generate method has run.
        self.images: list[int] | None = []
        #: The generated file (output state).
        self.file: IO[bytes] | None = None

    def _assert_config(self) -> None:
        if self.images is None:
            raise api_usage("Cannot configure during output")

    def addImage(self, image_id: int, current: Ice.Current) -> None:
        self._assert_config()
        assert self.images is not None
        self.images.append(int(image_id))

    def _retrieve(self, current: Ice.Current) -> list[Obj]:
        """The added images the caller may see (OmeroMetadata.initialize's query)."""
        caller = self.caller(current)
        found = []
        for image_id in dict.fromkeys(self.images or []):
            obj = self.ctx.store.get(image_id, "Image")
            if obj is not None and self.visible(caller, obj):
                found.append(obj)
        return found

    def _output(self, data: bytes | None = None) -> IO[bytes]:
        self.images = None
        # Open until the service closes (``release``), as ExporterI's temporary file.
        self.file = tempfile.NamedTemporaryFile(  # noqa: SIM115
            prefix="__omero_export__", suffix=".ome.tiff")
        if data is not None:
            self.file.write(data)
        return self.file

    def generateTiff(self, current: Ice.Current) -> int:
        self._assert_config()
        images = self._retrieve(current)
        if len(images) != 1:
            raise api_usage(f"Only one image supported for TIFF, not {len(images)}")
        [image] = images
        shape = shape_of(image)
        if len(levels_of(image)) > 1:
            raise api_usage(f"Image:{image.id} is too large for export "
                            f"(sizeX={shape.size_x}, sizeY={shape.size_y})")
        import tifffile

        stored = self.ctx.pixels.array(image.id, shape, 0, levels_of(image))
        pixels = np.asarray(stored).astype(shape.dtype.newbyteorder("="))
        if shape.pixel_type == "bit":
            pixels = pixels.astype(bool)
        names = [ch.get("name", f"C{i}") for i, ch in enumerate(image.data.get("channels", []))]
        metadata: dict[str, Any] = {"axes": "TCZYX", "Name": image.name}
        if names:
            metadata["Channel"] = {"Name": names}
        data_bytes = pixels.nbytes + 512 * shape.size_z * shape.size_c * shape.size_t
        out = self._output()
        tile = None if shape.pixel_type == "bit" else (128, 128)
        tifffile.imwrite(out, pixels, ome=True, metadata=metadata, tile=tile,
                         bigtiff=data_bytes > BIG_TIFF_SIZE)
        out.flush()
        return out.seek(0, 2)  # the file's length (tifffile may have sought back)

    def generateXml(self, current: Ice.Current) -> int:
        self._assert_config()
        ome = ET.Element("OME", xmlns=OME_NS)
        for index, image in enumerate(self._retrieve(current)):
            shape = shape_of(image)
            node = ET.SubElement(ome, "Image", ID=f"Image:{index}", Name=image.name)
            pixels = ET.SubElement(
                node, "Pixels", ID=f"Pixels:{index}", DimensionOrder="XYZCT",
                Type=OME_TYPES.get(shape.pixel_type, shape.pixel_type),
                SizeX=str(shape.size_x), SizeY=str(shape.size_y), SizeZ=str(shape.size_z),
                SizeC=str(shape.size_c), SizeT=str(shape.size_t))
            for c, ch in enumerate(image.data.get("channels", [])):
                ET.SubElement(pixels, "Channel", ID=f"Channel:{index}:{c}",
                              Name=ch.get("name", f"C{c}"), SamplesPerPixel="1")
            # No planes: as ExporterI, the XML says so, which keeps it valid.
            ET.SubElement(pixels, "MetadataOnly")
        data = ET.tostring(ome, encoding="UTF-8", xml_declaration=True)
        out = self._output(data)
        return out.tell()

    def read(self, position: int, size: int, current: Ice.Current) -> bytes:
        if self.file is None:
            raise api_usage("Call a generate method first")
        if size > MAX_SIZE:
            raise api_usage(f"Max read size is: {MAX_SIZE}")
        self.file.seek(max(0, position))
        return self.file.read(max(0, size))

    def release(self) -> None:
        if self.file is not None:
            self.file.close()
            self.file = None
        self.images = None
