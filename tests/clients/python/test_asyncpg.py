"""asyncpg through pgtenant: isolation, the tenant in every query, errors inside transactions,
refused tenant changes, named prepared statements (asyncpg's default, and explicit
`prepare()`) across a pool of many client connections, pool release with asyncpg's reset query
(RESET ALL, UNLISTEN *, pg_advisory_unlock_all()), pipelined executemany, the transaction API,
isolation levels and COPY.

Run by tests/clients.rs as `python3 -m unittest -v test_asyncpg` with .deps on PYTHONPATH.
"""

import asyncio
import unittest

import asyncpg
from asyncpg import exceptions

from clientenv import ADMIN_URL, POOL_SIZE, TENANT_A, TENANT_B, TENANT_SQL, TENANTS, URL_A, URL_B, marker

COUNT_SQL = "SELECT count(*) FROM tool_calls WHERE tool_name = $1"
INSERT_SQL = "INSERT INTO tool_calls (tenant_id, tool_name) VALUES ($1, $2)"
INSERT_OWN_SQL = (
    "INSERT INTO tool_calls (tenant_id, tool_name) VALUES (current_setting('app.current_tenant_id')::uuid, $1)"
)


async def admin_count(tool_name):
    """{tenant: rows} for tool_name, counted as superuser straight on PostgreSQL."""
    admin = await asyncpg.connect(ADMIN_URL)
    try:
        rows = await admin.fetch(
            "SELECT tenant_id::text, count(*) FROM tool_calls WHERE tool_name = $1 GROUP BY 1", tool_name
        )
    finally:
        await admin.close()
    return {r[0]: r[1] for r in rows}


async def tenant_of(conn):
    return await conn.fetchval(TENANT_SQL)


