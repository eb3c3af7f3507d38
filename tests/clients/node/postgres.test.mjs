// postgres.js through pgtenant: isolation, tenant in every query, pipelined queries on one
// connection, errors inside transactions and pipelines, refused tenant changes, its automatic
// named prepared statements (`prepare: true`, the default) across a pool, sql.begin and savepoints.
import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import postgres from 'postgres';

import { LIMIT, URL_A, URL_B, TENANT_A, TENANT_B, ADMIN_URL, POOL_SIZE, TENANT_SQL, marker } from './env.mjs';

const instances = [];
function connect(url, options = {}) {
  const sql = postgres(url, { max: 4, idle_timeout: 0, onnotice: () => {}, ...options });
  instances.push(sql);
  return sql;
}

after(async () => {
  await Promise.all(instances.map((sql) => sql.end({ timeout: 5 })));
});

const admin = connect(ADMIN_URL, { max: 1 });

async function adminCount(toolName) {
  const rows = await admin`
    SELECT tenant_id::text AS tenant, count(*)::int AS n FROM tool_calls WHERE tool_name = ${toolName} GROUP BY 1 ORDER BY 1`;
  return Object.fromEntries(rows.map((r) => [r.tenant, r.n]));
}

/** Plain objects (postgres.js returns a Result array of rows). */
const plain = (rows) => rows.map((r) => ({ ...r }));

async function tenantOf(sql) {
  const [row] = await sql.unsafe(TENANT_SQL);
  return row.tenant;
}

const code = (expected) => (err) => {
  assert.equal(err.code, expected, `expected SQLSTATE ${expected}, got ${err.code}: ${err.message}`);
  return true;
};

test('each tenant sees only its own rows (insert and count through each)', LIMIT, async () => {
  const name = marker('pgjs-iso');
  const a = connect(URL_A);
  const b = connect(URL_B);
  for (let i = 0; i < 3; i++) {
    await a`INSERT INTO tool_calls ${a({ tenant_id: TENANT_A, tool_name: name })}`;
  }
  for (let i = 0; i < 5; i++) {
    // Simple protocol this time, with the tenant taken from the setting.
    await b
      .unsafe(`INSERT INTO tool_calls (tenant_id, tool_name) VALUES (current_setting('app.current_tenant_id')::uuid, '${name}')`)
      .simple();
  }
  const count = (sql) =>
    sql`SELECT tenant_id::text AS tenant, count(*)::int AS n FROM tool_calls WHERE tool_name = ${name} GROUP BY 1`;
  assert.deepEqual(plain(await count(a)), [{ tenant: TENANT_A, n: 3 }]);
  assert.deepEqual(plain(await count(b)), [{ tenant: TENANT_B, n: 5 }]);
  for (const [sql, own] of [[a, TENANT_A], [b, TENANT_B]]) {
    assert.deepEqual(plain(await sql`SELECT count(*)::int AS n FROM tool_calls WHERE tenant_id <> ${own}`), [{ n: 0 }]);
  }
  assert.deepEqual(await adminCount(name), { [TENANT_A]: 3, [TENANT_B]: 5 });
  await assert.rejects(
    b`INSERT INTO tool_calls ${b({ tenant_id: TENANT_A, tool_name: name })}`,
    (err) => code('42501')(err) && /row-level security/.test(err.message),
  );
  assert.equal(await tenantOf(b), TENANT_B);
});

test('every one of many concurrent queries sees its token tenant', LIMIT, async () => {
  const a = connect(URL_A, { max: 10 });
  const b = connect(URL_B, { max: 10 });
  const jobs = [];
  for (let i = 0; i < 300; i++) {
    for (const [sql, tenant] of [[a, TENANT_A], [b, TENANT_B]]) {
      const q = i % 3 === 0
        ? sql.unsafe("SELECT current_setting('app.current_tenant_id') AS tenant, pg_backend_pid() AS pid").simple()
        : i % 3 === 1
          ? sql`SELECT current_setting('app.current_tenant_id') AS tenant, pg_backend_pid() AS pid, ${i}::int AS i`
          : sql`SELECT current_setting('app.current_tenant_id') AS tenant, pg_backend_pid() AS pid`;
      jobs.push(q.then(([row]) => ({ expected: tenant, row })));
    }
  }
  const pids = new Set();
  for (const { expected, row } of await Promise.all(jobs)) {
    assert.equal(row.tenant, expected);
    pids.add(row.pid);
  }
  assert.ok(pids.size <= POOL_SIZE, `${pids.size} server backends for pool_size ${POOL_SIZE}`);
});

