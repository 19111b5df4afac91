-- A PostgreSQL role for the site agent: read-only on the CDM and vocabulary schemas,
-- owner of its own write schema for cohorts and scratch tables.
-- Run as a database administrator; replace cdm, vocab and results with your schema names
-- and set a password (or use certificate/peer authentication).
--   psql -d omop -v agent_password="'change-me'" -f deploy/postgres/site_agent_role.sql

CREATE ROLE optima_agent LOGIN PASSWORD :agent_password;

GRANT USAGE ON SCHEMA cdm TO optima_agent;
GRANT SELECT ON ALL TABLES IN SCHEMA cdm TO optima_agent;
ALTER DEFAULT PRIVILEGES IN SCHEMA cdm GRANT SELECT ON TABLES TO optima_agent;

-- only if the vocabulary lives in its own schema
-- GRANT USAGE ON SCHEMA vocab TO optima_agent;
-- GRANT SELECT ON ALL TABLES IN SCHEMA vocab TO optima_agent;

CREATE SCHEMA IF NOT EXISTS results AUTHORIZATION optima_agent;

-- temp tables are needed by the Circe cohort SQL
GRANT TEMPORARY ON DATABASE :"DBNAME" TO optima_agent;
