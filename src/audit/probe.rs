//! `pgtenant doctor --probe`: live isolation checks through a running proxy, with two tenants'
//! tokens.
//!
//! Each tenant inserts one marker row into a tenant table and commits it (an uncommitted row is
//! invisible to the other session whatever the policies say). Then, for each direction, the
//! other tenant must not see the marker's tenant's rows, and its UPDATE, DELETE and INSERT of
//! such rows run in transactions that are always rolled back. A direct connection with no
//! tenant (`--database-url`, as the pooled role) must see no rows at all. Statements that
//! change the tenant must be refused with 42501. Finally each tenant deletes its own marker.

use rand::Rng;
use tokio_postgres::config::Host;
use tokio_postgres::Client;

use super::report::{Finding, Passed, Report, Severity};
use super::{describe_error, literal, AuditError, Target};

/// The object of the no-context check.
const NO_CONTEXT: &str = "direct connection without a tenant";

/// What the probe needs.
pub struct ProbeOptions {
    /// The proxy's URL (its password, if any, is replaced by the tokens).
    pub proxy: Target,
    /// Tenant A's token.
    pub token_a: String,
    /// Tenant B's token.
    pub token_b: String,
    /// A direct connection as the pooled role, for the no-context check.
    pub direct: Option<Target>,
    /// The tenant column.
    pub column: String,
    /// The tenant setting.
    pub setting: String,
    /// The table to put marker rows in; by default the first tenant table that takes one.
    pub table: Option<String>,
}

/// One tenant's session through the proxy.
struct Tenant {
    label: &'static str,
    client: Client,
    id: String,
}

/// A committed marker row: the relation it went to (a partition, for a partitioned table) and its ctid.
struct Marker {
    relation: String,
    ctid: String,
}

/// A tenant table the probe writes to: its name, its tenant column and the other columns an
/// INSERT must fill, as `(column, SQL value)`.
#[derive(Clone)]
struct ProbeTable {
    name: String,
    column: String,
    column_type: String,
    fill: Vec<(String, String)>,
}

impl ProbeTable {
    /// `INSERT` of one row for `tenant` (a literal), returning where it went.
    fn insert_sql(&self, tenant: &str) -> String {
        let mut columns = vec![self.column.clone()];
        let mut values = vec![format!("{}::{}", literal(tenant), self.column_type)];
        for (column, value) in &self.fill {
            columns.push(column.clone());
            values.push(value.clone());
        }
        format!(
            "INSERT INTO {} ({}) VALUES ({}) RETURNING tableoid::regclass::text, ctid::text",
            self.name,
            columns.join(", "),
            values.join(", ")
        )
    }
}

/// Runs every probe check and returns the report.
pub async fn run(opts: &ProbeOptions) -> Result<Report, AuditError> {
    let a = connect(opts, "A", &opts.token_a).await?;
    let b = connect(opts, "B", &opts.token_b).await?;
    if a.id == b.id {
        return Err(AuditError::Usage(format!("both tokens are for tenant {}: give two different tenants", a.id)));
    }
    let mut report = Report { kind: "probe", ..Report::default() };
    report.context = vec![
        ("proxy".into(), target_label(&opts.proxy)),
        ("tenant A".into(), a.id.clone()),
        ("tenant B".into(), b.id.clone()),
    ];
    report.object("tokens");
    report.passed.push(Passed {
        id: "probe.context",
        object: "tokens".into(),
        what: format!("each session runs as its token's tenant ({}, {})", a.id, b.id),
    });
    let (table, markers) = insert_markers(opts, &a, &b).await?;
    report.object(format!("table {}", table.name));
    if opts.direct.is_some() {
        report.object(NO_CONTEXT);
    }
    report.object(format!("setting {}", opts.setting));
    let outcome = isolation_checks(opts, &table, &a, &b, &markers, &mut report).await;
    let cleanup = delete_markers(&a, &b, &markers).await;
    outcome?;
    cleanup?;
    tamper_checks(opts, &a, &b, &mut report).await?;
    Ok(report)
}

fn target_label(target: &Target) -> String {
    let host = match target.config.get_hosts().first() {
        Some(Host::Tcp(host)) => host.clone(),
        Some(Host::Unix(path)) => path.display().to_string(),
        None => "localhost".to_string(),
    };
    let port = target.config.get_ports().first().copied().unwrap_or(5432);
    format!("{host}:{port}/{}", target.dbname())
}

