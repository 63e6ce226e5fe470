"""The folder CellProfiler loads as plugins (``cellprofiler-omero plugins-dir``).

CellProfiler imports every ``[!_]*.py`` here and registers the first Module or
Reader class *defined* in each file, so each file subclasses one class from
``cellprofiler_omero.cp_integration``. Importing them needs neither wx nor a server.
"""
