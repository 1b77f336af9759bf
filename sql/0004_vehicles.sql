-- Vehicles imported by the older system (Supabase) and the listing images the trickle backfill
-- (vehicle_image_backfill) downloads for them. Both tables may already exist with more columns:
-- they are created when missing, then only the missing columns are added; nothing is dropped,
-- retyped or rewritten.

CREATE TABLE IF NOT EXISTS vehicles (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid()
);
ALTER TABLE vehicles ADD COLUMN IF NOT EXISTS organization_id uuid;          -- NULL: no organization
ALTER TABLE vehicles ADD COLUMN IF NOT EXISTS is_public boolean DEFAULT true;
-- image_urls waits here until backfilled; the backfill records its outcome next to it:
-- images_backfilled, images_backfilled_count, images_backfilled_at, images_backfill_failures,
-- images_backfill_attempts, images_backfill_next_attempt_at, images_backfill_status.
ALTER TABLE vehicles ADD COLUMN IF NOT EXISTS origin_metadata jsonb DEFAULT '{}'::jsonb;
ALTER TABLE vehicles ADD COLUMN IF NOT EXISTS created_at timestamptz DEFAULT now();
ALTER TABLE vehicles ADD COLUMN IF NOT EXISTS updated_at timestamptz DEFAULT now();

CREATE TABLE IF NOT EXISTS vehicle_images (
    id         uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    vehicle_id uuid NOT NULL REFERENCES vehicles (id) ON DELETE CASCADE
);
ALTER TABLE vehicle_images ADD COLUMN IF NOT EXISTS vehicle_id uuid;
ALTER TABLE vehicle_images ADD COLUMN IF NOT EXISTS source_url text;        -- as listed in image_urls
ALTER TABLE vehicle_images ADD COLUMN IF NOT EXISTS position integer;       -- index in image_urls
ALTER TABLE vehicle_images ADD COLUMN IF NOT EXISTS object_key text;        -- vehicles/{vehicle_id}/{image_id}.{ext}
ALTER TABLE vehicle_images ADD COLUMN IF NOT EXISTS image_url text;         -- the store's URL of object_key
ALTER TABLE vehicle_images ADD COLUMN IF NOT EXISTS thumbnail_key text;     -- vehicles/{vehicle_id}/thumbnail/{image_id}.webp
ALTER TABLE vehicle_images ADD COLUMN IF NOT EXISTS thumbnail_url text;
ALTER TABLE vehicle_images ADD COLUMN IF NOT EXISTS width integer;
ALTER TABLE vehicle_images ADD COLUMN IF NOT EXISTS height integer;
ALTER TABLE vehicle_images ADD COLUMN IF NOT EXISTS bytes bigint;
ALTER TABLE vehicle_images ADD COLUMN IF NOT EXISTS content_hash text;      -- sha256 hex of the body
ALTER TABLE vehicle_images ADD COLUMN IF NOT EXISTS mime_type text;
ALTER TABLE vehicle_images ADD COLUMN IF NOT EXISTS created_at timestamptz DEFAULT now();

-- One row per vehicle and source URL: reruns upsert instead of duplicating. (Fails loudly if an
-- older table already holds duplicates: they must be resolved by hand, never silently deleted.)
CREATE UNIQUE INDEX IF NOT EXISTS vehicle_images_vehicle_source_url_key
    ON vehicle_images (vehicle_id, source_url);

-- Candidates of the backfill per organization; the query repeats this predicate verbatim.
CREATE INDEX IF NOT EXISTS vehicles_image_backfill_idx
    ON vehicles (organization_id, created_at)
    WHERE is_public IS TRUE
      AND jsonb_typeof(origin_metadata -> 'image_urls') = 'array'
      AND origin_metadata -> 'images_backfilled' IS DISTINCT FROM 'true'::jsonb;
