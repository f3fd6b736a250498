import { randomUUID } from 'node:crypto';
import type { z } from 'zod';
import { Problem } from '../functions/api/schemas.ts';

export type Problem = z.infer<typeof Problem>;

/** A failure the CLI reports as one message and exit code 1 (no API problem to show). */
export class CliError extends Error {
  override readonly name = 'CliError';
}

/** The API answered with an error; `problem` is its RFC 9457 body (synthesized when the body was not one). */
export class ApiError extends Error {
  override readonly name = 'ApiError';
  constructor(readonly problem: Problem) {
    super(problem.detail ? `${problem.title}: ${problem.detail}` : problem.title);
  }
}

export interface ClientOptions {
  apiUrl: string;
  token?: string;
}

/** The dbplane HTTP API, with each response checked against the schema the route table declares. */
export class Client {
  readonly apiUrl: string;
  readonly #token?: string;

  constructor(options: ClientOptions) {
    this.apiUrl = options.apiUrl;
    this.#token = options.token;
  }

  get<S extends z.ZodType>(path: string, schema: S): Promise<z.infer<S>> {
    return this.#request('GET', path, schema);
  }

  post<S extends z.ZodType>(path: string, body: unknown, schema: S): Promise<z.infer<S>> {
    return this.#request('POST', path, schema, body);
  }

  put<S extends z.ZodType>(path: string, body: unknown, schema: S): Promise<z.infer<S>> {
    return this.#request('PUT', path, schema, body);
  }

  delete<S extends z.ZodType>(path: string, schema: S): Promise<z.infer<S>> {
    return this.#request('DELETE', path, schema);
  }

  async #request<S extends z.ZodType>(method: string, path: string, schema: S, body?: unknown): Promise<z.infer<S>> {
    const url = `${this.apiUrl}${path}`;
    const headers: Record<string, string> = { accept: 'application/json, application/problem+json' };
    if (this.#token) headers.authorization = `Bearer ${this.#token}`;
    if (body !== undefined) headers['content-type'] = 'application/json';
    // A retried POST or DELETE (by a proxy, or the user re-running after a timeout) must not start a
    // second operation; a fresh key per invocation lets the server recognise its own retries.
    if (method !== 'GET') headers['idempotency-key'] = randomUUID();

    let response: Response;
    try {
      response = await fetch(url, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) });
    } catch (err) {
      const cause = err instanceof Error && err.cause instanceof Error ? err.cause.message : String(err);
      throw new CliError(`cannot reach ${this.apiUrl}: ${cause}`);
    }

    const text = await response.text();
    const json = parseJson(text);
    if (!response.ok) {
      const problem = Problem.safeParse(json);
      throw new ApiError(problem.success
        ? problem.data
        : { type: 'about:blank', title: response.statusText || 'HTTP error', status: response.status, detail: text.slice(0, 200) || undefined });
    }
    const checked = schema.safeParse(json);
    if (!checked.success) throw new CliError(`unexpected response from ${method} ${path}: ${checked.error.issues[0]?.message}`);
    // The body itself, not the parsed copy: `--json` shows what the API sent, fields this CLI does not
    // know about included. The response schemas have no transforms, so the type still holds.
    return json as z.infer<S>;
  }
}

export function parseJson(text: string): unknown {
  if (!text) return undefined;
  try {
    return JSON.parse(text);
  } catch {
    return undefined;
  }
}
