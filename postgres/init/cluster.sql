-- Cluster-wide roles, run by init-databases.sh as the superuser over the local socket.
-- Idempotent: runs at every container start.
--   psql variable  : auth_password_set ('1' when PGBOUNCER_AUTH_PASSWORD is given)
--   environment    : PGBOUNCER_AUTH_PASSWORD (read with \getenv, never in argv)
\set ON_ERROR_STOP on
\set QUIET on
-- keep the password out of the server log whatever the log settings are
SET log_statement = 'none';
SET log_min_duration_statement = -1;
SET log_min_error_statement = 'panic';

-- pgbouncer_auth: PgBouncer's auth_user. It can only call pgbouncer.user_lookup()
-- (init/pgbouncer-lookup.sql) in the application databases, nothing else.
SELECT 'CREATE ROLE pgbouncer_auth'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'pgbouncer_auth') \gexec
\if :auth_password_set
\getenv auth_password PGBOUNCER_AUTH_PASSWORD
ALTER ROLE pgbouncer_auth WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
  NOBYPASSRLS PASSWORD :'auth_password';
\unset auth_password
\else
-- no password given: an existing pgbouncer_auth keeps its own, a new one cannot log in
\endif

-- aiia: the operators' role of the guide (`docker exec aiia_postgresql psql -U aiia ...`).
-- No password: it logs in only over the container's socket (pg_hba.conf, pg_ident.conf).
-- It reads monitoring views, acts as each application role it is granted
-- (init/app-database.sql) and may switch on slow-query logging for its session.
SELECT 'CREATE ROLE aiia'
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = 'aiia') \gexec
ALTER ROLE aiia WITH LOGIN NOSUPERUSER CREATEDB NOCREATEROLE NOREPLICATION NOBYPASSRLS
  PASSWORD NULL;
GRANT pg_monitor, pg_signal_backend TO aiia;
GRANT SET ON PARAMETER log_min_duration_statement TO aiia;

-- nobody but the superuser and aiia works in the maintenance database
REVOKE ALL ON DATABASE postgres FROM PUBLIC;
GRANT CONNECT ON DATABASE postgres TO aiia;
