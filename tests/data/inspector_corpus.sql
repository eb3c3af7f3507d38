-- Corpus for tests/inspector_oracle.rs: statements run directly against PostgreSQL
-- and classified by pgtenant's SQL inspector; the test fails where they disagree.
--
-- Format: a line starting with `%%` begins a record:
--     %% <category> [scs=off] [-- note]
-- Everything up to the next `%%` line is the record's SQL, sent as ONE simple Query
-- message (so it may hold several statements, newlines, and `;` inside quotes);
-- surrounding blank lines are trimmed. `scs=off` runs it with
-- standard_conforming_strings off (and inspects it that way). Lines before the
-- first `%%` (this header) are ignored.
--
-- The test runs as superuser in database `oracle` with search_path `scratch, fx`.
-- Fixtures (recreated whenever a statement changes them): table fx.t (a int, b text)
-- with rows (1,'one'), (2,'two') and index fx.t_a_idx; partitioned table fx.p with
-- partition fx.p1 and partitioned index fx.p_a_idx; materialized view fx.mv with a
-- unique index; function fx.f(), procedures fx.pr() and fx.pr_commit() (which
-- commits), function fx.tamper() whose body calls set_config; subscription fx_sub
-- (disabled, with a slot name). The tenant setting starts as a session value that
-- no record uses, so any change is visible.
--
-- Categories: tamper-set, tamper-set_config, tamper-catalog, protected, clear, tx,
-- no-tx, ordinary, hostile, multi, blind-spot.

%% tamper-set
SET app.current_tenant_id = 'evil'
%% tamper-set
SET app.current_tenant_id TO 'evil'
%% tamper-set
set app.current_tenant_id to evil
%% tamper-set -- identifier value
SET app.current_tenant_id = evil_ident
%% tamper-set -- numeric value
SET app.current_tenant_id = 42
%% tamper-set -- signed numeric value
SET app.current_tenant_id = -1.5
%% tamper-set
SET APP.CURRENT_TENANT_ID = 'evil'
%% tamper-set
SeT aPp.CuRrEnT_tEnAnT_iD = 'evil'
%% tamper-set
SET SESSION app.current_tenant_id = 'evil'
%% tamper-set
SET SESSION app.current_tenant_id TO 'evil'
%% tamper-set
SET LOCAL app.current_tenant_id = 'evil'
%% tamper-set
set local APP.current_tenant_id to 'evil'
%% tamper-set
SET "app".current_tenant_id = 'evil'
%% tamper-set
SET app."current_tenant_id" = 'evil'
%% tamper-set
SET "app"."current_tenant_id" = 'evil'
%% tamper-set -- one quoted identifier holding the dot
SET "app.current_tenant_id" = 'evil'
%% tamper-set -- GUC names compare case-insensitively, even quoted
SET "APP".current_tenant_id = 'evil'
%% tamper-set
SET "APP.CURRENT_TENANT_ID" = 'evil'
%% tamper-set
SET U&"\0061pp".current_tenant_id = 'evil'
%% tamper-set
SET U&"!0061pp" UESCAPE '!' . current_tenant_id = 'evil'
%% tamper-set
SET app.U&"current\005ftenant\005fid" = 'evil'
%% tamper-set -- the dot itself escaped
SET U&"app\002ecurrent_tenant_id" = 'evil'
%% tamper-set -- six-digit escape
SET U&"\+000061pp".current_tenant_id = 'evil'
%% tamper-set
SET app /* c */ . /* d */ current_tenant_id = 'evil'
%% tamper-set
SET app -- line comment
. current_tenant_id = 'evil'
%% tamper-set
SET app . current_tenant_id = 'evil'
%% tamper-set
SET app/* /* nested */ */.current_tenant_id = 'evil'
%% tamper-set -- tabs
SET	app.current_tenant_id	=	'evil'
%% tamper-set -- newlines
SET
app.current_tenant_id
=
'evil'
%% tamper-set
/* leading comment */ SET app.current_tenant_id = 'evil'
%% tamper-set
-- leading line comment
SET app.current_tenant_id = 'evil'
%% tamper-set
SET app.current_tenant_id = E'evil\x21'
%% tamper-set
SET app.current_tenant_id = $$evil$$
%% tamper-set
SET app.current_tenant_id = $t$evil$t$
%% tamper-set
SET app.current_tenant_id = U&'\0065vil'
%% tamper-set -- continued literal
SET app.current_tenant_id = 'ev'
'il'
%% tamper-set
SET app.current_tenant_id TO DEFAULT
%% tamper-set
SET app.current_tenant_id = DEFAULT
%% tamper-set
SET LOCAL app.current_tenant_id TO DEFAULT
%% tamper-set
SET app.current_tenant_id = ''
%% tamper-set -- keeps the current value when run alone; see the multi records
SET app.current_tenant_id FROM CURRENT
%% tamper-set
SET SESSION app.current_tenant_id FROM CURRENT
%% tamper-set -- rejected by PostgreSQL: one argument only
SET app.current_tenant_id = 'a', 'b'
%% tamper-set
SET app.current_tenant_id='evil';
%% tamper-set
SET/**/app.current_tenant_id=/**/'evil'
%% tamper-set
SET "app"/**/.U&"current_tenant_id" = 'evil'
%% tamper-set
SET app.current_tenant_id = 'bbbbbbbb-0000-4000-8000-00000000000b'
%% tamper-set
SET LOCAL app.current_tenant_id = 'bbbbbbbb-0000-4000-8000-00000000000b'
%% tamper-set
RESET app.current_tenant_id
%% tamper-set
RESET "app".current_tenant_id
%% tamper-set
reset APP.CURRENT_TENANT_ID
%% tamper-set
RESET U&"\0061pp".current_tenant_id
%% tamper-set
RESET app /* x */ . current_tenant_id
%% tamper-set
RESET "app.current_tenant_id"
%% tamper-set -- a single-byte server encoding would lowercase the dotted capital I; UTF8 does not
SET app.current_tenant_İd = 'evil'

