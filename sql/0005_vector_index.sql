-- Vector index state per model, for the bulk-load mode (EMBED_DEFER_INDEX=1): the embeddings
-- stage registers the model without its HNSW index ('deferred') and the finalize step
-- (assemblage_assets/vector_index.py: the vector_index asset, finalize_index_job,
-- `assemblage index build`) builds it once at the end and records how.
--
--   ready        index_name exists (created on first use, or by finalize)
--   deferred     bulk load in progress or not yet finalized: no index, search scans exactly
--   unsupported  dimension above pgvector's HNSW limit (2,000): never indexed

ALTER TABLE embedding_models ADD COLUMN IF NOT EXISTS index_state text NOT NULL DEFAULT 'ready'
    CHECK (index_state IN ('ready', 'deferred', 'unsupported'));
ALTER TABLE embedding_models ADD COLUMN IF NOT EXISTS index_built_at timestamptz;
ALTER TABLE embedding_models ADD COLUMN IF NOT EXISTS index_build_seconds double precision;
ALTER TABLE embedding_models ADD COLUMN IF NOT EXISTS index_params jsonb;  -- m, ef_construction, memory, workers

UPDATE embedding_models SET index_state = 'unsupported' WHERE index_name IS NULL AND index_state = 'ready';
