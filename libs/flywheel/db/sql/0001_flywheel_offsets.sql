-- Offsets of batch consumers, committed in the same transaction as the state a batch produced,
-- so a crash re-reads exactly the records whose effects did not commit.
CREATE TABLE consumer_offsets (
    consumer     text NOT NULL,
    topic        text NOT NULL,
    partition    int NOT NULL,
    next_offset  bigint NOT NULL,
    updated_at   timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, topic, partition)
);
