-- Registry: immutable model versions, aliases, promotion policies and an audit log.
CREATE TABLE models (
    name        text PRIMARY KEY,
    policy      bytea,                      -- flywheel.v1.PromotionPolicy
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE model_versions (
    name             text NOT NULL REFERENCES models (name),
    version          bigint NOT NULL,
    description      text NOT NULL DEFAULT '',
    task             int NOT NULL DEFAULT 0,
    checksum         text NOT NULL,         -- sha256 of the artifact, also its store address
    size_bytes       bigint NOT NULL,
    format           text NOT NULL,
    signature        bytea NOT NULL,        -- flywheel.v1.ModelSignature
    metrics          bytea NOT NULL,        -- flywheel.v1.ModelVersion with only metrics set
    metric_values    jsonb NOT NULL,        -- {name: value} of aggregate test metrics, for search
    params           jsonb NOT NULL DEFAULT '{}'::jsonb,
    lineage          bytea NOT NULL,        -- flywheel.v1.Lineage
    dataset_name     text NOT NULL DEFAULT '',
    dataset_version  bigint NOT NULL DEFAULT 0,
    run_id           text NOT NULL DEFAULT '',
    tags             jsonb NOT NULL DEFAULT '{}'::jsonb,
    idempotency_key  text,
    created_by       text NOT NULL DEFAULT '',
    created_at       timestamptz NOT NULL DEFAULT now(),
    archived         boolean NOT NULL DEFAULT false,
    archive_reason   text NOT NULL DEFAULT '',
    staging          bytea,                 -- flywheel.v1.StagingReport (deploy issue)
    promotion        bytea,                 -- flywheel.v1.PromotionDecision (deploy issue)
    PRIMARY KEY (name, version),
    UNIQUE (name, idempotency_key)
);
CREATE INDEX model_versions_dataset ON model_versions (dataset_name, dataset_version);

CREATE TABLE aliases (
    name        text NOT NULL,
    alias       text NOT NULL,
    version     bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    updated_by  text NOT NULL DEFAULT '',
    PRIMARY KEY (name, alias),
    FOREIGN KEY (name, version) REFERENCES model_versions (name, version)
);

CREATE TABLE audit_events (
    id            bigserial PRIMARY KEY,
    at            timestamptz NOT NULL DEFAULT now(),
    actor         text NOT NULL,
    action        int NOT NULL,
    name          text NOT NULL,
    version       bigint NOT NULL DEFAULT 0,
    alias         text NOT NULL DEFAULT '',
    from_version  bigint NOT NULL DEFAULT 0,
    to_version    bigint NOT NULL DEFAULT 0,
    reason        text NOT NULL DEFAULT '',
    causation_id  text NOT NULL DEFAULT '',
    details       jsonb NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX audit_events_model ON audit_events (name, version, id);
