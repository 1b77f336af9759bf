"""Images area: shards of the source tree, scan, probe, EXIF, derivatives, publishing, and the
catalogue (``images``, ``processing_log``) that every stage advances."""
