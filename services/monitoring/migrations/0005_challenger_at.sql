-- The ticker looks for shadows that logged in the last minutes every 30 s, and prunes challenger rows
-- by age: both read `at`, which challenger_predictions_model (model, role, version, id) cannot serve.
CREATE INDEX challenger_predictions_at ON challenger_predictions (at);
