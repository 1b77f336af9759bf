-- Embeddings (the `embeddings` asset): vectors per (image, model), the retry queue, the paid-call
-- log, the shared rate-limit counters, zero-shot tags and captions.
--
-- The vector column has no fixed dimension so models of different sizes coexist (CLIP ViT-B/32
-- 512-d, ViT-L/14 768-d, OpenAI 1536-d): switching provider needs no migration. Each model gets
-- its own partial HNSW cosine index, created by code the first time the model is used
-- (assemblage_assets/vector_store.py), e.g.
--   CREATE INDEX ... USING hnsw ((embedding::vector(768)) vector_cosine_ops) WHERE model = '...'

CREATE EXTENSION IF NOT EXISTS vector;

CREATE TABLE IF NOT EXISTS image_embeddings (
    image_id    uuid NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    model       text NOT NULL,              -- model id: 'clip-ViT-L-14', 'krthr/clip-embeddings:1c03...', ...
    provider    text NOT NULL,              -- local_clip | replicate | openai
    dim         integer NOT NULL CHECK (dim > 0),
    embedding   vector NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, model),
    CHECK (vector_dims(embedding) = dim)
);

-- Stored out of line without compression: float vectors do not compress, trying costs CPU.
ALTER TABLE image_embeddings ALTER COLUMN embedding SET STORAGE EXTERNAL;

CREATE INDEX IF NOT EXISTS image_embeddings_model_idx ON image_embeddings (model, image_id);

-- Models that have stored vectors: dimension, where the model came from and its HNSW index.
CREATE TABLE IF NOT EXISTS embedding_models (
    model       text PRIMARY KEY,
    provider    text NOT NULL,
    dim         integer NOT NULL CHECK (dim > 0),
    source      text,                       -- CLIP name or local path, Replicate ref, OpenAI model pair
    index_name  text,                       -- NULL when the dimension is above pgvector's HNSW limit
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Retry queue: one row per (image, model) whose embedding failed or was rescheduled.
-- status 'retry': tried again once next_attempt_at has passed (backoff 1, 2, 5 minutes);
-- status 'errored': failed 3 times, left out until `assemblage embed --reset-errors`.
CREATE TABLE IF NOT EXISTS embedding_queue (
    image_id         uuid NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    model            text NOT NULL,
    shard            text NOT NULL,          -- shard of the run that recorded the failure
    status           text NOT NULL DEFAULT 'retry' CHECK (status IN ('retry', 'errored')),
    retry_count      integer NOT NULL DEFAULT 0,  -- failed attempts (rate-limit reschedules do not count)
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    error_kind       text,
    last_error       text,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, model)
);

CREATE INDEX IF NOT EXISTS embedding_queue_due_idx ON embedding_queue (model, status, next_attempt_at);

-- Every paid call (and its cost), so a run's spend is known and a rerun never pays twice.
CREATE TABLE IF NOT EXISTS embedding_usage_log (
    id             bigserial PRIMARY KEY,
    provider       text NOT NULL,
    model          text NOT NULL,
    image_id       uuid,                     -- NULL for text queries and provider tests
    purpose        text NOT NULL DEFAULT 'image',  -- image | text | provider-test
    units          numeric NOT NULL DEFAULT 0,     -- billed units: predict seconds (Replicate) or tokens (OpenAI)
    unit           text NOT NULL DEFAULT 'call',   -- seconds | tokens | call
    input_tokens   integer,
    output_tokens  integer,
    cost_usd       numeric(14, 8) NOT NULL DEFAULT 0,
    ok             boolean NOT NULL DEFAULT true,  -- false: paid, but the output was unusable
    run_id         text,
    created_at     timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX IF NOT EXISTS embedding_usage_log_run_idx ON embedding_usage_log (run_id);
CREATE INDEX IF NOT EXISTS embedding_usage_log_image_idx ON embedding_usage_log (image_id, model);

-- Calls per provider per minute window, shared by every process and machine using this database.
CREATE TABLE IF NOT EXISTS embedding_rate_limit (
    provider      text NOT NULL,
    window_start  timestamptz NOT NULL,
    calls         integer NOT NULL DEFAULT 0,
    PRIMARY KEY (provider, window_start)
);

-- A provider that answered 429 with Retry-After: nobody calls it before paused_until.
CREATE TABLE IF NOT EXISTS embedding_provider_pause (
    provider      text PRIMARY KEY,
    paused_until  timestamptz NOT NULL,
    reason        text
);

-- Zero-shot tags (CLIP against a vocabulary) or tags from a captioning model; normalized.
CREATE TABLE IF NOT EXISTS image_tags (
    image_id    uuid NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    tag         text NOT NULL CHECK (tag <> ''),  -- normalized in code (tags.normalize_tag)
    confidence  real NOT NULL CHECK (confidence >= 0 AND confidence <= 1),
    model       text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, model, tag)
);

CREATE INDEX IF NOT EXISTS image_tags_tag_idx ON image_tags (tag);

ALTER TABLE images ADD COLUMN IF NOT EXISTS caption text;
ALTER TABLE images ADD COLUMN IF NOT EXISTS caption_model text;
CREATE INDEX IF NOT EXISTS images_caption_fts_idx
    ON images USING gin (to_tsvector('english', coalesce(caption, '')));

-- The missing-embeddings sensor scans only paths changed since its cursor.
CREATE INDEX IF NOT EXISTS processing_log_updated_at_idx ON processing_log (updated_at);
