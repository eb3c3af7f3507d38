#!/usr/bin/env node
/**
 * An MCP server that logs and lists tool calls in PostgreSQL, with no tenant
 * logic at all: a plain `pg` Pool on DATABASE_URL, plain SQL, no tenant_id in
 * any query. Point DATABASE_URL at pgtenant with a tenant's token as the
 * password and PostgreSQL row-level security keeps each tenant to its own rows
 * (the tenant_id column defaults to the tenant pgtenant sets; see README.md).
 *
 * Transports: stdio (default), or Streamable HTTP (`--http PORT`, or
 * MCP_TRANSPORT=http with MCP_HTTP_PORT / PORT), stateless, on POST /mcp, with
 * GET /healthz for probes. Over HTTP, when DATABASE_URL has no password, each
 * request's `Authorization: Bearer <token>` becomes the database password for
 * that request: the server never reads the token, pgtenant verifies it.
 * Logs go to stderr (stdout is the stdio transport).
 */
import { createServer, type IncomingMessage, type ServerResponse } from "node:http";
import { parseArgs } from "node:util";

import { McpServer } from "@modelcontextprotocol/sdk/server/mcp.js";
import { StdioServerTransport } from "@modelcontextprotocol/sdk/server/stdio.js";
import { StreamableHTTPServerTransport } from "@modelcontextprotocol/sdk/server/streamableHttp.js";
import type { CallToolResult } from "@modelcontextprotocol/sdk/types.js";
import pg from "pg";
import { z } from "zod";

const NAME = "pgtenant-example-mcp-server";
const VERSION = "0.1.0";

function log(message: string): void {
  process.stderr.write(`${NAME}: ${message}\n`);
}

/** A tool result carrying `value` as JSON text. */
function json(value: unknown): CallToolResult {
  return { content: [{ type: "text", text: JSON.stringify(value, null, 2) }] };
}

/** Where the tools run their SQL: the shared pool, or one request's connection. */
type Db = pg.Pool | pg.Client;

/** An MCP server with the three tools, on `db`. */
export function buildServer(db: Db): McpServer {
  const server = new McpServer({ name: NAME, version: VERSION });

  server.registerTool(
    "log_tool_call",
    {
      title: "Log a tool call",
      description: "Record that a tool was called, with an optional JSON payload; returns the stored row.",
      inputSchema: {
        tool_name: z.string().min(1).max(200).describe("Name of the tool that was called"),
        success: z.boolean().default(true).describe("Whether the call succeeded"),
        payload: z.record(z.unknown()).optional().describe("Arguments or result to keep, as a JSON object"),
      },
    },
    async ({ tool_name, success, payload }) => {
      const { rows } = await db.query(
        `INSERT INTO tool_calls (tool_name, success, payload)
         VALUES ($1, $2, $3)
         RETURNING id, tool_name, called_at, success, payload`,
        [tool_name, success, payload === undefined ? null : JSON.stringify(payload)],
      );
      return json({ tool_call: rows[0] });
    },
  );

  server.registerTool(
    "list_tool_calls",
    {
      title: "List tool calls",
      description: "The most recent recorded tool calls, newest first.",
      inputSchema: {
        limit: z.number().int().min(1).max(100).default(20).describe("How many calls to return"),
        tool_name_prefix: z.string().optional().describe("Only calls whose tool name starts with this"),
      },
      annotations: { readOnlyHint: true },
    },
    async ({ limit, tool_name_prefix }) => {
      const { rows } = await db.query(
        `SELECT id, tool_name, called_at, success, payload
         FROM tool_calls
         WHERE $1::text IS NULL OR starts_with(tool_name, $1::text)
         ORDER BY called_at DESC, id DESC
         LIMIT $2`,
        [tool_name_prefix ?? null, limit],
      );
      return json({ tool_calls: rows });
    },
  );

  server.registerTool(
    "get_config",
    {
      title: "Get configuration",
      description: "Configuration values (all, or one key).",
      inputSchema: {
        key: z.string().optional().describe("Only this key"),
      },
      annotations: { readOnlyHint: true },
    },
    async ({ key }) => {
      const { rows } = await db.query<{ key: string; value: string | null }>(
        `SELECT key, value FROM tenant_config WHERE $1::text IS NULL OR key = $1::text ORDER BY key`,
        [key ?? null],
      );
      return json({ config: Object.fromEntries(rows.map((r) => [r.key, r.value])) });
    },
  );

  return server;
}

