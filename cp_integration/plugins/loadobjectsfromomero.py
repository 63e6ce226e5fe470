"""CellProfiler plugin file: LoadObjectsFromOMERO."""

from cellprofiler_omero.cp_integration import compat
from cellprofiler_omero.cp_integration.load_objects import LoadObjectsFromOMERO as _Module

compat.install()


class LoadObjectsFromOMERO(_Module):
    """Load the OMERO ROIs on the image set's image as objects (overlaps kept)."""
