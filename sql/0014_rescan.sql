-- Rescans that cost nothing (issue 13): when r2_objects last verified every object of a shard
-- against a store (listing or HEADs), so a rerun with nothing new to publish skips the bucket.
-- `store` is a fingerprint of the store's location and URL bases: another bucket, prefix or
-- IMAGE_BASE_URL never counts as verified. Deleting a row (or the verify job) forces a full check.
CREATE TABLE IF NOT EXISTS shard_verifications (
    shard        text NOT NULL,
    store        text NOT NULL,
    verified_at  timestamptz NOT NULL DEFAULT now(),
    images       integer NOT NULL,
    PRIMARY KEY (shard, store)
);

-- The last complete scan of each shard: a digest of its walk (every path, size and mtime, in walk
-- order) and how many processing_log rows the shard had after it. A rescan whose walk has the
-- same digest while the shard still has that many rows has nothing to compare; any difference
-- (or a walk in another order) falls back to the full comparison in the database.
CREATE TABLE IF NOT EXISTS shard_scans (
    shard       text PRIMARY KEY,
    digest      bytea NOT NULL,
    files       integer NOT NULL,
    log_rows    integer NOT NULL,
    scanned_at  timestamptz NOT NULL DEFAULT now()
);
