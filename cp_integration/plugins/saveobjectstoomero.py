"""CellProfiler plugin file: SaveObjectsToOMERO."""

from cellprofiler_omero.cp_integration import compat
from cellprofiler_omero.cp_integration.save_objects import SaveObjectsToOMERO as _Module

compat.install()


class SaveObjectsToOMERO(_Module):
    """Save objects as OMERO ROIs (one per object) on the OMERO image they were found in."""
