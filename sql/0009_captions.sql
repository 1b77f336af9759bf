-- Captions (the `captions` asset, issue 12): images.caption / caption_model and their full-text
-- index already exist (0003). This adds the per-image record of failed caption attempts, so a
-- broken reply is kept with its reason, retried after a backoff and parked as 'errored' after
-- three failures, without aborting the shard.
-- Owned by assemblage_assets/embeddings/caption_queue.py.

CREATE TABLE IF NOT EXISTS caption_failures (
    image_id         uuid NOT NULL REFERENCES images (id) ON DELETE CASCADE,
    caption_model    text NOT NULL,              -- 'Salesforce/blip-image-captioning-base', 'openai:gpt-5.4-mini', ...
    shard            text NOT NULL,              -- shard of the run that recorded the failure
    status           text NOT NULL DEFAULT 'retry' CHECK (status IN ('retry', 'errored')),
    attempts         integer NOT NULL DEFAULT 0, -- failed attempts (rate-limit reschedules do not count)
    next_attempt_at  timestamptz NOT NULL DEFAULT now(),
    error_kind       text,
    last_error       text,
    paid             boolean NOT NULL DEFAULT false,  -- the last failed attempt was billed (its cost row is in embedding_usage_log)
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (image_id, caption_model)
);

CREATE INDEX IF NOT EXISTS caption_failures_due_idx ON caption_failures (caption_model, status, next_attempt_at);
-- Candidates are "images whose caption is not of the active caption model".
CREATE INDEX IF NOT EXISTS images_caption_model_idx ON images (caption_model);
