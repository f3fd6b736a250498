import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { z } from 'zod';
import { EnsureInstance, Fault, InstanceId, type HostInfo } from '#core/agent-api.ts';
import {
  BadRequest, DomainError, MethodNotAllowed, NotFound, PayloadTooLarge, Unauthorized, UnsupportedMediaType,
} from '#core/errors.ts';
import type { Faults } from './faults.ts';
import type { InstanceManager } from './instances.ts';
import { errorMessage, log } from './log.ts';

export interface AgentServices {
  host: HostInfo;
  instances: InstanceManager;
  /** Present only when fault injection is enabled; otherwise the fault routes do not exist. */
  faults?: Faults;
}

interface Reply {
  status: number;
  body?: unknown;
}

type Handler = (params: Record<string, string>, body: () => Promise<unknown>) => Promise<Reply>;

interface Route {
  path: RegExp;
  methods: Record<string, Handler>;
}

const maxBodyBytes = 1024 * 1024;

function routes({ host, instances, faults }: AgentServices): Route[] {
  const table: Route[] = [
    { path: /^\/v1\/host$/, methods: { GET: async () => ({ status: 200, body: host }) } },
    {
      path: /^\/v1\/instances\/(?<id>[^/]+)$/,
      methods: {
        GET: async ({ id }) => {
          const instance = instances.get(parse(InstanceId, id, '/id'));
          if (!instance) throw new NotFound(`no instance ${id} on this host`);
          return { status: 200, body: instance };
        },
        PUT: async ({ id }, body) => ({
          status: 200,
          body: await instances.ensure(parse(InstanceId, id, '/id'), parse(EnsureInstance, await body(), '/body')),
        }),
        DELETE: async ({ id }) => {
          await instances.remove(parse(InstanceId, id, '/id'));
          return { status: 204 };
        },
      },
    },
  ];
  if (faults) {
    table.push({
      path: /^\/v1\/faults$/,
      methods: {
        PUT: async (_, body) => {
          faults.add(parse(Fault, await body(), '/body'));
          return { status: 204 };
        },
        DELETE: async () => {
          faults.clear();
          return { status: 204 };
        },
      },
    });
  }
  return table;
}

/** A zod failure becomes a 400 listing a JSON pointer and a message per issue, never the input itself. */
function parse<T>(schema: z.ZodType<T>, value: unknown, pointer: string): T {
  const result = schema.safeParse(value);
  if (result.success) return result.data;
  throw new BadRequest('the request is not valid', {
    errors: result.error.issues.map((issue) => ({ pointer: [pointer, ...issue.path.map(String)].join('/'), detail: issue.message })),
  });
}

export function createAgentServer(secret: string, services: AgentServices): Server {
  const table = routes(services);
  // Comparing digests keeps the comparison constant-time whatever the length of what was sent.
  const expected = createHash('sha256').update(`Bearer ${secret}`).digest();
  const authorized = (req: IncomingMessage) =>
    timingSafeEqual(createHash('sha256').update(req.headers.authorization ?? '').digest(), expected);

  return createServer((req, res) => {
    const requestId = randomUUID();
    handle(req)
      .then((reply) => send(res, reply.status, reply.body))
      .catch((error: unknown) => sendProblem(res, error, requestId, req));
  });

  async function handle(req: IncomingMessage): Promise<Reply> {
    if (!authorized(req)) throw new Unauthorized('a valid agent secret is required');
    const path = new URL(req.url ?? '/', 'http://agent').pathname;
    for (const route of table) {
      const match = route.path.exec(path);
      if (!match) continue;
      const handler = route.methods[req.method ?? ''];
      if (!handler) throw new MethodNotAllowed(`${req.method} is not allowed here`, { headers: { allow: Object.keys(route.methods).join(', ') } });
      return handler(match.groups ?? {}, () => readJson(req));
    }
    throw new NotFound(`no route for ${path}`);
  }
}

async function readJson(req: IncomingMessage): Promise<unknown> {
  if (!req.headers['content-type']?.startsWith('application/json')) throw new UnsupportedMediaType('send the body as application/json');
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of req as AsyncIterable<Buffer>) {
    size += chunk.length;
    if (size > maxBodyBytes) throw new PayloadTooLarge(`the body is larger than ${maxBodyBytes} bytes`);
    chunks.push(chunk);
  }
  try {
    return JSON.parse(Buffer.concat(chunks).toString('utf8'));
  } catch {
    throw new BadRequest('the body is not valid JSON');
  }
}

function send(res: ServerResponse, status: number, body?: unknown, contentType = 'application/json', headers: Record<string, string> = {}): void {
  if (body === undefined) {
    res.writeHead(status, headers).end();
    return;
  }
  res.writeHead(status, { ...headers, 'content-type': contentType }).end(JSON.stringify(body));
}

/** Domain errors carry their own status and detail; anything else is logged and answered with a generic 500. */
function sendProblem(res: ServerResponse, error: unknown, requestId: string, req: IncomingMessage): void {
  if (error instanceof DomainError) {
    const problem = { type: error.type, title: error.title, status: error.status, detail: error.message, errors: error.errors };
    send(res, error.status, problem, 'application/problem+json', error.headers);
    return;
  }
  log('error', 'request failed', { requestId, method: req.method, url: req.url, error: errorMessage(error) });
  send(res, 500, { type: 'about:blank', title: 'Internal error', status: 500, detail: `see the agent log, request ${requestId}` }, 'application/problem+json');
}
