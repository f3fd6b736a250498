import middy from '@middy/core';
import { MethodNotAllowed, NotFound } from '#core/errors.ts';
import { type ApiEvent, type ApiResult, problemResponses } from '#core/http.ts';
import { matchPath, routes } from './routes.ts';

export function unmatched(method: string, path: string): NotFound | MethodNotAllowed {
  const allowed = routes.filter((r) => matchPath(r.path, path)).map((r) => r.method);
  return allowed.length
    ? new MethodNotAllowed(`${method} is not allowed here`, { headers: { allow: allowed.join(', ') } })
    : new NotFound(`no route ${method} ${path}`);
}

/** API Gateway's `$default` route: 405 with Allow when the path exists under another method, else 404. */
export const handler = middy<ApiEvent, ApiResult>({ timeoutEarlyInMillis: 0 })
  .use(problemResponses())
  .handler(async (event) => {
    throw unmatched(event.requestContext.http.method, event.rawPath);
  });
