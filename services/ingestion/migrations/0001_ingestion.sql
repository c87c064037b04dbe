-- Ingestion: datasets (schema and policies) and their immutable, content-addressed versions.
CREATE TABLE datasets (
    name        text PRIMARY KEY,
    spec        bytea NOT NULL,              -- flywheel.v1.Dataset as created
    created_at  timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE dataset_versions (
    dataset          text NOT NULL REFERENCES datasets (name),
    version          bigint NOT NULL,
    content_hash     text NOT NULL,
    parent_version   bigint NOT NULL DEFAULT 0,
    mode             int NOT NULL,
    row_count        bigint NOT NULL,
    train_rows       bigint NOT NULL,
    test_rows        bigint NOT NULL,
    quarantined_rows bigint NOT NULL DEFAULT 0,
    data_sha         text NOT NULL,           -- Parquet in the artifact store
    profile_sha      text NOT NULL,           -- reference profile JSON in the artifact store
    profile          bytea NOT NULL,          -- flywheel.v1.ProfileSummary
    schema           bytea NOT NULL,          -- flywheel.v1.Schema validated against
    source           text NOT NULL,
    created_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (dataset, version),
    UNIQUE (dataset, content_hash)
);
