//! The database side of the signed tenant context (`tenant.mode = "signed"`): the SQL that
//! `pgtenant policy --signed` puts before the policies (pure).
//!
//! The proxy sets the tenant setting and `pgtenant.proof` = `v1:<kid>:<hex HMAC-SHA256(key,
//! tenant)>` (see [`crate::auth::signing`]). SQL running as the application role can change
//! the tenant setting (a `DO` block, a `pg_temp` function) but cannot compute a proof, so the
//! policies never read the setting: they call [`CURRENT_TENANT`], a `SECURITY DEFINER`
//! function owned by a key-holder role that alone reads [`KEY_TABLE`]. It recomputes the HMAC
//! with pgcrypto and returns the tenant only when the proof matches, else NULL (no rows).

use std::fmt::Write as _;

use super::catalog::{Catalog, Scope};
use super::literal;
use crate::auth::signing::{MIN_KEY_LEN, PROOF_SETTING, PROOF_VERSION};

/// The schema that holds the key table and the functions.
pub const SCHEMA: &str = "pgtenant";

/// The function every signed policy calls, as a signature.
pub const CURRENT_TENANT: &str = "pgtenant.current_tenant()";

/// The key table.
pub const KEY_TABLE: &str = "pgtenant.signing_keys";

/// Adds a key (superuser or admin only): `pgtenant.add_signing_key(key text) RETURNS text`.
pub const ADD_KEY: &str = "pgtenant.add_signing_key(text)";

/// Removes a key by id (superuser or admin only): `pgtenant.remove_signing_key(kid text) RETURNS boolean`.
pub const REMOVE_KEY: &str = "pgtenant.remove_signing_key(text)";

/// The default owner of the schema, the key table and the functions (`--key-owner`).
pub const DEFAULT_KEY_OWNER: &str = "pgtenant_keyholder";

/// The pinned `search_path` of the functions: built-ins only; `pg_temp` last so that
/// temporary objects of the caller can never shadow anything.
const SEARCH_PATH: &str = "pg_catalog, pg_temp";

/// Settings that keep bound parameters (the proof) out of the server log; PostgreSQL 13 and later.
pub const LOG_PARAMETER_SETTINGS: [&str; 2] = ["log_parameter_max_length", "log_parameter_max_length_on_error"];

/// The first `server_version_num` with [`LOG_PARAMETER_SETTINGS`].
pub const LOG_PARAMETER_SINCE: i32 = 130000;

/// PostgreSQL's reserved key words (`pg_get_keywords()`, category R): a role name that is one
/// must be quoted.
const RESERVED: &[&str] = &[
    "all",
    "analyse",
    "analyze",
    "and",
    "any",
    "array",
    "as",
    "asc",
    "asymmetric",
    "both",
    "case",
    "cast",
    "check",
    "collate",
    "column",
    "constraint",
    "create",
    "current_catalog",
    "current_date",
    "current_role",
    "current_time",
    "current_timestamp",
    "current_user",
    "default",
    "deferrable",
    "desc",
    "distinct",
    "do",
    "else",
    "end",
    "except",
    "false",
    "fetch",
    "for",
    "foreign",
    "from",
    "grant",
    "group",
    "having",
    "in",
    "initially",
    "intersect",
    "into",
    "lateral",
    "leading",
    "limit",
    "localtime",
    "localtimestamp",
    "not",
    "null",
    "offset",
    "on",
    "only",
    "or",
    "order",
    "placing",
    "primary",
    "references",
    "returning",
    "select",
    "session_user",
    "some",
    "symmetric",
    "table",
    "then",
    "to",
    "trailing",
    "true",
    "union",
    "unique",
    "user",
    "using",
    "variadic",
    "when",
    "where",
    "window",
    "with",
];

/// `--key-owner` as it appears in SQL: a plain lower-case role name (quoted only when it is a
/// reserved word), not a predefined `pg_` role and not the application role.
pub fn key_owner_ident(name: &str, app_role: &str) -> Result<String, String> {
    let mut chars = name.chars();
    let plain = matches!(chars.next(), Some('a'..='z' | '_'))
        && chars.all(|c| matches!(c, 'a'..='z' | '0'..='9' | '_'))
        && name.len() <= 63;
    if !plain {
        return Err(format!("{name:?} is not a plain role name: use lower-case letters, digits and _ (at most 63)"));
    }
    if ["public", "none", "current_role", "current_user", "session_user"].contains(&name) {
        return Err(format!("{name:?} cannot be a role name"));
    }
    if name.starts_with("pg_") {
        return Err(format!("{name:?}: role names starting with pg_ are reserved by PostgreSQL"));
    }
    if name == app_role {
        return Err(format!("{name:?} is the application role: the key holder must be a role it is not"));
    }
    Ok(if RESERVED.contains(&name) { format!("\"{name}\"") } else { name.to_string() })
}

