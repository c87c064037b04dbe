-- API tokens minted by Flywheel. Only a hash of each secret is stored; the secret is shown once.
CREATE TABLE tokens (
    token_id    text PRIMARY KEY,
    name        text NOT NULL,
    role        text NOT NULL,
    secret_hash text NOT NULL,
    created_by  text NOT NULL,
    created_at  timestamptz NOT NULL DEFAULT now(),
    expires_at  timestamptz,
    revoked_at  timestamptz,
    revoked_by  text
);
CREATE INDEX tokens_name ON tokens (name);
