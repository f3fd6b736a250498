import { z } from 'zod';
import { EngineName, HostVersion, PostgresSettings } from './catalog.ts';

/**
 * The contract between the control plane and the agent (the data plane), shared by the agent's
 * HTTP server and the control plane's agent client. Every call is authenticated with
 * `Authorization: Bearer <DBPLANE_AGENT_SECRET>`; every mutating call is an idempotent "ensure".
 *
 *   GET    /v1/host                 → HostInfo
 *   PUT    /v1/instances/{id}       EnsureInstance → Instance   (creates or converges; never waits for health)
 *   GET    /v1/instances/{id}       → Instance | 404
 *   DELETE /v1/instances/{id}       → 204 (stops the server and removes its data; absent is fine)
 *   PUT    /v1/faults               Fault → 204 (only when the agent runs with fault injection enabled)
 *   DELETE /v1/faults               → 204
 * Errors: `application/problem+json` with `type`, `title`, `status`, `detail`.
 */

export const HostInfo = z.object({
  hostId: z.string(),
  versions: z.array(HostVersion),
  volumeEncryption: z.boolean().describe('whether the host can encrypt data volumes (device-mapper)'),
});
export type HostInfo = z.infer<typeof HostInfo>;

export const InstanceId = z.string().regex(/^[a-z0-9][a-z0-9-]{2,62}$/);

export const EnsureInstance = z.object({
  engine: EngineName,
  version: z.string().regex(/^\d+\.\d+$/),
  /** The customer's role; the password arrives only as a SCRAM-SHA-256 verifier, never in clear. */
  role: z.object({
    name: z.string().regex(/^[a-z_][a-z0-9_]{0,62}$/),
    scramVerifier: z.string().startsWith('SCRAM-SHA-256$'),
  }),
  database: z.string().regex(/^[a-z_][a-z0-9_]{0,62}$/),
  settings: PostgresSettings,
});
export type EnsureInstance = z.infer<typeof EnsureInstance>;

export const InstanceStatus = z.enum(['starting', 'running', 'stopped', 'failed']);

export const Instance = z.object({
  id: InstanceId,
  engine: EngineName,
  version: z.string(),
  host: z.string(),
  port: z.number().int(),
  status: InstanceStatus,
  /** Why the instance is `failed`, when it is. */
  reason: z.string().optional(),
});
export type Instance = z.infer<typeof Instance>;

/** A test-only hook: make the next matching call fail (e.g. to prove a rollback). */
export const Fault = z.object({
  operation: z.enum(['ensureInstance', 'startServer', 'deleteInstance']),
  instanceId: InstanceId.optional(),
  message: z.string().default('injected fault'),
});
export type Fault = z.infer<typeof Fault>;