async fn connect(opts: &ProbeOptions, label: &'static str, token: &str) -> Result<Tenant, AuditError> {
    let client = opts
        .proxy
        .connect(Some(token))
        .await
        .map_err(|e| AuditError::Connect(format!("through the proxy with tenant {label}'s token: {e}")))?;
    let row = client
        .query_one("SELECT pg_catalog.current_setting($1, true)", &[&opts.setting])
        .await
        .map_err(|e| AuditError::Probe(format!("tenant {label}: reading {}: {}", opts.setting, describe_error(&e))))?;
    let id: Option<String> = row.get(0);
    match id.filter(|id| !id.is_empty()) {
        Some(id) => Ok(Tenant { label, client, id }),
        None => Err(AuditError::Probe(format!(
            "tenant {label}'s session has no {} set: is this a pgtenant proxy, with tenant.setting = {}?",
            opts.setting, opts.setting
        ))),
    }
}

/// Finds a table that takes a marker row and commits one for each tenant.
async fn insert_markers(opts: &ProbeOptions, a: &Tenant, b: &Tenant) -> Result<(ProbeTable, [Marker; 2]), AuditError> {
    let mut errors = Vec::new();
    for table in candidate_tables(opts, &a.client).await? {
        let first = match insert(&a.client, &table, &a.id).await {
            Ok(marker) => marker,
            Err(e) => {
                errors.push(format!("{}: {e}", table.name));
                continue;
            }
        };
        match insert(&b.client, &table, &b.id).await {
            Ok(second) => return Ok((table, [first, second])),
            Err(e) => {
                errors.push(format!("{} (tenant B): {e}", table.name));
                let _ = delete_marker(&a.client, &first).await;
            }
        }
    }
    let why = if errors.is_empty() {
        "no tenant table is writable by the pooled role".to_string()
    } else {
        errors.join("; ")
    };
    Err(AuditError::Probe(format!("could not insert a marker row: {why} (pick one with --table)")))
}

async fn insert(client: &Client, table: &ProbeTable, tenant: &str) -> Result<Marker, String> {
    let row = client.query_one(&table.insert_sql(tenant), &[]).await.map_err(|e| describe_error(&e))?;
    Ok(Marker { relation: row.get(0), ctid: row.get(1) })
}

/// Tenant tables the session can read and write, with the values their required columns need.
async fn candidate_tables(opts: &ProbeOptions, client: &Client) -> Result<Vec<ProbeTable>, AuditError> {
    let tables = "SELECT c.oid, pg_catalog.format('%I.%I', n.nspname, c.relname), pg_catalog.quote_ident(a.attname), \
                  pg_catalog.format_type(a.atttypid, a.atttypmod) \
                  FROM pg_catalog.pg_class c JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace \
                  JOIN pg_catalog.pg_attribute a ON a.attrelid = c.oid AND a.attname = $1::name AND NOT a.attisdropped \
                  WHERE c.relkind IN ('r', 'p') AND NOT c.relispartition \
                  AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                  AND pg_catalog.has_table_privilege(c.oid, 'SELECT') AND pg_catalog.has_table_privilege(c.oid, 'INSERT') \
                  AND pg_catalog.has_table_privilege(c.oid, 'UPDATE') AND pg_catalog.has_table_privilege(c.oid, 'DELETE') \
                  AND ($2::text IS NULL OR c.oid = pg_catalog.to_regclass($2::text)) ORDER BY 2";
    let rows =
        client.query(tables, &[&opts.column, &opts.table]).await.map_err(probe_error("listing tenant tables"))?;
    let mut out = Vec::new();
    for row in rows {
        let oid: u32 = row.get(0);
        if let Some(fill) = required_values(client, oid, &opts.column).await? {
            out.push(ProbeTable { name: row.get(1), column: row.get(2), column_type: row.get(3), fill });
        }
    }
    if out.is_empty() && opts.table.is_some() {
        let table = opts.table.as_deref().unwrap_or_default();
        return Err(AuditError::Usage(format!(
            "--table {table}: not a tenant table the pooled role can read and write, or it has required columns the probe cannot fill"
        )));
    }
    Ok(out)
}

