-- Training: versioned specs and the durable run queue (claimed with FOR UPDATE SKIP LOCKED).
CREATE TABLE specs (
    name        text NOT NULL,
    version     bigint NOT NULL,
    spec        bytea NOT NULL,          -- flywheel.v1.TrainingSpec
    dataset     text NOT NULL,
    model_name  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (name, version)
);
CREATE INDEX specs_dataset ON specs (dataset);

CREATE TABLE runs (
    run_id           text PRIMARY KEY,
    -- One run per (spec version, dataset version, trigger) for automatic triggers; per request for manual.
    dedup_key        text NOT NULL UNIQUE,
    spec_name        text NOT NULL,
    spec_version     bigint NOT NULL,
    dataset          text NOT NULL,
    dataset_version  bigint NOT NULL,
    dataset_hash     text NOT NULL,
    data_uri         text NOT NULL,
    parent_versions  bigint[] NOT NULL DEFAULT '{}',
    schema           bytea NOT NULL,     -- flywheel.v1.Schema of the dataset version
    trigger          int NOT NULL,
    trigger_event_id text NOT NULL DEFAULT '',
    status           int NOT NULL,
    stage            int NOT NULL,
    error            text NOT NULL DEFAULT '',
    seed             bigint NOT NULL,
    code_version     text NOT NULL DEFAULT '',
    attempt          int NOT NULL DEFAULT 0,
    lease_until      timestamptz,
    progress         jsonb NOT NULL DEFAULT '{}'::jsonb,
    result           bytea,              -- flywheel.v1.Run holding trials, evaluation, signature, parity
    registered_name  text NOT NULL DEFAULT '',
    registered_version bigint NOT NULL DEFAULT 0,
    created_at       timestamptz NOT NULL DEFAULT now(),
    started_at       timestamptz,
    ended_at         timestamptz
);
CREATE INDEX runs_claim ON runs (status, created_at);
CREATE INDEX runs_spec ON runs (spec_name, created_at);

-- W3C trace context of whatever queued the run, so the worker's span continues that trace.
ALTER TABLE runs ADD COLUMN trace_context jsonb NOT NULL DEFAULT '{}'::jsonb;

-- Automatic decisions on triggers, for operators: what triggered, what was decided, why.
CREATE TABLE trigger_decisions (
    id          bigserial PRIMARY KEY,
    at          timestamptz NOT NULL DEFAULT now(),
    spec_name   text NOT NULL,
    model_name  text NOT NULL,
    trigger     int NOT NULL,
    event_id    text NOT NULL,
    decision    text NOT NULL,
    reason      text NOT NULL,
    run_id      text NOT NULL DEFAULT ''
);
CREATE INDEX trigger_decisions_spec ON trigger_decisions (spec_name, id);

-- A drift-triggered retraining waiting for a dataset version newer than the model's.
CREATE TABLE pending_retrains (
    spec_name      text PRIMARY KEY,
    event_id       text NOT NULL,
    trace_context  jsonb NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
