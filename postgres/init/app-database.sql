-- One application database owned by its own role, closed to every other role.
-- Run by init-databases.sh as the superuser over the local socket; idempotent.
--   psql variables : db, owner (names, not secrets)
--   environment    : AIIA_INIT_PASSWORD, the owner's password (read with \getenv)
\set ON_ERROR_STOP on
\set QUIET on
SET log_statement = 'none';
SET log_min_duration_statement = -1;
SET log_min_error_statement = 'panic';

SELECT format('CREATE ROLE %I', :'owner')
 WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'owner') \gexec
\getenv owner_password AIIA_INIT_PASSWORD
-- the password in the env file is the source of truth: a restart after changing it
-- rotates it here
ALTER ROLE :"owner" WITH LOGIN NOSUPERUSER NOCREATEDB NOCREATEROLE NOREPLICATION
  NOBYPASSRLS PASSWORD :'owner_password';
\unset owner_password

SELECT format('CREATE DATABASE %I OWNER %I ENCODING %L TEMPLATE template0',
              :'db', :'owner', 'UTF8')
 WHERE NOT EXISTS (SELECT FROM pg_database WHERE datname = :'db') \gexec
ALTER DATABASE :"db" OWNER TO :"owner";

-- PUBLIC (every role) gets CONNECT and TEMP on a new database by default: take them away,
-- so aiia_staging cannot even open aiia_prod and the other way round
REVOKE ALL ON DATABASE :"db" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"db" TO pgbouncer_auth;
-- ops may act as the owner (pg_restore --role, psql -U aiia -d <db>)
GRANT :"owner" TO aiia;

\connect :"db"
\set ON_ERROR_STOP on
\set QUIET on
\ir pgbouncer-lookup.sql
