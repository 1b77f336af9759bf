-- Image sources other than a local folder (issue 11): processing_log.local_path then holds the
-- entry's URI (s3://bucket/key, dropbox:/path), and its change marker (S3 ETag, Dropbox
-- content_hash) stands in for the mtime, so a rescan skips unchanged entries without a GET.
-- NULL for local files, and for remote entries whose last attempt failed transiently (retried).

ALTER TABLE processing_log ADD COLUMN IF NOT EXISTS source_marker text;