%% tamper-set_config
SELECT set_config('app.current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT set_config('app.current_tenant_id', 'evil', true)
%% tamper-set_config
select SET_CONFIG('APP.CURRENT_TENANT_ID', 'evil', false)
%% tamper-set_config
SELECT set_config('App.Current_Tenant_Id', 'evil', false)
%% tamper-set_config
SELECT pg_catalog.set_config('app.current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT PG_CATALOG.SET_CONFIG('app.current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT "pg_catalog"."set_config"('app.current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT pg_catalog . set_config ('app.current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT "set_config"('app.current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT U&"set\005fconfig"('app.current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT U&"!0073et_config" UESCAPE '!' ('app.current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT set_config /* c */ ('app.current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT set_config(
  'app.current_tenant_id' -- c
  , 'evil', false)
%% tamper-set_config
SELECT set_config(/* c */ 'app.current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT set_config(E'app.current\x5ftenant_id', 'evil', false)
%% tamper-set_config
SELECT set_config(E'app.current_tenant_id', 'evil', false)
%% tamper-set_config -- octal escape
SELECT set_config(e'\141pp.current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT set_config($$app.current_tenant_id$$, 'evil', false)
%% tamper-set_config
SELECT set_config($q$app.current_tenant_id$q$, 'evil', false)
%% tamper-set_config -- continued literal
SELECT set_config('app.'
'current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT set_config(U&'app.current\005ftenant_id', 'evil', false)
%% tamper-set_config
SELECT set_config(N'app.current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT set_config('app.current_tenant_id'::text, 'evil', false)
%% tamper-set_config
SELECT set_config(('app.current_tenant_id'), 'evil', false)
%% tamper-set_config
SELECT set_config('app.' || 'current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT set_config(lower('APP.CURRENT_TENANT_ID'), 'evil', false)
%% tamper-set_config
SELECT set_config(chr(97) || 'pp.current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT set_config(concat('app.', 'current_tenant_id'), 'evil', false)
%% tamper-set_config
SELECT set_config(n, 'evil', false) FROM (VALUES ('app.current_tenant_id')) AS v(n)
%% tamper-set_config
SELECT set_config(CAST('app.current_tenant_id' AS text), 'evil', false)
%% tamper-set_config
SELECT set_config(format('%s.%s', 'app', 'current_tenant_id'), 'evil', false)
%% tamper-set_config
SELECT set_config(replace('app.current_tenant_xx', 'xx', 'id'), 'evil', false)
%% tamper-set_config
SELECT * FROM set_config('app.current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT 1 FROM pg_catalog.set_config('app.current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT (SELECT set_config('app.current_tenant_id', 'evil', false))
%% tamper-set_config
SELECT x FROM (SELECT set_config('app.current_tenant_id', 'evil', false) AS x) s
%% tamper-set_config
WITH c AS (SELECT set_config('app.current_tenant_id', 'evil', false)) SELECT * FROM c
%% tamper-set_config
WITH c AS MATERIALIZED (SELECT set_config('app.current_tenant_id', 'evil', true) AS v) SELECT v FROM c
%% tamper-set_config
SELECT length(set_config('app.current_tenant_id', 'evil', false))
%% tamper-set_config
SELECT coalesce(NULL, set_config('app.current_tenant_id', 'evil', false))
%% tamper-set_config
SELECT CASE WHEN true THEN set_config('app.current_tenant_id', 'evil', false) END
%% tamper-set_config
SELECT 1 WHERE set_config('app.current_tenant_id', 'evil', false) IS NOT NULL
%% tamper-set_config
SELECT ARRAY[set_config('app.current_tenant_id', 'evil', false)]
%% tamper-set_config
VALUES (set_config('app.current_tenant_id', 'evil', false))
%% tamper-set_config
SELECT set_config('app.current_tenant_id', 'evil-' || g, false) FROM generate_series(1, 3) g
%% tamper-set_config
SELECT 1 ORDER BY set_config('app.current_tenant_id', 'evil', false)
%% tamper-set_config
SELECT count(*) FILTER (WHERE set_config('app.current_tenant_id', 'evil', false) IS NOT NULL) FROM t
%% tamper-set_config
SELECT set_config('app.current_tenant_id', b, false) FROM t WHERE a = 1
%% tamper-set_config
SELECT set_config('app.current_tenant_id', current_setting('app.current_tenant_id') || '-evil', false)
%% tamper-set_config
SELECT row(set_config('app.current_tenant_id', 'evil', false))
%% tamper-set_config
SELECT set_config('app.current_tenant_id', 'evil', 1 = 2)
%% tamper-set_config
SELECT (set_config('app.current_tenant_id', 'evil', false) || '')
%% tamper-set_config -- never evaluated: no row
SELECT set_config('app.current_tenant_id', 'evil', false) WHERE false
%% tamper-set_config -- never evaluated: no row
SELECT set_config('app.current_tenant_id', 'evil', false) LIMIT 0
%% tamper-set_config
EXPLAIN ANALYZE SELECT set_config('app.current_tenant_id', 'evil', false)
%% tamper-set_config
EXPLAIN (ANALYZE, COSTS OFF) SELECT set_config('app.current_tenant_id', 'evil', false)
%% tamper-set_config -- plain EXPLAIN does not execute
EXPLAIN SELECT set_config('app.current_tenant_id', 'evil', false)
%% tamper-set_config
CREATE TEMP TABLE tmp_sc AS SELECT set_config('app.current_tenant_id', 'evil', false) AS v
%% tamper-set_config
SELECT set_config('app.current_tenant_id', 'evil', false) INTO TEMP tmp_into
%% tamper-set_config
INSERT INTO t (a, b) SELECT 9, set_config('app.current_tenant_id', 'evil', false)
%% tamper-set_config
INSERT INTO t (a, b) VALUES (9, set_config('app.current_tenant_id', 'evil', false))
%% tamper-set_config
UPDATE t SET b = set_config('app.current_tenant_id', 'evil', false) WHERE a = 1
%% tamper-set_config
DELETE FROM t WHERE set_config('app.current_tenant_id', 'evil', false) IS NULL
%% tamper-set_config
COPY (SELECT set_config('app.current_tenant_id', 'evil', false)) TO STDOUT
%% tamper-set_config -- dynamic name naming another setting
SELECT set_config('search_' || 'path', 'fx, public', false)
%% tamper-set_config -- named notation: set_config has no argument names
SELECT set_config(setting_name => 'search_path', new_value => 'fx', is_local => false)
%% tamper-set_config -- a column reference, not a call
SELECT set_config FROM t
%% tamper-set_config
PREPARE p_sc AS SELECT set_config('app.current_tenant_id', 'evil', false)
%% tamper-set_config
DECLARE c_sc CURSOR FOR SELECT set_config('app.current_tenant_id', 'evil', false)
%% tamper-set_config
CREATE TEMP VIEW v_sc AS SELECT set_config('app.current_tenant_id', 'evil', false) AS v
%% tamper-set_config
CREATE FUNCTION scratch.f_atomic() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT set_config('app.current_tenant_id', 'evil', false); END
%% tamper-set_config
CREATE AGGREGATE pg_temp.agg_sc(text, boolean) (SFUNC = set_config, STYPE = text, INITCOND = 'app.current_tenant_id')
%% tamper-set_config -- the transition function named by a string literal
CREATE AGGREGATE pg_temp.agg_lit(text, boolean) (SFUNC = 'set_config', STYPE = text, INITCOND = 'app.current_tenant_id')
%% tamper-set_config -- built-in that runs SQL text
SELECT query_to_xml('SELECT set_config(''app.current_tenant_id'', ''evil'', false)', false, false, '')
%% tamper-set_config -- built-in that runs SQL text
SELECT query_to_xmlschema('SELECT set_config(''app.current_tenant_id'', ''evil'', false)', false, false, '')
%% tamper-set_config -- built-in that runs SQL text
SELECT query_to_xml_and_xmlschema('SELECT set_config(''app.current_tenant_id'', ''evil'', false)', false, false, '') IS NOT NULL
%% tamper-set_config -- built-in that runs SQL text
SELECT * FROM ts_stat('SELECT to_tsvector(set_config(''app.current_tenant_id'', ''evil'', false))')
%% tamper-set_config -- built-in that runs SQL text
SELECT ts_rewrite('a'::tsquery, 'SELECT ''a''::tsquery, to_tsquery(set_config(''app.current_tenant_id'', ''evil'', false))')
%% tamper-set_config -- an aggregate over the SQL-running ts_rewrite(tsquery, text)
CREATE AGGREGATE pg_temp.agg_rw(text) (SFUNC = ts_rewrite, STYPE = tsquery, INITCOND = 'a')
%% tamper-set_config -- an operator over it, named by a string
CREATE OPERATOR pg_temp.### (LEFTARG = tsquery, RIGHTARG = text, FUNCTION = 'ts_rewrite')
%% tamper-set_config -- ts_rewrite's pure form runs no SQL
SELECT ts_rewrite('a & b'::tsquery, 'a'::tsquery, 'c'::tsquery)
%% tamper-set_config -- the final function named by a string
CREATE AGGREGATE pg_temp.agg_fin(text, boolean) (SFUNC = textcat, STYPE = text, INITCOND = '',
FINALFUNC = 'set_config', FINALFUNC_EXTRA)
%% tamper-set_config -- invalid parameter name: PostgreSQL rejects it
SELECT set_config('app.current_tenant_id ', 'evil', false)
%% tamper-set_config -- invalid parameter name: PostgreSQL rejects it
SELECT set_config(' app.current_tenant_id', 'evil', false)

%% tamper-catalog -- placeholders are not in pg_settings: updates no row
UPDATE pg_settings SET setting = 'evil' WHERE name = 'app.current_tenant_id'
%% tamper-catalog
UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'
%% tamper-catalog
update pg_catalog.pg_settings set setting = 'SJIS' where name = 'client_encoding'
%% tamper-catalog
WITH u AS (UPDATE pg_settings SET setting = 'off' WHERE name = 'standard_conforming_strings' RETURNING name) SELECT * FROM u
%% tamper-catalog
CREATE TEMP VIEW v_settings AS SELECT * FROM pg_settings
%% tamper-catalog
ALTER ROLE app_user SET app.current_tenant_id = 'evil'
%% tamper-catalog
ALTER ROLE app_user SET "app".current_tenant_id TO 'evil'
%% tamper-catalog
ALTER USER app_user SET app.current_tenant_id = 'evil'
%% tamper-catalog
ALTER ROLE app_user IN DATABASE oracle SET app.current_tenant_id = 'evil'
%% tamper-catalog
ALTER ROLE ALL SET app.current_tenant_id = 'evil'
%% tamper-catalog
ALTER ROLE ALL IN DATABASE oracle SET app.current_tenant_id FROM CURRENT
%% tamper-catalog
ALTER DATABASE oracle SET app.current_tenant_id = 'evil'
%% tamper-catalog
alter database oracle set APP.CURRENT_TENANT_ID from current
%% tamper-catalog -- nothing to remove
ALTER ROLE app_user RESET app.current_tenant_id
%% tamper-catalog -- nothing to remove
ALTER DATABASE oracle RESET app.current_tenant_id
%% tamper-catalog
ALTER FUNCTION fx.f() SET app.current_tenant_id = 'evil'
%% tamper-catalog
ALTER FUNCTION f() SET app.current_tenant_id TO 'evil'
%% tamper-catalog
ALTER PROCEDURE fx.pr() SET app.current_tenant_id = 'evil'
%% tamper-catalog
ALTER ROUTINE fx.f() SET app.current_tenant_id FROM CURRENT
%% tamper-catalog -- nothing to remove
ALTER FUNCTION fx.f() RESET app.current_tenant_id
%% tamper-catalog
CREATE FUNCTION scratch.g() RETURNS int LANGUAGE sql SET app.current_tenant_id = 'evil' AS 'SELECT 1'
%% tamper-catalog
CREATE OR REPLACE FUNCTION scratch.g2() RETURNS int LANGUAGE sql SET app.current_tenant_id FROM CURRENT AS $$SELECT 1$$
%% tamper-catalog
CREATE PROCEDURE scratch.pr2() LANGUAGE sql SET app.current_tenant_id TO 'evil' AS 'SELECT 1'
%% tamper-catalog
CREATE FUNCTION pg_temp.g3() RETURNS int LANGUAGE sql SET "app"."current_tenant_id" = 'evil' AS 'SELECT 1'
%% tamper-catalog
ALTER SYSTEM SET app.current_tenant_id = 'evil'
%% tamper-catalog -- nothing to remove
ALTER SYSTEM RESET app.current_tenant_id
%% tamper-catalog -- nothing to remove
ALTER SYSTEM SET app.current_tenant_id TO DEFAULT

%% protected
SET standard_conforming_strings = off
%% protected
SET standard_conforming_strings TO false
%% protected
SET SESSION standard_conforming_strings = 0
%% protected
SET LOCAL standard_conforming_strings = off
%% protected
set STANDARD_CONFORMING_STRINGS to 'off'
%% protected
SET "standard_conforming_strings" = off
%% protected
SELECT set_config('standard_conforming_strings', 'off', false)
%% protected
SELECT set_config('standard_conforming_strings', 'off', true)
%% protected scs=off
SET standard_conforming_strings = on
%% protected scs=off
RESET standard_conforming_strings
%% protected scs=off
SET standard_conforming_strings TO DEFAULT
%% protected -- already on: no change
SET standard_conforming_strings = on
%% protected -- already the default: no change
RESET standard_conforming_strings
%% protected
SET client_encoding = 'SJIS'
%% protected
SET client_encoding TO sjis
%% protected
SET client_encoding = 'Shift_JIS'
%% protected
SET client_encoding = 'BIG5'
%% protected
SET client_encoding = 'GBK'
%% protected
SET client_encoding = 'UHC'
%% protected
SET client_encoding = 'GB18030'
%% protected
SET client_encoding = 'JOHAB'
%% protected
SET client_encoding = 'win932'
%% protected
SET NAMES 'SJIS'
%% protected
SET NAMES 'BIG5'
%% protected
SET LOCAL client_encoding = 'GBK'
%% protected
SELECT set_config('client_encoding', 'SJIS', false)
%% protected
SELECT set_config('client_encoding', 'SJ' || 'IS', false)
%% protected
SET client_encoding = 'UTF8'
%% protected
SET client_encoding = 'LATIN1'
%% protected
SET NAMES 'LATIN1'
%% protected
SET client_encoding TO DEFAULT
%% protected
SELECT set_config('client_encoding', 'LATIN1', false)

%% clear
RESET ALL
%% clear
reset all
%% clear
DISCARD ALL
%% clear
discard all;

%% tx
BEGIN
%% tx
begin;
%% tx
BEGIN WORK
%% tx
BEGIN TRANSACTION
%% tx
BEGIN ISOLATION LEVEL SERIALIZABLE
%% tx
BEGIN ISOLATION LEVEL READ COMMITTED, READ ONLY
%% tx
BEGIN TRANSACTION READ WRITE
%% tx
BEGIN DEFERRABLE
%% tx
BEGIN NOT DEFERRABLE
%% tx
BEGIN /* c */ ISOLATION LEVEL REPEATABLE READ
%% tx
START TRANSACTION
%% tx
START TRANSACTION ISOLATION LEVEL REPEATABLE READ
%% tx
start transaction read only
%% tx
START TRANSACTION ISOLATION LEVEL SERIALIZABLE, READ ONLY, DEFERRABLE
%% tx
START /* c */ TRANSACTION
%% tx
/* c */ BEGIN
%% tx
-- c
BEGIN
%% tx
COMMIT
%% tx
COMMIT WORK
%% tx
COMMIT TRANSACTION
%% tx
commit;
%% tx
END
%% tx
END WORK
%% tx
END TRANSACTION
%% tx
ABORT
%% tx
ABORT WORK
%% tx
ABORT TRANSACTION
%% tx
ROLLBACK
%% tx
ROLLBACK WORK
%% tx
ROLLBACK TRANSACTION
%% tx
COMMIT AND CHAIN
%% tx
COMMIT WORK AND CHAIN
%% tx
commit and chain
%% tx
COMMIT AND NO CHAIN
%% tx
END AND CHAIN
%% tx
END TRANSACTION AND CHAIN
%% tx
ABORT AND CHAIN
%% tx
ABORT AND NO CHAIN
%% tx
ROLLBACK AND CHAIN
%% tx
ROLLBACK TRANSACTION AND CHAIN
%% tx
ROLLBACK AND NO CHAIN
%% tx
COMMIT /* c */ AND /* d */ CHAIN
%% tx
SAVEPOINT a
%% tx
RELEASE SAVEPOINT a
%% tx
RELEASE a
%% tx
ROLLBACK TO SAVEPOINT a
%% tx
ROLLBACK TO a
%% tx
ROLLBACK WORK TO SAVEPOINT a
%% tx
ROLLBACK TRANSACTION TO a
%% tx
PREPARE TRANSACTION 'oracle_gid'
%% tx
PREPARE TRANSACTION $$oracle_gid2$$
%% tx -- a prepared statement named "transaction"
PREPARE transaction AS SELECT 1
%% tx
SET TRANSACTION ISOLATION LEVEL SERIALIZABLE
%% tx
SET TRANSACTION READ ONLY
%% tx
SET SESSION CHARACTERISTICS AS TRANSACTION ISOLATION LEVEL REPEATABLE READ
%% tx
SET CONSTRAINTS ALL DEFERRED
%% tx
LOCK TABLE t IN SHARE MODE
%% tx -- a procedure that commits
CALL fx.pr_commit()
%% tx
SELECT 1 AS "begin"
%% tx
SELECT 'COMMIT'

%% no-tx
VACUUM
%% no-tx
VACUUM fx.t
%% no-tx
vacuum (analyze) fx.t
%% no-tx
VACUUM FULL fx.t
%% no-tx
VACUUM (VERBOSE, ANALYZE) t
%% no-tx
VACUUM ANALYZE t (a)
%% no-tx
CREATE DATABASE oracle_created
%% no-tx
create database "Oracle Created" template template0
%% no-tx
DROP DATABASE IF EXISTS oracle_absent
%% no-tx
DROP DATABASE IF EXISTS oracle_absent WITH (FORCE)
%% no-tx
ALTER DATABASE oracle_absent SET TABLESPACE pg_default
%% no-tx
CREATE TABLESPACE ts_absent LOCATION '/nonexistent/oracle'
%% no-tx
DROP TABLESPACE IF EXISTS ts_absent
%% no-tx
CREATE INDEX CONCURRENTLY IF NOT EXISTS t_a_idx ON fx.t (a)
%% no-tx
CREATE UNIQUE INDEX CONCURRENTLY IF NOT EXISTS t_a_idx ON fx.t (a)
%% no-tx
create index concurrently on scratch_absent (a)
%% no-tx
DROP INDEX CONCURRENTLY IF EXISTS fx.absent_idx
%% no-tx
REINDEX INDEX CONCURRENTLY fx.t_a_idx
%% no-tx
REINDEX TABLE CONCURRENTLY fx.t
%% no-tx
REINDEX (VERBOSE) TABLE CONCURRENTLY fx.t
%% no-tx
REINDEX SCHEMA fx
%% no-tx
REINDEX (VERBOSE) SCHEMA fx
%% no-tx
REINDEX SYSTEM oracle_absent
%% no-tx
REINDEX DATABASE oracle_absent
%% no-tx -- partitioned table: many transactions
REINDEX TABLE fx.p
%% no-tx -- partitioned index: many transactions
REINDEX INDEX fx.p_a_idx
%% no-tx
REINDEX TABLE fx.t
%% no-tx
CLUSTER
%% no-tx
CLUSTER VERBOSE
%% no-tx
CLUSTER (VERBOSE)
%% no-tx
CLUSTER fx.t USING t_a_idx
%% no-tx -- partitioned table: many transactions
CLUSTER fx.p USING p_a_idx
%% no-tx
ALTER SYSTEM SET work_mem = '8MB'
%% no-tx
ALTER SYSTEM RESET work_mem
%% no-tx
COMMIT PREPARED 'oracle_absent'
%% no-tx
ROLLBACK PREPARED 'oracle_absent'
%% no-tx
CREATE SUBSCRIPTION oracle_sub CONNECTION 'host=/nonexistent dbname=x' PUBLICATION p
%% no-tx -- connect = false creates no slot: allowed in a block
CREATE SUBSCRIPTION oracle_sub2 CONNECTION 'host=/nonexistent dbname=x' PUBLICATION p WITH (connect = false)
%% no-tx -- allowed in a block
ALTER SUBSCRIPTION fx_sub DISABLE
%% no-tx
DROP SUBSCRIPTION fx_sub
%% no-tx -- nothing to drop: allowed in a block
DROP SUBSCRIPTION IF EXISTS oracle_absent
%% no-tx
ALTER TABLE fx.p DETACH PARTITION fx.p1 CONCURRENTLY
%% no-tx
REFRESH MATERIALIZED VIEW CONCURRENTLY fx.mv
%% no-tx
ANALYZE fx.t
%% no-tx
CREATE INDEX IF NOT EXISTS t_a_idx ON fx.t (a)
%% no-tx
DROP INDEX IF EXISTS fx.absent_idx
%% no-tx
DISCARD PLANS
%% no-tx
DISCARD TEMP
%% no-tx
DISCARD SEQUENCES
%% no-tx
CHECKPOINT

%% ordinary
SELECT 1
%% ordinary
select * from t order by a
%% ordinary
TABLE t
%% ordinary
VALUES (1, 'x'), (2, 'y')
%% ordinary
WITH x AS (SELECT a FROM t) SELECT count(*) FROM x
%% ordinary
(SELECT 1) UNION ALL (SELECT 2)
%% ordinary
INSERT INTO t VALUES (3, 'three')
%% ordinary
INSERT INTO t (a, b) VALUES (4, 'app.current_tenant_id') RETURNING *
%% ordinary
UPDATE t SET b = 'x' WHERE a = 2
%% ordinary
UPDATE t SET a = a + 1, b = b || '!' WHERE false
%% ordinary
UPDATE t SET (a, b) = (1, 'one') WHERE a = 1
%% ordinary
DELETE FROM t WHERE a = 99
%% ordinary
INSERT INTO t VALUES (1, 'one') ON CONFLICT DO NOTHING
%% ordinary
MERGE INTO t USING (VALUES (1)) AS v(a) ON t.a = v.a WHEN MATCHED THEN UPDATE SET b = 'one'
%% ordinary
CREATE TEMP TABLE tmp_plain (a int)
%% ordinary
CREATE TABLE scratch.plain (a int, b text)
%% ordinary
CREATE TABLE scratch.plain2 AS SELECT * FROM t
%% ordinary
SELECT * INTO TEMP tmp_copy FROM t
%% ordinary
CREATE SEQUENCE scratch.seq
%% ordinary
CREATE VIEW scratch.v AS SELECT a FROM t
%% ordinary
CREATE INDEX ON t (b)
%% ordinary
ALTER TABLE t ADD COLUMN c int
%% ordinary
TRUNCATE t
%% ordinary
DROP TABLE IF EXISTS scratch.absent
%% ordinary
COMMENT ON TABLE t IS 'set app.current_tenant_id = 1'
%% ordinary
GRANT SELECT ON t TO app_user
%% ordinary
CREATE FUNCTION scratch.h() RETURNS int LANGUAGE sql AS 'SELECT 1'
%% ordinary
CREATE FUNCTION scratch.h2() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1; SELECT 2; END
%% ordinary
EXPLAIN SELECT * FROM t
%% ordinary
EXPLAIN ANALYZE SELECT * FROM t
%% ordinary
SHOW app.current_tenant_id
%% ordinary
SHOW ALL
%% ordinary
SELECT current_setting('app.current_tenant_id')
%% ordinary
SELECT current_setting('app.current_tenant_id', true), current_setting('search_path')
%% ordinary
SELECT name, setting FROM pg_settings WHERE name = 'work_mem'
%% ordinary
SELECT count(*) FROM pg_catalog.pg_settings
%% ordinary
LISTEN oracle_channel
%% ordinary
NOTIFY oracle_channel, 'payload'
%% ordinary
UNLISTEN *
%% ordinary
PREPARE p_plain (int) AS SELECT $1
%% ordinary
DEALLOCATE ALL
%% ordinary
SELECT pg_advisory_lock(1)
%% ordinary
SELECT pg_advisory_xact_lock(2)
%% ordinary
SELECT pg_sleep(0)
%% ordinary
SET search_path = fx, public
%% ordinary
SET SESSION search_path TO DEFAULT
%% ordinary
SET LOCAL search_path = fx
%% ordinary
SET work_mem = '8MB'
%% ordinary
SET statement_timeout = '5min'
%% ordinary
SET TIME ZONE 'UTC'
%% ordinary
SET TIME ZONE LOCAL
%% ordinary
SET datestyle = iso, mdy
%% ordinary
SET ROLE app_user
%% ordinary
SET SESSION AUTHORIZATION app_user
%% ordinary
RESET SESSION AUTHORIZATION
%% ordinary
SET SCHEMA 'fx'
%% ordinary
SET XML OPTION DOCUMENT
%% ordinary
SET app.other = 'x'
%% ordinary
SET app.current_tenant_id_2 = 'x'
%% ordinary
SET app.current_tenant = 'x'
%% ordinary
SET x.app.current_tenant_id = 'x'
%% ordinary -- invalid parameter name: PostgreSQL rejects it
SET "app. current_tenant_id" = 'x'
%% ordinary
SET application_name = 'app.current_tenant_id'
%% ordinary
RESET work_mem
%% ordinary
RESET search_path
%% ordinary
SELECT set_config('search_path', 'fx, public', false)
%% ordinary
SELECT set_config(E'work_mem', $$16MB$$, true)
%% ordinary
SELECT set_config('app.current_tenant_idx', 'x', false)
%% ordinary
DO $$BEGIN PERFORM 1; END$$
%% ordinary
CALL fx.pr()
%% ordinary
SELECT fx.f()
%% ordinary
COPY t TO STDOUT
%% ordinary
COPY (SELECT 'app.current_tenant_id') TO STDOUT WITH (FORMAT csv)
%% ordinary
SELECT "set" FROM (SELECT 1 AS "set") s
%% ordinary
SELECT 1 AS set_config
%% ordinary
SELECT a AS reset FROM t
%% ordinary
CREATE TEMP TABLE tmp_set (set_config text, "app.current_tenant_id" text)

%% hostile
SELECT 'app.current_tenant_id'
%% hostile
SELECT 'SET app.current_tenant_id = 1'
%% hostile
SELECT 'x'';SET app.current_tenant_id = ''evil'';--'
%% hostile
SELECT $$; SET app.current_tenant_id = 'evil'; $$
%% hostile
SELECT $a$ $$; SET app.current_tenant_id = 'evil'; $$ $a$
%% hostile -- tags are case-sensitive
SELECT $A$ $a$; SET app.current_tenant_id = 'evil'; $A$
%% hostile
SELECT $_$;$_$; SET app.current_tenant_id = 'evil'
%% hostile
SELECT 1 /* ; SET app.current_tenant_id = 'evil'; */
%% hostile -- nested comment: the SET stays inside
SELECT 1 /* /* */ ; SET app.current_tenant_id = 'evil'; */
%% hostile
SELECT 1 /* */ ; SET app.current_tenant_id = 'evil'
%% hostile
SELECT 1 -- ; SET app.current_tenant_id = 'evil'
%% hostile
SELECT 1 --
; SET app.current_tenant_id = 'evil'
%% hostile
SELECT "a;b" FROM (SELECT 1 AS "a;b") s
%% hostile
SELECT 1 AS "x""; SET app.current_tenant_id = 'evil'; --"
%% hostile
SELECT E'\'; SET app.current_tenant_id = ''evil''; --'
%% hostile
SELECT E'\\'; SET app.current_tenant_id = 'evil'; --'
%% hostile
SELECT 'a\'; SET app.current_tenant_id = 'evil'; --'
%% hostile scs=off
SELECT 'a\'; SET app.current_tenant_id = 'evil'; --'
%% hostile scs=off
SELECT 'a\\'; SET app.current_tenant_id = 'evil'; --'
%% hostile
SELECT 'a\'' ; SET app.current_tenant_id = 'evil'; --'
%% hostile scs=off
SELECT 'a\'' ; SET app.current_tenant_id = 'evil'; --'
%% hostile scs=off
SELECT E'\\'; SET app.current_tenant_id = 'evil'; --'
%% hostile scs=off
SELECT 'it''s'; SET app.current_tenant_id = 'evil'
%% hostile scs=off
SELECT set_config('app.current\x5ftenant_id', 'evil', false)
%% hostile scs=off
SELECT set_config('app.current\_tenant_id', 'evil', false)
%% hostile scs=off
SET app.current_tenant_id = 'ev\'il'
%% hostile scs=off -- a string-ending quote hidden by a backslash
SELECT '\'; SELECT set_config(''app.current_tenant_id'', ''evil'', false); --'
%% hostile
SELECT U&'\0027; SET app.current_tenant_id = ''evil''; --'
%% hostile
SELECT U&'!0027' UESCAPE '!'; SET app.current_tenant_id = 'evil'
%% hostile
SELECT U&"\0022;" FROM (SELECT 1 AS U&"\0022;") s
%% hostile
SELECT 1 AS x$y$; SET app.current_tenant_id = 'evil'; SELECT $y$ $y$
%% hostile
SELECT $y$ x$y$; SET app.current_tenant_id = 'evil'; $y$
%% hostile
SELECT 'a'
'b'; SET app.current_tenant_id = 'evil'
%% hostile -- E'' continuation keeps backslash escapes
SELECT E'a'
'\'; SET app.current_tenant_id = ''evil''; --'
%% hostile
SELECT 'a'
'\'; SET app.current_tenant_id = 'evil'; --'
%% hostile
SELECT 'a'
-- comment between continued literals
'b'; SET app.current_tenant_id = 'evil'
%% hostile
SELECT N'a\'; SET app.current_tenant_id = 'evil'; --'
%% hostile
SELECT B'01'; SET app.current_tenant_id = 'evil'
%% hostile
SELECT X'1F'; SET app.current_tenant_id = 'evil'
%% hostile
SELECT 1 +/* ; SET app.current_tenant_id = 'evil'; */ 2
%% hostile
SELECT 2 --- ; SET app.current_tenant_id = 'evil'
%% hostile
SELECT 2 */* ; */ 3; SET app.current_tenant_id = 'evil'
%% hostile
SELECT 'a' ||/* ' */ 'b'; SET app.current_tenant_id = 'evil'
%% hostile
SELECT $1$
%% hostile
SELECT '; SET app.current_tenant_id = ''evil''; ' AS "; SET app.current_tenant_id = 'x'; "
%% hostile
CREATE TEMP TABLE "t;x" ("a;b" int); SELECT "a;b" FROM "t;x"
%% hostile
SELECT 1;;; ;SET app.current_tenant_id = 'evil';;
%% hostile -- unterminated: PostgreSQL runs nothing
SELECT 1; SET app.current_tenant_id = 'evil'; SELECT 'unterminated
%% hostile -- unterminated: PostgreSQL runs nothing
SET app.current_tenant_id = 'evil'; /* unterminated comment
%% hostile -- unterminated: PostgreSQL runs nothing
SET app.current_tenant_id = 'evil'; SELECT $x$ unterminated
%% hostile -- unterminated: PostgreSQL runs nothing
SET app.current_tenant_id = 'evil'; SELECT "unterminated
%% hostile -- zero-length identifier: PostgreSQL runs nothing
SET app.current_tenant_id = 'evil'; SELECT ""
%% hostile scs=off -- U&'' with standard_conforming_strings off: PostgreSQL runs nothing
SET app.current_tenant_id = 'evil'; SELECT U&'x'
%% hostile
SELECT 'set_config(''app.current_tenant_id'', ''evil'', false)'
%% hostile
SELECT $x$ set_config('app.current_tenant_id', 'b', false) $x$
%% hostile
SELECT 1 -- set_config('app.current_tenant_id', 'evil', false)
%% hostile
SELECT /* set_config('app.current_tenant_id', 'evil', false) */ 1
%% hostile
SELECT "set_config('app.current_tenant_id', 'evil', false)" FROM (SELECT 1 AS "set_config('app.current_tenant_id', 'evil', false)") s
%% hostile
CREATE RULE r_sc AS ON INSERT TO scratch.absent DO ALSO (SELECT set_config('app.current_tenant_id', 'evil', false); SELECT 1)
%% hostile -- a routine named begin has no body
CREATE FUNCTION scratch.begin() RETURNS int LANGUAGE sql AS 'SELECT 1'; SET app.current_tenant_id = 'evil'
%% hostile
SELECT 1 AS "end"; SET app.current_tenant_id = 'evil'
%% hostile
SELECT '/*'; SET app.current_tenant_id = 'evil'
%% hostile
SELECT 1 -- $$
; SET app.current_tenant_id = 'evil'
%% hostile
SELECT 1 AS a$$; SET app.current_tenant_id = 'evil'; SELECT $$ $$
%% hostile
/* /* /* */ */ ; SET app.current_tenant_id = 'evil'; */ SELECT 1
%% hostile
SELECT E'\\\''; SET app.current_tenant_id = 'evil'; --'
%% hostile
SELECT E'\\''; SET app.current_tenant_id = 'evil'; --'
%% hostile scs=off
SELECT '\\''; SET app.current_tenant_id = 'evil'; --'
%% hostile
SELECT 'é'; SET app.current_tenant_id = 'ëvil'
%% hostile
SELECT 1 AS begin; SET app.current_tenant_id = 'evil'
%% hostile
(SELECT 1); SET app.current_tenant_id = 'evil'
%% hostile
SELECT U&'\0041' UESCAPE '\'; SET app.current_tenant_id = 'evil'
%% hostile
CREATE FUNCTION scratch.f_case() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; END; SET app.current_tenant_id = 'evil'
%% hostile
CREATE FUNCTION scratch.f_end() RETURNS int LANGUAGE sql BEGIN ATOMIC SELECT 1 AS end; END; SET app.current_tenant_id = 'evil'

%% multi
BEGIN; SELECT 1; COMMIT
%% multi
BEGIN; SELECT 1
%% multi
SELECT 1; COMMIT; SELECT 2
%% multi
BEGIN; COMMIT; BEGIN
%% multi
INSERT INTO t VALUES (5, 'five'); COMMIT; SELECT count(*) FROM t
%% multi
COMMIT; BEGIN
%% multi
BEGIN; ROLLBACK AND CHAIN; SELECT 1
%% multi
BEGIN ISOLATION LEVEL SERIALIZABLE; SELECT 1; COMMIT AND CHAIN; SELECT 2
%% multi
SELECT 1; BEGIN; SELECT 2
%% multi
BEGIN; SAVEPOINT s; SELECT 1; ROLLBACK TO SAVEPOINT s; RELEASE s; COMMIT
%% multi
BEGIN; SELECT 1/0; COMMIT
%% multi
SELECT 1/0; BEGIN
%% multi
SELECT 1; SELECT 1/0
%% multi
BEGIN; PREPARE TRANSACTION 'oracle_gid3'
%% multi
BEGIN; INSERT INTO t VALUES (6, 'six'); PREPARE TRANSACTION 'oracle_gid4'; SELECT 1
%% multi
START TRANSACTION; END; SELECT 1
%% multi
BEGIN; ABORT; BEGIN WORK; END WORK
%% multi
BEGIN; COMMIT AND CHAIN; COMMIT AND CHAIN; ROLLBACK
%% multi
SELECT 1; COMMIT AND CHAIN
%% multi
BEGIN; SET TRANSACTION ISOLATION LEVEL REPEATABLE READ; SELECT 1; COMMIT
%% multi
BEGIN; SET LOCAL app.current_tenant_id = 'evil'; COMMIT
%% multi
BEGIN; SET LOCAL app.current_tenant_id = 'evil'; SET app.current_tenant_id FROM CURRENT; COMMIT
%% multi
SET LOCAL app.current_tenant_id = 'evil'; SELECT current_setting('app.current_tenant_id')
%% multi
SELECT 1; SELECT set_config('app.current_tenant_id', 'evil', false)
%% multi
SELECT set_config('app.current_tenant_id', 'evil', true); SELECT 2
%% multi
BEGIN; SELECT set_config('app.current_tenant_id', 'evil', true)
%% multi
BEGIN; SET app.current_tenant_id = 'evil'; ROLLBACK
%% multi
SET app.current_tenant_id = 'evil'; SELECT 1/0
%% multi
BEGIN; RESET ALL; COMMIT
%% multi
PREPARE p_sc AS SELECT set_config('app.current_tenant_id', 'evil', false); EXECUTE p_sc
%% multi
BEGIN; DECLARE c_sc CURSOR FOR SELECT set_config('app.current_tenant_id', 'evil', false); FETCH c_sc
%% multi
CREATE TEMP VIEW v_sc AS SELECT set_config('app.current_tenant_id', 'evil', false) AS v; SELECT * FROM v_sc
%% multi
CREATE FUNCTION scratch.f_atomic() RETURNS text LANGUAGE sql BEGIN ATOMIC SELECT set_config('app.current_tenant_id', 'evil', false); END; SELECT scratch.f_atomic()
%% multi
CREATE AGGREGATE pg_temp.agg_sc(text, boolean) (SFUNC = set_config, STYPE = text, INITCOND = 'app.current_tenant_id'); SELECT pg_temp.agg_sc('evil', false)
%% multi
CREATE AGGREGATE pg_temp.agg_lit(text, boolean) (SFUNC = 'set_config', STYPE = text, INITCOND = 'app.current_tenant_id'); SELECT pg_temp.agg_lit('evil', false)
%% multi
CREATE AGGREGATE pg_temp.agg_rw(text) (SFUNC = ts_rewrite, STYPE = tsquery, INITCOND = 'a');
SELECT pg_temp.agg_rw('SELECT ''a''::tsquery, to_tsquery(set_config(''app.current_tenant_id'', ''evil'', false))')
%% multi
CREATE OPERATOR pg_temp.### (LEFTARG = tsquery, RIGHTARG = text, FUNCTION = 'ts_rewrite');
SELECT 'a'::tsquery OPERATOR(pg_temp.###) 'SELECT ''a''::tsquery, to_tsquery(set_config(''app.current_tenant_id'', ''evil'', false))'
%% multi
CREATE TEMP VIEW v_settings AS SELECT * FROM pg_settings; UPDATE v_settings SET setting = 'off' WHERE name = 'standard_conforming_strings'
%% multi
CREATE TABLE scratch.r (a int); CREATE RULE r_sc AS ON INSERT TO scratch.r DO ALSO SELECT set_config('app.current_tenant_id', 'evil', false); INSERT INTO scratch.r VALUES (1)
%% multi
CREATE FUNCTION scratch.g() RETURNS int LANGUAGE sql SET app.current_tenant_id = 'evil' AS 'SELECT 1'; SELECT scratch.g()
%% multi
SELECT 1; VACUUM fx.t
%% multi
VACUUM fx.t; SELECT 1
%% multi
BEGIN; CREATE INDEX CONCURRENTLY IF NOT EXISTS t_a_idx ON fx.t (a)
%% multi
SELECT 1; DISCARD ALL
%% multi
SELECT 1; ALTER SYSTEM SET work_mem = '8MB'
%% multi
CREATE DATABASE oracle_created2; SELECT 1
%% multi
SELECT 1; CLUSTER fx.p USING p_a_idx
%% multi
SELECT 1; SET standard_conforming_strings = off; SELECT 'a\'; SET app.current_tenant_id = 'evil'; --'
%% multi scs=off
SELECT 1; SET standard_conforming_strings = on; SELECT 'a\'; SET app.current_tenant_id = 'evil'; --'
%% multi
SET client_encoding = 'SJIS'; SELECT 1
%% multi
BEGIN; SET LOCAL ROLE app_user; SELECT current_user; COMMIT
%% multi
SET SESSION AUTHORIZATION app_user; SELECT set_config('app.current_tenant_id', 'evil', false)
%% multi
BEGIN; LOCK TABLE t IN SHARE MODE; COMMIT
%% multi
SAVEPOINT a; ROLLBACK TO a
%% multi
BEGIN; SAVEPOINT a; ROLLBACK TO a; ROLLBACK AND CHAIN; SELECT 1
%% multi
BEGIN; END AND CHAIN; ABORT AND CHAIN; END
%% multi
CREATE PROCEDURE scratch.pa() LANGUAGE sql BEGIN ATOMIC SELECT CASE WHEN true THEN 1 END; SELECT 1 AS end; END; COMMIT; BEGIN
%% multi
(SELECT 1); BEGIN; SELECT 'COMMIT; ROLLBACK'; COMMIT AND CHAIN; /* COMMIT; */ SELECT 2
%% multi
COMMIT; COMMIT; ROLLBACK
%% multi
BEGIN READ ONLY; SAVEPOINT "a;b"; RELEASE SAVEPOINT "a;b"; END
%% multi
BEGIN; CREATE TEMP TABLE tmp_tx (a int) ON COMMIT DROP; INSERT INTO tmp_tx VALUES (1); COMMIT; SELECT 1
%% multi
SELECT set_config('search_path', 'fx', true); BEGIN ISOLATION LEVEL SERIALIZABLE

%% blind-spot
DO $$BEGIN PERFORM set_config('app.current_tenant_id', 'evil', false); END$$
%% blind-spot
DO $$BEGIN EXECUTE 'SET app.current_tenant_id = ''evil'''; END$$
%% blind-spot
DO LANGUAGE plpgsql $$BEGIN PERFORM set_config('app.' || 'current_tenant_id', 'evil', true); END$$;
SELECT 1
%% blind-spot
SELECT fx.tamper()
%% blind-spot
CREATE FUNCTION pg_temp.f_str() RETURNS text LANGUAGE sql
AS 'SELECT set_config(''app.current_tenant_id'', ''evil'', false)'; SELECT pg_temp.f_str()
%% blind-spot
CREATE FUNCTION pg_temp.f_plpgsql() RETURNS void LANGUAGE plpgsql
AS $$BEGIN EXECUTE format('SET app.current_tenant_id = %L', 'evil'); END$$; SELECT pg_temp.f_plpgsql()
