import { randomUUID } from 'node:crypto';
import { createServer, type IncomingMessage, type Server, type ServerResponse } from 'node:http';
import type { APIGatewayProxyEventV2WithLambdaAuthorizer, APIGatewayProxyStructuredResultV2 } from 'aws-lambda';
import { authorizer, fallbackRoute, matchPath, type Route, routes } from '../functions/api/routes.ts';
import { Unauthorized, PayloadTooLarge } from '../functions/core/errors.ts';
import { problem } from '../functions/core/http.ts';
import { invokeHandler } from './lambda.ts';

/**
 * API Gateway (HTTP API, payload v2) on one machine: the route table CDK deploys, the same Lambda
 * authorizer, the same handlers, `$default` for what matches no route.
 */

/** API Gateway refuses bodies over 10 MB before any Lambda runs. */
const gatewayBodyLimit = 10 * 1024 * 1024;

async function readBody(request: IncomingMessage): Promise<Buffer> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request) {
    size += chunk.length;
    if (size > gatewayBodyLimit) throw new PayloadTooLarge(`the body must be at most ${gatewayBodyLimit} bytes`);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks);
}

function findRoute(method: string, path: string): { route: Route; params: Record<string, string> } | undefined {
  for (const route of routes) {
    const params = route.method === method ? matchPath(route.path, path) : undefined;
    if (params) return { route, params };
  }
  return undefined;
}

function toEvent(request: IncomingMessage, url: URL, body: Buffer, params: Record<string, string> | undefined, routeKey: string): APIGatewayProxyEventV2WithLambdaAuthorizer<Record<string, unknown>> {
  const headers = Object.fromEntries(Object.entries(request.headers).map(([k, v]) => [k, Array.isArray(v) ? v.join(',') : v ?? '']));
  const now = new Date();
  return {
    version: '2.0',
    routeKey,
    rawPath: url.pathname,
    rawQueryString: url.search.slice(1),
    headers,
    queryStringParameters: url.search ? Object.fromEntries(url.searchParams) : undefined,
    pathParameters: params && Object.keys(params).length ? params : undefined,
    body: body.length ? body.toString('utf8') : undefined,
    isBase64Encoded: false,
    requestContext: {
      accountId: '000000000000',
      apiId: 'local',
      domainName: url.host,
      domainPrefix: 'local',
      http: { method: request.method ?? 'GET', path: url.pathname, protocol: 'HTTP/1.1', sourceIp: request.socket.remoteAddress ?? '', userAgent: headers['user-agent'] ?? '' },
      requestId: randomUUID(),
      routeKey,
      stage: '$default',
      time: now.toUTCString(),
      timeEpoch: now.getTime(),
      authorizer: { lambda: {} },
    },
  };
}

/**
 * The authorizer's verdict. API Gateway itself answers 401 when the header is missing and 403 when
 * the authorizer says no; here both are a 401 problem, which is what the API documents.
 */
async function authorize(event: APIGatewayProxyEventV2WithLambdaAuthorizer<Record<string, unknown>>): Promise<Record<string, unknown> | undefined> {
  if (!event.headers.authorization) return undefined;
  const verdict = await invokeHandler(authorizer.entry, authorizer.handler, {
    version: '2.0', type: 'REQUEST', routeArn: `arn:aws:execute-api:us-east-1:000000000000:local/$default/${event.routeKey.replace(' ', '')}`,
    identitySource: [event.headers.authorization], routeKey: event.routeKey, rawPath: event.rawPath, rawQueryString: event.rawQueryString,
    headers: event.headers, requestContext: event.requestContext, pathParameters: event.pathParameters,
  }) as { isAuthorized: boolean; context?: Record<string, unknown> };
  return verdict.isAuthorized ? verdict.context ?? {} : undefined;
}

function send(response: ServerResponse, result: APIGatewayProxyStructuredResultV2): void {
  const body = result.body ? Buffer.from(result.body, result.isBase64Encoded ? 'base64' : 'utf8') : Buffer.alloc(0);
  response.writeHead(result.statusCode ?? 200, { ...result.headers, 'content-length': body.length });
  response.end(body);
}

async function handle(request: IncomingMessage, response: ServerResponse): Promise<void> {
  const url = new URL(request.url ?? '/', `http://${request.headers.host ?? 'localhost'}`);
  const requestId = randomUUID();
  try {
    const body = await readBody(request);
    const method = request.method ?? 'GET';
    const match = findRoute(method, url.pathname);
    const event = toEvent(request, url, body, match?.params, match ? `${method} ${match.route.path}` : '$default');
    if (match && match.route.access !== 'public') {
      const context = await authorize(event);
      if (!context) return send(response, problem(new Unauthorized('send a valid API token as "Authorization: Bearer <token>"'), requestId));
      event.requestContext.authorizer = { lambda: context };
    }
    const target = match?.route ?? fallbackRoute;
    send(response, await invokeHandler(target.entry, target.handler, event) as APIGatewayProxyStructuredResultV2);
  } catch (error) {
    if (error instanceof PayloadTooLarge) return send(response, problem(error, requestId));
    console.error('local API gateway error', requestId, error);
    send(response, { statusCode: 500, headers: { 'content-type': 'application/json' }, body: JSON.stringify({ message: 'Internal Server Error' }) });
  }
}

export async function startHttpApi(port: number): Promise<{ server: Server; url: string; close(): Promise<void> }> {
  // Idle connections are kept well past a client's own keep-alive (fetch: ~4 s). With Node's default of 5 s, a
  // client reusing one at the moment the server closed it saw ECONNRESET (the backup bench, after 5 s of other work).
  const server = createServer({ keepAliveTimeout: 65_000 }, (request, response) => void handle(request, response));
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, '127.0.0.1', () => resolve());
  });
  const { port: actual } = server.address() as { port: number };
  return {
    server,
    url: `http://127.0.0.1:${actual}`,
    close: () => new Promise((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}
