// node-postgres (`pg`) through pgtenant: isolation, tenant in every query, errors inside
// transactions, refused tenant changes, named prepared statements across a pool, transactions.
// node-postgres has no pipeline mode: each query waits for the previous one's ReadyForQuery.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import pg from 'pg';

import { LIMIT, URL_A, URL_B, TENANT_A, TENANT_B, ADMIN_URL, POOL_SIZE, TENANT_SQL, TENANTS, marker } from './env.mjs';

const pools = [];
function pool(url, max) {
  const p = new pg.Pool({ connectionString: url, max, idleTimeoutMillis: 0 });
  // An idle client's connection error must fail the test, not crash the process silently.
  p.on('error', (err) => {
    throw err;
  });
  pools.push(p);
  return p;
}

async function client(url) {
  const c = new pg.Client({ connectionString: url });
  await c.connect();
  return c;
}

async function adminCount(toolName) {
  const admin = await client(ADMIN_URL);
  try {
    const { rows } = await admin.query(
      'SELECT tenant_id::text AS tenant, count(*)::int AS n FROM tool_calls WHERE tool_name = $1 GROUP BY 1 ORDER BY 1',
      [toolName],
    );
    return Object.fromEntries(rows.map((r) => [r.tenant, r.n]));
  } finally {
    await admin.end();
  }
}

async function tenantOf(c) {
  return (await c.query(TENANT_SQL)).rows[0].tenant;
}

after(async () => {
  await Promise.all(pools.map((p) => p.end()));
});

test('each tenant sees only its own rows (insert and count through each)', LIMIT, async () => {
  const name = marker('pg-iso');
  const a = await client(URL_A);
  const b = await client(URL_B);
  try {
    for (let i = 0; i < 3; i++) {
      await a.query('INSERT INTO tool_calls (tenant_id, tool_name) VALUES ($1, $2)', [TENANT_A, name]);
    }
    for (let i = 0; i < 5; i++) {
      // Simple protocol this time, with the tenant taken from the setting.
      await b.query(
        `INSERT INTO tool_calls (tenant_id, tool_name) VALUES (current_setting('app.current_tenant_id')::uuid, '${name}')`,
      );
    }
    const countSql = 'SELECT tenant_id::text AS tenant, count(*)::int AS n FROM tool_calls WHERE tool_name = $1 GROUP BY 1';
    assert.deepEqual((await a.query(countSql, [name])).rows, [{ tenant: TENANT_A, n: 3 }]);
    assert.deepEqual((await b.query(countSql, [name])).rows, [{ tenant: TENANT_B, n: 5 }]);
    // Nothing of the other tenant is visible at all, filtered or not.
    for (const [c, own] of [[a, TENANT_A], [b, TENANT_B]]) {
      const { rows } = await c.query('SELECT count(*)::int AS n FROM tool_calls WHERE tenant_id <> $1', [own]);
      assert.deepEqual(rows, [{ n: 0 }]);
    }
    assert.deepEqual(await adminCount(name), { [TENANT_A]: 3, [TENANT_B]: 5 });
    // B may not write a row for A.
    await assert.rejects(
      b.query('INSERT INTO tool_calls (tenant_id, tool_name) VALUES ($1, $2)', [TENANT_A, name]),
      (err) => err.code === '42501' && /row-level security/.test(err.message),
    );
    assert.equal(await tenantOf(b), TENANT_B);
  } finally {
    await a.end();
    await b.end();
  }
});

test('every one of many concurrent queries sees its token tenant', LIMIT, async () => {
  const pa = pool(URL_A, 10);
  const pb = pool(URL_B, 10);
  const jobs = [];
  for (let i = 0; i < 300; i++) {
    for (const [p, tenant] of [[pa, TENANT_A], [pb, TENANT_B]]) {
      const q = i % 2 === 0
        // simple protocol
        ? p.query("SELECT current_setting('app.current_tenant_id') AS tenant, pg_backend_pid() AS pid")
        // extended protocol, unnamed statement
        : p.query('SELECT current_setting($1) AS tenant, pg_backend_pid() AS pid, $2::int AS i', ['app.current_tenant_id', i]);
      jobs.push(q.then((r) => ({ expected: tenant, row: r.rows[0] })));
    }
  }
  const results = await Promise.all(jobs);
  const pids = new Set();
  for (const { expected, row } of results) {
    assert.equal(row.tenant, expected);
    pids.add(row.pid);
  }
  assert.equal(pa.totalCount, 10, 'pool A opened 10 client connections');
  assert.equal(pb.totalCount, 10, 'pool B opened 10 client connections');
  assert.ok(pids.size <= POOL_SIZE, `${pids.size} server backends for pool_size ${POOL_SIZE}`);
});

