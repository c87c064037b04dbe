#!/bin/sh
# Run once by the postgres image's entrypoint (/docker-entrypoint-initdb.d) when the data volume is new:
# applies roles.sql with the passwords from deploy/secrets/env/postgres.env (generate_secrets.py).
# Passwords travel as psql variables, quoted by psql (:'name'), never pasted into SQL text.
psql -v ON_ERROR_STOP=1 --username "$POSTGRES_USER" --dbname "$POSTGRES_DB" \
    -v db="$POSTGRES_DB" \
    -v ingestion_password="$FLYWHEEL_DB_PASSWORD_INGESTION" \
    -v training_password="$FLYWHEEL_DB_PASSWORD_TRAINING" \
    -v registry_password="$FLYWHEEL_DB_PASSWORD_REGISTRY" \
    -v serving_password="$FLYWHEEL_DB_PASSWORD_SERVING" \
    -v monitoring_password="$FLYWHEEL_DB_PASSWORD_MONITORING" \
    -f /flywheel/postgres/roles.sql
