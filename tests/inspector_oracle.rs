//! The SQL inspector cross-checked against PostgreSQL itself.
//!
//! Every record of `tests/data/inspector_corpus.sql` (at least 300: every tamper spelling,
//! transaction control, statements that cannot run in a transaction block, ordinary queries,
//! hostile quoting, multi-statement strings) is sent directly to PostgreSQL, without the proxy,
//! as one simple Query message, the way a client sends it. Each run starts on a fresh
//! connection whose tenant setting holds a known session value, and PostgreSQL is watched to
//! see what the text really did:
//!
//! - did it change the tenant setting? `current_setting()` is read at the end of the same
//!   query string (a probe appended to it), inside any transaction it left open, and after
//!   that transaction; stored defaults count too (`ALTER ROLE/DATABASE ... SET` in
//!   `pg_db_role_setting`, function `SET` clauses in `pg_proc.proconfig`, `ALTER SYSTEM` in
//!   `postgresql.auto.conf`). The same for the other settings the proxy protects:
//!   `standard_conforming_strings`, and `client_encoding` switched to an encoding that can
//!   hide quotes;
//! - did it open, end or chain a transaction? The ReadyForQuery status after it, run from
//!   idle and inside `BEGIN`, and whether the open transaction afterwards is a new one
//!   (`AND CHAIN`: `pg_stat_activity.xact_start` changed);
//! - can it not run inside a transaction block? Run right after `BEGIN`: SQLSTATE 25001 from
//!   `PreventInTransactionBlock` (not the 25001 of `SET TRANSACTION ISOLATION LEVEL` after a query).
//!
//! Multi-statement strings are observed whole (statement count, where an error stopped them,
//! final status, setting changes), and each statement of the inspector's split is also
//! observed alone. The test fails, printing every disagreement with what PostgreSQL did and
//! what the inspector said, where they differ:
//!
//! - PostgreSQL saw a protected setting change, but the inspector refused nothing;
//! - the inspector refused a statement that, alone, changed no protected setting;
//! - transaction control (`tx`) or `no_tx_block` differ, or the whole string's final status
//!   is not what the inspector's classification predicts; the split differs.
//!
//! Deliberate differences are listed below, each with the reason, in [`CONSERVATIVE`],
//! [`CLEARS`], [`BLIND_SPOTS`] and [`NO_TX_BLOCK_DIFFERENCES`]; an entry that no longer
//! matches a disagreement fails the test as well, so the lists cannot go stale.
//!
//! Everything runs as the superuser so that privileged statements really execute; `app_user`
//! would get 42501 for `ALTER ROLE/DATABASE/SYSTEM`, `CREATE DATABASE/TABLESPACE/SUBSCRIPTION`
//! and `SET SESSION AUTHORIZATION`, which the inspector classifies the same either way. The
//! blind spots work as `app_user` with default privileges (PL/pgSQL and `pg_temp` functions).
//! Nothing persists: transactions are rolled back, and what a statement commits (role and
//! database defaults, `ALTER SYSTEM`, prepared transactions, databases, subscriptions, objects
//! in the scratch schema, changed fixtures) is undone after each run.

mod support;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::time::Instant;

use pgtenant::sql::{Inspection, Inspector, Statement, TxControl};
use support::{summarize, Message, PgCluster, RawClient};
use tokio_postgres::Client;

const CORPUS: &str = include_str!("data/inspector_corpus.sql");
const MIN_RECORDS: usize = 300;
const TENANT_SETTING: &str = "app.current_tenant_id";
/// The tenant setting's session value before each run; no record uses it.
const ORIGINAL: &str = "oracle-original-tenant";
/// The database the corpus runs in, created by this test.
const DB: &str = "oracle";
/// Encodings whose multibyte characters may contain `'` or `\` bytes (as PostgreSQL names them).
const UNSAFE_ENCODINGS: [&str; 6] = ["SJIS", "BIG5", "GBK", "UHC", "GB18030", "JOHAB"];

