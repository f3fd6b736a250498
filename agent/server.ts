import { createHash, randomUUID, timingSafeEqual } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { z } from 'zod';
import {
  BackupId, BlueGreenId, EnsureInstance, Fault, InstanceId, JobWait, ReplicaWait, RestartScope, RestoreId, StartBlueGreen, Switchover, StartBackup, StartRestore, WalRetention,
  type HostInfo,
} from '#core/agent-api.ts';
import {
  BadRequest, DomainError, MethodNotAllowed, NotFound, PayloadTooLarge, Unauthorized, UnsupportedMediaType,
} from '#core/errors.ts';
import { DownloadFormat, type BackupService } from './backups/service.ts';
import type { Faults } from './faults.ts';
import type { InstanceManager } from './instances.ts';
import type { DiskQuotas } from './quota.ts';
import { errorMessage, log } from './log.ts';
import type { PostgresInstall } from './host.ts';
import { tableStats } from './tables.ts';
import { upgradeChecks } from './upgrade-checks.ts';
import { instanceUsage } from './usage.ts';

export interface AgentServices {
  host: HostInfo;
  /** The PostgreSQL versions installed here, with their files (an upgrade's target is checked against them). */
  installs: PostgresInstall[];
  instances: InstanceManager;
  backups: BackupService;
  diskQuotas: Pick<DiskQuotas, 'status'>;
  /** Present only when fault injection is enabled; otherwise the fault routes do not exist. */
  faults?: Faults;
}

interface Reply {
  status: number;
  body?: unknown;
  headers?: Record<string, string>;
  /** A binary body (WAL) instead of JSON. */
  bytes?: Buffer;
  /** A streamed body (downloads): writes to the response and ends it. */
  stream?: (res: ServerResponse) => Promise<void>;
}

interface Context {
  req: IncomingMessage;
  query: URLSearchParams;
}

type Handler = (params: Record<string, string>, body: () => Promise<unknown>, context: Context) => Promise<Reply>;

/**
 * `secret`: the agent secret (the control plane). `wal`: the per-database token of the server's own
 * archive_command / restore_command. `signature`: none here; the handler checks a signed URL.
 */
type Auth = 'secret' | 'wal' | 'signature';

interface Route {
  path: RegExp;
  auth?: Auth;
  methods: Record<string, Handler>;
}

const maxBodyBytes = 1024 * 1024;

