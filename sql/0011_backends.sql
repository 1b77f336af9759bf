-- CLIP backends (issue 13): how each vector was computed, and vectors stored inline.
--
-- image_embeddings.backend: 'torch-fp32', 'torch-bf16', 'torch-fp16', 'onnx-fp32', 'onnx-int8'
-- for local CLIP (resources/embedding/clip_backends.py); NULL for remote providers. Vectors of
-- one model from different backends share its vector space and index; `assemblage embed
-- --reembed` redoes the rows whose backend differs from the configured one.
-- embedding_models.backend: the backend of the latest run; backend_detail: why (the `auto`
-- measurement or the ONNX build's verification figures).

ALTER TABLE image_embeddings ADD COLUMN IF NOT EXISTS backend text;
ALTER TABLE embedding_models ADD COLUMN IF NOT EXISTS backend text;
ALTER TABLE embedding_models ADD COLUMN IF NOT EXISTS backend_detail jsonb;

-- Inline vectors. EXTERNAL put every 768-d vector (3 KB) in two TOAST chunks, so each read
-- and write touched three tuples in two relations; inline, two rows share a heap page and the
-- stage's COPY batches are faster (docs/benchmarks.md). STORAGE PLAIN is what the issue asked
-- for, but PLAIN cannot hold a row above a page: 3,072-d vectors (text-embedding-3-large)
-- would fail to insert. MAIN stores inline exactly like PLAIN whenever the row fits (with the
-- target below, without trying to compress it) and moves only larger vectors out of line.
--
-- SET STORAGE alone changes only future rows, and `UPDATE ... SET embedding = embedding` keeps
-- the TOAST pointers, so existing rows are rewritten with a no-op type change whose USING
-- expression is not a plain column reference (Postgres then rewrites the table and rebuilds its
-- indexes, including each model's HNSW index, in this migration's transaction). Rows of local
-- CLIP written before this migration were computed by torch fp32, and are labelled so.
--
-- Without compression attempts: the toaster only compresses or moves values while a row is
-- above toast_tuple_target (default ~2 KB, so a 3 KB CLIP row paid a failing compression each
-- time); at 8160 (a page) rows that fit are stored as they are.
ALTER TABLE image_embeddings SET (toast_tuple_target = 8160);

DO $$
BEGIN
    IF (SELECT attstorage FROM pg_attribute
        WHERE attrelid = 'image_embeddings'::regclass AND attname = 'embedding') <> 'm' THEN
        ALTER TABLE image_embeddings
            ALTER COLUMN embedding TYPE vector USING embedding::real[]::vector,
            ALTER COLUMN embedding SET STORAGE MAIN,
            ALTER COLUMN backend TYPE text USING CASE WHEN provider = 'local_clip' THEN 'torch-fp32' END;
    END IF;
END
$$;