test('an error inside a transaction: normal error, ROLLBACK works, next query works', LIMIT, async () => {
  const name = marker('pg-err');
  const c = await client(URL_A);
  try {
    await c.query('BEGIN');
    await c.query('INSERT INTO tool_calls (tenant_id, tool_name) VALUES ($1, $2)', [TENANT_A, name]);
    await assert.rejects(c.query('SELECT 1/0'), (err) => err.code === '22012' && /division by zero/.test(err.message));
    await assert.rejects(c.query('SELECT 1'), (err) => err.code === '25P02');
    await c.query('ROLLBACK');
    assert.equal(await tenantOf(c), TENANT_A);

    // The same with the extended protocol.
    await c.query('BEGIN');
    await assert.rejects(c.query('SELECT 1/$1::int AS x', [0]), (err) => err.code === '22012');
    await assert.rejects(c.query('SELECT $1::int AS x', [1]), (err) => err.code === '25P02');
    await c.query('ROLLBACK');
    const { rows } = await c.query('SELECT count(*)::int AS n, current_setting($1) AS tenant FROM tool_calls WHERE tool_name = $2', [
      'app.current_tenant_id',
      name,
    ]);
    assert.deepEqual(rows, [{ n: 0, tenant: TENANT_A }]);

    // An error outside a transaction block, then the next query.
    await assert.rejects(c.query('SELECT 1/0'), (err) => err.code === '22012');
    assert.equal(await tenantOf(c), TENANT_A);
  } finally {
    await c.end();
  }
  assert.deepEqual(await adminCount(name), {});
});

test('changing the tenant setting is refused with 42501 and the connection stays usable', LIMIT, async () => {
  const c = await client(URL_A);
  try {
    const refused = (err) => err.code === '42501';
    await assert.rejects(c.query(`SET app.current_tenant_id = '${TENANT_B}'`), refused);
    assert.equal(await tenantOf(c), TENANT_A);
    await assert.rejects(c.query(`SET SESSION "app"."current_tenant_id" TO '${TENANT_B}'`), refused);
    assert.equal(await tenantOf(c), TENANT_A);
    await assert.rejects(c.query('RESET app.current_tenant_id'), refused);
    assert.equal(await tenantOf(c), TENANT_A);
    await assert.rejects(c.query('SELECT set_config($1, $2, false)', ['app.current_tenant_id', TENANT_B]), refused);
    assert.equal(await tenantOf(c), TENANT_A);
    await assert.rejects(c.query("SELECT set_config('app.current_tenant_id', $1, false)", [TENANT_B]), refused);
    assert.equal(await tenantOf(c), TENANT_A);

    // Inside a block: the refusal aborts it like a server error.
    await c.query('BEGIN');
    assert.equal(await tenantOf(c), TENANT_A);
    await assert.rejects(c.query(`SET LOCAL app.current_tenant_id = '${TENANT_B}'`), refused);
    await assert.rejects(c.query('SELECT 1'), (err) => err.code === '25P02');
    await c.query('ROLLBACK');
    assert.equal(await tenantOf(c), TENANT_A);
    const { rows } = await c.query('SELECT count(*)::int AS n FROM tool_calls WHERE tenant_id = $1', [TENANT_B]);
    assert.deepEqual(rows, [{ n: 0 }]);
  } finally {
    await c.end();
  }
});

test('named prepared statements run many times across a pool of client connections', LIMIT, async () => {
  const name = marker('pg-prep');
  const seeded = { [TENANT_A]: 2, [TENANT_B]: 4 };
  for (const { tenant, url } of TENANTS) {
    const c = await client(url);
    for (let i = 0; i < seeded[tenant]; i++) {
      await c.query('INSERT INTO tool_calls (tenant_id, tool_name) VALUES ($1, $2)', [tenant, name]);
    }
    await c.end();
  }
  const pa = pool(URL_A, 10);
  const pb = pool(URL_B, 10);
  const countText =
    "SELECT current_setting('app.current_tenant_id') AS tenant, count(*)::int AS n, $2::int AS i FROM tool_calls WHERE tool_name = $1";
  // The same statement name with a different text per tenant: the proxy must not mix them up.
  const sameName = {
    [TENANT_A]: "SELECT $1::int + 1 AS v, current_setting('app.current_tenant_id') AS tenant",
    [TENANT_B]: "SELECT $1::int * 10 AS v, current_setting('app.current_tenant_id') AS tenant",
  };
  const expectV = { [TENANT_A]: (i) => i + 1, [TENANT_B]: (i) => i * 10 };
  const jobs = [];
  for (let i = 0; i < 200; i++) {
    for (const [p, tenant] of [[pa, TENANT_A], [pb, TENANT_B]]) {
      jobs.push(
        p.query({ name: 'count_q', text: countText, values: [name, i] }).then((r) => {
          assert.deepEqual(r.rows, [{ tenant, n: seeded[tenant], i }]);
        }),
      );
      jobs.push(
        p.query({ name: 'same_name', text: sameName[tenant], values: [i] }).then((r) => {
          assert.deepEqual(r.rows, [{ v: expectV[tenant](i), tenant }]);
        }),
      );
    }
  }
  await Promise.all(jobs);
  assert.equal(pa.totalCount, 10);
  assert.equal(pb.totalCount, 10);

  // A prepared INSERT, many times, then counted per tenant.
  const ins = marker('pg-prep-ins');
  const inserts = [];
  for (let i = 0; i < 100; i++) {
    for (const [p, tenant] of [[pa, TENANT_A], [pb, TENANT_B]]) {
      inserts.push(
        p.query({
          name: 'ins_q',
          text: "INSERT INTO tool_calls (tenant_id, tool_name) VALUES (current_setting('app.current_tenant_id')::uuid, $1) RETURNING tenant_id::text AS tenant",
          values: [ins],
        }).then((r) => assert.deepEqual(r.rows, [{ tenant }])),
      );
    }
  }
  await Promise.all(inserts);
  assert.deepEqual(await adminCount(ins), { [TENANT_A]: 100, [TENANT_B]: 100 });
});

