import type { z } from 'zod';
import {
  ArchiveSummary, BackupJob, BlueGreen, downloadSignature, EnsureInstance, HostInfo, Instance, InstanceUsage, type RestartScope, RestoreJob, type StartBlueGreen,
  type Switchover, type StartBackup, type StartRestore,
  TableStats, UpgradeChecks, WalRetentionResult,
} from './agent-api.ts';
import { config, envNames } from './config.ts';
import { AgentRefused, AgentUnavailable } from './errors.ts';

/** The one typed client of the agent API (see agent-api.ts). */
export class AgentClient {
  constructor(private readonly baseUrl: string, private readonly secret: string) {}

  host(): Promise<HostInfo> {
    return this.call('GET', '/v1/host', HostInfo);
  }

  /** `restart: 'replica'` restarts only the replica on the new spec (a rolling change's first step). */
  ensureInstance(id: string, spec: EnsureInstance, restart: RestartScope = 'all'): Promise<Instance> {
    return this.call('PUT', `/v1/instances/${id}${restart === 'all' ? '' : `?restart=${restart}`}`, Instance, spec);
  }

  /** With `replicaWaitSeconds` (≤ maxJobWaitSeconds), answered once the replica caught up or failed, or that long later. */
  async getInstance(id: string, replicaWaitSeconds = 0): Promise<Instance | undefined> {
    return this.call('GET', `/v1/instances/${id}${replicaWaitSeconds ? `?replicaWaitSeconds=${replicaWaitSeconds}` : ''}`, Instance, undefined, true);
  }

  async deleteInstance(id: string): Promise<void> {
    await this.call('DELETE', `/v1/instances/${id}`, undefined);
  }

  /** Ensures the instance's streaming replica on its host (idempotent); it catches up afterwards (`nodes[].lagBytes`). */
  ensureReplica(id: string): Promise<Instance> {
    return this.call('PUT', `/v1/instances/${id}/replica`, Instance);
  }

  /** The replica becomes the primary behind the same endpoint; the old primary its replica (see the contract). */
  switchover(id: string, switchover: Switchover): Promise<Instance> {
    return this.call('POST', `/v1/instances/${id}/switchover`, Instance, switchover);
  }

  /** Stops and removes the instance's replica and its slot; absent is fine. */
  async deleteReplica(id: string): Promise<void> {
    await this.call('DELETE', `/v1/instances/${id}/replica`, undefined);
  }

  /** Starts (or finds) a major upgrade by blue/green; answers once the initial copy has started (see the contract). */
  startBlueGreen(id: string, request: StartBlueGreen): Promise<BlueGreen> {
    return this.call('POST', `/v1/instances/${id}/blue-green`, BlueGreen, request);
  }

  /** With `waitSeconds` (≤ maxJobWaitSeconds), a `building` upgrade is answered once it is no longer, or that long later. */
  getBlueGreen(id: string, blueGreenId: string, waitSeconds = 0): Promise<BlueGreen | undefined> {
    return this.call('GET', `/v1/instances/${id}/blue-green/${blueGreenId}?waitSeconds=${waitSeconds}`, BlueGreen, undefined, true);
  }

  /** Clients move to the new server, or (409) stay on the old one when the rows differ; a retry answers the saved result. */
  cutover(id: string, blueGreenId: string): Promise<BlueGreen> {
    return this.call('POST', `/v1/instances/${id}/blue-green/${blueGreenId}/cutover`, BlueGreen);
  }

  /** After the cutover, once verified: the old server stops following the new one and stops; a retry answers the same. */
  finishBlueGreen(id: string, blueGreenId: string): Promise<BlueGreen> {
    return this.call('POST', `/v1/instances/${id}/blue-green/${blueGreenId}/finish`, BlueGreen);
  }

  /** After the cutover, before it is finished: clients move back to the old server with every write; a retry answers the same. */
  rollBackBlueGreen(id: string, blueGreenId: string): Promise<BlueGreen> {
    return this.call('POST', `/v1/instances/${id}/blue-green/${blueGreenId}/rollback`, BlueGreen);
  }

  /** Before the cutover, drops the new server; absent is fine. */
  async abandonBlueGreen(id: string, blueGreenId: string): Promise<void> {
    await this.call('DELETE', `/v1/instances/${id}/blue-green/${blueGreenId}`, undefined);
  }

  /** Disk, connections and live settings of a running server (409 when it is not running). */
  usage(id: string): Promise<InstanceUsage> {
    return this.call('GET', `/v1/instances/${id}/usage`, InstanceUsage);
  }

  /** The pre-upgrade checks that found something on the running primary, for a target version installed on its host. */
  upgradeChecks(id: string, version: string): Promise<UpgradeChecks> {
    return this.call('GET', `/v1/instances/${id}/upgrade-checks?version=${encodeURIComponent(version)}`, UpgradeChecks);
  }