test('pipelined queries on one connection each see the tenant; an error fails only its query', LIMIT, async () => {
  // max: 1 puts every query on one connection; postgres.js writes them without waiting.
  const a = connect(URL_A, { max: 1 });
  const b = connect(URL_B, { max: 1 });
  // Prepare the parameterised statement once, so that later uses pipeline too.
  await a`SELECT current_setting('app.current_tenant_id') AS tenant, ${0}::int AS i`;
  await b`SELECT current_setting('app.current_tenant_id') AS tenant, ${0}::int AS i`;
  const jobs = [];
  for (let i = 0; i < 100; i++) {
    for (const [sql, tenant] of [[a, TENANT_A], [b, TENANT_B]]) {
      const q = i === 50
        ? sql`SELECT 1/0 AS boom`
        : i % 2 === 0
          ? sql`SELECT current_setting('app.current_tenant_id') AS tenant, ${i}::int AS i`
          : sql`SELECT current_setting('app.current_tenant_id') AS tenant`;
      jobs.push({ tenant, i, q });
    }
  }
  const settled = await Promise.allSettled(jobs.map((j) => j.q));
  settled.forEach((s, k) => {
    const { tenant, i } = jobs[k];
    if (i === 50) {
      assert.equal(s.status, 'rejected');
      code('22012')(s.reason);
    } else {
      assert.equal(s.status, 'fulfilled', `query ${i}: ${s.reason}`);
      assert.equal(s.value[0].tenant, tenant);
      if (i % 2 === 0) assert.equal(s.value[0].i, i);
    }
  });
  assert.equal(await tenantOf(a), TENANT_A);
  assert.equal(await tenantOf(b), TENANT_B);
});

test('pipelined queries inside sql.begin see the tenant; an error rolls the whole block back', LIMIT, async () => {
  const name = marker('pgjs-pipe-tx');
  const a = connect(URL_A);
  const results = await a.begin((sql) => [
    sql`INSERT INTO tool_calls (tenant_id, tool_name) VALUES (current_setting('app.current_tenant_id')::uuid, ${name})`,
    sql`SELECT current_setting('app.current_tenant_id') AS tenant`,
    sql`SELECT count(*)::int AS n FROM tool_calls WHERE tool_name = ${name}`,
    sql`SELECT current_setting('app.current_tenant_id') AS tenant, txid_current_if_assigned() IS NOT NULL AS in_tx`,
  ]);
  assert.equal(results[1][0].tenant, TENANT_A);
  assert.equal(results[2][0].n, 1);
  assert.deepEqual({ ...results[3][0] }, { tenant: TENANT_A, in_tx: true });

  await assert.rejects(
    a.begin((sql) => [
      sql`INSERT INTO tool_calls (tenant_id, tool_name) VALUES (current_setting('app.current_tenant_id')::uuid, ${name})`,
      sql`SELECT 1/0 AS boom`,
      sql`SELECT current_setting('app.current_tenant_id') AS tenant`,
    ]),
    code('22012'),
  );
  assert.equal(await tenantOf(a), TENANT_A);
  assert.deepEqual(await adminCount(name), { [TENANT_A]: 1 });
});

