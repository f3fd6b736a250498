import { createHash } from 'node:crypto';
import middy, { type MiddlewareObj } from '@middy/core';
import type { APIGatewayProxyEventV2WithLambdaAuthorizer, APIGatewayProxyStructuredResultV2, Context } from 'aws-lambda';
import { z } from 'zod';
import {
  BadRequest, Conflict, DomainError, type FieldIssue, Forbidden, PayloadTooLarge, Unauthorized, Unprocessable, UnsupportedMediaType,
} from './errors.ts';
import { logger } from './logger.ts';
import { Caller } from './model.ts';
import { Store } from './store.ts';

/**
 * The HTTP side of every API handler: a middy chain of one-job middlewares around a plain function
 * that receives parsed, typed input. Order: problem responses (outermost) → caller → request parsing
 * → idempotency → handler.
 */

export type ApiEvent = APIGatewayProxyEventV2WithLambdaAuthorizer<Record<string, unknown>>;
export type ApiResult = APIGatewayProxyStructuredResultV2;

export const maxBodyBytes = 64 * 1024;
const idempotencyTtlSeconds = 24 * 3600;

export function json(statusCode: number, body: unknown, headers: Record<string, string> = {}): ApiResult {
  return { statusCode, headers: { 'content-type': 'application/json', ...headers }, body: JSON.stringify(body) };
}

export function problem(error: DomainError, requestId: string): ApiResult {
  return json(error.status, {
    type: error.type,
    title: error.title,
    status: error.status,
    detail: error.message,
    instance: `urn:request:${requestId}`,
    ...(error.errors ? { errors: error.errors } : {}),
  }, { 'content-type': 'application/problem+json', ...error.headers });
}

/** Domain errors become RFC 9457 problems; anything else a generic 500 that names only the request id. */
export const problemResponses = (): Middleware => ({
  onError: (request) => {
    const requestId = request.context.awsRequestId;
    if (request.error instanceof DomainError) {
      request.response = problem(request.error, requestId);
      return;
    }
    logger.error('unexpected error', { requestId, error: request.error as Error });
    request.response = json(500, {
      type: 'about:blank', title: 'Internal error', status: 500, detail: `something went wrong; quote request ${requestId}`,
    }, { 'content-type': 'application/problem+json' });
  },
});

/** zod issues → field issues with JSON pointers; messages only, never the rejected values. */
export function fieldIssues(error: z.ZodError, root: string): FieldIssue[] {
  return error.issues.map((issue) => ({
    pointer: `/${root}${issue.path.map((p) => `/${String(p)}`).join('')}`,
    detail: issue.message,
  }));
}

export interface RequestSchemas<P extends z.ZodType, Q extends z.ZodType, B extends z.ZodType> {
  access: 'public' | 'account' | 'admin';
  params?: P;
  query?: Q;
  body?: B;
  /** POSTs honour an Idempotency-Key: a replay answers the first response and starts nothing new. */
  idempotent?: boolean;
}

export interface ApiRequest<P, Q, B> {
  params: P;
  query: Q;
  body: B;
  caller: Caller;
  requestId: string;
  store: Store;
}

/** Per-invocation state the middlewares share, kept in middy's `request.internal`. */
interface Internal extends Record<string, unknown> {
  caller?: Caller;
  parsed?: { params: unknown; query: unknown; body: unknown };
  idempotencyKey?: string;
}
type Middleware = MiddlewareObj<ApiEvent, ApiResult, Error, Context, Internal>;

function header(event: ApiEvent, name: string): string | undefined {
  return event.headers?.[name] ?? event.headers?.[name.toLowerCase()];
}

/** The caller, from the Lambda authorizer's context; admin routes also need the admin scope. */
const callerFromAuthorizer = (access: RequestSchemas<z.ZodType, z.ZodType, z.ZodType>['access']): Middleware => ({
  before: (request) => {
    if (access === 'public') return;
    const context = request.event.requestContext.authorizer?.lambda;
    const caller = Caller.safeParse({ accountId: context?.accountId, scopes: context?.scopes });
    if (!caller.success) throw new Unauthorized('send an API token as "Authorization: Bearer <token>"');
    if (access === 'admin' && !caller.data.scopes.includes('admin')) throw new Forbidden('this needs a token with the admin scope');
    request.internal.caller = caller.data;
  },
});

function parseBody(event: ApiEvent, schema: z.ZodType): unknown {
  const raw = event.body ? (event.isBase64Encoded ? Buffer.from(event.body, 'base64').toString('utf8') : event.body) : '';
  if (Buffer.byteLength(raw) > maxBodyBytes) throw new PayloadTooLarge(`the body must be at most ${maxBodyBytes} bytes`);
  if (raw === '') return parseWith(schema, undefined, 'body');
  const contentType = header(event, 'content-type') ?? '';
  if (!/^application\/(.+\+)?json\b/i.test(contentType)) throw new UnsupportedMediaType(`got content-type "${contentType.slice(0, 100)}"`);
  let value: unknown;
  try {
    value = JSON.parse(raw);
  } catch {
    throw new BadRequest('the body is not valid JSON', { errors: [{ pointer: '/body', detail: 'not valid JSON' }] });
  }
  return parseWith(schema, value, 'body');
}

