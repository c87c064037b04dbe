-- Post-promotion guard (services/monitoring/guard.py): the production version is watched until
-- guard_until, and a breaching window of it rolls production back to guard_previous. A row of
-- guard_rollbacks is the decision, taken in the window's transaction; the ticker carries it out
-- against the registry (retried while the registry is away) and records the outcome.
ALTER TABLE model_refs ADD COLUMN guard_until timestamptz;
ALTER TABLE model_refs ADD COLUMN guard_previous bigint NOT NULL DEFAULT 0;

CREATE TABLE guard_rollbacks (
    model         text NOT NULL,
    from_version  bigint NOT NULL,
    to_version    bigint NOT NULL,
    reason        text NOT NULL,
    window_id     text NOT NULL,
    kinds         int[] NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now(),
    attempts      int NOT NULL DEFAULT 0,
    done_at       timestamptz,
    outcome       text NOT NULL DEFAULT '',
    PRIMARY KEY (model, from_version)
);
CREATE INDEX guard_rollbacks_pending ON guard_rollbacks (created_at) WHERE done_at IS NULL;
