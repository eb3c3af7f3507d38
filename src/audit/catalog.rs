//! One read of the system catalogs: everything `doctor` checks and `policy` generates from,
//! as plain data, so the checks themselves are pure functions over a [`Catalog`].
//!
//! Every query is read-only and needs no privilege beyond reading the catalogs; privileges
//! are evaluated for the audited role with `has_*_privilege` and `pg_has_role`.

mod privileges;
mod signed;
mod tables;

use tokio_postgres::{Client, Row};

use self::privileges::{privileges, role_settings, server_setting_value, setting_functions, unpinned_definers, views};
use self::tables::{
    attach_foreign_keys, attach_indexes, attach_policies, attach_sequences, other_tables, tenant_tables,
};
use super::{AuditError, Target};

/// The schemas that hold no user objects.
const USER_SCHEMAS: &str = "n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname !~ '^pg_(toast|temp_)'";

/// Who is audited and what marks a tenant table.
#[derive(Debug, Clone)]
pub struct Scope {
    /// The pooled role (`upstream.user`).
    pub role: String,
    /// The tenant column.
    pub column: String,
    /// The tenant setting (lower case).
    pub setting: String,
}

/// Everything read from one database.
#[derive(Debug, Clone, Default)]
pub struct Catalog {
    /// `current_database()`.
    pub database: String,
    /// The database name, quoted as an identifier.
    pub database_ident: String,
    /// `server_version`, e.g. `15.10 (Debian ...)`.
    pub server_version: String,
    /// `server_version_num`, e.g. 150010.
    pub server_version_num: i32,
    /// The user doctor connected as, quoted.
    pub current_user: String,
    /// The tenant column, quoted as an identifier.
    pub column_ident: String,
    /// The audited role; `None` when it does not exist.
    pub role: Option<RoleInfo>,
    /// Tables and partitions with the tenant column.
    pub tables: Vec<TenantTable>,
    /// Tables without the tenant column: (name, the role has some privilege on it).
    pub other_tables: Vec<(String, bool)>,
    /// Ways to run SQL the proxy never sees, and other privileges around it.
    pub privileges: Privileges,
    /// Views and materialized views that read tenant tables (directly or through views).
    pub views: Vec<ViewInfo>,
    /// Functions with a `SET <setting>` clause: (signature, executable by the role).
    pub setting_functions: Vec<(String, bool)>,
    /// SECURITY DEFINER functions the role can execute that do not pin `search_path`.
    pub unpinned_definers: Vec<String>,
    /// `pg_db_role_setting` entries for the setting that reach the role in this database.
    pub role_settings: Vec<RoleSetting>,
    /// The setting's value in every new session, from the server configuration, if any.
    pub server_setting_value: Option<String>,
    /// The schema pgcrypto is installed in, quoted; `None` when it is not installed.
    pub pgcrypto_schema: Option<String>,
    /// The signed tenant context, when its function or its key table exists.
    pub signed: Option<SignedSetup>,
}

/// The objects of the signed tenant context (`pgtenant policy --signed`), as the role sees them.
#[derive(Debug, Clone, Default)]
pub struct SignedSetup {
    /// The owner of schema `pgtenant`, quoted; `None` when the schema does not exist.
    pub schema_owner: Option<String>,
    /// The role can CREATE in schema `pgtenant` (as its owner, a member or a grantee).
    pub schema_create: bool,
    /// `pgtenant.current_tenant()`, if it exists.
    pub function: Option<SignedFunction>,
    /// `pgtenant.signing_keys`, if it exists.
    pub key_table: Option<KeyTable>,
    /// Owners of the schema, the function or the key table that the role is a member of
    /// (not the role itself), quoted.
    pub member_of_owners: Vec<String>,
    /// Other SECURITY DEFINER functions of those owners that the role can execute (they run
    /// with access to the keys, e.g. `add_signing_key`), as signatures.
    pub key_functions: Vec<String>,
    /// The value each of [`crate::audit::signed::LOG_PARAMETER_SETTINGS`] has in new sessions
    /// of the role: (name, value); empty before PostgreSQL 13.
    pub log_parameters: Vec<(String, String)>,
}

