#!/bin/sh
# Run once by the postgres image's entrypoint (/docker-entrypoint-initdb.d) when the data volume is new:
# applies roles.sql with the passwords from deploy/secrets/env/postgres.env (generate_secrets.py).
# Passwords travel as psql variables, quoted by psql (:'name'), never pasted into SQL text.
# FLYWHEEL_ROLES_SQL points elsewhere than the Compose mount (the tests apply the same file).
for name in MIGRATOR INGESTION TRAINING REGISTRY SERVING MONITORING; do
    # A role without a password could not log in over the network: refuse rather than create it so.
    eval "test -n \"\${FLYWHEEL_DB_PASSWORD_$name:-}\"" || { echo "init-roles: FLYWHEEL_DB_PASSWORD_$name is not set" >&2; exit 1; }
done
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v db="$POSTGRES_DB" \
    -v migrator_password="$FLYWHEEL_DB_PASSWORD_MIGRATOR" \
    -v ingestion_password="$FLYWHEEL_DB_PASSWORD_INGESTION" \
    -v training_password="$FLYWHEEL_DB_PASSWORD_TRAINING" \
    -v registry_password="$FLYWHEEL_DB_PASSWORD_REGISTRY" \
    -v serving_password="$FLYWHEEL_DB_PASSWORD_SERVING" \
    -v monitoring_password="$FLYWHEEL_DB_PASSWORD_MONITORING" \
    -f "${FLYWHEEL_ROLES_SQL:-/flywheel/postgres/roles.sql}"