class AsyncpgTest(unittest.IsolatedAsyncioTestCase):
    async def connect(self, url, **kwargs):
        conn = await asyncpg.connect(url, **kwargs)
        self.addAsyncCleanup(conn.close)
        return conn

    async def pool(self, url, size, **kwargs):
        pool = await asyncpg.create_pool(url, min_size=size, max_size=size, **kwargs)
        self.addAsyncCleanup(pool.close)
        return pool

    async def test_each_tenant_sees_only_its_rows(self):
        name = marker("asyncpg-iso")
        a = await self.connect(URL_A)
        b = await self.connect(URL_B)
        for _ in range(3):
            await a.execute(INSERT_SQL, TENANT_A, name)
        for _ in range(5):
            # No arguments: asyncpg uses the simple protocol.
            await b.execute(INSERT_OWN_SQL.replace("$1", f"'{name}'"))
        count_sql = "SELECT tenant_id::text, count(*) FROM tool_calls WHERE tool_name = $1 GROUP BY 1"
        self.assertEqual([tuple(r) for r in await a.fetch(count_sql, name)], [(TENANT_A, 3)])
        self.assertEqual([tuple(r) for r in await b.fetch(count_sql, name)], [(TENANT_B, 5)])
        for conn, own in ((a, TENANT_A), (b, TENANT_B)):
            other = await conn.fetchval("SELECT count(*) FROM tool_calls WHERE tenant_id <> $1", own)
            self.assertEqual(other, 0)
        self.assertEqual(await admin_count(name), {TENANT_A: 3, TENANT_B: 5})
        with self.assertRaises(exceptions.InsufficientPrivilegeError) as cm:
            await b.execute(INSERT_SQL, TENANT_A, name)
        self.assertEqual(cm.exception.sqlstate, "42501")
        self.assertIn("row-level security", str(cm.exception))
        self.assertEqual(await tenant_of(b), TENANT_B)

    async def test_every_concurrent_query_sees_its_tenant(self):
        pools = {tenant: await self.pool(url, 10) for tenant, url in TENANTS}

        async def one(tenant, i):
            pool = pools[tenant]
            if i % 2:
                row = await pool.fetchrow(
                    "SELECT current_setting('app.current_tenant_id'), pg_backend_pid(), $1::int", i
                )
                self.assertEqual(row[2], i)
            else:
                row = await pool.fetchrow("SELECT current_setting('app.current_tenant_id'), pg_backend_pid()")
            self.assertEqual(row[0], tenant, f"query {i}")
            return row[1]

        pids = await asyncio.gather(*(one(tenant, i) for i in range(300) for tenant, _ in TENANTS))
        self.assertLessEqual(len(set(pids)), POOL_SIZE, f"{len(set(pids))} server backends for pool_size {POOL_SIZE}")

    async def test_error_inside_a_transaction(self):
        name = marker("asyncpg-err")
        conn = await self.connect(URL_A)
        with self.assertRaises(exceptions.DivisionByZeroError) as cm:
            async with conn.transaction():
                await conn.execute(INSERT_SQL, TENANT_A, name)
                await conn.fetchval("SELECT 1/$1::int", 0)
        self.assertEqual(cm.exception.sqlstate, "22012")
        self.assertFalse(conn.is_in_transaction())
        self.assertEqual(await tenant_of(conn), TENANT_A)
        self.assertEqual(await conn.fetchval(COUNT_SQL, name), 0)

        # Explicit BEGIN / ROLLBACK.
        await conn.execute("BEGIN")
        await conn.execute(INSERT_SQL, TENANT_A, name)
        with self.assertRaises(exceptions.DivisionByZeroError):
            await conn.execute("SELECT 1/0")
        with self.assertRaises(exceptions.InFailedSQLTransactionError):
            await conn.fetchval("SELECT $1::int", 1)
        await conn.execute("ROLLBACK")
        self.assertEqual(await tenant_of(conn), TENANT_A)
        self.assertEqual(await conn.fetchval(COUNT_SQL, name), 0)
        self.assertEqual(await admin_count(name), {})

    async def test_changing_the_tenant_is_refused(self):
        conn = await self.connect(URL_A)
        attempts = [
            (f"SET app.current_tenant_id = '{TENANT_B}'",),
            (f'SET SESSION "app".current_tenant_id TO \'{TENANT_B}\'',),
            ("RESET app.current_tenant_id",),
            ("SELECT set_config('app.current_tenant_id', $1, false)", TENANT_B),
            ("SELECT set_config($1, $2, true)", "app.current_tenant_id", TENANT_B),
        ]
        for query, *args in attempts:
            with self.subTest(query=query):
                with self.assertRaises(exceptions.InsufficientPrivilegeError) as cm:
                    await conn.execute(query, *args)
                self.assertEqual(cm.exception.sqlstate, "42501")
                self.assertEqual(await tenant_of(conn), TENANT_A)
        # Inside a transaction: the refusal aborts it like a server error.
        with self.assertRaises(exceptions.InsufficientPrivilegeError):
            async with conn.transaction():
                self.assertEqual(await tenant_of(conn), TENANT_A)
                await conn.execute(f"SET LOCAL app.current_tenant_id = '{TENANT_B}'")
        self.assertEqual(await tenant_of(conn), TENANT_A)
        self.assertEqual(await conn.fetchval("SELECT count(*) FROM tool_calls WHERE tenant_id = $1", TENANT_B), 0)

    async def test_prepared_statements_across_a_pool(self):
        name = marker("asyncpg-prep")
        seeded = {TENANT_A: 2, TENANT_B: 4}
        for tenant, url in TENANTS:
            conn = await self.connect(url)
            for _ in range(seeded[tenant]):
                await conn.execute(INSERT_SQL, tenant, name)
        pools = {tenant: await self.pool(url, 10) for tenant, url in TENANTS}
        query = (
            "SELECT current_setting('app.current_tenant_id'), count(*), $2::int FROM tool_calls WHERE tool_name = $1"
        )
        ins = name + "-ins"

        async def explicit(tenant, task):
            # Acquire (and on release, asyncpg's reset query), prepare, execute 10 times.
            async with pools[tenant].acquire() as conn:
                stmt = await conn.prepare(query)
                for i in range(10):
                    self.assertEqual(tuple(await stmt.fetchrow(name, i)), (tenant, seeded[tenant], i), f"task {task}")
                insert = await conn.prepare(INSERT_OWN_SQL + " RETURNING tenant_id::text")
                for _ in range(5):
                    self.assertEqual(await insert.fetchval(ins), tenant)

        async def cached(tenant, i):
            # The pool's statement cache: named statements prepared once per client connection.
            row = await pools[tenant].fetchrow(query, name, i)
            self.assertEqual(tuple(row), (tenant, seeded[tenant], i))

        await asyncio.gather(*(explicit(tenant, k) for k in range(20) for tenant, _ in TENANTS))
        self.assertEqual(await admin_count(ins), {TENANT_A: 100, TENANT_B: 100})
        await asyncio.gather(*(cached(tenant, i) for i in range(200) for tenant, _ in TENANTS))
        # Prepared statements inside transactions on pooled connections.
        async def in_tx(tenant):
            async with pools[tenant].acquire() as conn:
                async with conn.transaction():
                    stmt = await conn.prepare(query)
                    for i in range(10):
                        self.assertEqual(tuple(await stmt.fetchrow(name, i)), (tenant, seeded[tenant], i))

        await asyncio.gather(*(in_tx(tenant) for _ in range(10) for tenant, _ in TENANTS))

    async def test_prepare_then_simple_query(self):
        # asyncpg prepares with Parse/Describe/Flush (no Sync) and runs a query without
        # arguments as a simple Query: the Query ends that implicit transaction (ReadyForQuery
        # 'I'), and the next transaction must get the tenant again.
        name = marker("asyncpg-prep-simple")
        conn = await self.connect(URL_A)
        stmt = await conn.prepare("SELECT current_setting('app.current_tenant_id')")
        await conn.execute(INSERT_OWN_SQL.replace("$1", f"'{name}'"))
        self.assertEqual(await stmt.fetchval(), TENANT_A, "prepared statement run after a simple query")
        self.assertEqual(await conn.fetchval(TENANT_SQL + " -- simple, after"), TENANT_A)
        await conn.prepare("SELECT 1")
        self.assertEqual(await tenant_of(conn), TENANT_A, "simple query after prepare()")
        self.assertEqual(await tenant_of(conn), TENANT_A, "second simple query after prepare()")
        self.assertEqual(await admin_count(name), {TENANT_A: 1})

    async def test_pool_release_reset_query_is_allowed(self):
        pool = await self.pool(URL_A, 2)
        for _ in range(20):
            async with pool.acquire() as conn:
                self.assertEqual(await tenant_of(conn), TENANT_A)
        # The same reset query by hand.
        conn = await self.connect(URL_B)
        await conn.execute(conn.get_reset_query())
        self.assertEqual(await tenant_of(conn), TENANT_B)

    async def test_executemany_is_pipelined_and_atomic(self):
        name = marker("asyncpg-many")
        a = await self.connect(URL_A)
        await a.executemany(INSERT_OWN_SQL, [(name,)] * 100)
        self.assertEqual(await admin_count(name), {TENANT_A: 100})
        # One failing row: executemany is atomic, nothing of it stays.
        with self.assertRaises(exceptions.NotNullViolationError):
            await a.executemany(INSERT_OWN_SQL, [(name,)] * 10 + [(None,)] + [(name,)] * 10)
        self.assertEqual(await admin_count(name), {TENANT_A: 100})
        self.assertEqual(await tenant_of(a), TENANT_A)
        # B may not write A's rows, even in a batch.
        b = await self.connect(URL_B)
        with self.assertRaises(exceptions.InsufficientPrivilegeError):
            await b.executemany(INSERT_SQL, [(TENANT_B, name)] * 5 + [(TENANT_A, name)])
        self.assertEqual(await admin_count(name), {TENANT_A: 100})

    async def test_transaction_api_sees_the_tenant(self):
        name = marker("asyncpg-tx")
        conn = await self.connect(URL_A)
        async with conn.transaction():
            for _ in range(5):
                self.assertEqual(await tenant_of(conn), TENANT_A)
            await conn.execute(INSERT_OWN_SQL, name)
            # A nested transaction is a savepoint, rolled back by the error.
            with self.assertRaises(exceptions.DivisionByZeroError):
                async with conn.transaction():
                    await conn.execute(INSERT_OWN_SQL, name)
                    await conn.execute("SELECT 1/0")
            self.assertEqual(await tenant_of(conn), TENANT_A)
            self.assertEqual(await conn.fetchval(COUNT_SQL, name), 1)
        self.assertEqual(await admin_count(name), {TENANT_A: 1})
        b = await self.connect(URL_B)
        self.assertEqual(await b.fetchval(COUNT_SQL, name), 0)

    async def test_isolation_levels(self):
        conn = await self.connect(URL_B)
        async with conn.transaction(isolation="serializable"):
            self.assertEqual(await conn.fetchval("SHOW transaction_isolation"), "serializable")
            self.assertEqual(await tenant_of(conn), TENANT_B)
            self.assertEqual(await conn.fetchval("SELECT count(*) FROM tool_calls WHERE tenant_id = $1", TENANT_A), 0)
        async with conn.transaction(isolation="repeatable_read", readonly=True):
            self.assertEqual(await conn.fetchval("SHOW transaction_isolation"), "repeatable read")
            self.assertEqual(await conn.fetchval("SHOW transaction_read_only"), "on")
            self.assertEqual(await tenant_of(conn), TENANT_B)
        async with conn.transaction(isolation="serializable", readonly=True, deferrable=True):
            self.assertEqual(await conn.fetchval("SHOW transaction_deferrable"), "on")
            self.assertEqual(await tenant_of(conn), TENANT_B)
        self.assertEqual(await conn.fetchval("SHOW transaction_isolation"), "read committed")

    async def test_copy(self):
        name = marker("asyncpg-copy")
        a = await self.connect(URL_A)
        # PostgreSQL refuses COPY FROM into a table under RLS, directly as well: same error here.
        with self.assertRaises(exceptions.FeatureNotSupportedError):
            await a.copy_records_to_table("tool_calls", records=[(TENANT_A, name)], columns=["tenant_id", "tool_name"])
        # asyncpg sent CopyData/CopyDone without waiting; PostgreSQL ignores them after the error.
        self.assertEqual(await tenant_of(a), TENANT_A, "first query after the refused COPY FROM")
        await a.executemany(INSERT_SQL, [(TENANT_A, name)] * 10)
        b = await self.connect(URL_B)
        for conn, n in ((a, 10), (b, 0)):
            chunks = []

            async def sink(data):
                chunks.append(data)

            query = (
                "SELECT tenant_id, current_setting('app.current_tenant_id') FROM tool_calls WHERE tool_name = $1"
            )
            await conn.copy_from_query(query, name, output=sink)
            lines = b"".join(chunks).decode().splitlines()
            self.assertEqual(lines, [f"{TENANT_A}\t{TENANT_A}"] * n)


    async def test_cursors_in_a_transaction(self):
        conn = await self.connect(URL_A)
        query = "SELECT current_setting('app.current_tenant_id'), g FROM generate_series(1, 50) AS g"
        async with conn.transaction():
            rows = [tuple(r) async for r in conn.cursor(query, prefetch=7)]
            self.assertEqual(rows, [(TENANT_A, g) for g in range(1, 51)])
            cur = await conn.cursor(query)
            self.assertEqual([tuple(r) for r in await cur.fetch(5)], [(TENANT_A, g) for g in range(1, 6)])
            await cur.forward(10)
            self.assertEqual(tuple(await cur.fetchrow()), (TENANT_A, 16))
        self.assertEqual(await tenant_of(conn), TENANT_A)

    async def test_statement_cache_eviction(self):
        # A small statement cache: asyncpg closes evicted statements (Close) and re-prepares.
        conn = await self.connect(URL_B, statement_cache_size=5)
        for rnd in range(3):
            for k in range(20):
                row = await conn.fetchrow(f"SELECT current_setting('app.current_tenant_id'), $1::int + {k}", rnd)
                self.assertEqual(tuple(row), (TENANT_B, rnd + k))

    async def test_timeout_cancels_that_query_only(self):
        a = await self.connect(URL_A)
        b = await self.connect(URL_B)
        self.assertEqual(await tenant_of(a), TENANT_A)
        self.assertEqual(await tenant_of(b), TENANT_B)
        other = asyncio.ensure_future(b.fetchrow("SELECT pg_sleep(1), current_setting('app.current_tenant_id')"))
        # On timeout asyncpg sends a CancelRequest and waits for the query to end.
        with self.assertRaises(asyncio.TimeoutError):
            await a.fetchval("SELECT pg_sleep(30)", timeout=0.3)
        self.assertEqual((await other)[1], TENANT_B)
        self.assertEqual(await tenant_of(a), TENANT_A)

if __name__ == "__main__":
    unittest.main()