/// Refused although PostgreSQL, running the statement alone, changed no protected setting:
/// deliberate, conservative refusals. (statement text as the inspector splits it, why)
const CONSERVATIVE: &[(&str, &str)] = &[
    // Any SET/RESET naming a protected setting is refused, whatever its value or effect.
    (
        "SET app.current_tenant_id FROM CURRENT",
        "no change alone, but it makes a SET LOCAL value session-wide (multi record)",
    ),
    ("SET SESSION app.current_tenant_id FROM CURRENT", "as above"),
    ("SET app.current_tenant_id = 'a', 'b'", "PostgreSQL rejects the value list (22023); the value is not looked at"),
    ("ALTER ROLE app_user RESET app.current_tenant_id", "removes a stored default; there was none here"),
    ("ALTER DATABASE oracle RESET app.current_tenant_id", "removes a stored default; there was none here"),
    ("ALTER FUNCTION fx.f() RESET app.current_tenant_id", "removes a routine's SET clause; there was none here"),
    ("ALTER SYSTEM RESET app.current_tenant_id", "removes an auto.conf entry; there was none here"),
    ("ALTER SYSTEM SET app.current_tenant_id TO DEFAULT", "removes an auto.conf entry; there was none here"),
    ("SET standard_conforming_strings = on", "already on, so nothing changes"),
    ("SET app.current_tenant_İd = 'evil'", "a single-byte server encoding lowercases İ to i; this UTF8 one does not"),
    ("RESET standard_conforming_strings", "already the default, so nothing changes"),
    // Whether an expression is evaluated is not decidable from the text.
    ("SELECT set_config('app.current_tenant_id', 'evil', false) WHERE false", "no row, so never evaluated"),
    ("SELECT set_config('app.current_tenant_id', 'evil', false) LIMIT 0", "no row fetched, so never evaluated"),
    ("EXPLAIN SELECT set_config('app.current_tenant_id', 'evil', false)", "plain EXPLAIN only plans"),
    // set_config whose setting name is not a plain literal may name any setting (wire contract).
    ("SELECT set_config('search_' || 'path', 'fx, public', false)", "the computed name is search_path here"),
    (
        "SELECT set_config(setting_name => 'search_path', new_value => 'fx', is_local => false)",
        "not a literal first argument (PostgreSQL: no such argument names, 42883)",
    ),
    // A set_config that is not called with a literal name may be a function reference
    // (an aggregate's SFUNC = set_config): every such mention is refused.
    ("SELECT set_config FROM t", "a column reference (42703 here)"),
    ("SELECT 1 AS set_config", "a column label"),
    ("CREATE TEMP TABLE tmp_set (set_config text, \"app.current_tenant_id\" text)", "a column name"),
    // Objects that change the setting when used later (each has a multi record that uses it).
    ("PREPARE p_sc AS SELECT set_config('app.current_tenant_id', 'evil', false)", "changes it on EXECUTE"),
    ("DECLARE c_sc CURSOR FOR SELECT set_config('app.current_tenant_id', 'evil', false)", "changes it on FETCH"),
    ("CREATE TEMP VIEW v_sc AS SELECT set_config('app.current_tenant_id', 'evil', false) AS v", "changes it when read"),
    (
        "CREATE FUNCTION scratch.f_atomic() RETURNS text LANGUAGE sql BEGIN ATOMIC \
         SELECT set_config('app.current_tenant_id', 'evil', false); END",
        "changes it when called",
    ),
    (
        "CREATE AGGREGATE pg_temp.agg_sc(text, boolean) (SFUNC = set_config, STYPE = text, \
         INITCOND = 'app.current_tenant_id')",
        "calls set_config with its state as the name when used",
    ),
    (
        "CREATE AGGREGATE pg_temp.agg_lit(text, boolean) (SFUNC = 'set_config', STYPE = text, \
         INITCOND = 'app.current_tenant_id')",
        "the same, the function named by a string",
    ),
    (
        "CREATE AGGREGATE pg_temp.agg_fin(text, boolean) (SFUNC = textcat, STYPE = text, INITCOND = '', \
         FINALFUNC = 'set_config', FINALFUNC_EXTRA)",
        "FINALFUNC_EXTRA passes NULLs and set_config is strict, so nothing; refused as any mention",
    ),
    (
        "CREATE AGGREGATE pg_temp.agg_rw(text) (SFUNC = ts_rewrite, STYPE = tsquery, INITCOND = 'a')",
        "runs its argument as SQL when used",
    ),
    (
        "CREATE OPERATOR pg_temp.### (LEFTARG = tsquery, RIGHTARG = text, FUNCTION = 'ts_rewrite')",
        "runs its right operand as SQL when used",
    ),
    (
        "CREATE RULE r_sc AS ON INSERT TO scratch.r DO ALSO SELECT set_config('app.current_tenant_id', 'evil', false)",
        "changes it on every insert; alone its table does not exist (42P01)",
    ),
    (
        "CREATE RULE r_sc AS ON INSERT TO scratch.absent DO ALSO \
         (SELECT set_config('app.current_tenant_id', 'evil', false); SELECT 1)",
        "would change it on every insert; its table does not exist (42P01)",
    ),
    // pg_settings may only be read with SELECT: its UPDATE rule calls set_config().
    (
        "UPDATE pg_settings SET setting = 'evil' WHERE name = 'app.current_tenant_id'",
        "custom placeholders are not rows of pg_settings (UPDATE 0); other names are",
    ),
    (
        "WITH u AS (UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings' \
         RETURNING name) SELECT * FROM u",
        "PostgreSQL rejects a rule-rewritten UPDATE inside WITH (0A000)",
    ),
    ("CREATE TEMP VIEW v_settings AS SELECT * FROM pg_settings", "the view inherits the UPDATE rule (multi record)"),
];

/// Statements that only clear the tenant setting and are deliberately not refused (wire
/// contract, "Refusal": drivers send them; clearing cannot select another tenant and fails closed).
const CLEARS: &[(&str, &str)] = &[
    ("RESET ALL", "asyncpg sends it when releasing a connection"),
    ("reset all", "asyncpg sends it when releasing a connection"),
    ("DISCARD ALL", "pools send it to reset connections"),
    ("discard all", "pools send it to reset connections"),
    ("BEGIN; RESET ALL; COMMIT", "the same inside a block"),
];

/// Setting changes static inspection cannot see. The wire contract ("Refusal") leaves DO
/// blocks, functions and dynamic SQL to the database: revoke the privileges that allow them.
const BLIND_SPOTS: &[(&str, &str)] = &[
    (
        "DO $$BEGIN PERFORM set_config('app.current_tenant_id', 'evil', false); END$$",
        "PL/pgSQL: REVOKE USAGE ON LANGUAGE plpgsql FROM PUBLIC",
    ),
    ("DO $$BEGIN EXECUTE 'SET app.current_tenant_id = ''evil'''; END$$", "PL/pgSQL dynamic SQL"),
    ("DO LANGUAGE plpgsql $$BEGIN PERFORM set_config('app.' || 'current_tenant_id', 'evil', true); END$$", "PL/pgSQL"),
    (
        "DO LANGUAGE plpgsql $$BEGIN PERFORM set_config('app.' || 'current_tenant_id', 'evil', true); END$$; \
         SELECT 1",
        "PL/pgSQL; the local value holds for the rest of the string",
    ),
    ("SELECT fx.tamper()", "an existing function whose body calls set_config: audit what app_user may execute"),
    (
        "CREATE FUNCTION pg_temp.f_str() RETURNS text LANGUAGE sql \
         AS 'SELECT set_config(''app.current_tenant_id'', ''evil'', false)'; SELECT pg_temp.f_str()",
        "a function body is a string, and any role may create functions in pg_temp: REVOKE TEMPORARY ON DATABASE",
    ),
    (
        "CREATE FUNCTION pg_temp.f_plpgsql() RETURNS void LANGUAGE plpgsql \
         AS $$BEGIN EXECUTE format('SET app.current_tenant_id = %L', 'evil'); END$$; SELECT pg_temp.f_plpgsql()",
        "PL/pgSQL in a pg_temp function",
    ),
];

