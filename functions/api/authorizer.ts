import type { APIGatewayRequestAuthorizerEventV2, APIGatewaySimpleAuthorizerWithContextResult } from 'aws-lambda';
import middy from '@middy/core';
import { authenticate } from '#core/auth.ts';
import { getStore } from '#core/http.ts';

/** The HTTP API's Lambda authorizer (simple responses): a known token's account and scopes go to the route's handler. */
export const handler = middy<APIGatewayRequestAuthorizerEventV2, APIGatewaySimpleAuthorizerWithContextResult<Record<string, unknown>>>({ timeoutEarlyInMillis: 0 })
  .handler(async (event) => {
    const caller = await authenticate(getStore(), event.headers?.authorization ?? event.headers?.Authorization);
    return caller
      ? { isAuthorized: true, context: { accountId: caller.accountId, scopes: caller.scopes } }
      : { isAuthorized: false, context: {} };
  });
