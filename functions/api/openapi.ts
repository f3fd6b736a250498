import { z } from 'zod';
import { apiHandler, json } from '#core/http.ts';
import { routes } from './routes.ts';
import { Problem } from './schemas.ts';

const schema = (type: z.ZodType, io: 'input' | 'output') => z.toJSONSchema(type, { io, unrepresentable: 'any' });

const problemResponse = (description: string) => ({ description, content: { 'application/problem+json': { schema: schema(Problem, 'output') } } });

/** OpenAPI 3.1, generated from the route table and the very zod schemas the handlers parse with. */
export function openApiDocument() {
  const paths: Record<string, Record<string, unknown>> = {};
  for (const route of routes) {
    const params = route.params ? Object.keys((route.params as z.ZodObject).shape) : [];
    paths[route.path] ??= {};
    paths[route.path][route.method.toLowerCase()] = {
      summary: route.summary,
      operationId: `${route.handler}${route.path.split('/').filter((p) => p && !p.startsWith('{')).map((p) => p[0].toUpperCase() + p.slice(1).replace(/\W/g, '')).join('')}`,
      security: route.access === 'public' ? [] : [{ bearer: [] }],
      parameters: [
        ...params.map((name) => ({ name, in: 'path', required: true, schema: { type: 'string' } })),
        ...Object.entries(route.query ? (route.query as z.ZodObject).shape : {}).map(([name, type]) => ({
          name, in: 'query', required: false, schema: schema(type as z.ZodType, 'input'),
        })),
        ...(route.method === 'POST' || route.method === 'DELETE'
          ? [{ name: 'Idempotency-Key', in: 'header', required: false, schema: { type: 'string', maxLength: 255 } }]
          : []),
      ],
      ...(route.body ? { requestBody: { required: true, content: { 'application/json': { schema: schema(route.body, 'input') } } } } : {}),
      responses: {
        [route.response.status]: { description: 'OK', content: { 'application/json': { schema: schema(route.response.schema, 'output') } } },
        ...(route.body || params.length ? { 400: problemResponse('Bad input: `errors` names each field by JSON pointer') } : {}),
        ...(route.access === 'public' ? {} : { 401: problemResponse('Missing or unknown token'), 404: problemResponse('Not found (or not yours)') }),
      },
    };
  }
  return {
    openapi: '3.1.0',
    info: { title: 'dbplane', version: '1', description: 'The control plane of a managed database service.' },
    components: { securitySchemes: { bearer: { type: 'http', scheme: 'bearer' } } },
    paths,
  };
}

export const handler = apiHandler({ access: 'public' }, async () => json(200, openApiDocument()));
