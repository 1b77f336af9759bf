-- Published objects (r2_objects): where each image's original, thumbnail and preview live.
-- Keys are deterministic (original_key, thumbnail_key, preview_key + the store's prefix); the
-- URLs record the store they were confirmed in, so switching stores republishes and updates them.

ALTER TABLE images ADD COLUMN IF NOT EXISTS original_url text;   -- private: s3://bucket/key or file://
ALTER TABLE images ADD COLUMN IF NOT EXISTS thumbnail_url text;  -- IMAGE_BASE_URL/key when set
ALTER TABLE images ADD COLUMN IF NOT EXISTS preview_url text;
ALTER TABLE images ADD COLUMN IF NOT EXISTS uploaded_at timestamptz;  -- all three objects confirmed stored

-- Population of published keys per directory: plans how to list a shard's prefixes.
CREATE INDEX IF NOT EXISTS images_uploaded_original_key_idx
    ON images (original_key text_pattern_ops) WHERE uploaded_at IS NOT NULL;
