import { z } from 'zod';

/**
 * The engine, version and plan catalogs: data in one place, read by the API, the step handlers,
 * the agent and CDK. What a host can actually run is the intersection of this catalog with what
 * its agent reports (see `offeredVersions`).
 */

export const engineNames = ['postgresql'] as const;
export const EngineName = z.enum(engineNames);
export type EngineName = z.infer<typeof EngineName>;

/** Supported majors with their community end-of-life dates. */
export const postgresMajors = [
  { major: 14, endOfLife: '2026-11-12' },
  { major: 15, endOfLife: '2027-11-11' },
  { major: 16, endOfLife: '2028-11-09' },
  { major: 17, endOfLife: '2029-11-08' },
  { major: 18, endOfLife: '2030-11-14' },
] as const;

export const defaultMajor = 17;

export const VersionCapabilities = z.object({
  server: z.boolean().describe('initdb/pg_ctl/postgres are available'),
  logicalDump: z.boolean().describe('a pg_dump at least as new as this version is available'),
  pgUpgrade: z.boolean().describe('a full toolset of this major (pg_upgrade) is available'),
});
export type VersionCapabilities = z.infer<typeof VersionCapabilities>;

export const HostVersion = z.object({
  engine: EngineName,
  version: z.string().regex(/^\d+\.\d+$/),
  capabilities: VersionCapabilities,
});
export type HostVersion = z.infer<typeof HostVersion>;

export const OfferedVersion = HostVersion.extend({
  major: z.number().int(),
  endOfLife: z.string(),
  endOfLifeReached: z.boolean(),
});
export type OfferedVersion = z.infer<typeof OfferedVersion>;

export function majorOf(version: string): number {
  return Number(version.split('.')[0]);
}

export function compareVersions(a: string, b: string): number {
  const [aMajor, aMinor] = a.split('.').map(Number);
  const [bMajor, bMinor] = b.split('.').map(Number);
  return aMajor - bMajor || aMinor - bMinor;
}

/** Versions the catalog supports and a host can run, newest first. */
export function offeredVersions(hostVersions: HostVersion[], today: Date): OfferedVersion[] {
  return hostVersions
    .filter((v) => v.capabilities.server)
    .flatMap((v) => {
      const entry = postgresMajors.find((m) => m.major === majorOf(v.version));
      if (!entry) return [];
      return [{
        ...v,
        major: entry.major,
        endOfLife: entry.endOfLife,
        endOfLifeReached: entry.endOfLife < today.toISOString().slice(0, 10),
      }];
    })
    .sort((a, b) => compareVersions(b.version, a.version));
}

/**
 * Resolves what a user asked for ("16", "16.13" or nothing) to an exact offered version:
 * a major means its newest minor; nothing means the default major's newest minor.
 */
export function resolveVersion(requested: string | undefined, offered: OfferedVersion[]): OfferedVersion | undefined {
  const wanted = requested ?? String(defaultMajor);
  return wanted.includes('.')
    ? offered.find((v) => v.version === wanted)
    : offered.find((v) => String(v.major) === wanted);
}

export const BackupPolicy = z.object({
  dailyRetention: z.number().int().describe('daily backups kept'),
  weeklyRetention: z.number().int().describe('weekly backups kept'),
  monthlyRetention: z.number().int().describe('monthly backups kept'),
  pointInTimeDays: z.number().int().describe('point-in-time recovery window, in days'),
  manualRetention: z.number().int().describe('manual backups kept (the newest ones)'),
});
export type BackupPolicy = z.infer<typeof BackupPolicy>;

export const Plan = z.object({
  id: z.string(),
  tier: z.enum(['starter', 'business']),
  nodes: z.number().int().describe('1 for starter plans; 2 (primary and replica behind a gateway) for business plans'),
  memoryMb: z.number().int(),
  cpuShare: z.number().describe('fraction of a vCPU'),
  diskGb: z.number().int(),
  maxConnections: z.number().int(),
  backupPolicy: BackupPolicy,
});
export type Plan = z.infer<typeof Plan>;

const starterBackups = { dailyRetention: 7, weeklyRetention: 4, monthlyRetention: 0, pointInTimeDays: 7, manualRetention: 5 };
const businessBackups = { dailyRetention: 7, weeklyRetention: 8, monthlyRetention: 12, pointInTimeDays: 14, manualRetention: 20 };

export const plans: readonly Plan[] = [
  { id: 'starter-512', tier: 'starter', nodes: 1, memoryMb: 512, cpuShare: 0.25, diskGb: 5, maxConnections: 50, backupPolicy: starterBackups },
  { id: 'starter-1024', tier: 'starter', nodes: 1, memoryMb: 1024, cpuShare: 0.5, diskGb: 10, maxConnections: 100, backupPolicy: starterBackups },
  { id: 'starter-2048', tier: 'starter', nodes: 1, memoryMb: 2048, cpuShare: 1, diskGb: 20, maxConnections: 150, backupPolicy: starterBackups },
  { id: 'business-1024', tier: 'business', nodes: 2, memoryMb: 1024, cpuShare: 0.5, diskGb: 20, maxConnections: 100, backupPolicy: businessBackups },
  { id: 'business-2048', tier: 'business', nodes: 2, memoryMb: 2048, cpuShare: 1, diskGb: 40, maxConnections: 200, backupPolicy: businessBackups },
  { id: 'business-4096', tier: 'business', nodes: 2, memoryMb: 4096, cpuShare: 2, diskGb: 80, maxConnections: 400, backupPolicy: businessBackups },
];

export const planIds = plans.map((p) => p.id);

export function findPlan(id: string): Plan | undefined {
  return plans.find((p) => p.id === id);
}

export const PostgresSettings = z.record(z.string(), z.string());
export type PostgresSettings = z.infer<typeof PostgresSettings>;

const settingUnits: Record<string, number> = { kB: 1, MB: 1024, GB: 1024 ** 2, TB: 1024 ** 3 };

/**
 * Whether two values of a setting are the same: memory sizes compare by amount, so the plan's "1024MB"
 * equals the "1GB" PostgreSQL shows; anything else compares as written.
 */
export function sameSetting(a: string, b: string): boolean {
  const amount = (value: string) => {
    const match = /^(\d+)\s*(kB|MB|GB|TB)?$/.exec(value.trim());
    return match ? Number(match[1]) * (match[2] ? settingUnits[match[2]] : 1) : value.trim();
  };
  return amount(a) === amount(b);
}

/**
 * PostgreSQL settings derived from a plan, following the usual sizing rules: shared_buffers a quarter
 * of memory, effective_cache_size three quarters, work_mem what is left spread over the connections
 * (three sorts each), maintenance_work_mem a sixteenth.
 */
export function postgresSettings(plan: Plan): PostgresSettings {
  const sharedBuffersMb = Math.floor(plan.memoryMb / 4);
  const workMemKb = Math.max(1024, Math.floor(((plan.memoryMb - sharedBuffersMb) * 1024) / (plan.maxConnections * 3)));
  return {
    max_connections: String(plan.maxConnections),
    shared_buffers: `${sharedBuffersMb}MB`,
    effective_cache_size: `${Math.floor((plan.memoryMb * 3) / 4)}MB`,
    work_mem: `${workMemKb}kB`,
    maintenance_work_mem: `${Math.max(16, Math.floor(plan.memoryMb / 16))}MB`,
  };
}
