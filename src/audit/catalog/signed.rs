//! Reading the signed tenant context: schema `pgtenant`, `pgtenant.current_tenant()` and
//! `pgtenant.signing_keys`, the role's access to them, and what the function returns for a
//! forged proof.
//!
//! Objects are found by name in the catalogs, never with `to_regclass`/`to_regprocedure`:
//! those raise an error when doctor's own user has no USAGE on the schema.

use tokio_postgres::Client;

use super::{query, Behaviour, KeyTable, Scope, SignedFunction, SignedSetup};
use crate::audit::signed::{LOG_PARAMETER_SETTINGS, LOG_PARAMETER_SINCE};
use crate::audit::{describe_error, AuditError};
use crate::auth::signing::PROOF_SETTING;

/// `pg_proc` rows (alias `p`, schema `n`) of `pgtenant.current_tenant()`.
const IS_FUNCTION: &str = "n.nspname = 'pgtenant' AND p.proname = 'current_tenant' AND p.pronargs = 0";

/// `pg_class` rows (alias `c`, schema `n`) of `pgtenant.signing_keys`.
const IS_KEY_TABLE: &str = "n.nspname = 'pgtenant' AND c.relname = 'signing_keys' AND c.relkind IN ('r', 'p')";

/// The tenant doctor pretends to be when it calls the function with a forged proof.
const FORGED_TENANT: &str = "pgtenant-doctor-forged-tenant";

pub(super) async fn pgcrypto_schema(client: &Client) -> Result<Option<String>, AuditError> {
    let sql = "SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_extension e \
               JOIN pg_catalog.pg_namespace n ON n.oid = e.extnamespace WHERE e.extname = 'pgcrypto'";
    Ok(query(client, sql, &[]).await?.first().map(|r| r.get(0)))
}

/// The signed setup, or `None` when neither its function nor its key table exists.
pub(super) async fn signed_setup(
    client: &Client,
    scope: &Scope,
    server_version_num: i32,
) -> Result<Option<SignedSetup>, AuditError> {
    let role = &scope.role;
    let sql = format!(
        "SELECT (SELECT pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(n.nspowner)) \
                 FROM pg_catalog.pg_namespace n WHERE n.nspname = 'pgtenant'), \
         COALESCE((SELECT pg_catalog.has_schema_privilege($1::name, n.oid, 'CREATE') \
                   FROM pg_catalog.pg_namespace n WHERE n.nspname = 'pgtenant'), false), \
         EXISTS (SELECT 1 FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
                 WHERE {IS_FUNCTION}), \
         EXISTS (SELECT 1 FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                 WHERE {IS_KEY_TABLE})"
    );
    let rows = query(client, &sql, &[role]).await?;
    let Some(row) = rows.first() else { return Ok(None) };
    let (has_function, has_table): (bool, bool) = (row.get(2), row.get(3));
    if !has_function && !has_table {
        return Ok(None);
    }
    let key_table = if has_table { Some(key_table(client, role).await?) } else { None };
    let function = match has_function {
        true => Some(function(client, scope, key_table.as_ref()).await?),
        false => None,
    };
    let log_parameters = match server_version_num >= LOG_PARAMETER_SINCE {
        true => log_parameters(client, role).await?,
        false => Vec::new(),
    };
    Ok(Some(SignedSetup {
        schema_owner: row.get(0),
        schema_create: row.get(1),
        function,
        key_table,
        member_of_owners: member_of_owners(client, role).await?,
        key_functions: key_functions(client, role).await?,
        log_parameters,
    }))
}

async fn key_table(client: &Client, role: &str) -> Result<KeyTable, AuditError> {
    // Column privileges count too: SELECT on the key column alone reads every key.
    let sql = format!(
        "SELECT pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(c.relowner)), \
         ARRAY(SELECT x.privilege FROM pg_catalog.unnest(ARRAY['SELECT', 'INSERT', 'UPDATE', 'DELETE', 'TRUNCATE', \
                                                              'TRIGGER']) WITH ORDINALITY AS x(privilege, i) \
               WHERE CASE WHEN x.privilege IN ('SELECT', 'INSERT', 'UPDATE') \
                     THEN pg_catalog.has_any_column_privilege($1::name, c.oid, x.privilege) \
                     ELSE pg_catalog.has_table_privilege($1::name, c.oid, x.privilege) END ORDER BY x.i), \
         pg_catalog.has_table_privilege(current_user, c.oid, 'SELECT') \
         AND pg_catalog.has_schema_privilege(current_user, c.relnamespace, 'USAGE') \
         FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE {IS_KEY_TABLE}"
    );
    let rows = query(client, &sql, &[&role]).await?;
    let row = rows.first().ok_or_else(|| AuditError::Query("pgtenant.signing_keys disappeared".into()))?;
    let readable: bool = row.get(2);
    let rows = match readable {
        true => Some(query(client, "SELECT count(*) FROM pgtenant.signing_keys", &[]).await?[0].get(0)),
        false => None,
    };
    Ok(KeyTable { owner: row.get(0), role_privileges: row.get(1), rows })
}