test('an error inside a transaction: normal error, ROLLBACK works, next query works', LIMIT, async () => {
  const name = marker('pgjs-err');
  const a = connect(URL_A, { max: 3 });
  await assert.rejects(
    a.begin(async (sql) => {
      await sql`INSERT INTO tool_calls (tenant_id, tool_name) VALUES (${TENANT_A}, ${name})`;
      await sql`SELECT 1/0 AS boom`;
    }),
    code('22012'),
  );
  assert.equal(await tenantOf(a), TENANT_A);
  assert.deepEqual(await adminCount(name), {});

  // Savepoints: the failed one is rolled back, the transaction goes on with the tenant.
  const kept = await a.begin(async (sql) => {
    await sql`INSERT INTO tool_calls (tenant_id, tool_name) VALUES (current_setting('app.current_tenant_id')::uuid, ${name})`;
    await assert.rejects(
      sql.savepoint(async (sp) => {
        await sp`INSERT INTO tool_calls (tenant_id, tool_name) VALUES (${TENANT_A}, ${name})`;
        await sp`SELECT 1/0 AS boom`;
      }),
      code('22012'),
    );
    await sql`INSERT INTO tool_calls (tenant_id, tool_name) VALUES (current_setting('app.current_tenant_id')::uuid, ${name})`;
    const [row] = await sql`SELECT current_setting('app.current_tenant_id') AS tenant, count(*)::int AS n FROM tool_calls WHERE tool_name = ${name}`;
    return { ...row };
  });
  assert.deepEqual(kept, { tenant: TENANT_A, n: 2 });
  assert.deepEqual(await adminCount(name), { [TENANT_A]: 2 });

  // A reserved connection with explicit BEGIN / ROLLBACK.
  const r = await a.reserve();
  try {
    await r`BEGIN`;
    await assert.rejects(r`SELECT 1/0 AS boom`, code('22012'));
    await assert.rejects(r`SELECT 1 AS one`, code('25P02'));
    await r`ROLLBACK`;
    assert.equal(await tenantOf(r), TENANT_A);
  } finally {
    r.release();
  }
});

test('changing the tenant setting is refused with 42501 and the connection stays usable', LIMIT, async () => {
  const a = connect(URL_A, { max: 1 });
  await assert.rejects(a.unsafe(`SET app.current_tenant_id = '${TENANT_B}'`), code('42501'));
  assert.equal(await tenantOf(a), TENANT_A);
  await assert.rejects(a.unsafe(`SET app.current_tenant_id = '${TENANT_B}'`).simple(), code('42501'));
  assert.equal(await tenantOf(a), TENANT_A);
  await assert.rejects(a`SELECT set_config('app.current_tenant_id', ${TENANT_B}, false)`, code('42501'));
  assert.equal(await tenantOf(a), TENANT_A);
  await assert.rejects(a`SELECT set_config(${'app.current_tenant_id'}, ${TENANT_B}, true)`, code('42501'));
  assert.equal(await tenantOf(a), TENANT_A);
  await assert.rejects(
    a.begin(async (sql) => {
      await sql.unsafe(`SET LOCAL app.current_tenant_id = '${TENANT_B}'`);
    }),
    code('42501'),
  );
  assert.equal(await tenantOf(a), TENANT_A);
  const [row] = await a`SELECT count(*)::int AS n FROM tool_calls WHERE tenant_id = ${TENANT_B}`;
  assert.equal(row.n, 0);
});

test('automatic prepared statements run many times across a pool of client connections', LIMIT, async () => {
  const name = marker('pgjs-prep');
  const seeded = { [TENANT_A]: 2, [TENANT_B]: 4 };
  const a = connect(URL_A, { max: 10 });
  const b = connect(URL_B, { max: 10 });
  for (const [sql, tenant] of [[a, TENANT_A], [b, TENANT_B]]) {
    for (let i = 0; i < seeded[tenant]; i++) {
      await sql`INSERT INTO tool_calls (tenant_id, tool_name) VALUES (${tenant}, ${name})`;
    }
  }
  const jobs = [];
  for (let i = 0; i < 200; i++) {
    for (const [sql, tenant] of [[a, TENANT_A], [b, TENANT_B]]) {
      jobs.push(
        sql`SELECT current_setting('app.current_tenant_id') AS tenant, count(*)::int AS n, ${i}::int AS i
            FROM tool_calls WHERE tool_name = ${name}`.then((rows) => {
          assert.deepEqual(plain(rows), [{ tenant, n: seeded[tenant], i }]);
        }),
      );
      jobs.push(
        sql`INSERT INTO tool_calls (tenant_id, tool_name) VALUES (current_setting('app.current_tenant_id')::uuid, ${name + '-ins'})
            RETURNING tenant_id::text AS tenant`.then((rows) => assert.deepEqual(plain(rows), [{ tenant }])),
      );
    }
  }
  await Promise.all(jobs);
  assert.deepEqual(await adminCount(name + '-ins'), { [TENANT_A]: 200, [TENANT_B]: 200 });
});

