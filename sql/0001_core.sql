-- Core catalogue: one row per distinct image content, one row per source path.

CREATE TABLE IF NOT EXISTS images (
    id                uuid PRIMARY KEY,            -- uuid5 of the content hash: same bytes, same id
    content_hash      text NOT NULL UNIQUE,        -- sha256 hex of the file bytes
    bytes             bigint NOT NULL,
    width             integer NOT NULL,            -- as stored (before EXIF orientation)
    height            integer NOT NULL,
    format            text NOT NULL,               -- JPEG, PNG, WEBP, TIFF (Pillow's name)
    mode              text,                        -- Pillow mode of the source (RGB, CMYK, I;16, ...)
    frame_count       integer NOT NULL DEFAULT 1,  -- >1 for animations and multi-page TIFFs
    exif_data         jsonb NOT NULL DEFAULT '{}'::jsonb,
    captured_at       timestamp,                   -- camera local time from EXIF, when valid
    original_ext      text NOT NULL,               -- from the detected format, not the file name
    original_key      text NOT NULL,               -- original/{yyyy}/{mm}/{id}.{ext}, fixed at first sight
    palette           jsonb,                       -- [{"hex": "#aabbcc", "share": 0.31}, ...]
    thumbnail_key     text,                        -- thumbnail/{id}.webp in the derivative cache
    thumbnail_width   integer,
    thumbnail_height  integer,
    preview_key       text,                        -- watermarked/{id}.jpg in the derivative cache
    preview_width     integer,
    preview_height    integer,
    derived_at        timestamptz,
    created_at        timestamptz NOT NULL DEFAULT now(),
    updated_at        timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE IF NOT EXISTS processing_log (
    local_path     text PRIMARY KEY,               -- absolute source path
    shard          text NOT NULL,                  -- Dagster partition key of the directory shard
    image_id       uuid REFERENCES images (id),
    status         text NOT NULL DEFAULT 'pending'
                   CHECK (status IN ('pending', 'processed', 'uploaded', 'indexed', 'failed', 'rejected')),
    error_kind     text,                           -- machine-readable failure class (corrupt, bomb, ...)
    error_message  text,
    attempts       integer NOT NULL DEFAULT 0,
    file_size      bigint,                         -- with file_mtime_ns: skip unchanged files on rescan
    file_mtime_ns  bigint,
    processed_at   timestamptz,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS processing_log_shard_status_idx ON processing_log (shard, status);
CREATE INDEX IF NOT EXISTS processing_log_image_id_idx ON processing_log (image_id);
