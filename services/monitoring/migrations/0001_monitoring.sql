-- Monitoring: what production is compared against, the open windows, results and alerts.
CREATE TABLE model_refs (
    model            text PRIMARY KEY,
    version          bigint NOT NULL,
    dataset          text NOT NULL,
    dataset_version  bigint NOT NULL,
    profile          jsonb NOT NULL,       -- the training data's reference profile
    schema           bytea NOT NULL,       -- flywheel.v1.Schema of that dataset version
    task             int NOT NULL,
    class_labels     text[] NOT NULL DEFAULT '{}',
    recorded         jsonb NOT NULL,       -- {metric: value} recorded on the test split at training
    updated_at       timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE policies (
    model       text PRIMARY KEY,
    policy      bytea NOT NULL,            -- flywheel.v1.MonitoringPolicy
    updated_by  text NOT NULL DEFAULT '',
    updated_at  timestamptz NOT NULL DEFAULT now()
);

-- Logged predictions: the open drift window (window_id NULL) and the join target for labels.
CREATE TABLE predictions (
    id          bigserial PRIMARY KEY,
    model       text NOT NULL,
    version     bigint NOT NULL,
    request_id  text NOT NULL,
    row_index   int NOT NULL,
    inputs      jsonb NOT NULL,
    outputs     jsonb NOT NULL,
    latency_ms  double precision NOT NULL,
    at          timestamptz NOT NULL,
    window_id   text
);
CREATE INDEX predictions_open ON predictions (model, id) WHERE window_id IS NULL;
CREATE INDEX predictions_request ON predictions (model, request_id, row_index);

CREATE TABLE labels (
    id           bigserial PRIMARY KEY,
    model        text NOT NULL,
    version      bigint NOT NULL,
    request_id   text NOT NULL,
    row_index    int NOT NULL,
    label        jsonb NOT NULL,
    predicted    jsonb NOT NULL,
    inputs       jsonb NOT NULL,
    at           timestamptz NOT NULL DEFAULT now(),
    window_id    text,
    UNIQUE (model, request_id, row_index)
);
CREATE INDEX labels_open ON labels (model, id) WHERE window_id IS NULL;

CREATE TABLE windows (
    window_id   text PRIMARY KEY,
    model       text NOT NULL,
    version     bigint NOT NULL,
    kind        text NOT NULL,             -- 'drift' | 'quality'
    started_at  timestamptz NOT NULL,
    ended_at    timestamptz NOT NULL,
    rows        bigint NOT NULL,
    report      bytea NOT NULL,            -- flywheel.v1.WindowReport
    segments    bytea,                     -- flywheel.v1.GetSegmentReportResponse (quality windows)
    breached    int[] NOT NULL DEFAULT '{}',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX windows_model ON windows (model, created_at DESC);

CREATE TABLE alerts (
    alert_id    text PRIMARY KEY,
    model       text NOT NULL,
    version     bigint NOT NULL,
    kind        int NOT NULL,
    window_id   text NOT NULL,
    alert       bytea NOT NULL,            -- flywheel.v1.Alert
    suppressed  boolean NOT NULL,
    trace_id    text NOT NULL DEFAULT '',
    created_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX alerts_model ON alerts (model, kind, created_at DESC);

-- Consecutive breaching windows per (model, kind), for the policy's consecutive_breaches.
CREATE TABLE streaks (
    model  text NOT NULL,
    kind   int NOT NULL,
    count  int NOT NULL,
    PRIMARY KEY (model, kind)
);
