import { randomUUID } from 'node:crypto';

/** A small client for the HTTP API in tests: JSON in, status + JSON out. */
export interface ApiResponse<T = any> {
  status: number;
  headers: Headers;
  body: T;
}

export function apiClient(baseUrl: string, token?: string) {
  async function call<T = any>(method: string, path: string, body?: unknown, headers: Record<string, string> = {}): Promise<ApiResponse<T>> {
    const response = await fetch(new URL(path, baseUrl), {
      method,
      headers: {
        ...(token ? { authorization: `Bearer ${token}` } : {}),
        ...(body !== undefined ? { 'content-type': 'application/json' } : {}),
        ...headers,
      },
      body: body === undefined ? undefined : typeof body === 'string' ? body : JSON.stringify(body),
    });
    const text = await response.text();
    return { status: response.status, headers: response.headers, body: text ? JSON.parse(text) : undefined };
  }
  return {
    call,
    get: <T = any>(path: string) => call<T>('GET', path),
    post: <T = any>(path: string, body?: unknown, headers?: Record<string, string>) => call<T>('POST', path, body, { 'idempotency-key': randomUUID(), ...headers }),
    delete: <T = any>(path: string, headers?: Record<string, string>) => call<T>('DELETE', path, undefined, headers),
    /** Polls until the operation finished; a bench polls less often (`intervalMs`), as its polls share the machine. */
    async waitForOperation(id: string, timeoutMs = 60_000, intervalMs = 100): Promise<any> {
      const deadline = Date.now() + timeoutMs;
      for (;;) {
        const { body } = await call('GET', `/operations/${id}`);
        if (body?.finishedAt) return body;
        if (Date.now() > deadline) throw new Error(`operation ${id} did not finish: ${JSON.stringify(body)}`);
        await new Promise((r) => setTimeout(r, intervalMs));
      }
    },
  };
}

export type ApiClient = ReturnType<typeof apiClient>;

/** Creates an account with a token through the admin API. */
export async function newTenant(admin: ApiClient, baseUrl: string, name: string) {
  const account = await admin.post('/admin/accounts', { name });
  const token = await admin.post(`/admin/accounts/${account.body.id}/tokens`, { name: `${name}-token` });
  if (token.status !== 201) throw new Error(`token: ${JSON.stringify(token.body)}`);
  return { accountId: account.body.id as string, token: token.body.token as string, api: apiClient(baseUrl, token.body.token) };
}
