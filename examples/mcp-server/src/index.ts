#!/usr/bin/env node
/**
 * An MCP server that logs and lists tool calls in PostgreSQL, with no tenant
 * logic at all: one `pg` Pool on DATABASE_URL, plain SQL, no tenant_id in any
 * query. Point DATABASE_URL at pgtenant with a tenant's token as the password
 * and PostgreSQL row-level security keeps each tenant to its own rows (the
 * tenant_id column defaults to the tenant pgtenant sets; see README.md).
 *
 * Transports: stdio (default), or Streamable HTTP with `--http PORT`
 * (`--host ADDR`, default 127.0.0.1), stateless, on POST /mcp, with
 * GET /healthz for probes. Logs go to stderr (stdout is the stdio transport).
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

/** An MCP server with the three tools, on `pool`. */
export function buildServer(pool: pg.Pool): McpServer {
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
      const { rows } = await pool.query(
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
      const { rows } = await pool.query(
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
      const { rows } = await pool.query<{ key: string; value: string | null }>(
        `SELECT key, value FROM tenant_config WHERE $1::text IS NULL OR key = $1::text ORDER BY key`,
        [key ?? null],
      );
      return json({ config: Object.fromEntries(rows.map((r) => [r.key, r.value])) });
    },
  );

  return server;
}

function makePool(): pg.Pool {
  const connectionString = process.env.DATABASE_URL;
  if (!connectionString) {
    log("DATABASE_URL is not set (e.g. a line printed by `pgtenant demo`)");
    process.exit(2);
  }
  const pool = new pg.Pool({ connectionString, max: Number(process.env.PG_POOL_MAX ?? 5) });
  // An idle connection that fails (e.g. the proxy restarts) must not crash the server.
  pool.on("error", (err) => log(`idle database connection failed: ${err.message}`));
  return pool;
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

async function serveHttp(pool: pg.Pool, host: string, port: number): Promise<void> {
  const loopback = host === "127.0.0.1" || host === "localhost" || host === "::1";
  const handle = async (req: IncomingMessage, res: ServerResponse) => {
    const path = new URL(req.url ?? "/", "http://localhost").pathname;
    if (path === "/healthz") {
      res.writeHead(200, { "content-type": "text/plain" }).end("ok\n");
      return;
    }
    if (path !== "/mcp") {
      res.writeHead(404, { "content-type": "text/plain" }).end("not found: use POST /mcp\n");
      return;
    }
    if (req.method !== "POST") {
      // Stateless: no server-initiated streams (GET) and no sessions to end (DELETE).
      res.writeHead(405, { allow: "POST", "content-type": "text/plain" }).end("use POST\n");
      return;
    }
    // Stateless mode: a fresh server and transport per request, sharing the pool.
    const server = buildServer(pool);
    const transport = new StreamableHTTPServerTransport({
      sessionIdGenerator: undefined,
      // On loopback, refuse other Host headers (DNS rebinding from a browser).
      enableDnsRebindingProtection: loopback,
      allowedHosts: loopback ? [`127.0.0.1:${port}`, `localhost:${port}`, `[::1]:${port}`] : undefined,
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
      if (!res.headersSent) {
        res.writeHead(500, { "content-type": "text/plain" }).end("internal error\n");
      }
    }
  };
  const http = createServer((req, res) => void handle(req, res));
  const close = () => {
    http.close();
    void pool.end().finally(() => process.exit(0));
  };
  process.on("SIGINT", close);
  process.on("SIGTERM", close);
  await new Promise<void>((resolve, reject) => {
    http.once("error", reject);
    http.listen(port, host, resolve);
  });
  log(`serving MCP (Streamable HTTP) on http://${host}:${port}/mcp`);
}

async function main(): Promise<void> {
  const { values } = parseArgs({
    options: {
      http: { type: "string" },
      host: { type: "string" },
      help: { type: "boolean", short: "h" },
    },
  });
  if (values.help) {
    process.stdout.write(
      `usage: ${NAME} [--http PORT [--host ADDR]]\n` +
        "  DATABASE_URL   postgres://anyname:<token>@pgtenant-host:6432/app (required)\n" +
        "  --http PORT    serve Streamable HTTP on POST /mcp instead of stdio (also MCP_HTTP_PORT)\n" +
        "  --host ADDR    HTTP listen address, default 127.0.0.1 (also MCP_HTTP_HOST)\n",
    );
    return;
  }
  const httpPort = values.http ?? process.env.MCP_HTTP_PORT;
  const pool = makePool();
  if (httpPort) {
    const port = Number(httpPort);
    if (!Number.isInteger(port) || port < 1 || port > 65535) {
      log(`--http: not a port: ${httpPort}`);
      process.exit(2);
    }
    await serveHttp(pool, values.host ?? process.env.MCP_HTTP_HOST ?? "127.0.0.1", port);
  } else {
    await serveStdio(pool);
  }
}

main().catch((err) => {
  log(`fatal: ${(err as Error).stack ?? err}`);
  process.exit(1);
});
