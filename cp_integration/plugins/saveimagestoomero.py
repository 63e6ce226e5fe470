"""CellProfiler plugin file: SaveImagesToOMERO."""

from cellprofiler_omero.cp_integration import compat
from cellprofiler_omero.cp_integration.save_images import SaveImagesToOMERO as _Module

compat.install()


class SaveImagesToOMERO(_Module):
    """Save images, masks and label images as new OMERO images (with provenance)."""