/// `pgtenant.current_tenant()`.
#[derive(Debug, Clone, Default)]
pub struct SignedFunction {
    /// The owner, quoted.
    pub owner: String,
    /// The owner is a superuser.
    pub owner_superuser: bool,
    /// The owner is the role itself.
    pub owned_by_role: bool,
    /// `prosecdef`.
    pub security_definer: bool,
    /// `proconfig` sets `search_path`.
    pub search_path_pinned: bool,
    /// Schemas in that `search_path` the role can CREATE in, quoted.
    pub search_path_writable: Vec<String>,
    /// `provolatile`: `i` immutable, `s` stable, `v` volatile.
    pub volatility: char,
    /// The role can call it (EXECUTE on it and USAGE on its schema).
    pub executable: bool,
    /// What it returned when doctor called it with a forged proof.
    pub behaviour: Behaviour,
}

/// What `pgtenant.current_tenant()` did when doctor called it with the tenant setting set and
/// a proof that cannot be right (none, then a wrong one for a loaded key id).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Behaviour {
    /// NULL both times, as it must.
    Refuses,
    /// It returned the forged tenant: it does not check the proof.
    Trusts,
    /// The call failed with this error (so would every query of the role).
    Fails(String),
    /// Doctor could not call it, for this reason.
    #[default]
    Untested,
}

/// `pgtenant.signing_keys`.
#[derive(Debug, Clone, Default)]
pub struct KeyTable {
    /// The owner, quoted.
    pub owner: String,
    /// The role's privileges on it (directly, through PUBLIC or roles, or on some column).
    pub role_privileges: Vec<String>,
    /// How many keys are loaded; `None` when doctor's own user cannot read the table.
    pub rows: Option<i64>,
}

/// The audited role.
#[derive(Debug, Clone, Default)]
pub struct RoleInfo {
    /// The name, quoted as an identifier.
    pub ident: String,
    /// `rolsuper`.
    pub superuser: bool,
    /// `rolbypassrls`.
    pub bypassrls: bool,
    /// `rolcreaterole`.
    pub createrole: bool,
    /// `rolcreatedb`.
    pub createdb: bool,
    /// Every role it is a member of, directly or not.
    pub member_of: Vec<String>,
}

/// A table or partition with the tenant column.
#[derive(Debug, Clone, Default)]
pub struct TenantTable {
    /// `pg_class.oid`.
    pub oid: u32,
    /// `schema.table`, quoted.
    pub name: String,
    /// The bare table name (unquoted), for naming indexes.
    pub relname: String,
    /// The schema, quoted.
    pub schema: String,
    /// A partitioned table (its partitions are listed separately).
    pub partitioned: bool,
    /// The parent (partitioned table or inheritance parent), quoted.
    pub parent: Option<String>,
    /// Whether the parent relationship is partitioning (else inheritance).
    pub is_partition: bool,
    /// The tenant column's type, e.g. `uuid`.
    pub column_type: String,
    /// `relrowsecurity`.
    pub rls_enabled: bool,
    /// `relforcerowsecurity`.
    pub rls_forced: bool,
    /// The owner, quoted.
    pub owner: String,
    /// The role owns the table or is a member of its owner.
    pub role_owns: bool,
    /// The role's privileges on it.
    pub grants: TableGrants,
    /// Its policies.
    pub policies: Vec<Policy>,
    /// Its indexes.
    pub indexes: Vec<Index>,
    /// Its foreign keys (not those cloned onto partitions).
    pub foreign_keys: Vec<ForeignKey>,
    /// Sequences owned by its columns, quoted.
    pub sequences: Vec<String>,
}

impl TenantTable {
    /// `table public.t`, or `partition public.t_2026 (of public.t)`, for reports.
    pub fn label(&self) -> String {
        match (&self.parent, self.is_partition) {
            (Some(parent), true) => format!("partition {} (of {parent})", self.name),
            (Some(parent), false) => format!("table {} (inherits {parent})", self.name),
            (None, _) => format!("table {}", self.name),
        }
    }
}

/// The audited role's privileges on one table (directly, through PUBLIC or through roles).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct TableGrants {
    /// SELECT.
    pub select: bool,
    /// INSERT.
    pub insert: bool,
    /// UPDATE.
    pub update: bool,
    /// DELETE.
    pub delete: bool,
    /// TRUNCATE.
    pub truncate: bool,
    /// REFERENCES.
    pub references: bool,
    /// TRIGGER.
    pub trigger: bool,
}

