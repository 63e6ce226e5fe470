"""cellprofiler_omero.transports."""
