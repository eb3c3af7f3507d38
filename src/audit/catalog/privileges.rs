//! Reading what lets the role around the proxy: privileges that run code the proxy never
//! sees, views over tenant tables, functions and defaults that set the tenant setting.

use tokio_postgres::{Client, Row};

use super::{query, Privileges, RoleSetting, ViewInfo, USER_SCHEMAS};
use crate::audit::AuditError;

/// A function's signature, schema-qualified and quoted (`p` is its `pg_proc` row, `n` its schema).
const SIGNATURE: &str =
    "pg_catalog.format('%I.%I(%s)', n.nspname, p.proname, pg_catalog.oidvectortypes(p.proargtypes))";

/// `pg_catalog` functions whose names are in `names` that the role can execute.
fn executable_builtins() -> String {
    format!(
        "SELECT {SIGNATURE} FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE n.nspname = 'pg_catalog' AND p.proname = ANY($2::name[]) \
         AND pg_catalog.has_function_privilege($1::name, p.oid, 'EXECUTE') ORDER BY 1"
    )
}

pub(super) async fn privileges(client: &Client, role: &str) -> Result<Privileges, AuditError> {
    let schemas = format!(
        "SELECT pg_catalog.quote_ident(n.nspname) FROM pg_catalog.pg_namespace n WHERE {USER_SCHEMAS} \
         AND pg_catalog.has_schema_privilege($1::name, n.oid, 'CREATE') ORDER BY 1"
    );
    let languages = "SELECT pg_catalog.quote_ident(l.lanname) FROM pg_catalog.pg_language l \
                     WHERE l.lanpltrusted AND l.lanname <> 'sql' \
                     AND pg_catalog.has_language_privilege($1::name, l.oid, 'USAGE') ORDER BY 1";
    let set_config =
        "SELECT pg_catalog.has_function_privilege($1::name, 'pg_catalog.set_config(text,text,boolean)', 'EXECUTE'), \
                      EXISTS (SELECT 1 FROM pg_catalog.pg_proc p, \
                              pg_catalog.aclexplode(COALESCE(p.proacl, pg_catalog.acldefault('f', p.proowner))) a \
                              WHERE p.oid = 'pg_catalog.set_config(text,text,boolean)'::pg_catalog.regprocedure \
                              AND a.grantee = 0 AND a.privilege_type = 'EXECUTE')";
    let dblink = format!(
        "SELECT {SIGNATURE} FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE p.proname ~ '^dblink' AND pg_catalog.has_function_privilege($1::name, p.oid, 'EXECUTE') ORDER BY 1"
    );
    let views = "SELECT v FROM pg_catalog.unnest($2::text[]) v \
                 WHERE pg_catalog.has_table_privilege($1::name, v, 'SELECT') ORDER BY 1";
    let sc = query(client, set_config, &[&role]).await?;
    let sql_text = ["query_to_xml", "query_to_xmlschema", "query_to_xml_and_xmlschema", "ts_stat"];
    let activity_functions = ["pg_stat_get_activity", "pg_stat_get_backend_activity"];
    let names = |rows: Vec<Row>| rows.iter().map(|r| r.get::<_, String>(0)).collect::<Vec<_>>();
    let mut sql_text_functions = names(query(client, &executable_builtins(), &[&role, &sql_text.to_vec()]).await?);
    let rewrite = format!(
        "SELECT {SIGNATURE} FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE p.oid = 'pg_catalog.ts_rewrite(tsquery,text)'::pg_catalog.regprocedure \
         AND pg_catalog.has_function_privilege($1::name, p.oid, 'EXECUTE')"
    );
    sql_text_functions.extend(names(query(client, &rewrite, &[&role]).await?));
    let mut activity_objects = names(query(client, views, &[&role, &vec!["pg_catalog.pg_stat_activity"]]).await?);
    activity_objects
        .extend(names(query(client, &executable_builtins(), &[&role, &activity_functions.to_vec()]).await?));
    let mut prepared_objects = names(query(client, views, &[&role, &vec!["pg_catalog.pg_prepared_statements"]]).await?);
    prepared_objects
        .extend(names(query(client, &executable_builtins(), &[&role, &vec!["pg_prepared_statement"]]).await?));
    Ok(Privileges {
        temp: false,
        create_schemas: names(query(client, &schemas, &[&role]).await?),
        languages: names(query(client, languages, &[&role]).await?),
        set_config: sc.first().is_some_and(|r| r.get(0)),
        set_config_public: sc.first().is_some_and(|r| r.get(1)),
        sql_text_functions,
        dblink_functions: names(query(client, &dblink, &[&role]).await?),
        activity_objects,
        prepared_objects,
    })
}