/// One row-level security policy.
#[derive(Debug, Clone, Default)]
pub struct Policy {
    /// The name, quoted.
    pub name: String,
    /// `polcmd`: `r` SELECT, `a` INSERT, `w` UPDATE, `d` DELETE, `*` ALL.
    pub command: char,
    /// PERMISSIVE (else RESTRICTIVE).
    pub permissive: bool,
    /// It applies to the role (PUBLIC, the role, or a role whose privileges it inherits).
    pub applies: bool,
    /// The role could make it apply (it is a member, perhaps without inheriting).
    pub reachable: bool,
    /// `USING` expression as `pg_get_expr` prints it.
    pub using: Option<String>,
    /// `WITH CHECK` expression as `pg_get_expr` prints it.
    pub check: Option<String>,
    /// It calls `pgtenant.current_tenant()` (per `pg_depend`, however the expression prints it).
    pub calls_signed: bool,
}

/// One index of a tenant table.
#[derive(Debug, Clone, Default)]
pub struct Index {
    /// The name, quoted.
    pub name: String,
    /// UNIQUE (including primary keys).
    pub unique: bool,
    /// Partial (has a WHERE clause).
    pub partial: bool,
    /// The tenant column is its first key column.
    pub leads_with_tenant: bool,
    /// The tenant column is one of its key columns.
    pub has_tenant: bool,
    /// Every key column is generated (identity, serial, random uuid default).
    pub generated_keys: bool,
}

/// One foreign key of a tenant table.
#[derive(Debug, Clone, Default)]
pub struct ForeignKey {
    /// The constraint name, quoted.
    pub name: String,
    /// The referenced table, quoted.
    pub references: String,
    /// The referenced table is a tenant table too.
    pub references_tenant_table: bool,
    /// The tenant column is matched to the referenced tenant column.
    pub includes_tenant: bool,
    /// `pg_get_constraintdef`.
    pub definition: String,
}

/// Privileges of the role that open ways around the proxy.
#[derive(Debug, Clone, Default)]
pub struct Privileges {
    /// TEMPORARY on the database.
    pub temp: bool,
    /// Schemas it can CREATE in, quoted.
    pub create_schemas: Vec<String>,
    /// Procedural languages (other than `sql`) it can use, quoted.
    pub languages: Vec<String>,
    /// It can EXECUTE `set_config`.
    pub set_config: bool,
    /// `set_config` is executable by PUBLIC.
    pub set_config_public: bool,
    /// Built-ins that run SQL given as text that it can execute (signatures).
    pub sql_text_functions: Vec<String>,
    /// dblink functions it can execute (signatures).
    pub dblink_functions: Vec<String>,
    /// Objects that show other sessions' query texts that it can use.
    pub activity_objects: Vec<String>,
    /// Objects that show statement texts prepared on the connection that it can use.
    pub prepared_objects: Vec<String>,
}

/// A view or materialized view over tenant tables.
#[derive(Debug, Clone, Default)]
pub struct ViewInfo {
    /// `schema.view`, quoted.
    pub name: String,
    /// A materialized view.
    pub materialized: bool,
    /// The owner, quoted.
    pub owner: String,
    /// The role is a member of the owner (the view then checks RLS as the role anyway).
    pub owned_by_role: bool,
    /// `security_invoker` is on.
    pub security_invoker: bool,
    /// The role can SELECT from it.
    pub selectable: bool,
    /// The tenant tables it reads, quoted.
    pub reads: Vec<String>,
}

/// A `pg_db_role_setting` entry that sets the tenant setting.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RoleSetting {
    /// The role it is for (quoted), or `None` for every role.
    pub role: Option<String>,
    /// It is for this database only (else for every database).
    pub this_database: bool,
    /// The value it sets.
    pub value: String,
}

impl Catalog {
    /// Reads everything for `scope` from `client`.
    pub async fn load(client: &Client, scope: &Scope) -> Result<Catalog, AuditError> {
        let mut catalog = database(client, scope).await?;
        catalog.role = role(client, &scope.role).await?;
        if catalog.role.is_none() {
            return Err(AuditError::Usage(format!(
                "role {:?} does not exist in database {:?}: pass the pooled role with --role",
                scope.role, catalog.database
            )));
        }
        catalog.tables = tenant_tables(client, scope).await?;
        let oids: Vec<u32> = catalog.tables.iter().map(|t| t.oid).collect();
        attach_policies(client, &scope.role, &oids, &mut catalog.tables).await?;
        attach_indexes(client, &scope.column, &oids, &mut catalog.tables).await?;
        attach_foreign_keys(client, &scope.column, &oids, &mut catalog.tables).await?;
        attach_sequences(client, &oids, &mut catalog.tables).await?;
        catalog.other_tables = other_tables(client, scope).await?;
        let temp = catalog.privileges.temp;
        catalog.privileges = Privileges { temp, ..privileges(client, &scope.role).await? };
        catalog.views = views(client, &scope.role, &oids).await?;
        catalog.setting_functions = setting_functions(client, &scope.role, &scope.setting).await?;
        catalog.unpinned_definers = unpinned_definers(client, &scope.role).await?;
        catalog.role_settings = role_settings(client, &scope.role, &scope.setting).await?;
        catalog.server_setting_value = server_setting_value(client, &scope.setting).await?;
        catalog.pgcrypto_schema = signed::pgcrypto_schema(client).await?;
        catalog.signed = signed::signed_setup(client, scope, catalog.server_version_num).await?;
        Ok(catalog)
    }

