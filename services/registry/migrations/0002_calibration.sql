-- A classifier's calibration sample (test-split probabilities and classes), "sha256:<hex>" in the
-- artifact store; monitoring calibrates on it to estimate performance without labels.
ALTER TABLE model_versions ADD COLUMN calibration_uri text NOT NULL DEFAULT '';
