-- One login role per service, each owning only its own schema (run once, by deploy/postgres/init-roles.sh,
-- as the superuser, when the data volume is new). psql variables: db, and <service>_password for each
-- of ingestion, training, registry, serving, monitoring.
--
-- A service's pool sets search_path to its schema; `flywheel.db.migrate` creates nothing that exists, so a
-- role needs no right to create schemas. The token store (schema flywheel_auth) is owned by the registry,
-- which hosts the token API; every other service may only read it to check the tokens it is shown.
\set ON_ERROR_STOP on

CREATE ROLE flywheel_ingestion  LOGIN PASSWORD :'ingestion_password';
CREATE ROLE flywheel_training   LOGIN PASSWORD :'training_password';
CREATE ROLE flywheel_registry   LOGIN PASSWORD :'registry_password';
CREATE ROLE flywheel_serving    LOGIN PASSWORD :'serving_password';
CREATE ROLE flywheel_monitoring LOGIN PASSWORD :'monitoring_password';

-- Nobody but these roles connects, and none of them may create schemas or write to public.
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db"
    TO flywheel_ingestion, flywheel_training, flywheel_registry, flywheel_serving, flywheel_monitoring;
REVOKE ALL ON SCHEMA public FROM PUBLIC;

CREATE SCHEMA ingestion  AUTHORIZATION flywheel_ingestion;
CREATE SCHEMA training   AUTHORIZATION flywheel_training;
CREATE SCHEMA registry   AUTHORIZATION flywheel_registry;
CREATE SCHEMA serving    AUTHORIZATION flywheel_serving;
CREATE SCHEMA monitoring AUTHORIZATION flywheel_monitoring;

CREATE SCHEMA flywheel_auth AUTHORIZATION flywheel_registry;
GRANT USAGE ON SCHEMA flywheel_auth
    TO flywheel_ingestion, flywheel_training, flywheel_serving, flywheel_monitoring;
-- Tables the registry creates there later (tokens, schema_migrations) are readable by the others.
ALTER DEFAULT PRIVILEGES FOR ROLE flywheel_registry IN SCHEMA flywheel_auth
    GRANT SELECT ON TABLES TO flywheel_ingestion, flywheel_training, flywheel_serving, flywheel_monitoring;
