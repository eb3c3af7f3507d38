// End-to-end isolation check, run by tests/mcp_example.rs (`cargo test --test mcp_example`):
// two instances of the example server (dist/index.js), each with its own tenant's
// DATABASE_URL through pgtenant, driven by the MCP SDK's client over stdio. Each must
// see only its own tool calls and configuration. Then one instance over Streamable HTTP
// with no password in DATABASE_URL, used by both tenants with their own bearer tokens
// (the sidecar pattern of deploy/): the same isolation, and 401 without a valid token.
// Exits non-zero on the first failure.
//
// Environment:
//   DATABASE_URL_A, DATABASE_URL_B   postgres://anyname:<token>@127.0.0.1:<proxy port>/app
//   MARKER_A, MARKER_B               unique tool-name prefixes for this run
//   CONFIG_A, CONFIG_B               the display_name each tenant's tenant_config holds
//   ADMIN_DATABASE_URL               superuser straight to PostgreSQL (bypasses RLS), for
//                                    the negative control
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { once } from 'node:events';
import { fileURLToPath } from 'node:url';

import { Client } from '@modelcontextprotocol/sdk/client/index.js';
import { StdioClientTransport, getDefaultEnvironment } from '@modelcontextprotocol/sdk/client/stdio.js';
import { StreamableHTTPClientTransport } from '@modelcontextprotocol/sdk/client/streamableHttp.js';

const SERVER = fileURLToPath(new URL('../dist/index.js', import.meta.url));

function env(name) {
  const value = process.env[name];
  if (!value) throw new Error(`${name} is not set: run this through \`cargo test --test mcp_example\``);
  return value;
}

const A = { name: 'A', url: env('DATABASE_URL_A'), marker: env('MARKER_A'), displayName: env('CONFIG_A'), calls: 3 };
const B = { name: 'B', url: env('DATABASE_URL_B'), marker: env('MARKER_B'), displayName: env('CONFIG_B'), calls: 2 };
for (const t of [A, B]) t.token = new URL(t.url).password;
const ADMIN_URL = env('ADMIN_DATABASE_URL');

let passed = 0;
async function check(what, fn) {
  try {
    await fn();
  } catch (err) {
    console.error(`FAIL ${what}`);
    throw err;
  }
  passed += 1;
  console.log(`ok ${passed} - ${what}`);
}

/** Starts an example server with `databaseUrl` and connects an MCP client to it over stdio. */
async function connect(label, databaseUrl) {
  const transport = new StdioClientTransport({
    command: process.execPath,
    args: [SERVER],
    env: { ...getDefaultEnvironment(), DATABASE_URL: databaseUrl },
    stderr: 'inherit',
  });
  const client = new Client({ name: `isolation-test-${label}`, version: '0.0.0' });
  await client.connect(transport);
  return client;
}

/**
 * Starts an example server over Streamable HTTP on a free port, with `databaseUrl` (no
 * password: each request's bearer token is used); returns its /mcp URL and the process.
 */
async function startHttpServer(databaseUrl) {
  const child = spawn(process.execPath, [SERVER, '--http', '0'], {
    env: { ...getDefaultEnvironment(), DATABASE_URL: databaseUrl },
    stdio: ['ignore', 'inherit', 'pipe'],
  });
  let seen = '';
  const endpoint = await new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`HTTP server did not start: ${seen}`)), 30_000);
    child.stderr.on('data', (chunk) => {
      process.stderr.write(chunk);
      seen += chunk;
      const match = /serving MCP \(Streamable HTTP\) on (http:\S+\/mcp)/.exec(seen);
      if (match) {
        clearTimeout(timer);
        resolve(match[1]);
      }
    });
    child.once('exit', (code) => reject(new Error(`HTTP server exited (${code}): ${seen}`)));
  });
  return { endpoint, child };
}

async function connectHttp(label, endpoint, token) {
  const transport = new StreamableHTTPClientTransport(new URL(endpoint), {
    requestInit: { headers: { Authorization: `Bearer ${token}` } },
  });
  const client = new Client({ name: `isolation-test-http-${label}`, version: '0.0.0' });
  await client.connect(transport);
  return client;
}

/** Calls `tool` and returns its JSON result; a tool error fails the test. */
async function call(client, tool, args) {
  const result = await client.callTool({ name: tool, arguments: args });
  const text = result.content?.[0]?.text;
  assert.ok(!result.isError, `${tool} returned an error: ${text}`);
  return JSON.parse(text);
}

async function listNames(client, args = {}) {
  const { tool_calls } = await call(client, 'list_tool_calls', { limit: 100, ...args });
  return tool_calls.map((row) => row.tool_name);
}

