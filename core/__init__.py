"""cellprofiler_omero.core."""