/// Values for the NOT NULL columns without a default, or `None` if one has a type the probe
/// cannot make up a value for.
async fn required_values(client: &Client, oid: u32, column: &str) -> Result<Option<Vec<(String, String)>>, AuditError> {
    let sql = "SELECT pg_catalog.quote_ident(a.attname), pg_catalog.format_type(a.atttypid, a.atttypmod), \
               t.typcategory::text, t.typname::text \
               FROM pg_catalog.pg_attribute a JOIN pg_catalog.pg_type t ON t.oid = a.atttypid \
               WHERE a.attrelid = $1 AND a.attnum > 0 AND NOT a.attisdropped AND a.attnotnull \
               AND NOT a.atthasdef AND a.attidentity = '' AND a.attname <> $2::name ORDER BY a.attnum";
    let rows = client.query(sql, &[&oid, &column]).await.map_err(probe_error("listing required columns"))?;
    let mut rng = rand::thread_rng();
    let mut fill = Vec::new();
    for row in rows {
        let (name, ty, category, typname): (String, String, String, String) =
            (row.get(0), row.get(1), row.get(2), row.get(3));
        let value = match (category.as_str(), typname.as_str()) {
            (_, "uuid") => "pg_catalog.md5(pg_catalog.random()::text)::uuid".to_string(),
            (_, "json" | "jsonb") => format!("'{{}}'::{ty}"),
            ("S", _) => format!("'pgtenant-probe-{:08x}'::{ty}", rng.gen::<u32>()),
            ("N", _) => format!("{}::{ty}", rng.gen_range(1..30_000)),
            ("B", _) => format!("false::{ty}"),
            ("D", _) => format!("now()::{ty}"),
            _ => return Ok(None),
        };
        fill.push((name, value));
    }
    Ok(Some(fill))
}

fn probe_error(what: &'static str) -> impl Fn(tokio_postgres::Error) -> AuditError {
    move |e| AuditError::Probe(format!("{what}: {}", describe_error(&e)))
}

/// Both directions: the other tenant must not read, change or forge the owner's rows.
async fn isolation_checks(
    opts: &ProbeOptions,
    table: &ProbeTable,
    a: &Tenant,
    b: &Tenant,
    markers: &[Marker; 2],
    report: &mut Report,
) -> Result<(), AuditError> {
    for (owner, other, marker) in [(a, b, &markers[0]), (b, a, &markers[1])] {
        let object = format!("table {}", table.name);
        let own = format!("SELECT count(*) FROM {} WHERE ctid = $1::text::tid", marker.relation);
        let own = count(&owner.client, &own, &marker.ctid).await?;
        record(report, own == 1, "probe.own_rows", &object, Severity::Warning, || {
            (
                format!("tenant {} sees its own row", owner.label),
                format!("tenant {} cannot see the row it just inserted: do the policies deny everything?", owner.label),
            )
        });
        cross_tenant_checks(table, owner, other, &object, report).await?;
    }
    if let Some(direct) = &opts.direct {
        no_context_check(direct, table, report).await?;
    }
    Ok(())
}

/// `other` must not read, update, delete or insert `owner`'s rows (changes are rolled back).
async fn cross_tenant_checks(
    table: &ProbeTable,
    owner: &Tenant,
    other: &Tenant,
    object: &str,
    report: &mut Report,
) -> Result<(), AuditError> {
    let (o, x) = (owner.label, other.label);
    let filter = format!("{}::text = $1", table.column);
    let seen = count(&other.client, &format!("SELECT count(*) FROM {} WHERE {filter}", table.name), &owner.id).await?;
    record(report, seen == 0, "probe.read", object, Severity::Unsafe, || {
        (format!("tenant {x} sees none of tenant {o}'s rows"), format!("tenant {x} sees {seen} of tenant {o}'s rows"))
    });
    for (id, verb, sql) in [
        ("probe.update", "UPDATE", format!("UPDATE {} SET {c} = {c} WHERE {filter}", table.name, c = table.column)),
        ("probe.delete", "DELETE", format!("DELETE FROM {} WHERE {filter}", table.name)),
    ] {
        let changed = rolled_back_execute(&other.client, &sql, Some(&owner.id)).await?;
        record(report, changed == Ok(0), id, object, Severity::Unsafe, || {
            let why = match &changed {
                Ok(n) => format!("tenant {x}'s {verb} reached {n} of tenant {o}'s rows (rolled back)"),
                Err(e) => format!("tenant {x}'s {verb} failed unexpectedly: {e}"),
            };
            (format!("tenant {x} cannot {verb} tenant {o}'s rows"), why)
        });
    }
    let forged = rolled_back_execute(&other.client, &table.insert_sql(&owner.id), None).await?;
    let refused = matches!(&forged, Err(e) if is_refusal(e));
    let severity = if forged.is_ok() { Severity::Unsafe } else { Severity::Warning };
    record(report, refused, "probe.insert", object, severity, || {
        let why = match &forged {
            Ok(_) => format!("tenant {x} inserted a row for tenant {o} (rolled back)"),
            Err(e) => format!("the forged insert failed, but not with 42501: {e}"),
        };
        (format!("tenant {x} cannot insert rows for tenant {o} (42501)"), why)
    });
    Ok(())
}

