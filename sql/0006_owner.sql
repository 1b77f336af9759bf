-- Cost attribution: who an image belongs to (a user id for uploads, the organization for
-- listing images, DEFAULT_OWNER for a folder), and on every paid call the owner of the image it
-- was for. `assemblage status` sums embedding cost per owner.

ALTER TABLE images ADD COLUMN IF NOT EXISTS owner text;
ALTER TABLE embedding_usage_log ADD COLUMN IF NOT EXISTS owner text;
CREATE INDEX IF NOT EXISTS embedding_usage_log_owner_idx ON embedding_usage_log (owner);