/// The signed-context setup, run as a superuser before the policies: the key-holder role, the
/// schema, pgcrypto, the key table, [`CURRENT_TENANT`], the key helpers and the log settings
/// for `role` (quoted). Idempotent: every statement leaves an existing object as it should be.
pub fn signed_setup_sql(catalog: &Catalog, scope: &Scope, role: &str, owner: &str) -> String {
    let mut out = String::from(
        "-- Signed tenant context: policies call pgtenant.current_tenant(), which returns the tenant only\n\
         -- when pgtenant.proof holds its HMAC under a loaded key. Only the key holder reads the keys.\n",
    );
    // CREATE ROLE has no IF NOT EXISTS; the block makes re-runs a no-op. The role needs no
    // attribute: it only owns objects, and nobody logs in as it.
    let _ =
        writeln!(out, "DO $$ BEGIN CREATE ROLE {owner} NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;");
    let _ = writeln!(out, "CREATE SCHEMA IF NOT EXISTS {SCHEMA} AUTHORIZATION {owner};");
    let _ = writeln!(out, "ALTER SCHEMA {SCHEMA} OWNER TO {owner};");
    // Not even the application role may create here: its objects would sit next to the keys.
    let _ = writeln!(out, "REVOKE ALL ON SCHEMA {SCHEMA} FROM PUBLIC, {role};");
    let _ = writeln!(out, "GRANT USAGE ON SCHEMA {SCHEMA} TO {role};");
    let crypto = match &catalog.pgcrypto_schema {
        Some(schema) => {
            let _ = writeln!(out, "-- pgcrypto is installed in schema {schema}: its hmac() is used.");
            if schema != SCHEMA {
                // The function runs as the key holder, which must reach hmac() wherever it is.
                let _ = writeln!(out, "GRANT USAGE ON SCHEMA {schema} TO {owner};");
                let _ = writeln!(out, "GRANT EXECUTE ON FUNCTION {schema}.hmac(bytea, bytea, text) TO {owner};");
            }
            schema.as_str()
        }
        None => {
            let _ = writeln!(out, "CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA {SCHEMA};");
            SCHEMA
        }
    };
    let _ = writeln!(
        out,
        "CREATE TABLE IF NOT EXISTS {KEY_TABLE} (\n    \
         kid text PRIMARY KEY CHECK (kid ~ '^[0-9a-f]{{8}}$'),\n    \
         key bytea NOT NULL CHECK (octet_length(key) >= {MIN_KEY_LEN}),\n    \
         added_at timestamptz NOT NULL DEFAULT now());"
    );
    let _ = writeln!(out, "ALTER TABLE {KEY_TABLE} OWNER TO {owner};");
    let _ = writeln!(out, "REVOKE ALL ON TABLE {KEY_TABLE} FROM PUBLIC, {role};");
    out.push_str(&current_tenant_sql(&scope.setting, crypto));
    let _ = writeln!(out, "ALTER FUNCTION {CURRENT_TENANT} OWNER TO {owner};");
    let _ = writeln!(out, "REVOKE ALL ON FUNCTION {CURRENT_TENANT} FROM PUBLIC;");
    let _ = writeln!(out, "GRANT EXECUTE ON FUNCTION {CURRENT_TENANT} TO {role};");
    out.push_str(&key_helpers_sql());
    for function in [ADD_KEY, REMOVE_KEY] {
        let _ = writeln!(out, "ALTER FUNCTION {function} OWNER TO {owner};");
        let _ = writeln!(out, "REVOKE ALL ON FUNCTION {function} FROM PUBLIC, {role};");
    }
    out.push_str(&log_parameters_sql(catalog, role));
    out
}

