-- Near-duplicate detection (issue 12): the hash index the `duplicates` stage searches, and the
-- status of a path skipped as a near-duplicate (SKIP_NEAR_DUPLICATES=1). Groups live in
-- duplicate_groups / duplicate_members (0007).

-- `duplicate`: derived, a near-duplicate of an image already published (or kept by the same run);
-- recorded, never published nor embedded. Back to `processed` when skip mode is off.
ALTER TABLE processing_log DROP CONSTRAINT IF EXISTS processing_log_status_check;
ALTER TABLE processing_log ADD CONSTRAINT processing_log_status_check
    CHECK (status IN ('pending', 'processed', 'uploaded', 'indexed', 'failed', 'rejected', 'duplicate'));

-- Every image the stage has compared (once, when first checked) against the images checked
-- before it. Multi-index hashing: the 64-bit pHash in four 16-bit bands, each with a btree index;
-- two hashes within Hamming distance t agree within t // 4 bits in at least one band
-- (pigeonhole), so a lookup probes each band's neighbourhood instead of scanning every image.
CREATE TABLE IF NOT EXISTS duplicate_index (
    image_id    uuid PRIMARY KEY REFERENCES images (id) ON DELETE CASCADE,
    phash       bigint NOT NULL,
    dhash       bigint,
    pixels      bigint NOT NULL,        -- width * height: the representative has the most
    seen_at     timestamptz NOT NULL,   -- images.created_at: ties go to the earliest seen
    checked_at  timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS duplicate_index_band0_idx ON duplicate_index (((phash >> 48) & 65535));
CREATE INDEX IF NOT EXISTS duplicate_index_band1_idx ON duplicate_index (((phash >> 32) & 65535));
CREATE INDEX IF NOT EXISTS duplicate_index_band2_idx ON duplicate_index (((phash >> 16) & 65535));
CREATE INDEX IF NOT EXISTS duplicate_index_band3_idx ON duplicate_index ((phash & 65535));
