-- Records a consumer gave up on that the DLQ topic would not take (too large, or the broker stayed
-- away), and outbox events the broker refused outbox_max_attempts times: kept here, never lost.
CREATE TABLE dead_letters (
    id             bigserial PRIMARY KEY,
    origin         text NOT NULL CHECK (origin IN ('consumer', 'outbox')),
    consumer       text,
    topic          text NOT NULL,
    partition      int,
    record_offset  bigint,
    event_id       text,
    key            bytea,
    payload        bytea NOT NULL,
    headers        jsonb NOT NULL DEFAULT '[]'::jsonb,
    error_type     text NOT NULL,
    error          text NOT NULL,
    attempts       int NOT NULL,
    created_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX dead_letters_topic ON dead_letters (topic, created_at);

-- How often the relay tried an event the broker refused, and why: after outbox_max_attempts the
-- event moves to dead_letters instead of blocking every later event of the service.
ALTER TABLE outbox ADD COLUMN attempts int NOT NULL DEFAULT 0, ADD COLUMN last_error text;

-- A fingerprint of the last record a batch consumer took (timestamp and hash), so that a reset log
-- whose new records reuse offsets is recognised instead of skipped.
ALTER TABLE consumer_offsets ADD COLUMN last_record text;
