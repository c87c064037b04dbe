-- The reference version's calibration (services/monitoring/estimation.py, JSON): per class, isotonic
-- knots fitted on its test split's probabilities. NULL = no estimation without labels for the model.
ALTER TABLE model_refs ADD COLUMN calibration jsonb;
