// A Streamable HTTP server built with the official TypeScript SDK (@modelcontextprotocol/sdk, pinned
// in ops/install-test-servers.sh, resolved from tests/.servers/node_modules), stateful (session
// ids), one McpServer per session. Its one tool, `ask`, sends `sampling/createMessage` and
// `elicitation/create` with `server.request` and no relatedRequestId: the SDK sends those on the
// session's standalone GET stream, not on the call's answer stream, so they name no call.
//
//   node tests/servers/ts_requests.mjs PORT      # http://127.0.0.1:PORT/mcp  (or PORT=... in env)
//
// A request on the standalone stream is dropped by the SDK when that stream is not open yet, so
// `ask` first waits until the session's GET stream has been answered (up to 120 s).

import { createServer } from "node:http";
import { createRequire } from "node:module";

const require = createRequire(new URL("../.servers/package.json", import.meta.url));
const { McpServer } = require("@modelcontextprotocol/sdk/server/mcp.js");
const { StreamableHTTPServerTransport } = require("@modelcontextprotocol/sdk/server/streamableHttp.js");
const {
  CreateMessageResultSchema,
  ElicitResultSchema,
  isInitializeRequest,
} = require("@modelcontextprotocol/sdk/types.js");

const port = Number(process.argv[2] ?? process.env.PORT ?? 3001);
const sessions = new Map(); // session id -> { transport, standalone: Promise, opened: () => void }

function newSession() {
  const entry = {};
  entry.standalone = new Promise((resolve) => (entry.opened = resolve));
  const server = new McpServer({ name: "ts-requests", version: "1.0.0" });
  server.registerTool(
    "ask",
    { description: "Ask the client for a sampling and an elicitation, outside this call's stream" },
    async (extra) => {
      await Promise.race([
        entry.standalone,
        new Promise((_, reject) => setTimeout(() => reject(new Error("no standalone GET stream")), 120_000)),
      ]);
      const options = { timeout: 120_000 }; // no relatedRequestId: the standalone stream
      const sampled = await server.server.request(
        {
          method: "sampling/createMessage",
          params: {
            messages: [{ role: "user", content: { type: "text", text: `sample for ${extra.sessionId}` } }],
            maxTokens: 10,
          },
        },
        CreateMessageResultSchema,
        options,
      );
      const elicited = await server.server.request(
        {
          method: "elicitation/create",
          params: {
            message: `elicit for ${extra.sessionId}`,
            requestedSchema: { type: "object", properties: { answer: { type: "string" } } },
          },
        },
        ElicitResultSchema,
        options,
      );
      const text = `sampling: ${sampled.content.text}; elicitation: ${elicited.action} ${elicited.content?.answer}`;
      return { content: [{ type: "text", text }] };
    },
  );
  entry.server = server;
  entry.transport = new StreamableHTTPServerTransport({
    sessionIdGenerator: () => crypto.randomUUID(),
    onsessioninitialized: (id) => sessions.set(id, entry),
  });
  entry.transport.onclose = () => {
    if (entry.transport.sessionId) sessions.delete(entry.transport.sessionId);
  };
  return entry;
}

async function body(req) {
  const chunks = [];
  for await (const chunk of req) chunks.push(chunk);
  const text = Buffer.concat(chunks).toString("utf8");
  return text ? JSON.parse(text) : undefined;
}

function refuse(res, status, message) {
  res.writeHead(status, { "Content-Type": "application/json" });
  res.end(JSON.stringify({ jsonrpc: "2.0", error: { code: -32000, message }, id: null }));
}

const http = createServer(async (req, res) => {
  try {
    if (new URL(req.url, "http://localhost").pathname !== "/mcp") return refuse(res, 404, "not found");
    const id = req.headers["mcp-session-id"];
    const known = typeof id === "string" ? sessions.get(id) : undefined;
    if (req.method === "POST") {
      const message = await body(req);
      if (known) return await known.transport.handleRequest(req, res, message);
      if (id === undefined && isInitializeRequest(message)) {
        const entry = newSession();
        await entry.server.connect(entry.transport);
        return await entry.transport.handleRequest(req, res, message);
      }
      return refuse(res, id === undefined ? 400 : 404, "no such session");
    }
    if (!known) return refuse(res, id === undefined ? 400 : 404, "no such session");
    if (req.method === "GET") {
      // The SDK registers the standalone stream before it writes the answer's head.
      const writeHead = res.writeHead;
      res.writeHead = function (status, ...rest) {
        if (status === 200) known.opened();
        return writeHead.call(this, status, ...rest);
      };
    }
    return await known.transport.handleRequest(req, res);
  } catch (error) {
    console.error(error);
    if (!res.headersSent) refuse(res, 500, String(error));
  }
});

http.listen(port, "127.0.0.1", () => console.error(`ts-requests listening on http://127.0.0.1:${port}/mcp`));
for (const signal of ["SIGTERM", "SIGINT"]) process.on(signal, () => process.exit(0));