const clients = new Map();
let http;
try {
  for (const t of [A, B]) {
    clients.set(t.name, await connect(t.name, t.url));
  }
  const client = (t) => clients.get(t.name);

  await check('both servers list log_tool_call, list_tool_calls and get_config', async () => {
    for (const t of [A, B]) {
      const { tools } = await client(t).listTools();
      const names = tools.map((tool) => tool.name).sort();
      assert.deepEqual(names, ['get_config', 'list_tool_calls', 'log_tool_call']);
    }
  });

  await check('each server logs its tool calls (both at once)', async () => {
    const logs = [];
    for (const t of [A, B]) {
      for (let i = 1; i <= t.calls; i++) {
        const args = { tool_name: `${t.marker}-${i}`, payload: { n: i, tenant: t.name } };
        logs.push(call(client(t), 'log_tool_call', args).then(({ tool_call }) => {
          assert.equal(tool_call.tool_name, args.tool_name);
          assert.ok(Number(tool_call.id) > 0);
        }));
      }
    }
    await Promise.all(logs);
  });

  for (const [self, other] of [[A, B], [B, A]]) {
    await check(`tenant ${self.name} sees all its own calls and none of tenant ${other.name}'s`, async () => {
      const names = await listNames(client(self));
      for (let i = 1; i <= self.calls; i++) {
        assert.ok(names.includes(`${self.marker}-${i}`), `${self.marker}-${i} missing from ${JSON.stringify(names)}`);
      }
      const leaked = names.filter((name) => name.startsWith(other.marker));
      assert.deepEqual(leaked, [], `tenant ${self.name} sees tenant ${other.name}'s calls`);
    });

    await check(`tenant ${self.name} finds nothing when it asks for tenant ${other.name}'s calls by name`, async () => {
      assert.deepEqual(await listNames(client(self), { tool_name_prefix: other.marker }), []);
    });

    await check(`tenant ${self.name} sees only its own configuration`, async () => {
      const { config } = await call(client(self), 'get_config', {});
      assert.equal(config.display_name, self.displayName);
      assert.ok(!Object.values(config).includes(other.displayName), JSON.stringify(config));
    });
  }

  // Negative control: the same server straight to PostgreSQL as superuser (which bypasses
  // RLS) does see both tenants' calls, so the checks above would catch a leak.
  await check('negative control: without tenant isolation the same tool shows both tenants', async () => {
    const admin = await connect('admin', ADMIN_URL);
    clients.set('admin', admin);
    const names = await listNames(admin);
    for (const t of [A, B]) {
      assert.ok(names.some((name) => name.startsWith(t.marker)), `the control does not see ${t.marker}`);
    }
  });

  // Streamable HTTP, one server for both tenants: DATABASE_URL without a password, each
  // caller's bearer token is the password of its requests' connections.
  const noPassword = new URL(A.url);
  noPassword.username = 'mcp-http';
  noPassword.password = '';
  http = await startHttpServer(noPassword.toString());
  for (const t of [A, B]) {
    clients.set(`http-${t.name}`, await connectHttp(t.name, http.endpoint, t.token));
  }
  const viaHttp = (t) => clients.get(`http-${t.name}`);

  await check('over HTTP, a call logged with tenant B\'s token lands with B', async () => {
    const { tool_call } = await call(viaHttp(B), 'log_tool_call', { tool_name: `${B.marker}-http` });
    assert.equal(tool_call.tool_name, `${B.marker}-http`);
  });

  for (const [self, other] of [[A, B], [B, A]]) {
    await check(`over HTTP, tenant ${self.name}'s token sees its own calls and none of tenant ${other.name}'s`, async () => {
      const names = await listNames(viaHttp(self));
      for (let i = 1; i <= self.calls; i++) {
        assert.ok(names.includes(`${self.marker}-${i}`), `${self.marker}-${i} missing from ${JSON.stringify(names)}`);
      }
      assert.equal(names.includes(`${B.marker}-http`), self === B, JSON.stringify(names));
      assert.deepEqual(names.filter((name) => name.startsWith(other.marker)), []);
      const { config } = await call(viaHttp(self), 'get_config', {});
      assert.equal(config.display_name, self.displayName);
    });
  }

  await check('over HTTP, no token or a forged one is refused with 401', async () => {
    const body = JSON.stringify({ jsonrpc: '2.0', id: 1, method: 'tools/list', params: {} });
    const headers = { 'content-type': 'application/json', accept: 'application/json, text/event-stream' };
    const missing = await fetch(http.endpoint, { method: 'POST', headers, body });
    assert.equal(missing.status, 401, await missing.text());
    const forged = `${A.token.slice(0, -4)}AAAA`;
    const refused = await fetch(http.endpoint, { method: 'POST', headers: { ...headers, authorization: `Bearer ${forged}` }, body });
    const text = await refused.text();
    assert.equal(refused.status, 401, text);
    assert.match(text, /token/, text);
  });

  console.log(`${passed} passed, 0 failed`);
} finally {
  for (const c of clients.values()) {
    await c.close().catch(() => {});
  }
  if (http) {
    http.child.kill('SIGTERM');
    await once(http.child, 'exit').catch(() => {});
  }
}
