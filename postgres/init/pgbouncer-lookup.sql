-- PgBouncer's auth_query target, created in every application database (PgBouncer 1.18
-- runs auth_query in the database the client asked for; auth_dbname came in 1.19).
-- Included by app-database.sql after \connect to that database, as the superuser.
--
-- SECURITY DEFINER so that pgbouncer_auth never reads pg_authid itself; it returns the
-- SCRAM secret only of roles that may connect to this database and are not superusers,
-- so neither postgres nor pgbouncer_auth can log in through PgBouncer.
CREATE SCHEMA IF NOT EXISTS pgbouncer AUTHORIZATION postgres;
REVOKE ALL ON SCHEMA pgbouncer FROM PUBLIC;
GRANT USAGE ON SCHEMA pgbouncer TO pgbouncer_auth;

CREATE OR REPLACE FUNCTION pgbouncer.user_lookup(p_user text, OUT usename name, OUT passwd text)
RETURNS SETOF record
LANGUAGE sql STABLE SECURITY DEFINER
SET search_path = pg_catalog, pg_temp
AS $$
    SELECT a.rolname, a.rolpassword
      FROM pg_authid AS a
     WHERE a.rolname = p_user
       AND a.rolcanlogin
       AND NOT a.rolsuper
       AND a.rolname <> 'pgbouncer_auth'
       AND (a.rolvaliduntil IS NULL OR a.rolvaliduntil > now())
       AND has_database_privilege(a.oid, current_database(), 'CONNECT')
$$;
ALTER FUNCTION pgbouncer.user_lookup(text) OWNER TO postgres;
REVOKE ALL ON FUNCTION pgbouncer.user_lookup(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgbouncer.user_lookup(text) TO pgbouncer_auth;