/// `no_tx_block` differs from PostgreSQL for reasons the statement text cannot show.
///
/// A missing flag only costs the direct-connection behaviour: the tenant is injected, and the
/// statement fails with 25001 as it would inside a block. An extra flag only skips the
/// injection; the statement runs with no tenant (fail closed). All of these need the superuser
/// or a partitioned table.
const NO_TX_BLOCK_DIFFERENCES: &[(&str, &str)] = &[
    ("REINDEX TABLE fx.p", "fx.p is partitioned (one transaction per partition); the text does not say so"),
    ("REINDEX INDEX fx.p_a_idx", "a partitioned index; the text does not say so"),
    ("CLUSTER fx.p USING p_a_idx", "fx.p is partitioned; the text does not say so"),
    ("CLUSTER (VERBOSE)", "PostgreSQL 15 rejects this spelling (42601); from 16 on it clusters every table"),
    (
        "CREATE SUBSCRIPTION oracle_sub2 CONNECTION 'host=/nonexistent dbname=x' PUBLICATION p WITH (connect = false)",
        "connect = false creates no replication slot, so a block is allowed",
    ),
    ("ALTER SUBSCRIPTION fx_sub DISABLE", "only REFRESH and publication changes need to be outside a block"),
    ("DROP SUBSCRIPTION IF EXISTS oracle_absent", "a block is refused only when a replication slot must be dropped"),
];

/// Reads the tenant setting and everything else a run may have changed. Fully qualified so a
/// `search_path` set by the statement under test cannot redirect it.
const PROBE: &str = "SELECT pg_catalog.current_setting('app.current_tenant_id', true) AS pgtenant_probe, \
    pg_catalog.current_setting('standard_conforming_strings'), \
    pg_catalog.current_setting('client_encoding'), \
    (SELECT pg_catalog.count(*) FROM pg_catalog.pg_db_role_setting s, pg_catalog.unnest(s.setconfig) c \
      WHERE pg_catalog.lower(pg_catalog.split_part(c, '=', 1)) OPERATOR(pg_catalog.=) 'app.current_tenant_id'), \
    (SELECT pg_catalog.count(*) FROM pg_catalog.pg_proc p, pg_catalog.unnest(p.proconfig) c \
      WHERE pg_catalog.lower(pg_catalog.split_part(c, '=', 1)) OPERATOR(pg_catalog.=) 'app.current_tenant_id')";

/// Objects the corpus relies on, in schema `fx`; recreated whenever a run changes them.
const FIXTURES: &str = "
    DROP SCHEMA IF EXISTS fx CASCADE;
    CREATE SCHEMA fx;
    CREATE TABLE fx.t (a int, b text);
    CREATE INDEX t_a_idx ON fx.t (a);
    INSERT INTO fx.t VALUES (1, 'one'), (2, 'two');
    CREATE TABLE fx.p (a int) PARTITION BY LIST (a);
    CREATE TABLE fx.p1 PARTITION OF fx.p FOR VALUES IN (1);
    CREATE INDEX p_a_idx ON fx.p (a);
    CREATE MATERIALIZED VIEW fx.mv AS SELECT 1 AS a;
    CREATE UNIQUE INDEX mv_a_idx ON fx.mv (a);
    CREATE FUNCTION fx.f() RETURNS int LANGUAGE sql AS 'SELECT 1';
    CREATE PROCEDURE fx.pr() LANGUAGE sql AS 'SELECT 1';
    CREATE PROCEDURE fx.pr_commit() LANGUAGE plpgsql AS $$BEGIN COMMIT; END$$;
    CREATE FUNCTION fx.tamper() RETURNS text LANGUAGE sql
        AS $$SELECT pg_catalog.set_config('app.current_tenant_id', 'evil-from-fixture', false)$$;
";

/// Identifies the fixtures' state (names, kinds, partitions, index flags, routine settings, rows).
const FIXTURE_FINGERPRINT: &str = "
    SELECT pg_catalog.md5(coalesce(string_agg(x, ',' ORDER BY x), '')) FROM (
        SELECT c.relname || ':' || c.relkind::text || ':' || c.relispartition || ':'
               || coalesce(i.indisclustered::text || i.indisvalid::text, '') AS x
          FROM pg_class c LEFT JOIN pg_index i ON i.indexrelid = c.oid
         WHERE c.relnamespace = 'fx'::regnamespace
        UNION ALL
        SELECT p.proname || ':' || coalesce(array_to_string(p.proconfig, ';'), '') || ':' || md5(p.prosrc)
          FROM pg_proc p WHERE p.pronamespace = 'fx'::regnamespace
        UNION ALL
        SELECT 'rows:' || coalesce(string_agg(a || '=' || b, ';' ORDER BY a, b), '') FROM fx.t
    ) s";

