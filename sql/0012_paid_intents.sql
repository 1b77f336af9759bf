-- Paid calls made resumable (issue 14, item 2): every billable request is written down before it
-- is sent, so a run killed mid-call neither buys the image again unknowingly nor loses the cost.
--
-- state  intent    recorded, request about to be sent (or sent; its answer not yet seen)
--        created   the provider accepted it and gave an id (a Replicate prediction): a restarted
--                  run fetches the prediction by this id instead of creating another
--        settled   its outcome (and cost row) is written
--        lost      billed but its result is gone (kill before the answer, prediction expired):
--                  a cost row with ok = false was written for it
--        unbilled  refused before the provider did any work (HTTP 5xx/429 reply, no connection)
-- Owned by assemblage_assets/embeddings/intents.py.

CREATE TABLE IF NOT EXISTS paid_call_intents (
    id             bigserial PRIMARY KEY,
    provider       text NOT NULL,
    model          text NOT NULL,
    image_id       uuid REFERENCES images (id) ON DELETE CASCADE,
    request        text NOT NULL DEFAULT 'prediction',  -- prediction (Replicate) | caption | embedding (OpenAI)
    state          text NOT NULL DEFAULT 'intent'
                   CHECK (state IN ('intent', 'created', 'settled', 'lost', 'unbilled')),
    call_id        text,                                -- the provider's id (Replicate prediction id)
    request_input  jsonb,                               -- what was sent (URLs only), to find a created call again
    run_id         text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now()
);

-- At most one open request per (image, model, request): a run holding the image's claim owns it.
CREATE UNIQUE INDEX IF NOT EXISTS paid_call_intents_open_idx
    ON paid_call_intents (provider, model, image_id, request) WHERE state IN ('intent', 'created');
CREATE INDEX IF NOT EXISTS paid_call_intents_state_idx ON paid_call_intents (state, updated_at);