test('sql.begin: every statement sees the tenant; many concurrent transactions of both tenants', LIMIT, async () => {
  const name = marker('pgjs-tx');
  const a = connect(URL_A, { max: 6 });
  const b = connect(URL_B, { max: 6 });
  const txs = [];
  for (let i = 0; i < 40; i++) {
    for (const [sql, tenant] of [[a, TENANT_A], [b, TENANT_B]]) {
      txs.push(
        sql.begin(async (tx) => {
          for (let k = 0; k < 3; k++) {
            const [row] = await tx`SELECT current_setting('app.current_tenant_id') AS tenant, ${k}::int AS k`;
            assert.equal(row.tenant, tenant);
          }
          assert.equal(await tenantOf(tx), tenant);
          await tx`INSERT INTO tool_calls (tenant_id, tool_name) VALUES (${tenant}, ${name})`;
        }),
      );
    }
  }
  await Promise.all(txs);
  assert.deepEqual(await adminCount(name), { [TENANT_A]: 40, [TENANT_B]: 40 });
});

test('sql.begin with isolation level serializable works, with the tenant', LIMIT, async () => {
  const b = connect(URL_B);
  const row = await b.begin('isolation level serializable', async (sql) => {
    const [iso] = await sql`SHOW transaction_isolation`;
    const [t] = await sql`SELECT current_setting('app.current_tenant_id') AS tenant, count(*)::int AS n FROM tool_calls WHERE tenant_id = ${TENANT_A}`;
    return { iso: iso.transaction_isolation, tenant: t.tenant, n: t.n };
  });
  assert.deepEqual(row, { iso: 'serializable', tenant: TENANT_B, n: 0 });

  const ro = await b.begin('isolation level repeatable read read only', async (sql) => {
    const [iso] = await sql`SHOW transaction_isolation`;
    const [rdo] = await sql`SHOW transaction_read_only`;
    return { iso: iso.transaction_isolation, ro: rdo.transaction_read_only, tenant: await tenantOf(sql) };
  });
  assert.deepEqual(ro, { iso: 'repeatable read', ro: 'on', tenant: TENANT_B });
  const [after] = await b`SHOW transaction_isolation`;
  assert.equal(after.transaction_isolation, 'read committed');
});

test('cursors (Execute with a row limit, portal kept across Flush) see the tenant', LIMIT, async () => {
  const a = connect(URL_A, { max: 2 });
  const seen = [];
  // Outside an explicit transaction: the portal lives in the implicit one until Sync.
  for await (const rows of a`SELECT current_setting('app.current_tenant_id') AS tenant, g FROM generate_series(1, 95) AS g`.cursor(10)) {
    for (const row of rows) {
      assert.equal(row.tenant, TENANT_A);
      seen.push(row.g);
    }
  }
  assert.equal(seen.length, 95);
  assert.deepEqual(seen, Array.from({ length: 95 }, (_, i) => i + 1));
  // Inside sql.begin, with the tenant read by every batch.
  const n = await a.begin(async (sql) => {
    let count = 0;
    await sql`SELECT current_setting('app.current_tenant_id') AS tenant FROM generate_series(1, 30)`.cursor(7, (rows) => {
      for (const row of rows) assert.equal(row.tenant, TENANT_A);
      count += rows.length;
    });
    return count;
  });
  assert.equal(n, 30);
  assert.equal(await tenantOf(a), TENANT_A);
});

test('query.cancel() cancels that query only; the connection stays usable', LIMIT, async () => {
  const a = connect(URL_A, { max: 1 });
  const b = connect(URL_B, { max: 1 });
  assert.equal(await tenantOf(a), TENANT_A);
  assert.equal(await tenantOf(b), TENANT_B);
  const long = a`SELECT pg_sleep(30) AS slept`;
  const other = b`SELECT pg_sleep(1) AS slept, current_setting('app.current_tenant_id') AS tenant`;
  setTimeout(() => long.cancel(), 300);
  const started = Date.now();
  await assert.rejects(long, code('57014'));
  assert.ok(Date.now() - started < 10_000, 'cancelled well before 30 s');
  const [row] = await other;
  assert.equal(row.tenant, TENANT_B);
  assert.equal(await tenantOf(a), TENANT_A);
});