/// What must be undone after a run, as statements.
const STATE: &str = "
    SELECT
      ARRAY(
        SELECT format('ROLLBACK PREPARED %L', gid) FROM pg_prepared_xacts
        UNION ALL
        SELECT DISTINCT format('ALTER SYSTEM RESET %I', name) FROM pg_file_settings
         WHERE sourcefile LIKE '%postgresql.auto.conf' AND name <> 'max_prepared_transactions'
        UNION ALL
        SELECT 'DELETE FROM pg_catalog.pg_db_role_setting' WHERE EXISTS (SELECT 1 FROM pg_db_role_setting)
        UNION ALL
        SELECT format('DROP DATABASE %I WITH (FORCE)', datname) FROM pg_database
         WHERE datname NOT IN ('postgres', 'template0', 'template1', 'app', 'oracle')
        UNION ALL
        SELECT format('ALTER SUBSCRIPTION %1$I DISABLE; ALTER SUBSCRIPTION %1$I SET (slot_name = NONE); \
                       DROP SUBSCRIPTION %1$I', subname)
          FROM pg_subscription WHERE subname <> 'fx_sub'
        UNION ALL
        SELECT 'CREATE SUBSCRIPTION fx_sub CONNECTION ''host=/nonexistent dbname=x'' PUBLICATION p \
                WITH (connect = false)'
         WHERE NOT EXISTS (SELECT 1 FROM pg_subscription WHERE subname = 'fx_sub')
        UNION ALL
        SELECT 'DROP SCHEMA IF EXISTS scratch CASCADE; CREATE SCHEMA scratch'
         WHERE NOT EXISTS (SELECT 1 FROM pg_namespace WHERE nspname = 'scratch')
            OR EXISTS (SELECT 1 FROM pg_depend d JOIN pg_namespace n ON n.oid = d.refobjid
                        WHERE d.refclassid = 'pg_namespace'::regclass AND n.nspname = 'scratch')
      )";

/// One corpus record: SQL sent as one Query message.
#[derive(Debug)]
struct Record {
    line: usize,
    category: String,
    scs: bool,
    sql: String,
}

fn corpus() -> Vec<Record> {
    let mut records: Vec<Record> = Vec::new();
    for (i, line) in CORPUS.lines().enumerate() {
        let line_no = i + 1;
        if let Some(header) = line.strip_prefix("%%") {
            let flags = header.split("--").next().unwrap_or_default();
            let mut words = flags.split_whitespace();
            let category = words.next().unwrap_or_else(|| panic!("corpus line {line_no}: no category")).to_string();
            let mut scs = true;
            for word in words {
                match word {
                    "scs=off" => scs = false,
                    other => panic!("corpus line {line_no}: unknown flag {other:?}"),
                }
            }
            records.push(Record { line: line_no, category, scs, sql: String::new() });
        } else if let Some(record) = records.last_mut() {
            record.sql.push_str(line);
            record.sql.push('\n');
        }
    }
    for record in &mut records {
        record.sql = record.sql.trim().to_string();
        assert!(!record.sql.is_empty(), "corpus line {}: empty record", record.line);
    }
    records
}

/// What one probe read.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Probe {
    tenant: Option<String>,
    scs: String,
    encoding: String,
    role_defaults: String,
    function_settings: String,
}

impl Probe {
    fn from_row(row: Vec<Option<String>>) -> Option<Probe> {
        let [tenant, scs, encoding, role_defaults, function_settings] = <[Option<String>; 5]>::try_from(row).ok()?;
        Some(Probe {
            tenant,
            scs: scs?,
            encoding: encoding?,
            role_defaults: role_defaults?,
            function_settings: function_settings?,
        })
    }
}

/// How a text is run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// From idle, as the client sent it.
    Idle,
    /// From idle, with the probe appended to the same query string (sees what ends with it).
    Probed,
    /// Right after `BEGIN` (nothing else run in the block yet, so `SET TRANSACTION` works).
    Block,
}

impl Mode {
    fn describe(self) -> &'static str {
        match self {
            Mode::Idle => "run from idle",
            Mode::Probed => "run from idle with a probe appended",
            Mode::Block => "run right after BEGIN",
        }
    }
}

/// What PostgreSQL did with a text in one mode.
#[derive(Debug, Clone)]
struct Run {
    mode: Mode,
    /// Statements that completed (CommandComplete) before the first error.
    completed: usize,
    /// SQLSTATE of the first error: it stopped statement number `completed`.
    error: Option<String>,
    /// The first error is PostgreSQL's "cannot run inside a transaction block" (25001 raised
    /// by `PreventInTransactionBlock`, not another 25001).
    refused_in_block: bool,
    /// ReadyForQuery status after the text: `I`, `T` or `E`.
    status: u8,
    /// (Block mode) the transaction open afterwards is not the one `BEGIN` started.
    new_xact: bool,
    /// (where, what the probe read).
    probes: Vec<(&'static str, Probe)>,
    /// `postgresql.auto.conf` names the tenant setting afterwards.
    auto_conf: bool,
    /// What the oracle failed to observe.
    unobserved: Vec<String>,
}

impl Run {
    fn from_messages(mode: Mode, msgs: &[Message]) -> Run {
        let mut run = Run {
            mode,
            completed: 0,
            error: None,
            refused_in_block: false,
            status: 0,
            new_xact: false,
            probes: Vec::new(),
            auto_conf: false,
            unobserved: Vec::new(),
        };
        for msg in msgs {
            match msg.tag {
                b'C' if run.error.is_none() => run.completed += 1,
                b'E' if run.error.is_none() => {
                    let fields = msg.error_fields();
                    run.refused_in_block = fields.get(&'C').is_some_and(|c| c == "25001")
                        && fields.get(&'R').is_some_and(|r| r == "PreventInTransactionBlock");
                    run.error = Some(msg.sqlstate());
                }
                b'Z' => run.status = msg.ready_status(),
                _ => {}
            }
        }
        run
    }

    fn summary(&self) -> String {
        let mut s = format!("{}: {} completed", self.mode.describe(), self.completed);
        if let Some(code) = &self.error {
            let _ = write!(s, ", then error {code}");
        }
        let _ = write!(s, ", status {}", self.status as char);
        if self.mode == Mode::Block && self.error.is_none() && self.status == b'T' {
            s.push_str(if self.new_xact { ", in a new transaction" } else { ", same transaction" });
        }
        s
    }
}

/// A text observed in every mode.
#[derive(Debug, Clone)]
struct Observation {
    runs: Vec<Run>,
}

impl Observation {
    fn run(&self, mode: Mode) -> Option<&Run> {
        self.runs.iter().find(|r| r.mode == mode)
    }

