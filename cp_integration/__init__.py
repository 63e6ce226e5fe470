"""What CellProfiler sees: the OMERO reader, SaveImagesToOMERO and ExportToOMEROTable.

CellProfiler finds them through its plugins folder (``plugins_dir()``), whose thin
files import the classes from here. Nothing here runs at import time that needs a
server or wx.
"""

from __future__ import annotations

from pathlib import Path


def plugins_dir() -> Path:
    """The folder to pass to CellProfiler's ``--plugins-directory``."""
    return Path(__file__).resolve().parent / "plugins"