async fn function(client: &Client, scope: &Scope, keys: Option<&KeyTable>) -> Result<SignedFunction, AuditError> {
    let sql = format!(
        "SELECT pg_catalog.quote_ident(o.rolname), o.rolsuper, o.rolname = $1::name, p.prosecdef, \
         EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proconfig) c WHERE c ~* '^search_path='), \
         ARRAY(SELECT DISTINCT pg_catalog.quote_ident(sn.nspname) \
               FROM pg_catalog.unnest(p.proconfig) c, \
                    pg_catalog.unnest(pg_catalog.string_to_array(pg_catalog.substr(c, 13), ',')) e \
               JOIN pg_catalog.pg_namespace sn ON sn.nspname = pg_catalog.btrim(pg_catalog.btrim(e), '\"') \
               WHERE c ~* '^search_path=' AND sn.nspname !~ '^pg_temp' \
               AND pg_catalog.has_schema_privilege($1::name, sn.oid, 'CREATE') ORDER BY 1), \
         p.provolatile::text, \
         pg_catalog.has_function_privilege($1::name, p.oid, 'EXECUTE') \
         AND pg_catalog.has_schema_privilege($1::name, n.oid, 'USAGE'), \
         pg_catalog.has_function_privilege(current_user, p.oid, 'EXECUTE') \
         AND pg_catalog.has_schema_privilege(current_user, n.oid, 'USAGE') \
         AND pg_catalog.has_function_privilege(current_user, 'pg_catalog.set_config(text,text,boolean)', 'EXECUTE') \
         FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         JOIN pg_catalog.pg_roles o ON o.oid = p.proowner WHERE {IS_FUNCTION}"
    );
    let rows = query(client, &sql, &[&scope.role]).await?;
    let row = rows.first().ok_or_else(|| AuditError::Query("pgtenant.current_tenant() disappeared".into()))?;
    let volatility: String = row.get(6);
    let callable: bool = row.get(8);
    let behaviour = match callable {
        true => behaviour(client, &scope.setting, keys).await?,
        false => Behaviour::Untested,
    };
    Ok(SignedFunction {
        owner: row.get(0),
        owner_superuser: row.get(1),
        owned_by_role: row.get(2),
        security_definer: row.get(3),
        search_path_pinned: row.get(4),
        search_path_writable: row.get(5),
        volatility: volatility.chars().next().unwrap_or('v'),
        executable: row.get(7),
        behaviour,
    })
}

/// Calls the function in doctor's own session with the tenant setting set to a made-up tenant
/// and a proof that cannot match: first none, then a wrong HMAC under a loaded key id (when
/// doctor can read one). The settings are transaction-local to that one statement.
async fn behaviour(client: &Client, setting: &str, keys: Option<&KeyTable>) -> Result<Behaviour, AuditError> {
    let kid = match keys.and_then(|k| k.rows).unwrap_or(0) {
        0 => "00000000".to_string(),
        _ => query(client, "SELECT kid FROM pgtenant.signing_keys ORDER BY kid LIMIT 1", &[]).await?[0].get(0),
    };
    let wrong = format!("v1:{kid}:{}", "0".repeat(64));
    // CASE arms run in order: the function is called after both settings are in place.
    let sql = "SELECT CASE WHEN pg_catalog.set_config($1::text, $2::text, true) IS NULL THEN NULL \
                           WHEN pg_catalog.set_config($3::text, $4::text, true) IS NULL THEN NULL \
                           ELSE pgtenant.current_tenant() END";
    for proof in ["", wrong.as_str()] {
        match client.query_one(sql, &[&setting, &FORGED_TENANT, &PROOF_SETTING, &proof]).await {
            Ok(row) if row.get::<_, Option<String>>(0).is_some() => return Ok(Behaviour::Trusts),
            Ok(_) => {}
            Err(e) => return Ok(Behaviour::Fails(describe_error(&e))),
        }
    }
    Ok(Behaviour::Refuses)
}

