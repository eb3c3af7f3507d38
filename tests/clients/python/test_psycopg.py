"""psycopg 3 through pgtenant: isolation, the tenant in every query, errors inside transactions,
refused tenant changes, prepared statements (prepare_threshold=0 and the default 5) across many
client connections, pipeline mode, the transaction API, isolation levels and COPY.

Run by tests/clients.rs as `python3 -m unittest -v test_psycopg` with .deps on PYTHONPATH.
"""

import threading
import unittest
from concurrent.futures import ThreadPoolExecutor

import psycopg
from psycopg import ClientCursor, IsolationLevel, errors, sql

from clientenv import ADMIN_URL, POOL_SIZE, TENANT_A, TENANT_B, TENANT_SQL, TENANTS, URL_A, URL_B, marker

COUNT_SQL = "SELECT count(*) FROM tool_calls WHERE tool_name = %s"
INSERT_SQL = "INSERT INTO tool_calls (tenant_id, tool_name) VALUES (%s, %s)"
INSERT_OWN_SQL = (
    "INSERT INTO tool_calls (tenant_id, tool_name) VALUES (current_setting('app.current_tenant_id')::uuid, %s)"
)


def admin_count(tool_name):
    """{tenant: rows} for tool_name, counted as superuser straight on PostgreSQL."""
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        rows = admin.execute(
            "SELECT tenant_id::text, count(*) FROM tool_calls WHERE tool_name = %s GROUP BY 1", (tool_name,)
        ).fetchall()
    return dict(rows)


def tenant_of(conn):
    return conn.execute(TENANT_SQL).fetchone()[0]


