-- Billable HTTP requests per cost row (issue: honest paid-call counts). One row is one image's
-- (or one text query's) calls, and the OpenAI route sends two per image: a caption, then an
-- embedding. Run metadata, progress and `status` sum this column, so they count what
-- MAX_EMBEDDING_CALLS_PER_MIN counts. Written by assemblage_assets/embeddings/usage_log.py.

ALTER TABLE embedding_usage_log ADD COLUMN IF NOT EXISTS requests integer;

-- Rows written before this column: an OpenAI image row that succeeded with a caption's output
-- tokens paid a caption and an embedding; every other row was one request.
UPDATE embedding_usage_log
SET requests = CASE WHEN provider = 'openai' AND purpose = 'image' AND ok AND coalesce(output_tokens, 0) > 0
                    THEN 2 ELSE 1 END
WHERE requests IS NULL;

ALTER TABLE embedding_usage_log ALTER COLUMN requests SET DEFAULT 1;
ALTER TABLE embedding_usage_log ALTER COLUMN requests SET NOT NULL;
