import * as path from 'node:path';
import { RemovalPolicy, Validations } from 'aws-cdk-lib';
import * as apigw from 'aws-cdk-lib/aws-apigatewayv2';
import { HttpLambdaAuthorizer, HttpLambdaResponseType } from 'aws-cdk-lib/aws-apigatewayv2-authorizers';
import { HttpLambdaIntegration } from 'aws-cdk-lib/aws-apigatewayv2-integrations';
import * as logs from 'aws-cdk-lib/aws-logs';
import type * as sfn from 'aws-cdk-lib/aws-stepfunctions';
import { Construct } from 'constructs';
import type { WorkflowName } from '../functions/core/config.ts';
import { authorizer as authorizerRoute, fallbackRoute, routes, type Route } from '../functions/api/routes.ts';
import { DbplaneFunction, type SharedResources } from './function.ts';

export interface ApiProps {
  readonly shared: SharedResources;
  /** The state machines API handlers start operations on. */
  readonly stateMachines: Readonly<Record<WorkflowName, sfn.StateMachine>>;
  /**
   * The route table to deploy.
   * @default routes from functions/api/routes.ts
   */
  readonly routes?: readonly Route[];
}

/** The HTTP API: one route and one Lambda per route-table entry, the `$default` fallback, the Lambda authorizer. */
export class Api extends Construct {
  readonly httpApi: apigw.HttpApi;
  readonly stage: apigw.HttpStage;
  /** The route Lambdas, by `METHOD path`. */
  readonly functions: ReadonlyMap<string, DbplaneFunction>;
  readonly authorizerFunction: DbplaneFunction;
  readonly fallbackFunction: DbplaneFunction;

  constructor(scope: Construct, id: string, props: ApiProps) {
    super(scope, id);
    const table = props.routes ?? routes;

    this.httpApi = new apigw.HttpApi(this, 'HttpApi', {
      description: 'dbplane control plane API',
      createDefaultStage: false,
    });
    const accessLogs = new logs.LogGroup(this, 'AccessLogs', {
      retention: logs.RetentionDays.THREE_MONTHS,
      removalPolicy: RemovalPolicy.DESTROY,
    });
    this.stage = this.httpApi.addStage('DefaultStage', {
      stageName: '$default',
      autoDeploy: true,
      accessLogSettings: { destination: new apigw.LogGroupLogDestination(accessLogs) },
    });

    const functions = new Construct(this, 'Functions');
    this.authorizerFunction = new DbplaneFunction(functions, 'Authorizer', {
      entry: authorizerRoute.entry,
      handler: authorizerRoute.handler,
      shared: props.shared,
      description: 'API authorizer: bearer token → account and scopes',
    });
    const authorizer = new HttpLambdaAuthorizer('TokenAuthorizer', this.authorizerFunction, {
      responseTypes: [HttpLambdaResponseType.SIMPLE],
      identitySource: ['$request.header.Authorization'],
    });

    const byEntry = new Map<string, DbplaneFunction>();
    const byRoute = new Map<string, DbplaneFunction>();
    for (const route of table) {
      const key = `${route.method} ${route.path}`;
      if (byRoute.has(key)) throw new Error(`route ${key} is declared twice`);
      const functionId = functionIdOf(route);
      let fn = byEntry.get(`${route.entry}#${route.handler}`);
      if (!fn) {
        fn = new DbplaneFunction(functions, functionId, {
          entry: route.entry,
          handler: route.handler,
          shared: props.shared,
          stateMachines: props.stateMachines,
          agentAccess: route.agent,
          description: `${key}: ${route.summary}`.slice(0, 256),
        });
        byEntry.set(`${route.entry}#${route.handler}`, fn);
      }
      byRoute.set(key, fn);
      const httpRoute = new apigw.HttpRoute(this, routeIdOf(route), {
        httpApi: this.httpApi,
        routeKey: apigw.HttpRouteKey.with(route.path, apigw.HttpMethod[route.method]),
        integration: new HttpLambdaIntegration(`${routeIdOf(route)}Integration`, fn),
        authorizer: route.access === 'public' ? undefined : authorizer,
      });
      if (route.access === 'public') {
        Validations.of(httpRoute).acknowledge({ id: 'AwsSolutions-APIG4', reason: `${key} is public by design (access: public in the route table)` });
      }
    }
    this.functions = byRoute;

    this.fallbackFunction = new DbplaneFunction(functions, 'Fallback', {
      entry: fallbackRoute.entry,
      handler: fallbackRoute.handler,
      shared: props.shared,
      description: 'answers what matches no route: 404, or 405 with the allowed methods',
    });
    const fallback = new apigw.HttpRoute(this, 'RouteDefault', {
      httpApi: this.httpApi,
      routeKey: apigw.HttpRouteKey.DEFAULT,
      integration: new HttpLambdaIntegration('FallbackIntegration', this.fallbackFunction),
    });
    Validations.of(fallback).acknowledge({
      id: 'AwsSolutions-APIG4',
      reason: '$default only answers 404 or 405 for requests that match no route; it reads no data',
    });
  }
}

/** `functions/api/catalog.ts#listEngines` → `CatalogListEngines`; `functions/api/openapi.ts#handler` → `Openapi`. */
export function functionIdOf(route: Pick<Route, 'entry' | 'handler'>): string {
  const module = pascal(path.basename(route.entry, path.extname(route.entry)));
  return route.handler === 'handler' ? module : module + pascal(route.handler);
}

/** `GET /databases/{id}` → `RouteGetDatabasesId`. */
export function routeIdOf(route: Pick<Route, 'method' | 'path'>): string {
  return `Route${pascal(route.method.toLowerCase())}${pascal(route.path)}`;
}

function pascal(name: string): string {
  return name.split(/[^A-Za-z0-9]+/).filter(Boolean).map((word) => word[0].toUpperCase() + word.slice(1)).join('');
}
