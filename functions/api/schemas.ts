import { z } from 'zod';
import { EngineName, OfferedVersion, Plan, planIds } from '#core/catalog.ts';
import { Account, AuditEvent, DatabaseName, DatabaseView, Operation, Scope, TokenRecord } from '#core/model.ts';

/** Request and response schemas of the HTTP API: the handlers parse with them and /openapi.json shows them. */

export const IdParams = z.object({ id: z.string().min(1).max(64) });

export const CreateDatabaseBody = z.object({
  name: DatabaseName,
  engine: EngineName,
  version: z.string().regex(/^\d+(\.\d+)?$/, 'a major ("17") or a major.minor ("17.10")').optional(),
  plan: z.enum(planIds as [string, ...string[]]),
}).strict();

export const DatabaseCreated = z.object({
  database: DatabaseView,
  operation: Operation,
  /** Shown once: only a SCRAM verifier of it is kept. */
  password: z.string(),
});

export const DatabaseList = z.object({ databases: z.array(DatabaseView) });
export const DatabaseDeleted = z.object({ database: DatabaseView, operation: Operation });
export const OperationList = z.object({ operations: z.array(Operation) });
export const AuditEventList = z.object({ events: z.array(AuditEvent) });

export const EngineList = z.object({
  engines: z.array(z.object({
    engine: EngineName,
    defaultVersion: z.string().optional(),
    versions: z.array(OfferedVersion),
  })),
});
export const PlanList = z.object({ plans: z.array(Plan) });

export const CreateAccountBody = z.object({ name: z.string().min(1).max(100) }).strict();
export const CreateTokenBody = z.object({
  name: z.string().min(1).max(100),
  scopes: z.array(Scope).min(1).default(['databases']),
}).strict();
export const TokenCreated = TokenRecord.extend({ token: z.string().describe('shown once; only its SHA-256 is kept') });
export { Account, DatabaseView, Operation };

export const Problem = z.object({
  type: z.string(),
  title: z.string(),
  status: z.number().int(),
  detail: z.string().optional(),
  instance: z.string().optional(),
  errors: z.array(z.object({ pointer: z.string(), detail: z.string() })).optional(),
});

export const OpenApiDocument = z.object({ openapi: z.string(), paths: z.record(z.string(), z.unknown()) }).loose();
