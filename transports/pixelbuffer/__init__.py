"""cellprofiler_omero.transports.pixelbuffer."""
