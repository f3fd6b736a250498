import { afterAll, beforeAll, describe, expect, it } from 'vitest';
import { routes } from '../functions/api/routes.ts';
import { type ApiClient, apiClient, newTenant } from './helpers/api.ts';
import { startTestRuntime } from './helpers/runtime.ts';

/** Bad input, authentication and the API's edges: every answer is a problem+json 4xx that changes nothing. */

let runtime: Awaited<ReturnType<typeof startTestRuntime>>;
let admin: ApiClient;
let carol: Awaited<ReturnType<typeof newTenant>>;

const concrete = (path: string) => path.replace('{id}', 'db-00000000000000000000000000');

async function databaseCount(api: ApiClient): Promise<number> {
  return (await api.get('/databases')).body.databases.length;
}

function expectProblem(response: { status: number; headers: Headers; body: any }, status: number) {
  expect(response.status, JSON.stringify(response.body)).toBe(status);
  expect(response.headers.get('content-type')).toBe('application/problem+json');
  expect(response.body).toMatchObject({ status, title: expect.any(String), type: expect.any(String) });
}

beforeAll(async () => {
  runtime = await startTestRuntime();
  admin = apiClient(runtime.apiUrl, runtime.adminToken);
  carol = await newTenant(admin, runtime.apiUrl, 'carol');
});

afterAll(async () => {
  await runtime?.stop();
});

describe('authentication', () => {
  const protectedRoutes = routes.filter((r) => r.access !== 'public');

  it('answers 401 without a token on every protected route', async () => {
    const anonymous = apiClient(runtime.apiUrl);
    for (const route of protectedRoutes) expectProblem(await anonymous.call(route.method, concrete(route.path), route.body ? {} : undefined), 401);
  });

  it('answers 401 with an unknown token', async () => {
    const stranger = apiClient(runtime.apiUrl, 'dbp_not-a-real-token');
    for (const route of protectedRoutes) expectProblem(await stranger.call(route.method, concrete(route.path), route.body ? {} : undefined), 401);
  });

  it('answers 403 to an account token on admin routes', async () => {
    for (const route of routes.filter((r) => r.access === 'admin')) {
      expectProblem(await carol.api.call(route.method, concrete(route.path), route.method === 'GET' ? undefined : { name: 'x' }), 403);
    }
  });

  it('serves the public catalog and OpenAPI without a token', async () => {
    const anonymous = apiClient(runtime.apiUrl);
    const plans = await anonymous.get('/plans');
    expect(plans.body.plans.map((p: { id: string }) => p.id)).toContain('business-1024');
    const business = plans.body.plans.find((p: { id: string }) => p.id === 'business-1024');
    expect(business).toMatchObject({ nodes: 2, backupPolicy: { pointInTimeDays: 14 } });
    const engines = await anonymous.get('/engines');
    const postgres = engines.body.engines[0];
    expect(postgres.engine).toBe('postgresql');
    expect(postgres.versions.map((v: { major: number }) => v.major)).toEqual(expect.arrayContaining([14, 15, 16, 17, 18]));
    expect(postgres.defaultVersion).toMatch(/^17\./);
    expect(postgres.versions.find((v: { major: number }) => v.major === 15).capabilities).toMatchObject({ server: true, logicalDump: true, pgUpgrade: true });
  });

  it('generates an OpenAPI 3.1 document with every route and its schemas', async () => {
    const { body } = await apiClient(runtime.apiUrl).get('/openapi.json');
    expect(body.openapi).toBe('3.1.0');
    for (const route of routes) expect(body.paths[route.path]?.[route.method.toLowerCase()], `${route.method} ${route.path}`).toBeDefined();
    const create = body.paths['/databases'].post.requestBody.content['application/json'].schema;
    expect(create.required).toEqual(expect.arrayContaining(['name', 'engine', 'plan']));
    expect(create.properties.plan.enum).toContain('starter-512');
  });
});

describe('bad input changes nothing', () => {
  it('names each bad field of a create by JSON pointer', async () => {
    const response = await carol.api.post('/databases', { name: 'Bad Name!', engine: 'oracle', plan: 'gigantic', extra: 1 });
    expectProblem(response, 400);
    const pointers = response.body.errors.map((e: { pointer: string }) => e.pointer);
    expect(pointers).toEqual(expect.arrayContaining(['/body/name', '/body/engine', '/body/plan']));
    expect(JSON.stringify(response.body)).not.toContain('Bad Name!');
    expect(await databaseCount(carol.api)).toBe(0);
  });

  it('answers 422 naming the offered versions for a version the hosts cannot run', async () => {
    const response = await carol.api.post('/databases', { name: 'old', engine: 'postgresql', version: '9.6', plan: 'starter-512' });
    expectProblem(response, 422);
    expect(response.body.errors[0].pointer).toBe('/body/version');
    expect(response.body.detail).toMatch(/17\.\d+/);
    expect(await databaseCount(carol.api)).toBe(0);
  });

  it('answers 400 to a body that is not JSON, 415 to another content type, 413 to a large body', async () => {
    expectProblem(await carol.api.call('POST', '/databases', '{"name": ', { 'content-type': 'application/json' }), 400);
    expectProblem(await carol.api.call('POST', '/databases', 'name=x', { 'content-type': 'application/x-www-form-urlencoded' }), 415);
    expectProblem(await carol.api.call('POST', '/databases', JSON.stringify({ name: 'x'.repeat(70 * 1024) })), 413);
    expectProblem(await carol.api.call('POST', '/databases'), 400);
    expect(await databaseCount(carol.api)).toBe(0);
  });

  it('answers 400 to bad path parameters and admin bodies', async () => {
    expectProblem(await carol.api.get(`/databases/${'x'.repeat(100)}`), 400);
    expectProblem(await carol.api.get(`/operations/${'x'.repeat(100)}`), 400);
    const badAccount = await admin.post('/admin/accounts', { name: '' });
    expectProblem(badAccount, 400);
    expect(badAccount.body.errors[0].pointer).toBe('/body/name');
    const badToken = await admin.post(`/admin/accounts/${carol.accountId}/tokens`, { name: 't', scopes: ['root'] });
    expectProblem(badToken, 400);
    expect(badToken.body.errors[0].pointer).toBe('/body/scopes/0');
    expectProblem(await admin.post('/admin/accounts/acc-nope/tokens', { name: 't' }), 404);
  });

  it('answers 404 to an unknown route and 405 to a wrong method', async () => {
    expectProblem(await carol.api.get('/nope'), 404);
    const wrongMethod = await carol.api.call('PATCH', '/databases');
    expectProblem(wrongMethod, 405);
    expect(wrongMethod.headers.get('allow')).toBe('POST, GET');
  });

  it('answers 400 to a malformed Idempotency-Key', async () => {
    expectProblem(await carol.api.post('/databases', { name: 'k', engine: 'postgresql', plan: 'starter-512' }, { 'idempotency-key': 'x'.repeat(300) }), 400);
  });
});
