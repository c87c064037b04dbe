-- Serving: the traffic policy of each model (canary, shadow, production only), shared by every
-- serving replica and kept across restarts, with its audit trail; and each replica's last view of
-- what it applies (heartbeats), so any replica can answer for all of them.

-- One row per model whose policy was ever set. Never deleted: clearing writes mode 1.
CREATE TABLE deployment_state (
    model               text PRIMARY KEY,
    mode                int NOT NULL,                     -- flywheel.v1.TrafficMode
    challenger_version  bigint NOT NULL DEFAULT 0,        -- 0 when mode is PRODUCTION_ONLY
    percent             double precision NOT NULL DEFAULT 0,
    generation          bigint NOT NULL DEFAULT 0,        -- +1 on every change; replicas report the one they apply
    updated_at          timestamptz NOT NULL DEFAULT now(),
    updated_by          text NOT NULL DEFAULT '',
    reason              text NOT NULL DEFAULT ''
);

-- Every change: who, when, why, which replica took the call, and the policy before and after.
CREATE TABLE deployment_audit (
    id                      bigserial PRIMARY KEY,
    at                      timestamptz NOT NULL DEFAULT now(),
    model                   text NOT NULL,
    actor                   text NOT NULL,
    reason                  text NOT NULL DEFAULT '',
    replica                 text NOT NULL DEFAULT '',
    generation              bigint NOT NULL,              -- the generation the change made
    old_mode                int NOT NULL,
    old_challenger_version  bigint NOT NULL,
    old_percent             double precision NOT NULL,
    new_mode                int NOT NULL,
    new_challenger_version  bigint NOT NULL,
    new_percent             double precision NOT NULL
);
CREATE INDEX deployment_audit_model ON deployment_audit (model, id DESC);

-- Serving replicas, by host:port; heartbeat_at is the database's clock, so staleness needs no
-- synchronised hosts. A replica deletes its row at a clean stop; rows silent for an hour are pruned.
CREATE TABLE replicas (
    replica       text PRIMARY KEY,
    pid           bigint NOT NULL,
    started_at    timestamptz NOT NULL,
    heartbeat_at  timestamptz NOT NULL DEFAULT now()
);

-- What each replica applies per model, and its own slots with their statistics.
CREATE TABLE replica_views (
    replica             text NOT NULL REFERENCES replicas (replica) ON DELETE CASCADE,
    model               text NOT NULL,
    generation          bigint NOT NULL,
    mode                int NOT NULL,
    challenger_version  bigint NOT NULL DEFAULT 0,
    percent             double precision NOT NULL DEFAULT 0,
    production_version  bigint NOT NULL DEFAULT 0,
    error               text NOT NULL DEFAULT '',
    slots               bytea NOT NULL,                   -- flywheel.v1.ReplicaView with only slots set
    updated_at          timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (replica, model)
);