function makePool(databaseUrl: string): pg.Pool {
  const pool = new pg.Pool({ connectionString: databaseUrl, max: Number(process.env.PG_POOL_MAX ?? 5) });
  // An idle connection that fails (e.g. the proxy restarts) must not crash the server.
  pool.on("error", (err) => log(`idle database connection failed: ${err.message}`));
  return pool;
}

/** DATABASE_URL with `password` in it (a JWT is URL-safe; anything else is escaped). */
function withPassword(databaseUrl: string, password: string): string {
  const url = new URL(databaseUrl);
  url.password = password;
  return url.toString();
}

/** The token of an `Authorization: Bearer <token>` header. */
function bearer(req: IncomingMessage): string | undefined {
  const match = /^Bearer\s+(\S+)\s*$/i.exec(req.headers.authorization ?? "");
  return match?.[1];
}

async function serveStdio(pool: pg.Pool): Promise<void> {
  const server = buildServer(pool);
  let closing = false;
  const close = async () => {
    if (closing) return;
    closing = true;
    await server.close().catch(() => {});
    await pool.end().catch(() => {});
    process.exit(0);
  };
  // The client closing our stdin is the end of the session.
  process.stdin.on("end", close);
  process.on("SIGINT", close);
  process.on("SIGTERM", close);
  await server.connect(new StdioServerTransport());
  log("serving MCP on stdio");
}

/**
 * Serves Streamable HTTP. With `pool` (DATABASE_URL has a password) every
 * request uses it; without, each request connects with its caller's bearer
 * token as the password, and a missing or refused token is a 401.
 */
async function serveHttp(databaseUrl: string, pool: pg.Pool | undefined, host: string, port: number): Promise<void> {
  const loopback = host === "127.0.0.1" || host === "localhost" || host === "::1";
  let actual = port; // the bound port, once listening (port 0 picks one)
  const text = (res: ServerResponse, status: number, body: string, headers: Record<string, string> = {}) =>
    res.writeHead(status, { "content-type": "text/plain", ...headers }).end(`${body}\n`);

  /** The database for one request, or undefined when a response was sent instead. */
  const database = async (req: IncomingMessage, res: ServerResponse): Promise<Db | undefined> => {
    if (pool) return pool;
    const token = bearer(req);
    if (!token) {
      text(res, 401, "an Authorization: Bearer <token> header is required", { "www-authenticate": "Bearer" });
      return undefined;
    }
    const client = new pg.Client({ connectionString: withPassword(databaseUrl, token) });
    client.on("error", (err) => log(`database connection failed: ${err.message}`));
    try {
      await client.connect();
    } catch (err) {
      // pgtenant says why a token is refused (expired, bad signature, ...) with SQLSTATE 28P01.
      const { code, message } = err as { code?: string; message: string };
      const status = code === "28P01" ? 401 : 503;
      text(res, status, `database: ${message}`, status === 401 ? { "www-authenticate": 'Bearer error="invalid_token"' } : {});
      return undefined;
    }
    res.on("close", () => void client.end().catch(() => {}));
    return client;
  };

  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const path = new URL(req.url ?? "/", "http://localhost").pathname;
    if (path === "/healthz") return text(res, 200, "ok");
    if (path !== "/mcp") return text(res, 404, "not found: use POST /mcp");
    // Stateless: no server-initiated streams (GET) and no sessions to end (DELETE).
    if (req.method !== "POST") return text(res, 405, "use POST", { allow: "POST" });
    const db = await database(req, res);
    if (!db) return;
    // Stateless mode: a fresh server and transport per request.
    const server = buildServer(db);
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: undefined,
      // On loopback, refuse other Host headers (DNS rebinding from a browser).
      enableDnsRebindingProtection: loopback,
      allowedHosts: loopback ? [`127.0.0.1:${actual}`, `localhost:${actual}`, `[::1]:${actual}`] : undefined,
    });
    res.on("close", () => {
      void transport.close();
      void server.close();
    });
    try {
      await server.connect(transport);
      await transport.handleRequest(req, res);
    } catch (err) {
      log(`request failed: ${(err as Error).message}`);
      if (!res.headersSent) text(res, 500, "internal error");
    }
  };
  const http = createServer((req, res) => void handle(req, res));
  const close = () => {
    http.close();
    void (pool?.end() ?? Promise.resolve()).finally(() => process.exit(0));
  };
  process.on("SIGINT", close);
  process.on("SIGTERM", close);
  await new Promise<void>((resolve, reject) => {
    http.once("error", reject);
    http.listen(port, host, resolve);
  });
  const bound = http.address();
  actual = typeof bound === "object" && bound ? bound.port : port;
  const auth = pool ? "DATABASE_URL's password" : "each caller's bearer token";
  log(`serving MCP (Streamable HTTP) on http://${host}:${actual}/mcp, database password: ${auth}`);
}

