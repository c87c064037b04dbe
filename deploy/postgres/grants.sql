-- What each service's database role may do: read and write rows of its own schema (and read, or for
-- the registry write, the token store). Applied by roles.sql on a new volume and by
-- upgrade-to-migrator.sql on an old one; safe to apply again. Run as the superuser.
--
-- The GRANT ... ON ALL lines cover the tables that already exist (none on a new volume), the default
-- privileges every table and sequence the migrator creates from now on.
DO $$
DECLARE
    service text;
BEGIN
    FOREACH service IN ARRAY ARRAY['ingestion', 'training', 'registry', 'serving', 'monitoring'] LOOP
        EXECUTE format('GRANT USAGE ON SCHEMA %I TO %I', service, 'flywheel_' || service);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA %I TO %I',
                       service, 'flywheel_' || service);
        EXECUTE format('GRANT USAGE, SELECT, UPDATE ON ALL SEQUENCES IN SCHEMA %I TO %I',
                       service, 'flywheel_' || service);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE flywheel_migrator IN SCHEMA %I'
                       ' GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO %I', service, 'flywheel_' || service);
        EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE flywheel_migrator IN SCHEMA %I'
                       ' GRANT USAGE, SELECT, UPDATE ON SEQUENCES TO %I', service, 'flywheel_' || service);

        -- The token store: the registry writes it (the token API), the others read it.
        EXECUTE format('GRANT USAGE ON SCHEMA flywheel_auth TO %I', 'flywheel_' || service);
        IF service = 'registry' THEN
            GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA flywheel_auth TO flywheel_registry;
            ALTER DEFAULT PRIVILEGES FOR ROLE flywheel_migrator IN SCHEMA flywheel_auth
                GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO flywheel_registry;
        ELSE
            EXECUTE format('GRANT SELECT ON ALL TABLES IN SCHEMA flywheel_auth TO %I', 'flywheel_' || service);
            EXECUTE format('ALTER DEFAULT PRIVILEGES FOR ROLE flywheel_migrator IN SCHEMA flywheel_auth'
                           ' GRANT SELECT ON TABLES TO %I', 'flywheel_' || service);
        END IF;
    END LOOP;
END
$$;
