-- The reference schema of `pgtenant demo`, run by psql as superuser `postgres`
-- connected to database `postgres`. psql variables set before this file:
--   app_password   password of app_user
--   tenant_a, tenant_b   the two demo tenants (seed.sql)
-- The policies follow the README (*Running it*) and SECURITY.md (*Hardening the database*).

\set ON_ERROR_STOP on
CREATE DATABASE app;
\connect app

-- The tenant every policy compares with: NULLIF makes an unset setting (which
-- reads as '' once a session has used it) match no rows instead of failing
-- the ::uuid cast. Policies wrap it in (SELECT ...) so it is evaluated once
-- per query, not once per row.
--
-- tenant_id defaults to the same setting, so applications insert rows without
-- naming the tenant at all (examples/mcp-server has no tenant code); the
-- INSERT policy still checks the value, so a client cannot write another
-- tenant's rows by naming one.

CREATE TABLE tool_calls (
    id bigserial PRIMARY KEY,
    tenant_id uuid NOT NULL DEFAULT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid,
    tool_name text NOT NULL,
    called_at timestamptz NOT NULL DEFAULT now(),
    success boolean NOT NULL DEFAULT true,
    payload jsonb
);

CREATE TABLE tool_events (
    id bigserial PRIMARY KEY,
    tenant_id uuid NOT NULL DEFAULT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid,
    call_id bigint,
    kind text NOT NULL,
    at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE tenant_config (
    tenant_id uuid NOT NULL DEFAULT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid,
    key text NOT NULL,
    value text,
    PRIMARY KEY (tenant_id, key)
);

-- Indexes led by tenant_id: with RLS every query filters on it.
CREATE INDEX tool_calls_tenant_called_at_idx ON tool_calls (tenant_id, called_at);
CREATE INDEX tool_events_tenant_call_idx ON tool_events (tenant_id, call_id);
-- tenant_config's primary key (tenant_id, key) already leads with tenant_id.

-- The pooled role pgtenant logs in as: not a superuser, no BYPASSRLS, and not
-- the owner of the tables (they belong to postgres), so RLS applies to it.
CREATE ROLE app_user LOGIN PASSWORD :'app_password' NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
GRANT CONNECT ON DATABASE app TO app_user;
GRANT USAGE ON SCHEMA public TO app_user;
GRANT SELECT, INSERT, UPDATE, DELETE ON tool_calls, tool_events, tenant_config TO app_user;
GRANT USAGE ON SEQUENCE tool_calls_id_seq, tool_events_id_seq TO app_user;

ALTER TABLE tool_calls ENABLE ROW LEVEL SECURITY;
ALTER TABLE tool_calls FORCE ROW LEVEL SECURITY;
CREATE POLICY tool_calls_select ON tool_calls FOR SELECT TO app_user
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid));
CREATE POLICY tool_calls_insert ON tool_calls FOR INSERT TO app_user
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid));
CREATE POLICY tool_calls_update ON tool_calls FOR UPDATE TO app_user
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid));
CREATE POLICY tool_calls_delete ON tool_calls FOR DELETE TO app_user
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid));

ALTER TABLE tool_events ENABLE ROW LEVEL SECURITY;
ALTER TABLE tool_events FORCE ROW LEVEL SECURITY;
CREATE POLICY tool_events_select ON tool_events FOR SELECT TO app_user
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid));
CREATE POLICY tool_events_insert ON tool_events FOR INSERT TO app_user
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid));
CREATE POLICY tool_events_update ON tool_events FOR UPDATE TO app_user
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid));
CREATE POLICY tool_events_delete ON tool_events FOR DELETE TO app_user
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid));

ALTER TABLE tenant_config ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenant_config FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_config_select ON tenant_config FOR SELECT TO app_user
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid));
CREATE POLICY tenant_config_insert ON tenant_config FOR INSERT TO app_user
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid));
CREATE POLICY tenant_config_update ON tenant_config FOR UPDATE TO app_user
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid))
    WITH CHECK (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid));
CREATE POLICY tenant_config_delete ON tenant_config FOR DELETE TO app_user
    USING (tenant_id = (SELECT NULLIF(current_setting('app.current_tenant_id', true), '')::uuid));

-- Hardening from SECURITY.md: close what the proxy cannot see on the wire
-- (dynamic SQL that could call set_config, other sessions' query texts).
REVOKE USAGE ON LANGUAGE plpgsql FROM PUBLIC;
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
REVOKE TEMPORARY ON DATABASE app FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.query_to_xml(text, boolean, boolean, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.query_to_xmlschema(text, boolean, boolean, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.query_to_xml_and_xmlschema(text, boolean, boolean, text) FROM PUBLIC;
REVOKE EXECUTE ON FUNCTION pg_catalog.pg_prepared_statement() FROM PUBLIC;
REVOKE SELECT ON pg_catalog.pg_stat_activity FROM PUBLIC;
-- pgtenant sets the tenant with set_config in the extended protocol (as
-- app_user), so app_user keeps EXECUTE; pgtenant refuses every client call of
-- set_config on the tenant setting.
REVOKE EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pg_catalog.set_config(text, text, boolean) TO app_user;
