// Connection settings for the client tests, set by tests/clients.rs:
//   PGTENANT_URL_A / PGTENANT_URL_B  postgres://anyname:<JWT>@127.0.0.1:<proxy port>/app
//   TENANT_A / TENANT_B              the tenants of those tokens
//   PGTENANT_ADMIN_URL               superuser straight to PostgreSQL (ignores RLS), for checks
//   PGTENANT_POOL_SIZE               the proxy's upstream.pool_size
import { randomUUID } from 'node:crypto';

function required(name) {
  const value = process.env[name];
  if (!value) {
    throw new Error(`environment variable ${name} is not set: run these tests through \`cargo test --test clients\``);
  }
  return value;
}

export const URL_A = required('PGTENANT_URL_A');
export const URL_B = required('PGTENANT_URL_B');
export const TENANT_A = required('TENANT_A');
export const TENANT_B = required('TENANT_B');
export const ADMIN_URL = required('PGTENANT_ADMIN_URL');
export const POOL_SIZE = Number(required('PGTENANT_POOL_SIZE'));

export const TENANT_SQL = "SELECT current_setting('app.current_tenant_id') AS tenant";

/** Per-test options: a hung test fails with its name instead of hanging the suite. */
export const LIMIT = { timeout: 60_000 };

/** Both tenants with their URLs, for tests that do the same for each. */
export const TENANTS = [
  { name: 'A', tenant: TENANT_A, url: URL_A },
  { name: 'B', tenant: TENANT_B, url: URL_B },
];

/** A tool_name unique to one test, so tests never see each other's rows. */
export function marker(what) {
  return `${what}-${randomUUID()}`;
}