    fn idle(&self) -> &Run {
        self.run(Mode::Idle).expect("every observation has an idle run")
    }

    fn block(&self) -> &Run {
        self.run(Mode::Block).expect("every observation has a block run")
    }

    /// Transaction control PostgreSQL showed for a single statement.
    fn tx(&self) -> TxControl {
        let ok = |r: &Run, status: u8| r.error.is_none() && r.status == status;
        if ok(self.block(), b'T') && self.block().new_xact {
            TxControl::EndAndChain
        } else if ok(self.block(), b'I') {
            TxControl::End
        } else if ok(self.idle(), b'T') {
            TxControl::Begin
        } else {
            TxControl::None
        }
    }

    fn no_tx_block(&self) -> bool {
        let block = self.block();
        block.completed == 0 && block.refused_in_block
    }

    fn effects(&self, scs: bool) -> Effects {
        let scs_before = if scs { "on" } else { "off" };
        let mut fx = Effects::default();
        for run in &self.runs {
            let how = run.mode.describe();
            if run.auto_conf {
                fx.tamper.push(format!("{how}: postgresql.auto.conf sets it"));
            }
            for (at, p) in &run.probes {
                match p.tenant.as_deref() {
                    Some(ORIGINAL) => {}
                    None | Some("") => fx.clear.push(format!("{how}, {at}: cleared ({:?})", p.tenant)),
                    Some(v) => fx.tamper.push(format!("{how}, {at}: {v:?}")),
                }
                if p.role_defaults != "0" {
                    fx.tamper.push(format!("{how}, {at}: role/database default stored (pg_db_role_setting)"));
                }
                if p.function_settings != "0" {
                    fx.tamper.push(format!("{how}, {at}: routine SET clause stored (pg_proc.proconfig)"));
                }
                if p.scs != scs_before {
                    fx.scs.push(format!("{how}, {at}: standard_conforming_strings {:?}", p.scs));
                }
                if UNSAFE_ENCODINGS.contains(&p.encoding.as_str()) {
                    fx.encoding.push(format!("{how}, {at}: client_encoding {:?}", p.encoding));
                }
            }
        }
        fx
    }

    fn unobserved(&self) -> Vec<String> {
        self.runs.iter().flat_map(|r| r.unobserved.iter().map(move |u| format!("{}: {u}", r.mode.describe()))).collect()
    }

    fn describe(&self, scs: bool) -> String {
        let mut s = String::new();
        for run in &self.runs {
            let _ = write!(s, "\n      {}", run.summary());
        }
        let fx = self.effects(scs);
        let changes: Vec<&String> = fx.tamper.iter().chain(&fx.scs).chain(&fx.encoding).chain(&fx.clear).collect();
        if changes.is_empty() {
            s.push_str("\n      no protected setting changed");
        }
        for change in changes.iter().take(4) {
            let _ = write!(s, "\n      changed: {change}");
        }
        s
    }
}

/// Protected settings a text changed, each with where it was seen.
#[derive(Debug, Default)]
struct Effects {
    /// The tenant setting took another non-empty value, or a default for later sessions or calls was stored.
    tamper: Vec<String>,
    /// The tenant setting was cleared (`''` or unset).
    clear: Vec<String>,
    /// standard_conforming_strings changed.
    scs: Vec<String>,
    /// client_encoding became one that can hide quotes.
    encoding: Vec<String>,
}

impl Effects {
    /// A change the proxy must prevent.
    fn forbidden(&self) -> bool {
        !(self.tamper.is_empty() && self.scs.is_empty() && self.encoding.is_empty())
    }

    fn any(&self) -> bool {
        self.forbidden() || !self.clear.is_empty()
    }
}

/// Runs texts against PostgreSQL and undoes what they leave behind.
struct Oracle {
    port: u16,
    admin: Client,
    fixture: String,
    /// `postgresql.auto.conf` of the cluster, and its content when nothing needs undoing.
    auto_conf_path: std::path::PathBuf,
    auto_conf_baseline: String,
    /// WAL insert position after the last cleanup.
    wal: String,
    runs: usize,
    fixture_rebuilds: usize,
}

impl Oracle {
    async fn observe(&mut self, sql: &str, scs: bool) -> Observation {
        let mut runs = Vec::new();
        for mode in [Mode::Idle, Mode::Probed, Mode::Block] {
            runs.push(self.run(sql, scs, mode).await);
        }
        Observation { runs }
    }

    async fn run(&mut self, sql: &str, scs: bool, mode: Mode) -> Run {
        self.runs += 1;
        let mut c = RawClient::connect(self.port).await;
        let params = [("user", "postgres"), ("database", DB), ("search_path", "scratch, fx")];
        let pid = c.login_with(&params, "").await.expect("login as postgres").backend_key.0;
        let mut init = format!("SELECT pg_catalog.set_config('{TENANT_SETTING}', '{ORIGINAL}', false)");
        if !scs {
            init.push_str("; SET standard_conforming_strings = off");
        }
        expect_ok(&c.simple(&init).await, &init);
        let mut xact_before = None;
        if mode == Mode::Block {
            expect_ok(&c.simple("BEGIN").await, "BEGIN");
            xact_before = self.xact_start(pid).await;
        }
        let text = if mode == Mode::Probed { format!("{sql}\n;{PROBE}") } else { sql.to_string() };
        let msgs = c.simple(&text).await;
        let mut run = Run::from_messages(mode, &msgs);
        if mode == Mode::Probed {
            if let Some(probe) = probe_row(&msgs) {
                run.probes.push(("at the end of the query string", probe));
            }
        }
        if run.status == b'T' {
            if mode == Mode::Block {
                run.new_xact = self.xact_start(pid).await != xact_before;
            }
            self.probe(&mut c, &mut run, "inside the transaction it left open").await;
        }
        if run.status != b'I' {
            expect_ok(&c.simple("ROLLBACK").await, "ROLLBACK");
        }
        self.probe(&mut c, &mut run, "afterwards").await;
        c.terminate().flush().await;
        run.auto_conf = self.settle().await;
        run
    }

