"""cellprofiler-omero: CellProfiler 5 reads from and writes to OMERO image servers.

The package is one import namespace whose subpackages are the project's top-level
folders: ``core`` (transport-neutral contract), ``transports`` (Ice, pixel-buffer
HTTP), ``cp_integration`` (what CellProfiler sees), ``emulator`` (a local
OMERO-compatible server) and ``benchmarks``.
"""

__version__ = "0.1.0"

#: The one-call functions of ``cellprofiler_omero.api``, importable from the package root.
#: They are loaded on first use, so ``import cellprofiler_omero`` stays cheap (no numpy,
#: pandas, omero-py or Ice until a function is called).
_API = ("connect", "disconnect", "list_images", "read_image", "save_rois", "upload_image",
        "write_table")

__all__ = ["__version__", *_API]


def __getattr__(name: str) -> object:
    if name in _API:
        from cellprofiler_omero import api

        return getattr(api, name)
    raise AttributeError(f"module 'cellprofiler_omero' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_API))
