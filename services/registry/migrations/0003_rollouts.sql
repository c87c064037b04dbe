-- Progressive rollouts (services/registry/rollouts.py): one row per version that entered one. The
-- driver of every registry replica takes active rows with FOR UPDATE SKIP LOCKED, so one replica
-- at a time judges a rollout; the step serving was last told (applied_step) and the challenger's request
-- counters at the start of the step (baseline) make each tick idempotent.
CREATE TABLE rollouts (
    model            text NOT NULL,
    version          bigint NOT NULL,
    champion         bigint NOT NULL,           -- the production version it is compared with
    step             int NOT NULL DEFAULT 0,
    applied_step     int NOT NULL DEFAULT -1,
    started_at       timestamptz NOT NULL DEFAULT now(),
    step_started_at  timestamptz NOT NULL DEFAULT now(),
    baseline         jsonb NOT NULL DEFAULT '{}'::jsonb,
    state            text NOT NULL DEFAULT 'active',   -- active, promoted, aborted
    reason           text NOT NULL DEFAULT '',
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (model, version)
);
CREATE INDEX rollouts_active ON rollouts (updated_at) WHERE state = 'active';