function parseWith(schema: z.ZodType, value: unknown, root: string): unknown {
  const result = schema.safeParse(value);
  if (!result.success) {
    const errors = fieldIssues(result.error, root);
    throw new BadRequest(errors.map((e) => `${e.pointer}: ${e.detail}`).join('; '), { errors });
  }
  return result.data;
}

/** Path parameters, query and body, each through its zod schema; a failure names every bad field. */
const parsedRequest = (schemas: RequestSchemas<z.ZodType, z.ZodType, z.ZodType>): Middleware => ({
  before: (request) => {
    const { event } = request;
    request.internal.parsed = {
      params: schemas.params ? parseWith(schemas.params, event.pathParameters ?? {}, 'params') : {},
      query: schemas.query ? parseWith(schemas.query, event.queryStringParameters ?? {}, 'query') : {},
      body: schemas.body ? parseBody(event, schemas.body) : undefined,
    };
  },
});

const IdempotencyKey = z.string().min(1).max(255).regex(/^[\x21-\x7e]+$/);

/** Idempotency-Key: the first answer is kept 24 h and replayed; the same key with another request is 422. */
const idempotency = (store: () => Store): Middleware => ({
  before: async (request) => {
    const { internal } = request;
    const key = header(request.event, 'Idempotency-Key');
    if (key === undefined) return;
    if (!IdempotencyKey.safeParse(key).success) {
      throw new BadRequest('Idempotency-Key must be 1-255 visible ASCII characters', { errors: [{ pointer: '/headers/idempotency-key', detail: 'invalid' }] });
    }
    const { event } = request;
    const requestHash = createHash('sha256').update(`${event.requestContext.http.method} ${event.rawPath}\n${JSON.stringify(internal.parsed)}`).digest('hex');
    const now = Date.now();
    const accountId = internal.caller?.accountId ?? 'public';
    const existing = await store().claimIdempotencyKey(accountId, key, { requestHash, status: 'in_progress', expiresAt: Math.floor(now / 1000) + idempotencyTtlSeconds }, now);
    if (!existing) {
      internal.idempotencyKey = key;
      return;
    }
    if (existing.requestHash !== requestHash) throw new Unprocessable('this Idempotency-Key was used for a different request');
    if (existing.status === 'in_progress' || !existing.response) {
      throw new Conflict('a request with this Idempotency-Key is still in progress; retry shortly');
    }
    return { ...existing.response, headers: { ...existing.response.headers, 'idempotent-replayed': 'true' } };
  },
  after: async (request) => {
    const { internal } = request;
    if (!internal.idempotencyKey || !request.response) return;
    const { statusCode = 200, headers = {}, body = '' } = request.response;
    await store().completeIdempotencyKey(internal.caller?.accountId ?? 'public', internal.idempotencyKey, {
      statusCode, body, headers: Object.fromEntries(Object.entries(headers).map(([k, v]) => [k, String(v)])),
    });
  },
  onError: async ({ internal }) => {
    // A failed request may be retried with the same key.
    if (internal.idempotencyKey) await store().releaseIdempotencyKey(internal.caller?.accountId ?? 'public', internal.idempotencyKey);
  },
});

let sharedStore: Store | undefined;
/** One Store per container (per Lambda); created lazily so modules load without configuration. */
export const getStore = () => (sharedStore ??= new Store());

export function apiHandler<P extends z.ZodType = z.ZodType, Q extends z.ZodType = z.ZodType, B extends z.ZodType = z.ZodType>(
  schemas: RequestSchemas<P, Q, B>,
  fn: (request: ApiRequest<z.infer<P>, z.infer<Q>, z.infer<B>>) => Promise<ApiResult>,
) {
  // middy hands the handler (event, context) only; the parsed request travels in the context.
  const parsedInput: Middleware = {
    before: (request) => {
      Object.assign(request.context, { parsed: request.internal.parsed, caller: request.internal.caller });
    },
  };
  return middy<ApiEvent, ApiResult, Error, Context, Internal>({ timeoutEarlyInMillis: 0 })
    .use(problemResponses())
    .use(callerFromAuthorizer(schemas.access))
    .use(parsedRequest(schemas))
    .use(schemas.idempotent ? [idempotency(getStore)] : [])
    .use(parsedInput)
    .handler((_event, context) => {
      const { parsed, caller } = context as Context & Pick<Internal, 'parsed' | 'caller'>;
      return fn({
        params: parsed!.params as z.infer<P>,
        query: parsed!.query as z.infer<Q>,
        body: parsed!.body as z.infer<B>,
        caller: caller ?? { accountId: 'public', scopes: [] },
        requestId: context.awsRequestId,
        store: getStore(),
      });
    });
}