/// A direct connection (no proxy, no tenant) must see no rows, while both markers exist.
async fn no_context_check(direct: &Target, table: &ProbeTable, report: &mut Report) -> Result<(), AuditError> {
    let client = direct.connect(None).await.map_err(|e| AuditError::Connect(format!("--database-url: {e}")))?;
    let sql = format!("SELECT count(*) FROM {}", table.name);
    let seen: Result<i64, String> = match client.query_one(&sql, &[]).await {
        Ok(row) => Ok(row.get(0)),
        Err(e) => Err(describe_error(&e)),
    };
    record(report, matches!(seen, Ok(0)) || seen.is_err(), "probe.no_context", NO_CONTEXT, Severity::Unsafe, || {
        let what = match &seen {
            Ok(_) => format!("a session with no tenant sees no rows of {}", table.name),
            Err(e) => format!("a session with no tenant cannot read {} ({e})", table.name),
        };
        (what, format!("a session with no tenant sees {} rows of {}", seen.clone().unwrap_or_default(), table.name))
    });
    Ok(())
}

/// Statements that change the tenant must be refused by the proxy (42501); a DO block must not
/// manage it either.
async fn tamper_checks(opts: &ProbeOptions, a: &Tenant, b: &Tenant, report: &mut Report) -> Result<(), AuditError> {
    let s = &opts.setting;
    let other = literal(&b.id);
    let object = format!("setting {s}");
    let statements = [
        format!("SET {s} = {other}"),
        format!("SET LOCAL {s} = {other}"),
        format!("RESET {s}"),
        format!("SELECT pg_catalog.set_config({}, {other}, true)", literal(s)),
    ];
    for sql in &statements {
        let outcome = in_rolled_back_transaction(&a.client, sql).await?;
        let severity = if outcome.is_ok() { Severity::Unsafe } else { Severity::Warning };
        let refused = matches!(&outcome, Err(e) if is_refusal(e));
        record(report, refused, "probe.tamper", &object, severity, || {
            let why = match &outcome {
                Ok(()) => format!("`{sql}` ran: a tenant can change its tenant"),
                Err(e) => format!("`{sql}` failed, but not as a pgtenant refusal (42501): {e}"),
            };
            (format!("`{sql}` is refused (42501)"), why)
        });
    }
    let body = format!("BEGIN EXECUTE 'SET LOCAL {s} = ' || quote_literal({other}); END");
    // In signed mode the policies trust only the verified tenant: a changed
    // setting without a matching proof yields none (NULL), which is safe.
    let signed = signed_setup(&a.client).await?;
    let effective = match signed {
        true => "pgtenant.current_tenant()".to_string(),
        false => format!("pg_catalog.current_setting({}, true)", literal(s)),
    };
    let sql = format!("DO $pgtenant$ {body} $pgtenant$; SELECT {effective}");
    let tenant = do_block_tenant(&a.client, &sql).await?;
    let changed = tenant.as_ref().is_ok_and(|t| match (signed, t.as_deref()) {
        (true, None) => false,
        (_, t) => t != Some(a.id.as_str()),
    });
    record(report, !changed, "probe.tamper_do", &object, Severity::Unsafe, || {
        let what = match (&tenant, signed) {
            (Err(e), _) => format!("a DO block cannot change the tenant (refused: {e})"),
            (Ok(_), true) => "a DO block changed the setting, but the signed context verifies no tenant".to_string(),
            (Ok(_), false) => "a DO block ran but the tenant stayed the same".to_string(),
        };
        (what, "a DO block changed the tenant: revoke USAGE on plpgsql (see doctor's bypass.language)".to_string())
    });
    Ok(())
}

/// Whether the database has the signed setup (`pgtenant policy --signed`).
async fn signed_setup(client: &Client) -> Result<bool, AuditError> {
    let sql = "SELECT pg_catalog.to_regprocedure('pgtenant.current_tenant()') IS NOT NULL";
    let row = client.query_one(sql, &[]).await.map_err(probe_error("the signed-setup lookup"))?;
    Ok(row.get(0))
}

