-- What canary and shadow challengers answered (serving logs them with their role next to production's
-- answers, under the same request ids): the live shadow comparison pairs them with `predictions` by
-- (request_id, row_index). Pruned like `predictions`.
CREATE TABLE challenger_predictions (
    id          bigserial PRIMARY KEY,
    model       text NOT NULL,
    version     bigint NOT NULL,
    role        int NOT NULL,
    request_id  text NOT NULL,
    row_index   int NOT NULL,
    outputs     jsonb NOT NULL,
    latency_ms  double precision NOT NULL,
    at          timestamptz NOT NULL
);
CREATE INDEX challenger_predictions_model ON challenger_predictions (model, role, version, id);

-- Feedback labels of canary requests (production never answered them, so `labels` cannot hold
-- them): a progressive rollout's quality gate compares the canary's live quality with production's.
CREATE TABLE challenger_labels (
    model       text NOT NULL,
    version     bigint NOT NULL,
    request_id  text NOT NULL,
    row_index   int NOT NULL,
    label       jsonb NOT NULL,
    predicted   jsonb NOT NULL,
    at          timestamptz NOT NULL,   -- when the labelled prediction was made
    UNIQUE (model, request_id, row_index)
);
CREATE INDEX challenger_labels_version ON challenger_labels (model, version, at);