function routes({ host, installs, instances, backups, diskQuotas, faults }: AgentServices): Route[] {
  const table: Route[] = [
    { path: /^\/v1\/host$/, methods: { GET: async () => ({ status: 200, body: host }) } },
    {
      path: /^\/v1\/instances\/(?<id>[^/]+)$/,
      methods: {
        GET: async ({ id }, _body, { query }) => {
          const replicaWaitSeconds = parse(ReplicaWait, query.get('replicaWaitSeconds') ?? undefined, '/query/replicaWaitSeconds');
          const instance = await instances.get(parse(InstanceId, id, '/id'), replicaWaitSeconds * 1000);
          if (!instance) throw new NotFound(`no instance ${id} on this host`);
          return { status: 200, body: instance };
        },
        PUT: async ({ id }, body, { query }) => ({
          status: 200,
          body: await instances.ensure(parse(InstanceId, id, '/id'), parse(EnsureInstance, await body(), '/body'), {
            restart: parse(RestartScope, query.get('restart') ?? 'all', '/query/restart'),
          }),
        }),
        DELETE: async ({ id }) => {
          await instances.remove(parse(InstanceId, id, '/id'));
          return { status: 204 };
        },
      },
    },
    {
      path: /^\/v1\/instances\/(?<id>[^/]+)\/replica$/,
      methods: {
        PUT: async ({ id }) => ({ status: 200, body: await instances.ensureReplica(parse(InstanceId, id, '/id')) }),
        DELETE: async ({ id }) => {
          await instances.removeReplica(parse(InstanceId, id, '/id'));
          return { status: 204 };
        },
      },
    },
    {
      path: /^\/v1\/instances\/(?<id>[^/]+)\/switchover$/,
      methods: {
        POST: async ({ id }, body) => ({
          status: 200,
          body: await instances.switchover(parse(InstanceId, id, '/id'), parse(Switchover, await body(), '/body').id),
        }),
      },
    },
    {
      path: /^\/v1\/instances\/(?<id>[^/]+)\/blue-green$/,
      methods: {
        POST: async ({ id }, body) => ({
          status: 200,
          body: await instances.startBlueGreen(parse(InstanceId, id, '/id'), parse(StartBlueGreen, await body(), '/body')),
        }),
      },
    },
    {
      path: /^\/v1\/instances\/(?<id>[^/]+)\/blue-green\/(?<blueGreenId>[^/]+)$/,
      methods: {
        GET: async ({ id, blueGreenId }, _body, { query }) => {
          const waitSeconds = parse(JobWait, query.get('waitSeconds') ?? undefined, '/query/waitSeconds');
          const upgrade = await instances.getBlueGreen(parse(InstanceId, id, '/id'), parse(BlueGreenId, blueGreenId, '/blueGreenId'), waitSeconds * 1000);
          if (!upgrade) throw new NotFound(`no blue/green upgrade ${blueGreenId} of ${id} on this host`);
          return { status: 200, body: upgrade };
        },
        DELETE: async ({ id, blueGreenId }) => {
          await instances.abandonBlueGreen(parse(InstanceId, id, '/id'), parse(BlueGreenId, blueGreenId, '/blueGreenId'));
          return { status: 204 };
        },
      },
    },
    {
      path: /^\/v1\/instances\/(?<id>[^/]+)\/blue-green\/(?<blueGreenId>[^/]+)\/(?<action>cutover|finish|rollback)$/,
      methods: {
        POST: async ({ id, blueGreenId, action }) => {
          const run = { cutover: instances.cutover, finish: instances.finishBlueGreen, rollback: instances.rollBackBlueGreen }[action as 'cutover' | 'finish' | 'rollback'];
          return { status: 200, body: await run(parse(InstanceId, id, '/id'), parse(BlueGreenId, blueGreenId, '/blueGreenId')) };
        },
      },
    },
    {
      path: /^\/v1\/instances\/(?<id>[^/]+)\/tables$/,
      methods: {
        GET: async ({ id }) => {
          const instanceId = parse(InstanceId, id, '/id');
          return { status: 200, body: await tableStats(instanceId, instances.describe(instanceId)) };
        },
      },
    },
    {
      path: /^\/v1\/instances\/(?<id>[^/]+)\/upgrade-checks$/,
      methods: {
        GET: async ({ id }, _, { query }) => {
          const instanceId = parse(InstanceId, id, '/id');
          const version = parse(EnsureInstance.shape.version, query.get('version') ?? undefined, '/query/version');
          return { status: 200, body: await upgradeChecks(instanceId, instances.describe(instanceId), version, installs) };
        },
      },
    },
    {
      path: /^\/v1\/instances\/(?<id>[^/]+)\/usage$/,
      methods: {
        GET: async ({ id }) => {
          const instanceId = parse(InstanceId, id, '/id');
          return { status: 200, body: { ...await instanceUsage(instanceId, instances.describe(instanceId)), diskQuota: diskQuotas.status(instanceId) } };
        },
      },
    },
    {
      path: /^\/v1\/instances\/(?<id>[^/]+)\/backups\/(?<backupId>[^/]+)$/,
      methods: {
        PUT: async ({ id, backupId }, body) => {
          const { created, job } = await backups.startBackup(
            parse(InstanceId, id, '/id'), parse(BackupId, backupId, '/backupId'), parse(StartBackup, await body(), '/body'));
          return { status: created ? 202 : 200, body: job };
        },
      },
    },
    {
      path: /^\/v1\/archives\/(?<id>[^/]+)\/backups\/(?<backupId>[^/]+)$/,
      methods: {
        GET: async ({ id, backupId }, _, { query }) => {
          const job = await backups.getBackup(
            parse(InstanceId, id, '/id'), parse(BackupId, backupId, '/backupId'), parse(JobWait, query.get('waitSeconds') ?? undefined, '/query/waitSeconds'));
          if (!job) throw new NotFound(`no backup ${backupId} of ${id}`);
          return { status: 200, body: job };
        },
        DELETE: async ({ id, backupId }) => {
          await backups.deleteBackup(parse(InstanceId, id, '/id'), parse(BackupId, backupId, '/backupId'));
          return { status: 204 };
        },
      },
    },
    {
      path: /^\/v1\/archives\/(?<id>[^/]+)$/,
      methods: {
        GET: async ({ id }) => ({ status: 200, body: await backups.summary(parse(InstanceId, id, '/id')) }),
        DELETE: async ({ id }) => {
          await backups.purge(parse(InstanceId, id, '/id'));
          return { status: 204 };
        },
      },
    },
    {
      path: /^\/v1\/archives\/(?<id>[^/]+)\/wal-retention$/,
      methods: {
        POST: async ({ id }, body) => {
          const { keepFromBackupId } = parse(WalRetention, await body(), '/body');
          return { status: 200, body: await backups.pruneWal(parse(InstanceId, id, '/id'), keepFromBackupId) };
        },
      },
    },
    {
      path: /^\/v1\/archives\/(?<id>[^/]+)\/wal\/(?<file>[^/]+)$/,
      auth: 'wal',
      methods: {
        POST: async ({ id, file }, _, { req }) => {
          await backups.archiveWal(parse(InstanceId, id, '/id'), file, req);
          return { status: 204 };
        },
        GET: async ({ id, file }) => {
          const bytes = await backups.fetchWal(parse(InstanceId, id, '/id'), file);
          if (!bytes) throw new NotFound(`no WAL file ${file} in the archive of ${id}`);
          return { status: 200, bytes, headers: { 'content-type': 'application/octet-stream' } };
        },
      },
    },
    {
      path: /^\/v1\/instances\/(?<id>[^/]+)\/restores\/(?<restoreId>[^/]+)$/,
      methods: {
        PUT: async ({ id, restoreId }, body) => {
          const { created, job } = await backups.startRestore(
            parse(InstanceId, id, '/id'), parse(RestoreId, restoreId, '/restoreId'), parse(StartRestore, await body(), '/body'));
          return { status: created ? 202 : 200, body: job };
        },
        GET: async ({ id, restoreId }, _, { query }) => {
          const job = await backups.getRestore(
            parse(InstanceId, id, '/id'), parse(RestoreId, restoreId, '/restoreId'), parse(JobWait, query.get('waitSeconds') ?? undefined, '/query/waitSeconds'));
          if (!job) throw new NotFound(`no restore ${restoreId} of ${id}`);
          return { status: 200, body: job };
        },
      },
    },
    {
      path: /^\/v1\/downloads\/(?<id>[^/]+)\/(?<backupId>[^/]+)$/,
      auth: 'signature',
      methods: {
        GET: async ({ id, backupId }, _, { query, req }) => {
          const download = await backups.download(
            parse(InstanceId, id, '/id'), parse(BackupId, backupId, '/backupId'), query.get('expires'), query.get('signature'),
            parse(DownloadFormat, query.get('format') ?? 'base', '/query/format'), acceptsEncoding(req.headers['accept-encoding'], 'zstd'));
          return {
            status: 200,
            headers: {
              'content-type': download.contentType, 'content-disposition': `attachment; filename="${download.filename}"`, vary: 'accept-encoding',
              ...(download.contentEncoding ? { 'content-encoding': download.contentEncoding } : {}),
            },
            stream: (res) => download.open(res),
          };
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
      .then(async (reply) => {
        if (reply.stream) {
          res.writeHead(reply.status, reply.headers ?? {});
          await reply.stream(res).catch((error: unknown) => {
            // The status is sent: all that is left is to cut the body short, so the client sees a failure.
            log('error', 'streamed response failed', { requestId, url: req.url, error: errorMessage(error) });
            res.destroy();
          });
        } else if (reply.bytes) {
          res.writeHead(reply.status, reply.headers ?? {}).end(reply.bytes);
        } else {
          send(res, reply.status, reply.body, 'application/json', reply.headers);
        }
      })
      .catch((error: unknown) => sendProblem(res, error, requestId, req));
  });

  async function handle(req: IncomingMessage): Promise<Reply> {
    const url = new URL(req.url ?? '/', 'http://agent');
    for (const route of table) {
      const match = route.path.exec(url.pathname);
      if (!match) continue;
      const params = match.groups ?? {};
      const auth = route.auth ?? 'secret';
      if (auth === 'secret' && !authorized(req)) throw new Unauthorized('a valid agent secret is required');
      if (auth === 'wal' && !services.backups.checkWalToken(params.id ?? '', req.headers.authorization)) {
        throw new Unauthorized('a valid WAL token is required');
      }
      const handler = route.methods[req.method ?? ''];
      if (!handler) throw new MethodNotAllowed(`${req.method} is not allowed here`, { headers: { allow: Object.keys(route.methods).join(', ') } });
      return handler(params, () => readJson(req), { req, query: url.searchParams });
    }
    if (!authorized(req)) throw new Unauthorized('a valid agent secret is required');
    throw new NotFound(`no route for ${url.pathname}`);
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

/** Whether an Accept-Encoding header lists `coding` (or `*`) without `q=0` (RFC 9110, section 12.5.3). */
export function acceptsEncoding(header: string | undefined, coding: string): boolean {
  const listed = new Map((header ?? '').split(',').map((item) => {
    const [name, ...params] = item.split(';').map((part) => part.trim().toLowerCase());
    const q = params.find((param) => param.startsWith('q='));
    return [name, q === undefined ? 1 : Number(q.slice(2))] as const;
  }));
  const q = listed.get(coding) ?? listed.get('*') ?? 0;
  return q > 0;
}
