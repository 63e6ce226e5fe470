"""cellprofiler_omero.transports.ice."""