/// `pgtenant.current_tenant()`: the tenant setting when the proof matches a loaded key, else NULL.
///
/// The proof's second field picks the key row (several are loaded during a rotation). The
/// comparison is of SHA-256 digests of the two proofs rather than of the proofs themselves, so
/// that how long it takes says nothing about how much of a guessed proof was right.
///
/// PL/pgSQL rather than SQL: PostgreSQL plans a non-inlined SQL function's body again for every
/// query that calls it (about 40 µs here, most of the cost of signed mode in the benchmark),
/// while PL/pgSQL keeps the plan for the session (about 10 µs). Executing a PL/pgSQL function
/// needs no `USAGE` on the language, so `--harden` revoking it changes nothing.
fn current_tenant_sql(setting: &str, crypto_schema: &str) -> String {
    format!(
        "CREATE OR REPLACE FUNCTION {CURRENT_TENANT} RETURNS text\n    \
         LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL SAFE\n    \
         SET search_path = {SEARCH_PATH}\n\
         AS $pgtenant$\n\
         DECLARE\n    \
         v_tenant text := NULLIF(current_setting({setting}, true), '');\n    \
         v_proof text := current_setting({proof}, true);\n    \
         v_kid text := split_part(v_proof, ':', 2);\n    \
         v_key bytea;\n\
         BEGIN\n    \
         SELECT k.key INTO v_key FROM {KEY_TABLE} AS k WHERE k.kid = v_kid;\n    \
         IF v_tenant IS NULL OR v_key IS NULL THEN\n        \
         RETURN NULL;\n    \
         END IF;\n    \
         IF sha256(convert_to(v_proof, 'UTF8'))\n        \
         = sha256(convert_to({version} || v_kid || ':'\n            \
         || encode({crypto_schema}.hmac(convert_to(v_tenant, 'UTF8'), v_key, 'sha256'::text), 'hex'), 'UTF8')) THEN\n        \
         RETURN v_tenant;\n    \
         END IF;\n    \
         RETURN NULL;\n\
         END\n\
         $pgtenant$;\n",
        setting = literal(setting),
        proof = literal(PROOF_SETTING),
        version = literal(&format!("{PROOF_VERSION}:")),
    )
}

/// `add_signing_key` and `remove_signing_key`: SECURITY DEFINER so that an admin granted EXECUTE
/// needs no privilege on the key table. The key is trimmed like the proxy trims its key file.
fn key_helpers_sql() -> String {
    format!(
        "CREATE OR REPLACE FUNCTION {SCHEMA}.add_signing_key(key text) RETURNS text\n    \
         LANGUAGE plpgsql VOLATILE SECURITY DEFINER\n    \
         SET search_path = {SEARCH_PATH}\n\
         AS $pgtenant$\n\
         DECLARE\n    \
         bytes bytea := convert_to(btrim(key, E' \\t\\r\\n'), 'UTF8');\n    \
         new_kid text := left(encode(sha256(bytes), 'hex'), 8);\n\
         BEGIN\n    \
         IF octet_length(bytes) < {MIN_KEY_LEN} THEN\n        \
         RAISE EXCEPTION 'the signing key is % bytes; at least {MIN_KEY_LEN} are required', octet_length(bytes)\n            \
         USING ERRCODE = 'invalid_parameter_value';\n    \
         END IF;\n    \
         INSERT INTO {KEY_TABLE} (kid, key) VALUES (new_kid, bytes) ON CONFLICT (kid) DO NOTHING;\n    \
         -- Two keys whose ids collide: refuse rather than keep the old one silently.\n    \
         IF NOT EXISTS (SELECT 1 FROM {KEY_TABLE} k WHERE k.kid = new_kid AND k.key = bytes) THEN\n        \
         RAISE EXCEPTION 'another key with id % is loaded', new_kid USING ERRCODE = 'unique_violation';\n    \
         END IF;\n    \
         RETURN new_kid;\n\
         END\n\
         $pgtenant$;\n\
         CREATE OR REPLACE FUNCTION {SCHEMA}.remove_signing_key(kid text) RETURNS boolean\n    \
         LANGUAGE sql VOLATILE SECURITY DEFINER\n    \
         SET search_path = {SEARCH_PATH}\n\
         AS $pgtenant$\n    \
         WITH gone AS (DELETE FROM {KEY_TABLE} k WHERE k.kid = $1 RETURNING 1)\n    \
         SELECT count(*) > 0 FROM gone\n\
         $pgtenant$;\n"
    )
}

