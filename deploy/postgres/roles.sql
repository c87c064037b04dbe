-- Database roles (run once, by deploy/postgres/init-roles.sh, as the superuser, when the data volume is
-- new). psql variables: db, migrator_password, and <service>_password for each of ingestion, training,
-- registry, serving, monitoring.
--
-- flywheel_migrator owns every schema and every table: it is the only role with DDL rights, and only
-- `flywheel migrate` (a Compose one-shot service, a Kubernetes Job) connects as it. Each service connects
-- with its own role, which may only read and write rows (SELECT, INSERT, UPDATE, DELETE; sequences for
-- bigserial ids) in its own schema, and runs with FLYWHEEL_MIGRATE_ON_START=false: at start it checks
-- that its schema is migrated and refuses to run otherwise. Rights on tables the migrator creates later
-- come from the default privileges below, so a new migration needs no new GRANT.
--
-- The token store (schema flywheel_auth) is written only by the registry, which hosts the token API;
-- every other service may only read it to check the tokens it is shown.
\set ON_ERROR_STOP on

CREATE ROLE flywheel_migrator   LOGIN PASSWORD :'migrator_password';
CREATE ROLE flywheel_ingestion  LOGIN PASSWORD :'ingestion_password';
CREATE ROLE flywheel_training   LOGIN PASSWORD :'training_password';
CREATE ROLE flywheel_registry   LOGIN PASSWORD :'registry_password';
CREATE ROLE flywheel_serving    LOGIN PASSWORD :'serving_password';
CREATE ROLE flywheel_monitoring LOGIN PASSWORD :'monitoring_password';

-- Nobody but these roles connects; none may create schemas, temporary tables or anything in public.
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO flywheel_migrator,
    flywheel_ingestion, flywheel_training, flywheel_registry, flywheel_serving, flywheel_monitoring;
REVOKE ALL ON SCHEMA public FROM PUBLIC;

-- One schema per service, named after it, plus the token store; all owned by the migrator.
CREATE SCHEMA ingestion     AUTHORIZATION flywheel_migrator;
CREATE SCHEMA training      AUTHORIZATION flywheel_migrator;
CREATE SCHEMA registry      AUTHORIZATION flywheel_migrator;
CREATE SCHEMA serving       AUTHORIZATION flywheel_migrator;
CREATE SCHEMA monitoring    AUTHORIZATION flywheel_migrator;
CREATE SCHEMA flywheel_auth AUTHORIZATION flywheel_migrator;

-- Row rights for the service roles (a file of its own: upgrade-to-migrator.sql applies it too).
\ir grants.sql
