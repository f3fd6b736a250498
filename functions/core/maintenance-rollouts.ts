import { z } from 'zod';
import { compareVersions, EngineName, majorOf, planIds } from './catalog.ts';
import { hostVersions } from './databases.ts';
import { NotFound, Unprocessable } from './errors.ts';
import { newId } from './ids.ts';
import { type Maintenance, MaintenanceKind, newMaintenance, type Rollout } from './maintenance-model.ts';
import { type MaintenanceDeps, noticeMs } from './maintenance.ts';
import { type Database, Tag } from './model.ts';

/**
 * Operators' maintenance of many databases (`POST /admin/maintenance`), in waves: each targeted database gets an
 * item in its first window at least 24 h away, with a notice event now; the next wave is noticed and planned only
 * once every item of the previous one has finished, and a failure rate above the threshold cancels the waves left.
 */

export const FleetMaintenanceBody = z.object({
  kind: MaintenanceKind,
  to: z.object({
    version: z.string().regex(/^\d+(\.(\d+|x))?$/, 'a version ("16.14"), or a major ("16" or "16.x": its newest minor)').optional(),
    plan: z.enum(planIds as [string, ...string[]]).optional(),
  }).strict().default({}).describe('upgrade: the version; change_plan: the plan; restart: nothing'),
  target: z.object({
    engine: EngineName.optional(),
    version: z.string().regex(/^\d+(\.\d+)?$/).optional().describe('databases on this version, or on this major'),
    plan: z.string().optional(),
    databaseIds: z.array(z.string().min(1).max(64)).min(1).max(1000).optional(),
    tag: Tag.optional().describe('databases with this tag (key=value or label, exactly)'),
  }).strict().refine((t) => Object.keys(t).length > 0, 'name at least one of engine, version, plan, databaseIds, tag'),
  waves: z.array(z.number().gt(0).max(100)).min(1).max(10).default([100])
    .refine((waves) => waves.every((p, i) => i === 0 || p > waves[i - 1]), 'percentages must increase')
    .refine((waves) => waves.at(-1) === 100, 'the last wave must reach 100')
    .describe('cumulative percentages of the targeted databases (but the staging wave\'s), e.g. [1, 10, 100]; the last must be 100'),
  stagingTag: Tag.optional().describe('the targeted databases with this tag (e.g. env=staging) go first, in a wave of their own'),
  failureThreshold: z.number().min(0).max(1).default(0.1).describe('a wave whose share of failed items is above this halts the following waves'),
  maxPostponements: z.number().int().min(0).max(10).default(2),
  deadline: z.iso.datetime({ offset: true }).optional().describe('customers may not postpone past this instant'),
}).strict();
export type FleetMaintenanceBody = z.infer<typeof FleetMaintenanceBody>;

function invalid(detail: string, pointer: string): never {
  throw new Unprocessable(detail, { errors: [{ pointer, detail }] });
}

/**
 * The databases the selector names. Explicit ids, or a tag's (one query on its index items), are read one by one;
 * otherwise the fleet is read through the backup-hour index (24 queries, every database once), filtered here: no
 * scan, but a cost that follows the fleet, paid once per rollout, not per tick.
 */
async function targets(deps: MaintenanceDeps, target: FleetMaintenanceBody['target']): Promise<Database[]> {
  const ids = target.databaseIds ?? (target.tag ? await deps.store.databaseIdsByTag(target.tag) : undefined);
  const databases = ids
    ? (await Promise.all(ids.map((id) => deps.store.getDatabase(id)))).filter((d): d is Database => d !== undefined)
    : (await Promise.all(Array.from({ length: 24 }, (_, hour) => deps.store.listDatabasesByBackupHour(hour)))).flat();
  const version = target.version;
  return databases.filter((d) => d.status === 'running'
    && (!target.tag || (d.tags ?? []).includes(target.tag))
    && (!target.engine || d.engine === target.engine)
    && (!target.plan || d.plan === target.plan)
    && (!version || (version.includes('.') ? d.version === version : String(majorOf(d.version)) === version)));
}