/// The proof travels as a bound parameter, which statement logging (`log_statement = all`,
/// `log_min_duration_statement`, errors) would otherwise write to the server log.
fn log_parameters_sql(catalog: &Catalog, role: &str) -> String {
    if catalog.server_version_num != 0 && catalog.server_version_num < LOG_PARAMETER_SINCE {
        return "-- PostgreSQL before 13 logs bound parameters, the proof included, with every logged statement:\n\
                -- keep log_statement, log_min_duration_statement and log_min_error_statement from logging\n\
                -- the application role's statements, or upgrade.\n"
            .to_string();
    }
    let mut out = String::from("-- Keep the proof (a bound parameter) out of the server log.\n");
    for setting in LOG_PARAMETER_SETTINGS {
        let _ = writeln!(out, "ALTER ROLE {role} SET {setting} = 0;");
    }
    out
}

/// The shell lines that load the key in `/etc/pgtenant/signing.key` as a superuser. psql reads
/// the file itself (`\set` with backquotes) and sends it as a literal of a statement that is not
/// logged, so the key is in neither the shell history, the process list nor the server log.
pub fn key_loading_snippet() -> String {
    format!(
        "psql \"$DATABASE_URL\" -v ON_ERROR_STOP=1 <<'SQL'\n\
         \\set key `cat /etc/pgtenant/signing.key`\n\
         SET log_statement = 'none';\n\
         SET log_min_error_statement = 'panic';\n\
         SELECT {SCHEMA}.add_signing_key(:'key');\n\
         SQL"
    )
}