pub(super) async fn views(client: &Client, role: &str, oids: &[u32]) -> Result<Vec<ViewInfo>, AuditError> {
    // Views that read tenant tables, directly or through other views.
    let sql = "WITH RECURSIVE reads(view, base) AS ( \
                 SELECT rw.ev_class, d.refobjid FROM pg_catalog.pg_rewrite rw \
                 JOIN pg_catalog.pg_depend d ON d.classid = 'pg_catalog.pg_rewrite'::regclass AND d.objid = rw.oid \
                 AND d.refclassid = 'pg_catalog.pg_class'::regclass \
                 WHERE d.refobjid = ANY($2::oid[]) AND rw.ev_class <> d.refobjid \
               UNION \
                 SELECT rw.ev_class, reads.base FROM reads \
                 JOIN pg_catalog.pg_depend d ON d.refobjid = reads.view AND d.classid = 'pg_catalog.pg_rewrite'::regclass \
                 AND d.refclassid = 'pg_catalog.pg_class'::regclass \
                 JOIN pg_catalog.pg_rewrite rw ON rw.oid = d.objid WHERE rw.ev_class <> reads.view) \
               SELECT pg_catalog.format('%I.%I', n.nspname, v.relname), v.relkind = 'm', \
               pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(v.relowner)), \
               pg_catalog.pg_has_role($1::name, v.relowner, 'MEMBER'), \
               COALESCE(pg_catalog.array_to_string(v.reloptions, ',') ~* 'security_invoker=(true|on|yes|1)', false), \
               pg_catalog.has_table_privilege($1::name, v.oid, 'SELECT'), \
               ARRAY(SELECT DISTINCT pg_catalog.format('%I.%I', bn.nspname, b.relname) FROM reads r2 \
                     JOIN pg_catalog.pg_class b ON b.oid = r2.base JOIN pg_catalog.pg_namespace bn ON bn.oid = b.relnamespace \
                     WHERE r2.view = v.oid ORDER BY 1) \
               FROM pg_catalog.pg_class v JOIN pg_catalog.pg_namespace n ON n.oid = v.relnamespace \
               WHERE v.relkind IN ('v', 'm') AND v.oid IN (SELECT view FROM reads) ORDER BY 1";
    let rows = query(client, sql, &[&role, &oids]).await?;
    Ok(rows
        .iter()
        .map(|r| ViewInfo {
            name: r.get(0),
            materialized: r.get(1),
            owner: r.get(2),
            owned_by_role: r.get(3),
            security_invoker: r.get(4),
            selectable: r.get(5),
            reads: r.get(6),
        })
        .collect())
}

pub(super) async fn setting_functions(
    client: &Client,
    role: &str,
    setting: &str,
) -> Result<Vec<(String, bool)>, AuditError> {
    let sql = format!(
        "SELECT {SIGNATURE}, pg_catalog.has_function_privilege($1::name, p.oid, 'EXECUTE') \
         FROM pg_catalog.pg_proc p JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proconfig) c \
                             WHERE pg_catalog.lower(pg_catalog.split_part(c, '=', 1)) = $2::text) ORDER BY 1"
    );
    let rows = query(client, &sql, &[&role, &setting]).await?;
    Ok(rows.iter().map(|r| (r.get(0), r.get(1))).collect())
}

pub(super) async fn unpinned_definers(client: &Client, role: &str) -> Result<Vec<String>, AuditError> {
    let sql = format!(
        "SELECT {SIGNATURE} FROM pg_catalog.pg_proc p \
         JOIN pg_catalog.pg_namespace n ON n.oid = p.pronamespace \
         WHERE p.prosecdef AND {USER_SCHEMAS} AND pg_catalog.has_function_privilege($1::name, p.oid, 'EXECUTE') \
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.unnest(p.proconfig) c WHERE c ~* '^search_path=') \
         AND NOT EXISTS (SELECT 1 FROM pg_catalog.pg_depend d WHERE d.classid = 'pg_catalog.pg_proc'::regclass \
                         AND d.objid = p.oid AND d.deptype = 'e') ORDER BY 1"
    );
    let rows = query(client, &sql, &[&role]).await?;
    Ok(rows.iter().map(|r| r.get(0)).collect())
}

pub(super) async fn role_settings(client: &Client, role: &str, setting: &str) -> Result<Vec<RoleSetting>, AuditError> {
    let sql = "SELECT CASE WHEN s.setrole = 0 THEN NULL ELSE pg_catalog.quote_ident(pg_catalog.pg_get_userbyid(s.setrole)) END, \
               s.setdatabase <> 0, pg_catalog.substr(c, pg_catalog.strpos(c, '=') + 1) \
               FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) c \
               WHERE pg_catalog.lower(pg_catalog.split_part(c, '=', 1)) = $2::text \
               AND s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database WHERE datname = pg_catalog.current_database())) \
               AND s.setrole IN (0, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = $1::name)) ORDER BY 1, 2";
    let rows = query(client, sql, &[&role, &setting]).await?;
    Ok(rows.iter().map(|r| RoleSetting { role: r.get(0), this_database: r.get(1), value: r.get(2) }).collect())
}

pub(super) async fn server_setting_value(client: &Client, setting: &str) -> Result<Option<String>, AuditError> {
    // Placeholder settings are not in pg_settings: read this session's value, and blame the
    // server configuration when no database or role default of this session explains it.
    let sql = "SELECT NULLIF(pg_catalog.current_setting($1::text, true), ''), \
               EXISTS (SELECT 1 FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) c \
                       WHERE pg_catalog.lower(pg_catalog.split_part(c, '=', 1)) = $1::text \
                       AND s.setdatabase IN (0, (SELECT oid FROM pg_catalog.pg_database \
                                                 WHERE datname = pg_catalog.current_database())) \
                       AND s.setrole IN (0, (SELECT oid FROM pg_catalog.pg_roles WHERE rolname = current_user)))";
    let rows = query(client, sql, &[&setting]).await?;
    Ok(rows.first().and_then(|r| if r.get(1) { None } else { r.get(0) }))
}