class PsycopgTest(unittest.TestCase):
    def connect(self, url, **kwargs):
        conn = psycopg.connect(url, **kwargs)
        self.addCleanup(conn.close)
        return conn

    def test_each_tenant_sees_only_its_rows(self):
        name = marker("psycopg-iso")
        a = self.connect(URL_A, autocommit=True)
        b = self.connect(URL_B, autocommit=True)
        for _ in range(3):
            a.execute(INSERT_SQL, (TENANT_A, name))
        # Simple protocol (client-side binding) for B.
        with ClientCursor(b) as cur:
            for _ in range(5):
                cur.execute(INSERT_OWN_SQL, (name,))
        count_sql = "SELECT tenant_id::text, count(*) FROM tool_calls WHERE tool_name = %s GROUP BY 1"
        self.assertEqual(a.execute(count_sql, (name,)).fetchall(), [(TENANT_A, 3)])
        self.assertEqual(b.execute(count_sql, (name,)).fetchall(), [(TENANT_B, 5)])
        for conn, own in ((a, TENANT_A), (b, TENANT_B)):
            other = conn.execute("SELECT count(*) FROM tool_calls WHERE tenant_id <> %s", (own,)).fetchone()
            self.assertEqual(other, (0,))
        self.assertEqual(admin_count(name), {TENANT_A: 3, TENANT_B: 5})
        with self.assertRaises(errors.InsufficientPrivilege) as cm:
            b.execute(INSERT_SQL, (TENANT_A, name))
        self.assertEqual(cm.exception.sqlstate, "42501")
        self.assertIn("row-level security", str(cm.exception))
        self.assertEqual(tenant_of(b), TENANT_B)

    def test_every_concurrent_query_sees_its_tenant(self):
        # 10 client connections per tenant, each in its own thread, on POOL_SIZE server connections.
        pids = set()
        lock = threading.Lock()

        def worker(tenant, url, n):
            with psycopg.connect(url, autocommit=True) as conn:
                for i in range(30):
                    if i % 2:
                        row = conn.execute(
                            "SELECT current_setting('app.current_tenant_id'), pg_backend_pid(), %s::int", (i,)
                        ).fetchone()
                        self.assertEqual(row[2], i)
                    else:
                        with ClientCursor(conn) as cur:
                            row = cur.execute(
                                "SELECT current_setting('app.current_tenant_id'), pg_backend_pid()"
                            ).fetchone()
                    self.assertEqual(row[0], tenant, f"connection {n} query {i}")
                    with lock:
                        pids.add(row[1])

        with ThreadPoolExecutor(max_workers=20) as pool:
            jobs = [pool.submit(worker, t, u, n) for n in range(10) for t, u in TENANTS]
            for job in jobs:
                job.result()
        self.assertLessEqual(len(pids), POOL_SIZE, f"{len(pids)} server backends for pool_size {POOL_SIZE}")

    def test_error_inside_a_transaction(self):
        name = marker("psycopg-err")
        conn = self.connect(URL_A)  # not autocommit: psycopg sends BEGIN itself
        conn.execute(INSERT_SQL, (TENANT_A, name))
        with self.assertRaises(errors.DivisionByZero) as cm:
            conn.execute("SELECT 1/0")
        self.assertEqual(cm.exception.sqlstate, "22012")
        self.assertEqual(conn.info.transaction_status, psycopg.pq.TransactionStatus.INERROR)
        with self.assertRaises(errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.rollback()
        self.assertEqual(tenant_of(conn), TENANT_A)
        self.assertEqual(conn.execute(COUNT_SQL, (name,)).fetchone(), (0,))
        conn.rollback()

        # The transaction API: the error leaves the block, which is rolled back.
        with self.assertRaises(errors.DivisionByZero):
            with conn.transaction():
                conn.execute(INSERT_SQL, (TENANT_A, name))
                conn.execute("SELECT 1/%s", (0,))
        self.assertEqual(conn.execute(COUNT_SQL, (name,)).fetchone(), (0,))
        self.assertEqual(tenant_of(conn), TENANT_A)
        conn.commit()
        self.assertEqual(admin_count(name), {})

    def test_changing_the_tenant_is_refused(self):
        conn = self.connect(URL_A, autocommit=True)
        attempts = [
            (sql.SQL("SET app.current_tenant_id = {}").format(TENANT_B), None),
            (sql.SQL("SET SESSION app.current_tenant_id TO {}").format(TENANT_B), None),
            ("RESET app.current_tenant_id", None),
            ("SELECT set_config('app.current_tenant_id', %s, false)", (TENANT_B,)),
            ("SELECT set_config(%s, %s, true)", ("app.current_tenant_id", TENANT_B)),
        ]
        for query, params in attempts:
            with self.subTest(query=str(query)):
                with self.assertRaises(errors.InsufficientPrivilege) as cm:
                    conn.execute(query, params)
                self.assertEqual(cm.exception.sqlstate, "42501")
                self.assertEqual(tenant_of(conn), TENANT_A)
        # Simple protocol too.
        with ClientCursor(conn) as cur:
            with self.assertRaises(errors.InsufficientPrivilege):
                cur.execute("SET app.current_tenant_id = %s", (TENANT_B,))
        self.assertEqual(tenant_of(conn), TENANT_A)

        # Inside a transaction: the refusal aborts it like a server error.
        tx = self.connect(URL_A)
        self.assertEqual(tenant_of(tx), TENANT_A)
        with self.assertRaises(errors.InsufficientPrivilege):
            tx.execute(sql.SQL("SET LOCAL app.current_tenant_id = {}").format(TENANT_B))
        with self.assertRaises(errors.InFailedSqlTransaction):
            tx.execute("SELECT 1")
        tx.rollback()
        self.assertEqual(tenant_of(tx), TENANT_A)
        self.assertEqual(tx.execute("SELECT count(*) FROM tool_calls WHERE tenant_id = %s", (TENANT_B,)).fetchone(), (0,))
        tx.rollback()

    def test_prepared_statements_across_many_connections(self):
        name = marker("psycopg-prep")
        seeded = {TENANT_A: 2, TENANT_B: 4}
        for tenant, url in TENANTS:
            with psycopg.connect(url, autocommit=True) as conn:
                for _ in range(seeded[tenant]):
                    conn.execute(INSERT_SQL, (tenant, name))
        query = (
            "SELECT current_setting('app.current_tenant_id'), count(*), %s::int FROM tool_calls WHERE tool_name = %s"
        )
        ins = name + "-ins"

        def worker(tenant, url, threshold):
            with psycopg.connect(url, autocommit=True, prepare_threshold=threshold) as conn:
                for i in range(20):
                    self.assertEqual(conn.execute(query, (i, name)).fetchone(), (tenant, seeded[tenant], i))
                    conn.execute(INSERT_OWN_SQL + " RETURNING tenant_id::text", (ins,))
                # Inside an explicit transaction too.
                with conn.transaction():
                    for i in range(5):
                        self.assertEqual(conn.execute(query, (i, name)).fetchone(), (tenant, seeded[tenant], i))
                # Explicitly prepared.
                for i in range(5):
                    self.assertEqual(conn.execute(query, (i, name), prepare=True).fetchone(), (tenant, seeded[tenant], i))

        # prepare_threshold=0: every statement is prepared (named) on first use; 10 client
        # connections per tenant × 20 executions = 200 per tenant on 3 server connections.
        with ThreadPoolExecutor(max_workers=20) as pool:
            jobs = [pool.submit(worker, t, u, 0) for _ in range(10) for t, u in TENANTS]
            for job in jobs:
                job.result()
        self.assertEqual(admin_count(ins), {TENANT_A: 200, TENANT_B: 200})

        # The default threshold (prepared after 5 executions), 100+ executions per connection.
        with ThreadPoolExecutor(max_workers=4) as pool:
            jobs = [pool.submit(worker, t, u, 5) for _ in range(2) for t, u in TENANTS]
            for job in jobs:
                job.result()
        with psycopg.connect(URL_B, autocommit=True) as conn:
            for i in range(120):
                self.assertEqual(conn.execute(query, (i, name)).fetchone(), (TENANT_B, seeded[TENANT_B], i))

    def test_pipeline_mode(self):
        name = marker("psycopg-pipe")
        conn = self.connect(URL_A, autocommit=True)
        cursors = []
        with conn.pipeline():
            for i in range(50):
                cursors.append(conn.execute("SELECT current_setting('app.current_tenant_id'), %s::int", (i,)))
                conn.execute(INSERT_OWN_SQL, (name,))
        for i, cur in enumerate(cursors):
            self.assertEqual(cur.fetchone(), (TENANT_A, i))
        self.assertEqual(admin_count(name), {TENANT_A: 50})

        # An error skips the rest of its sync group only; later groups run with the tenant.
        with conn.pipeline() as p:
            first = conn.execute(TENANT_SQL)
            p.sync()
            conn.execute(INSERT_OWN_SQL, (name,))
            # Nothing is queued after the failing statement: psycopg raises the
            # error at whichever later call first reads it, so the sync is that call.
            conn.cursor().execute("SELECT 1/0")
            with self.assertRaises(errors.DivisionByZero):
                p.sync()
            after = conn.execute(TENANT_SQL)
        self.assertEqual(first.fetchone(), (TENANT_A,))
        self.assertEqual(after.fetchone(), (TENANT_A,))
        # The failed group was one implicit transaction: its INSERT is gone too.
        self.assertEqual(admin_count(name), {TENANT_A: 50})

        # executemany uses the pipeline internally.
        b = self.connect(URL_B, autocommit=True)
        b.cursor().executemany(INSERT_OWN_SQL, [(name,)] * 40)
        self.assertEqual(admin_count(name), {TENANT_A: 50, TENANT_B: 40})

        # A pipeline inside a transaction (not autocommit).
        tx = self.connect(URL_B)
        with tx.pipeline():
            results = [tx.execute("SELECT current_setting('app.current_tenant_id'), %s::int", (i,)) for i in range(20)]
        self.assertEqual([c.fetchone() for c in results], [(TENANT_B, i) for i in range(20)])
        tx.commit()

    def test_transaction_api_sees_the_tenant(self):
        name = marker("psycopg-tx")
        conn = self.connect(URL_A, autocommit=True)
        with conn.transaction():
            for _ in range(5):
                self.assertEqual(tenant_of(conn), TENANT_A)
            conn.execute(INSERT_OWN_SQL, (name,))
            # A savepoint rolled back by an error; the outer transaction goes on.
            with self.assertRaises(errors.DivisionByZero):
                with conn.transaction():
                    conn.execute(INSERT_OWN_SQL, (name,))
                    conn.execute("SELECT 1/0")
            self.assertEqual(tenant_of(conn), TENANT_A)
            self.assertEqual(conn.execute(COUNT_SQL, (name,)).fetchone(), (1,))
        self.assertEqual(admin_count(name), {TENANT_A: 1})
        b = self.connect(URL_B, autocommit=True)
        self.assertEqual(b.execute(COUNT_SQL, (name,)).fetchone(), (0,))

    def test_isolation_levels(self):
        conn = self.connect(URL_B)
        conn.isolation_level = IsolationLevel.SERIALIZABLE
        self.assertEqual(conn.execute("SHOW transaction_isolation").fetchone(), ("serializable",))
        self.assertEqual(tenant_of(conn), TENANT_B)
        self.assertEqual(conn.execute("SELECT count(*) FROM tool_calls WHERE tenant_id = %s", (TENANT_A,)).fetchone(), (0,))
        conn.commit()

        conn.isolation_level = IsolationLevel.REPEATABLE_READ
        conn.read_only = True
        with conn.transaction():
            self.assertEqual(conn.execute("SHOW transaction_isolation").fetchone(), ("repeatable read",))
            self.assertEqual(conn.execute("SHOW transaction_read_only").fetchone(), ("on",))
            self.assertEqual(tenant_of(conn), TENANT_B)

        auto = self.connect(URL_B, autocommit=True)
        auto.execute("BEGIN ISOLATION LEVEL SERIALIZABLE")
        self.assertEqual(auto.execute("SHOW transaction_isolation").fetchone(), ("serializable",))
        self.assertEqual(tenant_of(auto), TENANT_B)
        auto.execute("COMMIT")
        auto.execute("BEGIN")
        auto.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        self.assertEqual(auto.execute("SHOW transaction_isolation").fetchone(), ("repeatable read",))
        self.assertEqual(tenant_of(auto), TENANT_B)
        auto.execute("COMMIT")

    def test_copy(self):
        name = marker("psycopg-copy")
        a = self.connect(URL_A, autocommit=True)
        # PostgreSQL refuses COPY FROM into a table under RLS, directly as well: same error here.
        with a.cursor() as cur:
            with self.assertRaises(errors.FeatureNotSupported) as cm:
                with cur.copy("COPY tool_calls (tenant_id, tool_name) FROM STDIN") as copy:
                    copy.write_row((TENANT_A, name))
            self.assertIn("row-level security", str(cm.exception))
        self.assertEqual(tenant_of(a), TENANT_A)
        a.cursor().executemany(INSERT_SQL, [(TENANT_A, name)] * 10)
        b = self.connect(URL_B, autocommit=True)
        for conn, n in ((a, 10), (b, 0)):
            with conn.cursor() as cur:
                query = sql.SQL(
                    "COPY (SELECT tenant_id, current_setting('app.current_tenant_id') "
                    "FROM tool_calls WHERE tool_name = {}) TO STDOUT"
                )
                with cur.copy(query.format(name)) as copy:
                    rows = list(copy.rows())
            self.assertEqual(rows, [(TENANT_A, TENANT_A)] * n)
            # COPY of a whole table sees only the tenant's rows.
            with conn.cursor() as cur:
                with cur.copy("COPY tool_calls (tenant_id) TO STDOUT") as copy:
                    tenants = {row[0] for row in copy.rows()}
            self.assertLessEqual(tenants, {TENANT_A if conn is a else TENANT_B})
        self.assertEqual(admin_count(name), {TENANT_A: 10})

    def test_server_side_cursor_in_a_transaction(self):
        conn = self.connect(URL_A)
        with conn.cursor(name="big") as cur:
            cur.itersize = 7
            cur.execute("SELECT current_setting('app.current_tenant_id'), g FROM generate_series(1, 50) AS g")
            rows = list(cur)
        self.assertEqual(rows, [(TENANT_A, g) for g in range(1, 51)])
        self.assertEqual(tenant_of(conn), TENANT_A)
        conn.commit()

    def test_prepared_statement_eviction(self):
        # prepared_max=5 with 20 distinct statements: psycopg evicts (DEALLOCATE) and re-prepares.
        conn = self.connect(URL_B, autocommit=True, prepare_threshold=0)
        conn.prepared_max = 5
        for rnd in range(3):
            for k in range(20):
                row = conn.execute(f"SELECT current_setting('app.current_tenant_id'), %s::int + {k}", (rnd,)).fetchone()
                self.assertEqual(row, (TENANT_B, rnd + k))

    def test_cancel_cancels_that_query_only(self):
        a = self.connect(URL_A, autocommit=True)
        b = self.connect(URL_B, autocommit=True)
        self.assertEqual(tenant_of(a), TENANT_A)
        self.assertEqual(tenant_of(b), TENANT_B)
        timer = threading.Timer(0.3, a.cancel_safe)
        other = {}

        def run_other():
            other["row"] = b.execute("SELECT pg_sleep(1), current_setting('app.current_tenant_id')").fetchone()

        thread = threading.Thread(target=run_other)
        thread.start()
        timer.start()
        with self.assertRaises(errors.QueryCanceled):
            a.execute("SELECT pg_sleep(30)")
        thread.join(20)
        self.assertEqual(other["row"][1], TENANT_B)
        self.assertEqual(tenant_of(a), TENANT_A)

if __name__ == "__main__":
    unittest.main()
