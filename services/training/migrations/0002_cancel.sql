-- CancelRun: who asked and why. A queued run is cancelled at once; a running one keeps RUNNING with
-- cancel_requested_at set until its worker (which reads the flag with every lease renewal) stops it,
-- or, if that worker died, until the next claim finds the lapsed lease.
ALTER TABLE runs ADD COLUMN cancel_requested_at timestamptz;
ALTER TABLE runs ADD COLUMN cancelled_by text NOT NULL DEFAULT '';
ALTER TABLE runs ADD COLUMN cancel_reason text NOT NULL DEFAULT '';