/// Runs the DO block and reads the tenant afterwards, in a rolled-back transaction.
async fn do_block_tenant(client: &Client, sql: &str) -> Result<Result<Option<String>, String>, AuditError> {
    client.batch_execute("BEGIN").await.map_err(probe_error("BEGIN"))?;
    let outcome = client.simple_query(sql).await;
    client.batch_execute("ROLLBACK").await.map_err(probe_error("ROLLBACK"))?;
    Ok(match outcome {
        Ok(messages) => Ok(messages
            .iter()
            .find_map(|m| match m {
                tokio_postgres::SimpleQueryMessage::Row(row) => Some(row.get(0).map(str::to_string)),
                _ => None,
            })
            .flatten()),
        Err(e) => Err(describe_error(&e)),
    })
}

/// Whether an error as [`describe_error`] prints it (`<severity> <SQLSTATE>: <message>`, the
/// severity possibly translated) carries SQLSTATE 42501, as pgtenant's refusals do.
fn is_refusal(error: &str) -> bool {
    error.split_whitespace().nth(1) == Some("42501:")
}

/// Adds a pass, or a finding with `severity`; `texts` gives (what passed, why it failed).
fn record(
    report: &mut Report,
    passed: bool,
    id: &'static str,
    object: &str,
    severity: Severity,
    texts: impl FnOnce() -> (String, String),
) {
    let (what, why) = texts();
    if passed {
        report.passed.push(Passed { id, object: object.to_string(), what });
    } else {
        report.findings.push(Finding::new(id, severity, object, why));
    }
}

async fn count(client: &Client, sql: &str, param: &str) -> Result<i64, AuditError> {
    let row = client
        .query_one(sql, &[&param])
        .await
        .map_err(|e| AuditError::Probe(format!("{sql}: {}", describe_error(&e))))?;
    Ok(row.get(0))
}

/// Runs `sql` (with `$1` = `param` when given) in a transaction that is rolled back:
/// rows affected, or the error.
async fn rolled_back_execute(
    client: &Client,
    sql: &str,
    param: Option<&str>,
) -> Result<Result<u64, String>, AuditError> {
    client.batch_execute("BEGIN").await.map_err(probe_error("BEGIN"))?;
    let outcome = match param {
        Some(param) => client.execute(sql, &[&param]).await,
        None => client.execute(sql, &[]).await,
    };
    client.batch_execute("ROLLBACK").await.map_err(probe_error("ROLLBACK"))?;
    Ok(outcome.map_err(|e| describe_error(&e)))
}

/// Runs one simple-protocol statement in a transaction that is rolled back.
async fn in_rolled_back_transaction(client: &Client, sql: &str) -> Result<Result<(), String>, AuditError> {
    client.batch_execute("BEGIN").await.map_err(probe_error("BEGIN"))?;
    let outcome = client.batch_execute(sql).await.map_err(|e| describe_error(&e));
    client.batch_execute("ROLLBACK").await.map_err(probe_error("ROLLBACK"))?;
    Ok(outcome)
}

async fn delete_markers(a: &Tenant, b: &Tenant, markers: &[Marker; 2]) -> Result<(), AuditError> {
    delete_marker(&a.client, &markers[0]).await?;
    delete_marker(&b.client, &markers[1]).await
}

async fn delete_marker(client: &Client, marker: &Marker) -> Result<(), AuditError> {
    let sql = format!("DELETE FROM {} WHERE ctid = $1::text::tid", marker.relation);
    client.execute(&sql, &[&marker.ctid]).await.map_err(probe_error("deleting a marker row"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refusals_are_recognised_by_sqlstate() {
        assert!(is_refusal("ERROR 42501: permission denied"));
        assert!(is_refusal("FEHLER 42501: keine Berechtigung"));
        assert!(!is_refusal("ERROR 22P02: invalid input syntax"));
    }

    #[test]
    fn marker_inserts_fill_required_columns() {
        let table = ProbeTable {
            name: "public.t".into(),
            column: "tenant_id".into(),
            column_type: "uuid".into(),
            fill: vec![("tool_name".into(), "'x'::text".into())],
        };
        assert_eq!(
            table.insert_sql("aaaa"),
            "INSERT INTO public.t (tenant_id, tool_name) VALUES ('aaaa'::uuid, 'x'::text) RETURNING tableoid::regclass::text, ctid::text"
        );
    }
}
