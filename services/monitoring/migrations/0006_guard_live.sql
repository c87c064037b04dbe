-- The post-promotion guard's live checks (services/monitoring/guard.py): the guarded version's
-- request counters when the guard first read them (its error rate counts from there), the p99
-- latency of the version it replaced (from that version's last logged rows), and the version's own
-- predictions on its staging sample (flywheel.v1.PredictionHistogram, from the registry).
ALTER TABLE model_refs ADD COLUMN guard_baseline jsonb;
ALTER TABLE model_refs ADD COLUMN guard_previous_p99 double precision;
ALTER TABLE model_refs ADD COLUMN staging_predictions bytea;
