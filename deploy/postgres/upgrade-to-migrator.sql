-- For a database made by an older roles.sql, where each service's role owned its schema and migrated
-- it at start: hands every schema and table to a new migration owner, flywheel_migrator, and leaves the
-- service roles with row rights only (grants.sql). Run once as the superuser, with the services
-- stopped, from this directory:
--
--   psql -v ON_ERROR_STOP=1 -v db=flywheel -v migrator_password="$FLYWHEEL_DB_PASSWORD_MIGRATOR" \
--        -f upgrade-to-migrator.sql "$SUPERUSER_DSN"
--
-- then run `flywheel migrate` as flywheel_migrator and start the services with
-- FLYWHEEL_MIGRATE_ON_START=false.
\set ON_ERROR_STOP on

CREATE ROLE flywheel_migrator LOGIN PASSWORD :'migrator_password';
GRANT CONNECT ON DATABASE :"db" TO flywheel_migrator;

-- Schemas, tables, indexes and sequences the service roles own in this database change owner.
REASSIGN OWNED BY flywheel_ingestion, flywheel_training, flywheel_registry, flywheel_serving,
    flywheel_monitoring TO flywheel_migrator;
-- Default privileges an old setup gave through the registry's role no longer apply (it creates nothing).
ALTER DEFAULT PRIVILEGES FOR ROLE flywheel_registry IN SCHEMA flywheel_auth
    REVOKE SELECT ON TABLES FROM flywheel_ingestion, flywheel_training, flywheel_serving, flywheel_monitoring;

\ir grants.sql