/// The comment that ends a `--signed` script: how to load a key and how to rotate it.
pub fn key_loading_comment() -> String {
    let snippet: String = key_loading_snippet().lines().map(|l| format!("--   {l}\n")).collect();
    format!(
        "\n-- Signing keys. This script holds none: until one is loaded, {CURRENT_TENANT} is NULL and\n\
         -- every policy above matches no rows. Load the proxy's key (the text of its\n\
         -- tenant.signing_key_file or signing_key_env; surrounding whitespace is ignored) as a\n\
         -- superuser. This way the key is in neither the shell history, the process list nor the\n\
         -- server log:\n\
         {snippet}\
         -- (with the key in an environment variable: \\set key `printenv PGTENANT_SIGNING_KEY`).\n\
         -- It prints the key id: the first 8 hex digits of SHA-256 of the key, as in the proofs.\n\
         -- Rotation, during which both keys are valid:\n\
         --   1. load the new key as above;\n\
         --   2. point every proxy's signing_key_file (or signing_key_env) at the new key, then SIGHUP it;\n\
         --   3. once every proxy runs the new key: SELECT {SCHEMA}.remove_signing_key('<old kid>');\n\
         -- The loaded keys: SELECT kid, added_at FROM {KEY_TABLE};\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn catalog() -> Catalog {
        Catalog { database: "app".into(), server_version_num: 150018, ..Catalog::default() }
    }

    fn scope() -> Scope {
        Scope { role: "app_user".into(), column: "tenant_id".into(), setting: "app.current_tenant_id".into() }
    }

    fn setup(catalog: &Catalog) -> String {
        signed_setup_sql(catalog, &scope(), "app_user", DEFAULT_KEY_OWNER)
    }

    #[test]
    fn the_key_holder_owns_everything_and_the_role_only_executes() {
        let sql = setup(&catalog());
        assert!(sql.contains(
            "DO $$ BEGIN CREATE ROLE pgtenant_keyholder NOLOGIN; EXCEPTION WHEN duplicate_object THEN NULL; END $$;"
        ));
        for object in ["SCHEMA pgtenant", "TABLE pgtenant.signing_keys", "FUNCTION pgtenant.current_tenant()"] {
            assert!(sql.contains(&format!("ALTER {object} OWNER TO pgtenant_keyholder;")), "{object}\n{sql}");
        }
        assert!(sql.contains(
            "REVOKE ALL ON SCHEMA pgtenant FROM PUBLIC, app_user;\nGRANT USAGE ON SCHEMA pgtenant TO app_user;"
        ));
        assert!(sql.contains("REVOKE ALL ON TABLE pgtenant.signing_keys FROM PUBLIC, app_user;"), "{sql}");
        assert!(sql.contains("GRANT EXECUTE ON FUNCTION pgtenant.current_tenant() TO app_user;"), "{sql}");
        for helper in [ADD_KEY, REMOVE_KEY] {
            assert!(sql.contains(&format!("REVOKE ALL ON FUNCTION {helper} FROM PUBLIC, app_user;")), "{sql}");
            assert!(!sql.contains(&format!("GRANT EXECUTE ON FUNCTION {helper}")), "{sql}");
        }
        assert!(!sql.contains("GRANT CREATE"), "{sql}");
    }

    #[test]
    fn the_function_is_a_pinned_stable_definer_reading_the_scope_setting() {
        let sql = setup(&catalog());
        assert!(sql.contains(
            "CREATE OR REPLACE FUNCTION pgtenant.current_tenant() RETURNS text\n    \
             LANGUAGE plpgsql STABLE SECURITY DEFINER PARALLEL SAFE\n    SET search_path = pg_catalog, pg_temp\n"
        ));
        assert!(sql.contains("NULLIF(current_setting('app.current_tenant_id', true), '')"), "{sql}");
        assert!(sql.contains("current_setting('pgtenant.proof', true)"), "{sql}");
        assert!(sql.contains("v_kid text := split_part(v_proof, ':', 2)"), "{sql}");
        assert!(sql.contains("WHERE k.kid = v_kid"), "{sql}");
        assert!(sql.contains("'v1:' || v_kid || ':'"), "{sql}");
    }

    #[test]
    fn pgcrypto_is_used_where_it_is_or_installed_in_the_schema() {
        let sql = setup(&catalog());
        assert!(sql.contains("CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA pgtenant;"), "{sql}");
        assert!(sql.contains("pgtenant.hmac(convert_to(v_tenant, 'UTF8'), v_key, 'sha256'::text)"), "{sql}");
        let mut c = catalog();
        c.pgcrypto_schema = Some("extensions".into());
        let sql = setup(&c);
        assert!(!sql.contains("CREATE EXTENSION"), "{sql}");
        assert!(sql.contains("extensions.hmac(convert_to(v_tenant, 'UTF8'), v_key, 'sha256'::text)"), "{sql}");
        assert!(sql.contains("GRANT EXECUTE ON FUNCTION extensions.hmac(bytea, bytea, text) TO pgtenant_keyholder;"));
        c.pgcrypto_schema = Some("pgtenant".into());
        let sql = setup(&c);
        assert!(
            !sql.contains("CREATE EXTENSION") && !sql.contains("GRANT USAGE ON SCHEMA pgtenant TO pgtenant_keyholder")
        );
    }

    #[test]
    fn the_key_table_and_helpers_enforce_the_key_format() {
        let sql = setup(&catalog());
        assert!(sql.contains("kid text PRIMARY KEY CHECK (kid ~ '^[0-9a-f]{8}$'),"), "{sql}");
        assert!(sql.contains("key bytea NOT NULL CHECK (octet_length(key) >= 32),"), "{sql}");
        assert!(sql.contains("new_kid text := left(encode(sha256(bytes), 'hex'), 8);"), "{sql}");
        assert!(sql.contains("ON CONFLICT (kid) DO NOTHING;"), "{sql}");
        assert!(sql.contains("at least 32 are required"), "{sql}");
    }

    #[test]
    fn bound_parameters_are_kept_out_of_the_log_where_the_server_can() {
        let sql = setup(&catalog());
        assert!(sql.contains("ALTER ROLE app_user SET log_parameter_max_length = 0;"), "{sql}");
        assert!(sql.contains("ALTER ROLE app_user SET log_parameter_max_length_on_error = 0;"), "{sql}");
        let mut old = catalog();
        old.server_version_num = 120_020;
        let sql = setup(&old);
        assert!(!sql.contains("SET log_parameter_max_length") && sql.contains("before 13"), "{sql}");
    }

    #[test]
    fn no_key_in_the_output_and_the_comment_explains_loading_and_rotation() {
        let comment = key_loading_comment();
        assert!(comment.lines().all(|l| l.is_empty() || l.starts_with("--")), "{comment}");
        assert!(comment.contains("\\set key `cat /etc/pgtenant/signing.key`"), "{comment}");
        assert!(comment.contains("SELECT pgtenant.add_signing_key(:'key');"), "{comment}");
        assert!(comment.contains("SELECT pgtenant.remove_signing_key('<old kid>');"), "{comment}");
        assert!(comment.contains("SIGHUP"), "{comment}");
    }

    #[test]
    fn key_owners_are_plain_role_names() {
        assert_eq!(key_owner_ident("pgtenant_keyholder", "app_user").unwrap(), "pgtenant_keyholder");
        assert_eq!(key_owner_ident("user", "app_user").unwrap(), "\"user\"");
        for bad in ["Keys", "a-b", "pg_keys", "", "app_user"] {
            assert!(key_owner_ident(bad, "app_user").is_err(), "{bad}");
        }
        assert!(key_owner_ident(&"k".repeat(64), "app_user").is_err());
    }
}
