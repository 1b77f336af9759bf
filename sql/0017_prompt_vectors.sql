-- Text vectors of the zero-shot tag prompts, kept across runs (issue 13): every `embeddings`
-- step used to embed the whole vocabulary again (0.8-3 s of a local model per shard, paid
-- tokens for a paid provider). Keyed by the backend too, since an ONNX int8 text tower's
-- vectors differ (within cosine 0.999) from torch fp32's. A cache: deleting rows is harmless.
-- Owned by assemblage_assets/embeddings/prompt_vectors.py.

CREATE TABLE IF NOT EXISTS prompt_vectors (
    model       text NOT NULL,
    backend     text NOT NULL DEFAULT '',
    prompt      text NOT NULL,
    embedding   real[] NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, backend, prompt)
);
