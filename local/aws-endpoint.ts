/**
 * A local endpoint speaking the AWS JSON protocol (awsJson1_0 / awsJson1_1), so handlers use the real
 * AWS SDK clients locally: `POST /` with `X-Amz-Target: <Service>.<Operation>` and a JSON body.
 * Point a client at it with `AWS_ENDPOINT_URL_<SERVICE>` (e.g. AWS_ENDPOINT_URL_SFN) or `endpoint`.
 */
import { randomUUID } from 'node:crypto';
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';

/** One operation: the parsed JSON request in, the JSON response out; throw an AwsServiceError for a typed error. */
export type AwsTarget = (request: any) => unknown;
/** `X-Amz-Target` value (e.g. `AWSStepFunctions.StartExecution`) → its implementation. */
export type AwsTargets = Record<string, AwsTarget>;

/** An error the SDK turns into its typed exception: HTTP `statusCode` with `{"__type": type, "message"}`. */
export class AwsServiceError extends Error {
  constructor(readonly type: string, message: string, readonly statusCode = 400) {
    super(message);
    this.name = type;
  }
}

export interface AwsEndpointOptions {
  /** @default 0 - a free port */
  port?: number;
  /** @default '127.0.0.1' */
  host?: string;
  targets: AwsTargets;
  /**
   * Where unexpected errors (answered as 500 InternalFailure) are reported.
   * @default console.error
   */
  onError?: (error: unknown, target: string) => void;
}

export interface AwsEndpoint {
  /** `http://127.0.0.1:<port>`: the value for `AWS_ENDPOINT_URL_<SERVICE>`. */
  url: string;
  /** Adds or replaces targets while running (e.g. `AWSEvents.PutEvents`). */
  register(targets: AwsTargets): void;
  close(): Promise<void>;
}

const maxBodyBytes = 10 * 1024 * 1024;

export async function startAwsEndpoint(options: AwsEndpointOptions): Promise<AwsEndpoint> {
  const targets = new Map(Object.entries(options.targets));
  const onError = options.onError ?? ((error, target) => console.error(`aws endpoint: ${target} failed`, error));

  const server = http.createServer((request, response) => {
    void handle(request, response);
  });

  async function handle(request: http.IncomingMessage, response: http.ServerResponse): Promise<void> {
    const target = String(request.headers['x-amz-target'] ?? '');
    const contentType = String(request.headers['content-type'] ?? '').startsWith('application/x-amz-json-1.1')
      ? 'application/x-amz-json-1.1'
      : 'application/x-amz-json-1.0';
    const reply = (statusCode: number, body: unknown) => {
      const text = JSON.stringify(body ?? {});
      response.writeHead(statusCode, {
        'content-type': contentType,
        'content-length': Buffer.byteLength(text),
        'x-amzn-requestid': randomUUID(),
      });
      response.end(text);
    };
    const fail = (error: AwsServiceError) => reply(error.statusCode, { __type: error.type, message: error.message });

    try {
      if (request.method !== 'POST') throw new AwsServiceError('UnknownOperationException', `method ${request.method} is not supported`);
      const operation = targets.get(target);
      if (!operation) throw new AwsServiceError('UnknownOperationException', `unknown operation '${target}'`);
      const body = await readBody(request);
      let input: unknown;
      try {
        input = body.length === 0 ? {} : JSON.parse(body);
      } catch {
        throw new AwsServiceError('SerializationException', 'the request body is not valid JSON');
      }
      reply(200, await operation(input));
    } catch (error) {
      if (error instanceof AwsServiceError) return fail(error);
      onError(error, target);
      fail(new AwsServiceError('InternalFailure', 'the local endpoint failed to process the request', 500));
    }
  }

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(options.port ?? 0, options.host ?? '127.0.0.1', () => resolve());
  });
  const { address, port } = server.address() as AddressInfo;

  return {
    url: `http://${address.includes(':') ? `[${address}]` : address}:${port}`,
    register(more) {
      for (const [name, operation] of Object.entries(more)) targets.set(name, operation);
    },
    close() {
      return new Promise<void>((resolve, reject) => {
        server.close((error) => (error ? reject(error) : resolve()));
        server.closeAllConnections();
      });
    },
  };
}

async function readBody(request: http.IncomingMessage): Promise<string> {
  const chunks: Buffer[] = [];
  let size = 0;
  for await (const chunk of request) {
    size += (chunk as Buffer).length;
    if (size > maxBodyBytes) throw new AwsServiceError('SerializationException', `the request body exceeds ${maxBodyBytes} bytes`, 413);
    chunks.push(chunk as Buffer);
  }
  return Buffer.concat(chunks).toString('utf8');
}