    /// When the backend's current transaction started, read from outside so that the backend
    /// itself runs no query (which would take a snapshot); a chained transaction starts anew.
    async fn xact_start(&self, pid: i32) -> Option<String> {
        let sql = "SELECT xact_start::text FROM pg_catalog.pg_stat_activity WHERE pid = $1";
        self.admin.query_one(sql, &[&pid]).await.expect("read xact_start").get(0)
    }

    async fn probe(&mut self, c: &mut RawClient, run: &mut Run, at: &'static str) {
        let msgs = c.simple(PROBE).await;
        match probe_row(&msgs) {
            Some(probe) => run.probes.push((at, probe)),
            None => run.unobserved.push(format!("probe {at} failed: {:?}", summarize(&msgs))),
        }
    }

    /// Undoes what a run committed; returns whether `postgresql.auto.conf` named the tenant
    /// setting. Everything else to undo is in the catalogs, so when no WAL was written since
    /// the last call (a read-only run, the common case) there is nothing to look at.
    async fn settle(&mut self) -> bool {
        let auto_conf = std::fs::read_to_string(&self.auto_conf_path).expect("read postgresql.auto.conf");
        let tenant_in_auto_conf = auto_conf.to_ascii_lowercase().contains(TENANT_SETTING);
        if auto_conf == self.auto_conf_baseline && self.wal_position().await == self.wal {
            return false;
        }
        let row = self.admin.query_one(STATE, &[]).await.expect("read the cluster state");
        let cleanup: Vec<String> = row.get(0);
        for sql in &cleanup {
            self.admin.batch_execute(sql).await.unwrap_or_else(|e| panic!("cleanup {sql:?}: {e:?}"));
        }
        let fingerprint = self.admin.query_one(FIXTURE_FINGERPRINT, &[]).await.ok().and_then(|r| r.get(0));
        if fingerprint.as_ref() != Some(&self.fixture) {
            self.rebuild_fixtures().await;
        }
        self.wal = self.wal_position().await;
        // What ALTER SYSTEM RESET left is the baseline from now on; should the tenant setting
        // survive it, every later run reports it.
        self.auto_conf_baseline = std::fs::read_to_string(&self.auto_conf_path).expect("read postgresql.auto.conf");
        tenant_in_auto_conf
    }

    async fn wal_position(&self) -> String {
        let sql = "SELECT pg_catalog.pg_current_wal_insert_lsn()::text";
        self.admin.query_one(sql, &[]).await.expect("read the WAL position").get(0)
    }

