"""The Ice transport, on omero-py: connect, metadata, pixels, upload and OMERO.tables.

Every OMERO server offers it. Blocking omero-py calls run in worker threads (bounded
by ``ice.concurrency``) so the async core stays responsive.
"""