test('a transaction (BEGIN ... COMMIT) sees the tenant in every statement', LIMIT, async () => {
  const name = marker('pg-tx');
  const p = pool(URL_A, 4);
  const c = await p.connect();
  try {
    await c.query('BEGIN');
    for (let i = 0; i < 5; i++) {
      assert.equal(await tenantOf(c), TENANT_A);
      const { rows } = await c.query({ name: 'tx_q', text: 'SELECT current_setting($1) AS tenant', values: ['app.current_tenant_id'] });
      assert.equal(rows[0].tenant, TENANT_A);
    }
    await c.query("INSERT INTO tool_calls (tenant_id, tool_name) VALUES (current_setting('app.current_tenant_id')::uuid, $1)", [name]);
    const { rows } = await c.query('SELECT count(*)::int AS n FROM tool_calls WHERE tool_name = $1', [name]);
    assert.deepEqual(rows, [{ n: 1 }]);
    await c.query('COMMIT');

    // A rolled back transaction leaves nothing.
    await c.query('BEGIN');
    await c.query('INSERT INTO tool_calls (tenant_id, tool_name) VALUES ($1, $2)', [TENANT_A, name]);
    await c.query('ROLLBACK');

    // Several statements in one simple query, with a COMMIT in the middle.
    const results = await c.query(
      `BEGIN; INSERT INTO tool_calls (tenant_id, tool_name) VALUES ('${TENANT_A}', '${name}'); COMMIT; ${TENANT_SQL}`,
    );
    assert.equal(results.length, 4);
    assert.equal(results[3].rows[0].tenant, TENANT_A);
  } finally {
    c.release();
  }
  assert.deepEqual(await adminCount(name), { [TENANT_A]: 2 });
  const b = await client(URL_B);
  try {
    const { rows } = await b.query('SELECT count(*)::int AS n FROM tool_calls WHERE tool_name = $1', [name]);
    assert.deepEqual(rows, [{ n: 0 }]);
  } finally {
    await b.end();
  }
});

test('BEGIN ISOLATION LEVEL SERIALIZABLE and SET TRANSACTION work, with the tenant', LIMIT, async () => {
  const c = await client(URL_B);
  try {
    // Simple protocol BEGIN.
    await c.query('BEGIN ISOLATION LEVEL SERIALIZABLE');
    assert.equal((await c.query('SHOW transaction_isolation')).rows[0].transaction_isolation, 'serializable');
    assert.equal(await tenantOf(c), TENANT_B);
    const { rows } = await c.query('SELECT count(*)::int AS n FROM tool_calls WHERE tenant_id = $1', [TENANT_A]);
    assert.deepEqual(rows, [{ n: 0 }]);
    await c.query('COMMIT');

    // Extended protocol BEGIN (a named statement forces Parse/Bind/Execute).
    await c.query({ name: 'begin_ser', text: 'BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY' });
    assert.equal((await c.query('SHOW transaction_isolation')).rows[0].transaction_isolation, 'serializable');
    assert.equal((await c.query('SHOW transaction_read_only')).rows[0].transaction_read_only, 'on');
    assert.equal(await tenantOf(c), TENANT_B);
    await c.query({ name: 'commit_q', text: 'COMMIT' });

    await c.query('BEGIN');
    await c.query('SET TRANSACTION ISOLATION LEVEL REPEATABLE READ');
    assert.equal((await c.query('SHOW transaction_isolation')).rows[0].transaction_isolation, 'repeatable read');
    assert.equal(await tenantOf(c), TENANT_B);
    await c.query('COMMIT');

    assert.equal((await c.query('SHOW transaction_isolation')).rows[0].transaction_isolation, 'read committed');
  } finally {
    await c.end();
  }
});