    async fn rebuild_fixtures(&mut self) {
        self.fixture_rebuilds += 1;
        self.admin.batch_execute(FIXTURES).await.expect("create the fixtures");
        self.fixture = self.admin.query_one(FIXTURE_FINGERPRINT, &[]).await.expect("fingerprint").get(0);
    }
}

fn expect_ok(msgs: &[Message], sql: &str) {
    assert!(msgs.iter().all(|m| m.tag != b'E'), "{sql}: {:?}", summarize(msgs));
}

/// The row of the last probe in `msgs`.
fn probe_row(msgs: &[Message]) -> Option<Probe> {
    let at = msgs
        .iter()
        .rposition(|m| m.tag == b'T' && m.row_description().first().is_some_and(|c| c == "pgtenant_probe"))?;
    let row = msgs.get(at + 1).filter(|m| m.tag == b'D')?;
    Probe::from_row(row.data_row())
}

/// The final ReadyForQuery status the inspector's classification predicts for a whole string,
/// given where PostgreSQL stopped it with an error (if it did).
fn predicted_status(statements: &[Statement], in_block: bool, failed_at: Option<usize>) -> u8 {
    let mut explicit = in_block;
    let ran = failed_at.unwrap_or(statements.len()).min(statements.len());
    for st in &statements[..ran] {
        match st.tx {
            TxControl::Begin => explicit = true,
            TxControl::End => explicit = false,
            TxControl::EndAndChain | TxControl::None => {}
        }
    }
    match (failed_at.is_some(), explicit) {
        (true, true) => b'E',
        (false, true) => b'T',
        (_, false) => b'I',
    }
}

/// `text` with every run of whitespace replaced by one space.
fn squeeze(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

fn inspector_says(st: &Statement) -> String {
    let refusal = match &st.refusal {
        Some(r) => format!("refused ({:?}, {:?})", r.reason, r.setting),
        None => "not refused".to_string(),
    };
    format!("{refusal}, tx {:?}, no_tx_block {}", st.tx, st.no_tx_block)
}

/// Collects disagreements and tracks which allow-list entries were needed.
#[derive(Default)]
struct Verdicts {
    disagreements: Vec<String>,
    used: HashSet<&'static str>,
    allowed: BTreeMap<&'static str, Vec<String>>,
}

impl Verdicts {
    /// Whether `text` is on `list` (runs of whitespace compare as one space); records the use.
    fn allowed(&mut self, list: &'static [(&'static str, &'static str)], name: &'static str, text: &str) -> bool {
        let text = squeeze(text);
        match list.iter().find(|(t, _)| squeeze(t) == text) {
            Some((t, why)) => {
                self.used.insert(t);
                self.allowed.entry(name).or_default().push(format!("{t}  -- {why}"));
                true
            }
            None => false,
        }
    }

    fn disagree(&mut self, record: &Record, text: &str, problem: &str, pg: &str, inspector: &str) {
        self.disagreements.push(format!(
            "corpus line {} [{}{}]: {problem}\n    statement: {text:?}\n    PostgreSQL:{pg}\n    inspector: {inspector}",
            record.line,
            record.category,
            if record.scs { "" } else { ", scs=off" },
        ));
    }

    /// A statement observed alone against the inspector's classification of it.
    fn check_statement(&mut self, record: &Record, text: &str, st: &Statement, obs: &Observation) {
        let pg = obs.describe(record.scs);
        let says = inspector_says(st);
        for gap in obs.unobserved() {
            self.disagree(record, text, &format!("the oracle could not observe it: {gap}"), &pg, &says);
        }
        let fx = obs.effects(record.scs);
        let refused = st.refusal.is_some();
        if !refused && fx.forbidden() && !self.allowed(BLIND_SPOTS, "blind spots", text) {
            self.disagree(record, text, "PostgreSQL changed a protected setting; not refused", &pg, &says);
        } else if !refused && !fx.clear.is_empty() && !self.allowed(CLEARS, "clears", text) {
            self.disagree(record, text, "PostgreSQL cleared the tenant setting; not refused", &pg, &says);
        }
        if refused && !fx.any() && !self.allowed(CONSERVATIVE, "conservative refusals", text) {
            self.disagree(record, text, "refused, but alone it changed no protected setting", &pg, &says);
        }
        if obs.tx() != st.tx {
            let problem = format!("transaction control: PostgreSQL showed {:?}", obs.tx());
            self.disagree(record, text, &problem, &pg, &says);
        }
        if obs.no_tx_block() != st.no_tx_block && !self.allowed(NO_TX_BLOCK_DIFFERENCES, "no_tx_block", text) {
            let problem = format!("cannot run in a block: PostgreSQL {}", obs.no_tx_block());
            self.disagree(record, text, &problem, &pg, &says);
        }
    }

    /// The whole query string against the inspector's view of it.
    fn check_whole(&mut self, record: &Record, insp: &Inspection, obs: &Observation) {
        let sql = record.sql.as_str();
        let stmts = &insp.statements;
        let n = stmts.len();
        let pg = obs.describe(record.scs);
        let texts: Vec<&str> = stmts.iter().map(|s| &sql[s.span.clone()]).collect();
        let says = format!(
            "{n} statement(s){}: {}",
            if insp.lex_error { " then a lexing error" } else { "" },
            stmts.iter().map(inspector_says).collect::<Vec<_>>().join(" | ")
        );
        for gap in obs.unobserved() {
            self.disagree(record, sql, &format!("the oracle could not observe it: {gap}"), &pg, &says);
        }
        let idle = obs.idle();
        if insp.lex_error {
            if idle.completed > 0 || idle.error.is_none() {
                self.disagree(record, sql, "the inspector could not lex it, but PostgreSQL ran it", &pg, &says);
            }
        } else {
            let split_ok = match idle.error {
                None => idle.completed == n,
                Some(_) => idle.completed < n,
            };
            if !split_ok {
                self.disagree(record, sql, "PostgreSQL split it into a different number of statements", &pg, &says);
            }
            for (run, in_block) in [(idle, false), (obs.block(), true)].into_iter().filter(|_| split_ok) {
                let failed_at = run.error.as_ref().map(|_| run.completed);
                let predicted = predicted_status(stmts, in_block, failed_at);
                if predicted != run.status {
                    let problem = format!(
                        "{}: final status {} but the inspector's classification predicts {}",
                        run.mode.describe(),
                        run.status as char,
                        predicted as char
                    );
                    self.disagree(record, sql, &problem, &pg, &says);
                }
                self.check_whole_no_tx(record, run, in_block, stmts, &texts, &pg, &says);
            }
        }
        // With one statement the per-statement check covers the settings.
        if n > 1 || insp.lex_error {
            let fx = obs.effects(record.scs);
            // A string that fails to lex is refused whole by the proxy.
            let refused = insp.lex_error || stmts.iter().any(|s| s.refusal.is_some());
            if !refused && fx.forbidden() && !self.allowed(BLIND_SPOTS, "blind spots", sql) {
                self.disagree(record, sql, "PostgreSQL changed a protected setting; nothing refused", &pg, &says);
            } else if !refused && !fx.clear.is_empty() && !self.allowed(CLEARS, "clears", sql) {
                self.disagree(record, sql, "PostgreSQL cleared the tenant setting; nothing refused", &pg, &says);
            }
        }
    }

    /// "Cannot run inside a transaction block" in a whole string must come from a statement the
    /// inspector flags, and a flagged statement running inside a block (explicit, or implicit
    /// in a multi-statement string) must fail with it.
    #[allow(clippy::too_many_arguments)]
    fn check_whole_no_tx(
        &mut self,
        record: &Record,
        run: &Run,
        in_block: bool,
        stmts: &[Statement],
        texts: &[&str],
        pg: &str,
        says: &str,
    ) {
        let failed_at = run.error.as_ref().map(|_| run.completed);
        if run.refused_in_block {
            let k = run.completed;
            if !stmts[k].no_tx_block && !self.allowed(NO_TX_BLOCK_DIFFERENCES, "no_tx_block", texts[k]) {
                let problem = format!("{}: statement {} failed with 25001, not flagged", run.mode.describe(), k + 1);
                self.disagree(record, &record.sql, &problem, pg, says);
            }
        }
        if !(in_block || stmts.len() > 1) {
            return;
        }
        let reached = failed_at.map_or(stmts.len(), |k| k + 1);
        if let Some(j) = stmts[..reached].iter().position(|s| s.no_tx_block) {
            let failed_there = failed_at == Some(j) && run.refused_in_block;
            if !failed_there && !self.allowed(NO_TX_BLOCK_DIFFERENCES, "no_tx_block", texts[j]) {
                let problem = format!(
                    "{}: statement {} is flagged no_tx_block but did not fail with 25001 in a block",
                    run.mode.describe(),
                    j + 1
                );
                self.disagree(record, &record.sql, &problem, pg, says);
            }
        }
    }
}

async fn start_oracle() -> (PgCluster, Oracle) {
    let pg = PgCluster::start().await;
    // Prepared transactions are off by default; PREPARE TRANSACTION should really prepare.
    let admin = pg.superuser().await;
    admin.batch_execute("ALTER SYSTEM SET max_prepared_transactions = 4").await.expect("enable 2PC");
    drop(admin);
    pg.restart();
    let app = pg.superuser().await;
    app.batch_execute(&format!("CREATE DATABASE {DB}")).await.expect("create the oracle database");
    let admin = pg.connect_as("postgres", "", DB).await;
    admin
        .batch_execute(
            "CREATE SCHEMA scratch;
             GRANT USAGE ON SCHEMA scratch TO PUBLIC;
             CREATE SUBSCRIPTION fx_sub CONNECTION 'host=/nonexistent dbname=x' PUBLICATION p WITH (connect = false)",
        )
        .await
        .expect("oracle setup");
    let auto_conf_path = pg.data_dir().join("postgresql.auto.conf");
    let auto_conf_baseline = std::fs::read_to_string(&auto_conf_path).expect("read postgresql.auto.conf");
    let mut oracle = Oracle {
        port: pg.port(),
        admin,
        fixture: String::new(),
        auto_conf_path,
        auto_conf_baseline,
        wal: String::new(),
        runs: 0,
        fixture_rebuilds: 0,
    };
    oracle.rebuild_fixtures().await;
    oracle.fixture_rebuilds = 0;
    oracle.wal = oracle.wal_position().await;
    (pg, oracle)
}

/// The oracle itself must see the basics, or every comparison below is meaningless.
async fn self_test(oracle: &mut Oracle) {
    let plain = oracle.observe("SELECT 1", true).await;
    assert!(!plain.effects(true).any(), "SELECT 1 changed something: {}", plain.describe(true));
    assert_eq!(plain.tx(), TxControl::None);
    let set = oracle.observe("SET app.current_tenant_id = 'evil'", true).await;
    assert!(!set.effects(true).tamper.is_empty(), "SET not seen: {}", set.describe(true));
    let local = oracle.observe("SET LOCAL app.current_tenant_id = 'evil'", true).await;
    assert!(!local.effects(true).tamper.is_empty(), "SET LOCAL not seen: {}", local.describe(true));
    for (sql, tx) in [
        ("BEGIN", TxControl::Begin),
        ("COMMIT", TxControl::End),
        ("COMMIT AND CHAIN", TxControl::EndAndChain),
        ("SAVEPOINT a", TxControl::None),
    ] {
        let obs = oracle.observe(sql, true).await;
        assert_eq!(obs.tx(), tx, "{sql}: {}", obs.describe(true));
    }
    assert!(oracle.observe("VACUUM fx.t", true).await.no_tx_block());
    assert!(!oracle.observe("ANALYZE fx.t", true).await.no_tx_block());
}

#[tokio::test]
async fn inspector_agrees_with_postgresql() {
    let started = Instant::now();
    let records = corpus();
    assert!(records.len() >= MIN_RECORDS, "the corpus has {} records; at least {MIN_RECORDS} wanted", records.len());
    let mut seen = HashSet::new();
    for r in &records {
        assert!(seen.insert((r.sql.as_str(), r.scs)), "corpus line {}: duplicate record {:?}", r.line, r.sql);
    }
    let mut categories: BTreeMap<&str, usize> = BTreeMap::new();
    for r in &records {
        *categories.entry(r.category.as_str()).or_default() += 1;
    }

    let (_pg, mut oracle) = start_oracle().await;
    self_test(&mut oracle).await;

    let inspector = Inspector::new(TENANT_SETTING);
    let mut verdicts = Verdicts::default();
    let mut alone: HashMap<(String, bool), Observation> = HashMap::new();
    let mut checked: HashSet<(String, bool)> = HashSet::new();
    for record in &records {
        let insp = inspector.inspect(record.sql.as_bytes(), record.scs);
        let whole = oracle.observe(&record.sql, record.scs).await;
        verdicts.check_whole(record, &insp, &whole);
        for st in &insp.statements {
            let text = &record.sql[st.span.clone()];
            let key = (text.to_string(), record.scs);
            if !checked.insert(key.clone()) {
                continue;
            }
            let obs = match alone.get(&key) {
                Some(obs) => obs.clone(),
                None if insp.statements.len() == 1 && !insp.lex_error => whole.clone(),
                None => oracle.observe(text, record.scs).await,
            };
            verdicts.check_statement(record, text, st, &obs);
            alone.insert(key, obs);
        }
    }

    for (list, name) in [
        (CONSERVATIVE, "CONSERVATIVE"),
        (CLEARS, "CLEARS"),
        (BLIND_SPOTS, "BLIND_SPOTS"),
        (NO_TX_BLOCK_DIFFERENCES, "NO_TX_BLOCK_DIFFERENCES"),
    ] {
        for (text, _) in list {
            if !verdicts.used.contains(text) {
                verdicts.disagreements.push(format!("{name} entry {text:?} matched no disagreement: remove it"));
            }
        }
    }

    let mut summary = format!(
        "{} records ({}), {} distinct statements, {} PostgreSQL runs, {} fixture rebuilds, {:.1?}",
        records.len(),
        categories.iter().map(|(c, n)| format!("{c} {n}")).collect::<Vec<_>>().join(", "),
        checked.len(),
        oracle.runs,
        oracle.fixture_rebuilds,
        started.elapsed()
    );
    for (list, entries) in &verdicts.allowed {
        let mut entries = entries.clone();
        entries.sort();
        entries.dedup();
        let _ = write!(summary, "\nallowed ({list}):");
        for e in entries {
            let _ = write!(summary, "\n  {e}");
        }
    }
    eprintln!("{summary}");
    assert!(
        verdicts.disagreements.is_empty(),
        "{} disagreement(s) between the inspector and PostgreSQL:\n\n{}\n\n{summary}",
        verdicts.disagreements.len(),
        verdicts.disagreements.join("\n\n")
    );
}