    /// Connects to `target` and reads the catalog.
    pub async fn read(target: &Target, scope: &Scope) -> Result<Catalog, AuditError> {
        let client = target.connect(None).await?;
        Catalog::load(&client, scope).await
    }

    /// The tenant table with `name`, if any.
    pub fn table(&self, name: &str) -> Option<&TenantTable> {
        self.tables.iter().find(|t| t.name == name)
    }

    /// The major version as PostgreSQL numbers it (`15`; `906` for 9.6).
    pub fn major(&self) -> i32 {
        major_of(self.server_version_num)
    }
}

/// The major version of a `server_version_num` (`150010` → 15, `90613` → 906).
pub fn major_of(num: i32) -> i32 {
    if num >= 100_000 {
        num / 10_000
    } else {
        num / 100
    }
}

async fn query(
    client: &Client,
    sql: &str,
    params: &[&(dyn tokio_postgres::types::ToSql + Sync)],
) -> Result<Vec<Row>, AuditError> {
    client.query(sql, params).await.map_err(|e| AuditError::Query(super::describe_error(&e)))
}

async fn database(client: &Client, scope: &Scope) -> Result<Catalog, AuditError> {
    let sql = "SELECT pg_catalog.current_database()::text, pg_catalog.quote_ident(pg_catalog.current_database()), \
               pg_catalog.current_setting('server_version'), pg_catalog.current_setting('server_version_num')::int4, \
               pg_catalog.quote_ident(current_user), pg_catalog.quote_ident($2::text), \
               CASE WHEN EXISTS (SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = $1::name) \
               THEN pg_catalog.has_database_privilege($1::name, pg_catalog.current_database(), 'TEMPORARY') END";
    let rows = query(client, sql, &[&scope.role, &scope.column]).await?;
    let row = rows.first().ok_or_else(|| AuditError::Query("no row for the database".into()))?;
    Ok(Catalog {
        database: row.get(0),
        database_ident: row.get(1),
        server_version: row.get(2),
        server_version_num: row.get(3),
        current_user: row.get(4),
        column_ident: row.get(5),
        privileges: Privileges { temp: row.get::<_, Option<bool>>(6).unwrap_or(false), ..Privileges::default() },
        ..Catalog::default()
    })
}

async fn role(client: &Client, role: &str) -> Result<Option<RoleInfo>, AuditError> {
    let sql = "SELECT pg_catalog.quote_ident(r.rolname), r.rolsuper, r.rolbypassrls, r.rolcreaterole, r.rolcreatedb, \
               ARRAY(SELECT p.rolname::text FROM pg_catalog.pg_roles p \
                     WHERE p.oid <> r.oid AND pg_catalog.pg_has_role(r.oid, p.oid, 'MEMBER') ORDER BY 1) \
               FROM pg_catalog.pg_roles r WHERE r.rolname = $1::name";
    let rows = query(client, sql, &[&role]).await?;
    Ok(rows.first().map(|r| RoleInfo {
        ident: r.get(0),
        superuser: r.get(1),
        bypassrls: r.get(2),
        createrole: r.get(3),
        createdb: r.get(4),
        member_of: r.get(5),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn majors() {
        assert_eq!(major_of(150010), 15);
        assert_eq!(major_of(90613), 906);
        assert_eq!(major_of(180001), 18);
    }

    #[test]
    fn labels_name_partitions_and_children() {
        let mut t = TenantTable { name: "public.e_2026".into(), parent: Some("public.e".into()), ..Default::default() };
        t.is_partition = true;
        assert_eq!(t.label(), "partition public.e_2026 (of public.e)");
        t.is_partition = false;
        assert_eq!(t.label(), "table public.e_2026 (inherits public.e)");
    }
}