const USAGE = `usage: ${NAME} [--http PORT [--host ADDR]]
  DATABASE_URL    postgres://anyname:<token>@pgtenant-host:6432/app (required); over HTTP
                  without a password, each request's bearer token is the password
  --http PORT     serve Streamable HTTP on POST /mcp instead of stdio (0: any free port)
  --host ADDR     HTTP listen address (default 127.0.0.1)
  MCP_TRANSPORT   stdio (default) or http; http also when --http or MCP_HTTP_PORT is given
  MCP_HTTP_PORT, PORT, MCP_HTTP_HOST   the HTTP port (default 8080) and address
  PG_POOL_MAX     database connections at most (default 5)
`;

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      http: { type: "string" },
      host: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    process.stdout.write(USAGE);
    return;
  }
  const databaseUrl = process.env.DATABASE_URL;
  if (!databaseUrl) {
    log("DATABASE_URL is not set (e.g. a line printed by `pgtenant demo`)");
    process.exit(2);
  }
  let hasPassword: boolean;
  try {
    hasPassword = new URL(databaseUrl).password !== "";
  } catch {
    log("DATABASE_URL is not a URL like postgres://anyname:<token>@host:6432/app");
    process.exit(2);
  }
  const mode = process.env.MCP_TRANSPORT ?? (values.http !== undefined || process.env.MCP_HTTP_PORT ? "http" : "stdio");
  if (mode === "stdio") {
    if (!hasPassword) log("DATABASE_URL has no password; through pgtenant the password is the tenant's token");
    return serveStdio(makePool(databaseUrl));
  }
  if (mode !== "http") {
    log(`MCP_TRANSPORT must be stdio or http, not ${mode}`);
    process.exit(2);
  }
  const portText = values.http ?? process.env.MCP_HTTP_PORT ?? process.env.PORT ?? "8080";
  const port = Number(portText);
  if (!Number.isInteger(port) || port < 0 || port > 65535) {
    log(`not a port: ${portText}`);
    process.exit(2);
  }
  const host = values.host ?? process.env.MCP_HTTP_HOST ?? "127.0.0.1";
  await serveHttp(databaseUrl, hasPassword ? makePool(databaseUrl) : undefined, host, port);
}

main().catch((err) => {
  log(`fatal: ${(err as Error).stack ?? err}`);
  process.exit(1);
});