async fn member_of_owners(client: &Client, role: &str) -> Result<Vec<String>, AuditError> {
    let sql = format!(
        "SELECT DISTINCT pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(o.owner)) FROM ( \
           SELECT n.nspowner AS owner FROM pg_catalog.pg_namespace n WHERE n.nspname = 'pgtenant' \
           UNION SELECT p.proowner FROM pg_catalog.pg_proc p \
                 JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE {IS_FUNCTION} \
           UNION SELECT c.relowner FROM pg_catalog.pg_class c \
                 JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE {IS_KEY_TABLE}) o \
         JOIN pg_catalog.pg_roles r ON r.rolname = $1::name \
         WHERE o.owner <> r.oid AND pg_catalog.pg_has_role(r.oid, o.owner, 'MEMBER') ORDER BY 1"
    );
    Ok(query(client, &sql, &[&role]).await?.iter().map(|r| r.get(0)).collect())
}

/// SECURITY DEFINER functions other than `current_tenant()` that the role can call and that run
/// with access to the keys: those in schema `pgtenant`, and those of a non-superuser owner of
/// the function or the key table (a superuser owns definer functions that have nothing to do
/// with the keys).
async fn key_functions(client: &Client, role: &str) -> Result<Vec<String>, AuditError> {
    let sql = format!(
        "WITH owners AS ( \
           SELECT p.proowner AS owner FROM pg_catalog.pg_proc p \
           JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace WHERE {IS_FUNCTION} \
           UNION SELECT c.relowner FROM pg_catalog.pg_class c \
           JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace WHERE {IS_KEY_TABLE}) \
         SELECT pg_catalog.format('%I.%I(%s)', n.nspname, p.proname, pg_catalog.oidvectortypes(p.proargtypes)) \
         FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         JOIN pg_catalog.pg_roles r ON r.rolname = $1::name \
         WHERE p.prosecdef AND NOT ({IS_FUNCTION}) AND p.proowner <> r.oid \
         AND (n.nspname = 'pgtenant' OR p.proowner IN (SELECT owner FROM owners o \
              JOIN pg_catalog.pg_roles ro ON ro.oid = o.owner WHERE NOT ro.rolsuper)) \
         AND pg_catalog.has_function_privilege(r.oid, p.oid, 'EXECUTE') \
         AND pg_catalog.has_schema_privilege(r.oid, n.oid, 'USAGE') ORDER BY 1"
    );
    Ok(query(client, &sql, &[&role]).await?.iter().map(|r| r.get(0)).collect())
}

/// The value of each log setting in new sessions of `role`: the most specific
/// `ALTER ROLE/DATABASE ... SET` that reaches it, else the server's own value.
async fn log_parameters(client: &Client, role: &str) -> Result<Vec<(String, String)>, AuditError> {
    // pg_settings shows this (doctor's) session: its value stands for the server's only when
    // it comes from the server configuration, else the built-in default is assumed.
    let sql = "SELECT s.name::text, COALESCE( \
                 (SELECT pg_catalog.substr(c, pg_catalog.strpos(c, '=') + 1) \
                  FROM pg_catalog.pg_db_role_setting d, pg_catalog.unnest(d.setconfig) c \
                  WHERE pg_catalog.lower(pg_catalog.split_part(c, '=', 1)) = s.name \
                  AND d.setrole IN (0, r.oid) AND d.setdatabase IN (0, db.oid) \
                  ORDER BY d.setrole <> 0 DESC, d.setdatabase <> 0 DESC LIMIT 1), \
                 CASE WHEN s.source IN ('default', 'configuration file', 'command line', 'environment variable') \
                      THEN s.setting ELSE s.boot_val END) \
               FROM pg_catalog.pg_settings s \
               JOIN pg_catalog.pg_roles r ON r.rolname = $1::name \
               JOIN pg_catalog.pg_database db ON db.datname = pg_catalog.current_database() \
               WHERE s.name = ANY($2::text[]) ORDER BY 1";
    let names: Vec<&str> = LOG_PARAMETER_SETTINGS.to_vec();
    Ok(query(client, sql, &[&role, &names]).await?.iter().map(|r| (r.get(0), r.get(1))).collect())
}
