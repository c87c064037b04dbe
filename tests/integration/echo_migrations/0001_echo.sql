CREATE TABLE echo_state (name text PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now());
CREATE TABLE echo_seen (
    event_id  text PRIMARY KEY,
    name      text NOT NULL,
    trace_id  text NOT NULL,
    seen_at   timestamptz NOT NULL DEFAULT now()
);