/** What each database goes to, or why this maintenance does not apply to it. */
async function destination(deps: MaintenanceDeps, body: FleetMaintenanceBody, now: Date): Promise<(database: Database) => Maintenance['target'] | undefined> {
  if (body.kind === 'restart') return () => ({});
  if (body.kind === 'change_plan') {
    if (!body.to.plan) invalid('a change_plan maintenance needs to.plan', '/body/to/plan');
    return (database) => (database.plan === body.to.plan ? undefined : { plan: body.to.plan });
  }
  if (!body.to.version) invalid('an upgrade maintenance needs to.version', '/body/to/version');
  const offered = await hostVersions(deps.store, now);
  const wanted = body.to.version.replace(/\.x$/, '');
  const version = wanted.includes('.') ? offered.find((v) => v.version === wanted) : offered.find((v) => String(v.major) === wanted);
  if (!version) invalid(`version ${body.to.version} is not offered; offered: ${offered.map((v) => v.version).join(', ')}`, '/body/to/version');
  // Minor upgrades only: majors are not run by maintenance yet.
  return (database) => (majorOf(database.version) === version.major && compareVersions(version.version, database.version) > 0 ? { version: version.version } : undefined);
}

/** Wave sizes from cumulative percentages: every wave gets at least one database while any are left. */
function waveSizes(count: number, percents: number[]): number[] {
  let assigned = 0;
  return percents.map((percent, i) => {
    const upTo = i === percents.length - 1 ? count : Math.min(count, Math.max(assigned + 1, Math.floor((count * percent) / 100)));
    const size = upTo - assigned;
    assigned = upTo;
    return size;
  });
}

export async function scheduleFleetMaintenance(deps: MaintenanceDeps, body: FleetMaintenanceBody): Promise<Rollout> {
  const now = (deps.now ?? (() => new Date()))();
  const to = await destination(deps, body, now);
  const matched = await targets(deps, body.target);
  const eligible = matched.map((database) => ({ database, target: to(database) })).filter((m) => m.target).sort((a, b) => a.database.id.localeCompare(b.database.id));
  if (eligible.length === 0) invalid(`no running database matches the target and needs this maintenance (${matched.length} matched)`, '/body/target');
  const tagged = (m: (typeof eligible)[number]) => body.stagingTag !== undefined && (m.database.tags ?? []).includes(body.stagingTag);
  const staging = eligible.filter(tagged);
  if (body.stagingTag && staging.length === 0) invalid(`none of the ${eligible.length} targeted databases has the tag ${body.stagingTag}`, '/body/stagingTag');
  const rest = eligible.filter((m) => !tagged(m));
  const sizes = waveSizes(rest.length, body.waves);
  const upTo = (i: number) => sizes.slice(0, i).reduce((sum, size) => sum + size, 0);
  // The staging wave first, then the percentages of the rest. A wave left empty (fewer databases than waves) is dropped: it could never finish.
  const groups = [
    ...(body.stagingTag ? [{ tag: body.stagingTag, members: staging }] : []),
    ...body.waves.map((percent, i) => ({ percent, members: rest.slice(upTo(i), upTo(i + 1)) })),
  ].filter((group) => group.members.length > 0);
  const at = now.toISOString();
  const rollout: Rollout = {
    id: newId('ro', now.getTime()),
    kind: body.kind,
    to: body.to,
    target: body.target,
    failureThreshold: body.failureThreshold,
    maxPostponements: body.maxPostponements,
    deadline: body.deadline,
    status: 'running',
    // Each wave's size counts its items as they are written (addWaveMember).
    waves: groups.map(({ members: _members, ...wave }, i) => ({ ...wave, size: 0, finished: 0, failed: 0, status: i === 0 ? 'running' : 'waiting' })),
    skipped: matched.length - eligible.length,
    createdAt: at,
    updatedAt: at,
  };
  await deps.maintenance.putRollout(rollout);
  for (const [wave, { members }] of groups.entries()) {
    for (const { database, target } of members) {
      const item = newMaintenance(database, {
        kind: body.kind, source: 'operator', target: target!, status: wave === 0 ? 'notified' : 'scheduled', rolloutId: rollout.id, wave,
        notBefore: new Date(now.getTime() + noticeMs).toISOString(), notifiedAt: wave === 0 ? at : undefined,
        maxPostponements: body.maxPostponements, deadline: body.deadline,
      }, now);
      await deps.maintenance.addWaveMember(rollout.id, wave, item);
      if (wave === 0) await deps.events.maintenanceScheduled(item);
    }
  }
  return (await deps.maintenance.getRollout(rollout.id))!;
}

export async function getRollout(deps: MaintenanceDeps, id: string): Promise<Rollout> {
  const rollout = await deps.maintenance.getRollout(id);
  if (!rollout) throw new NotFound(`no maintenance rollout "${id}"`);
  return rollout;
}
