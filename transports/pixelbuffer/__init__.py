"""cellprofiler_omero.transports.pixelbuffer: pixels from omero-ms-pixel-buffer over HTTP.

A read-only transport registered as ``pixelbuffer``; choose it with
``transports.read = ["pixelbuffer", "ice"]`` and name the service per OMERO host in
``pixelbuffer.servers``. ``plugin`` holds the hook, ``service`` the URLs, discovery
and HTTP requests, ``source`` the concurrent tile reads.
"""
