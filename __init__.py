"""cellprofiler-omero: CellProfiler 5 reads from and writes to OMERO image servers.

The package is one import namespace whose subpackages are the project's top-level
folders: ``core`` (transport-neutral contract), ``transports`` (Ice, pixel-buffer
HTTP), ``cp_integration`` (what CellProfiler sees), ``emulator`` (a local
OMERO-compatible server) and ``benchmarks``.
"""

__version__ = "0.1.0"