  startBackup(databaseId: string, backupId: string, request: StartBackup): Promise<BackupJob> {
    return this.call('PUT', `/v1/instances/${databaseId}/backups/${backupId}`, BackupJob, request);
  }

  /** With `waitSeconds` (≤ maxJobWaitSeconds), a running backup is answered once it ends or that long later. */
  getBackup(databaseId: string, backupId: string, waitSeconds = 0): Promise<BackupJob | undefined> {
    return this.call('GET', `/v1/archives/${databaseId}/backups/${backupId}?waitSeconds=${waitSeconds}`, BackupJob, undefined, true);
  }

  async deleteBackup(databaseId: string, backupId: string): Promise<void> {
    await this.call('DELETE', `/v1/archives/${databaseId}/backups/${backupId}`, undefined);
  }

  archive(databaseId: string): Promise<ArchiveSummary> {
    return this.call('GET', `/v1/archives/${databaseId}`, ArchiveSummary);
  }

  async purgeArchive(databaseId: string): Promise<void> {
    await this.call('DELETE', `/v1/archives/${databaseId}`, undefined);
  }

  pruneWal(databaseId: string, keepFromBackupId: string): Promise<{ removed: number }> {
    return this.call('POST', `/v1/archives/${databaseId}/wal-retention`, WalRetentionResult, { keepFromBackupId });
  }

  tableStats(instanceId: string): Promise<TableStats> {
    return this.call('GET', `/v1/instances/${instanceId}/tables`, TableStats);
  }

  startRestore(instanceId: string, restoreId: string, request: StartRestore): Promise<RestoreJob> {
    return this.call('PUT', `/v1/instances/${instanceId}/restores/${restoreId}`, RestoreJob, request);
  }

  /** Like getBackup. */
  getRestore(instanceId: string, restoreId: string, waitSeconds = 0): Promise<RestoreJob | undefined> {
    return this.call('GET', `/v1/instances/${instanceId}/restores/${restoreId}?waitSeconds=${waitSeconds}`, RestoreJob, undefined, true);
  }

  /** A URL that serves the backup's archive, decrypted, until `expires` (unix seconds); signed, so it needs no token. */
  downloadUrl(databaseId: string, backupId: string, expires: number, format: 'base' | 'dump' = 'base'): string {
    const url = new URL(`/v1/downloads/${databaseId}/${backupId}`, this.baseUrl);
    url.searchParams.set('expires', String(expires));
    url.searchParams.set('signature', downloadSignature(this.secret, databaseId, backupId, expires));
    if (format === 'dump') url.searchParams.set('format', 'dump');
    return url.toString();
  }

  private async call<T>(method: string, path: string, schema: z.ZodType<T> | undefined, body?: unknown, allowMissing = false): Promise<T> {
    let response: Response;
    try {
      response = await fetch(new URL(path, this.baseUrl), {
        method,
        headers: { authorization: `Bearer ${this.secret}`, ...(body ? { 'content-type': 'application/json' } : {}) },
        body: body ? JSON.stringify(body) : undefined,
        signal: AbortSignal.timeout(30_000),
      });
    } catch (error) {
      throw new AgentUnavailable(`agent ${method} ${path}: ${(error as Error).message}`, { cause: error });
    }
    if (allowMissing && response.status === 404) return undefined as T;
    if (!response.ok) {
      const problem = await response.json().catch(() => ({})) as { detail?: string; title?: string };
      const reason = `agent ${method} ${path}: ${problem.detail ?? problem.title ?? response.statusText}`;
      throw response.status >= 500 ? new AgentUnavailable(reason) : new AgentRefused(reason);
    }
    return schema ? schema.parse(await response.json()) : (undefined as T);
  }
}

let secret: Promise<string> | undefined;

/** The agent secret: from the environment locally, from Secrets Manager (by ARN) in AWS; read once per container. */
async function agentSecret(): Promise<string> {
  const inline = process.env[envNames.agentSecret];
  if (inline) return inline;
  const arn = process.env[envNames.agentSecretArn];
  if (!arn) throw new Error(`missing environment variable ${envNames.agentSecret} or ${envNames.agentSecretArn}`);
  const { SecretsManagerClient, GetSecretValueCommand } = await import('@aws-sdk/client-secrets-manager');
  const { SecretString } = await new SecretsManagerClient({}).send(new GetSecretValueCommand({ SecretId: arn }));
  if (!SecretString) throw new Error('the agent secret is empty');
  return SecretString;
}

export async function agentClient(): Promise<AgentClient> {
  secret ??= agentSecret();
  return new AgentClient(config.agentUrl(), await secret);
}
