import { z } from 'zod';
import { maxUpgradeCheckObjects, retiredKeepDays, type UpgradeCheck, type UpgradeMethod } from './agent-api.ts';
import type { AgentClient } from './agent-client.ts';
import { compareVersions, findPlan, majorOf, type OfferedVersion } from './catalog.ts';
import { type Deps, findDatabase, hostVersions, startOnRunning } from './databases.ts';
import { OperationInProgress, Unprocessable } from './errors.ts';
import type { Caller, Database, Operation } from './model.ts';
import { expectedRestartSeconds, expectedSwitchoverSeconds } from './plans.ts';

/**
 * Engine upgrades: the versions a database can go to, the pre-upgrade report, and the request behind the
 * upgrade API. A minor upgrade restarts the servers on the new minor's binaries (the data directory format
 * is the same within a major): on one node in place, on two nodes rolling (the replica, a switchover, then
 * the old primary). A major upgrade is blue/green through logical replication: a new server beside the old
 * one, fed by a subscription until it has caught up, then a cutover behind the same gateway.
 */

export interface UpgradeDeps extends Deps {
  agent: AgentClient;
}

export const UpgradeBody = z.object({
  version: z.string().regex(/^\d+(\.\d+)?$/).describe('the target: an exact version ("16.14") or a major ("16": its newest minor)'),
  when: z.enum(['now', 'maintenance_window']).default('now')
    .describe('now: start the upgrade; maintenance_window: queue it on the database for its next window (nothing starts now)'),
}).strict();
export type UpgradeBody = z.infer<typeof UpgradeBody>;

export const UpgradeReportQuery = z.object({ version: UpgradeBody.shape.version }).strict();

export const UpgradeStrategy = z.enum(['restart', 'logical'])
  .describe('restart: on the new binaries (rolling on 2 nodes); logical: a new server fed by logical replication (blue/green)');
export type UpgradeStrategy = z.infer<typeof UpgradeStrategy>;

/** The agent's checks that concern a strategy. */
export const checkedMethod = (strategy: UpgradeStrategy): UpgradeMethod => (strategy === 'restart' ? 'minor' : 'logical');

/** The input an upgrade operation carries (operations from before majors have no strategy: they were restarts). */
export const UpgradeInput = z.object({ fromVersion: z.string(), toVersion: z.string(), strategy: UpgradeStrategy.default('restart') }).loose();
export type UpgradeInput = z.infer<typeof UpgradeInput>;

export const UpgradeTarget = z.object({
  version: z.string(),
  kind: z.enum(['minor', 'major']),
  strategy: UpgradeStrategy,
  endOfLife: z.string(),
  endOfLifeReached: z.boolean(),
  available: z.boolean().describe('whether dbplane can run this upgrade now; when not, `reason` says why'),
  reason: z.string().optional(),
});
export type UpgradeTarget = z.infer<typeof UpgradeTarget>;

export const UpgradeList = z.object({ current: z.string(), targets: z.array(UpgradeTarget).describe('never a downgrade; newest first') });

const ReportedCheck = z.object({
  check: z.string(), detail: z.string(), count: z.number().int().describe('how many in all'), objects: z.array(z.string()).describe(`the first ${maxUpgradeCheckObjects} of them`),
});

export const UpgradeReport = UpgradeTarget.extend({
  from: z.string(),
  blocking: z.array(ReportedCheck).describe('what the live database has that this upgrade cannot carry: the upgrade is refused'),
  warnings: z.array(ReportedCheck),
  allowed: z.boolean().describe('whether the upgrade would start now'),
  steps: z.array(z.string()).describe('what the upgrade does, in order'),
  expectedUnavailabilitySeconds: z.number().describe('how long new connections may wait at the gateway (held, not refused)'),
});
export type UpgradeReport = z.infer<typeof UpgradeReport>;

/** How long new connections may wait at the gateway during a major upgrade's cutover (measured by `npm run bench:upgrade-major`; rounded up). */
export const expectedCutoverSeconds = 1;

/** Every offered version newer than the database's (never a downgrade), newest first. */
export async function upgradeTargets(deps: Pick<Deps, 'store' | 'now'>, database: Database): Promise<UpgradeTarget[]> {
  const offered = await hostVersions(deps.store, (deps.now ?? (() => new Date()))());
  const current = offered.find((v) => v.version === database.version);
  return offered.filter((v) => compareVersions(v.version, database.version) > 0).map((v) => target(database, current, v));
}

/**
 * A later minor is a restart. A later major is a blue/green upgrade where the host can copy the schema of the
 * database's version (`logicalDump`: a pg_dump at least as new as it); pg_upgrade is not offered.
 */
function target(database: Database, current: OfferedVersion | undefined, version: OfferedVersion): UpgradeTarget {
  const minor = version.major === majorOf(database.version);
  const available = minor || current?.capabilities.logicalDump === true;
  const reason = `the host has no pg_dump as new as PostgreSQL ${majorOf(database.version)}: a blue/green upgrade cannot copy the schema`;
  return {
    version: version.version,
    kind: minor ? 'minor' : 'major',
    strategy: minor ? 'restart' : 'logical',
    endOfLife: version.endOfLife,
    endOfLifeReached: version.endOfLifeReached,
    available,
    ...(available ? {} : { reason }),
  };
}

/** The target a user asked for ("16.14", or "16": its newest minor), or a 422 at `pointer` listing the allowed ones. */
function chosenTarget(targets: UpgradeTarget[], requested: string, current: string, pointer: string): UpgradeTarget {
  const found = requested.includes('.') ? targets.find((t) => t.version === requested) : targets.find((t) => String(majorOf(t.version)) === requested);
  if (found) return found;
  const allowed = targets.map((t) => t.version).join(', ') || 'none (the database runs the newest version its host offers)';
  throw new Unprocessable(`version ${requested} is not an upgrade of ${current} this service offers (never a downgrade)`, {
    errors: [{ pointer, detail: `one of: ${allowed}` }],
  });
}

export async function listUpgrades(deps: Pick<Deps, 'store' | 'now'>, caller: Caller, idOrName: string): Promise<z.infer<typeof UpgradeList>> {
  const database = await findDatabase(deps.store, caller, idOrName);
  return { current: database.version, targets: await upgradeTargets(deps, database) };
}

/** The checks the live server fails for this strategy: an upgrade with a blocking one is refused. */
async function upgradeProblems(agent: AgentClient, database: Database, to: UpgradeTarget) {
  const { checks } = await agent.upgradeChecks(database.id, to.version);
  const applying = checks.filter((c) => c.appliesTo.includes(checkedMethod(to.strategy)));
  const view = (c: UpgradeCheck) => ({ check: c.id, detail: c.detail, count: c.count, objects: c.objects });
  return {
    blocking: applying.filter((c) => c.severity === 'blocking').map(view),
    warnings: applying.filter((c) => c.severity === 'warning').map(view),
  };
}

/** What the upgrade would do, and whether it may start: checks the live database, changes nothing. */
export async function upgradeReport(deps: Pick<UpgradeDeps, 'store' | 'agent' | 'now'>, caller: Caller, idOrName: string, version: string): Promise<UpgradeReport> {
  const database = await findDatabase(deps.store, caller, idOrName);
  const to = chosenTarget(await upgradeTargets(deps, database), version, database.version, '/query/version');
  const { blocking, warnings } = await upgradeProblems(deps.agent, database, to);
  const twoNodes = (findPlan(database.plan)?.nodes ?? 1) > 1;
  return {
    from: database.version,
    ...to,
    blocking,
    warnings,
    allowed: to.available && blocking.length === 0 && !database.activeOperation,
    steps: upgradeSteps(to, twoNodes),
    // A restart, a switchover or a cutover: new connections wait at the gateway meanwhile.
    expectedUnavailabilitySeconds: to.kind === 'major' ? Math.max(expectedCutoverSeconds, expectedRestartSeconds) : twoNodes ? expectedSwitchoverSeconds : expectedRestartSeconds,
  };
}

export function upgradeSteps(to: Pick<UpgradeTarget, 'version' | 'kind'>, twoNodes: boolean): string[] {
  if (to.kind === 'major') {
    return [
      `check the live database again (tables without a primary key or replica identity, prepared transactions, extensions PostgreSQL ${to.version} lacks) and list every user table`,
      'set wal_level = logical on the server if it has another (a restart: new connections wait at the gateway)',
      `build a PostgreSQL ${to.version} server beside it, copy the roles and the schema, subscribe every database: the rows stream while clients keep working`,
      'wait until every table is copied and the new server has caught up',
      "cut over: hold new connections at the gateway, end the old server's sessions, apply what is left, copy the sequences, compare every table's row count on both "
        + '(a difference sends clients back to the old server), then send clients to the new server; ANALYZE every database',
      `keep the old server stopped, with its data, for ${retiredKeepDays} days`,
      ...(twoNodes ? ['copy the replica afresh from the new primary and wait until it has caught up'] : []),
      `verify: the server says ${to.version}, every user table is still there and reads in full`,
      `record ${to.version} as the version (event dbplane.database.upgraded); a fresh base backup starts`,
    ];
  }
  return [
    'check the live database again (prepared transactions, invalid databases, extensions the new binaries lack) and list every user table',
    ...(twoNodes
      ? [`restart the replica on PostgreSQL ${to.version}; the primary keeps serving`,
        'switch over: hold new connections at the gateway, shut the primary down cleanly, promote the replica once it has every commit',
        `restart the old primary (now the replica) on PostgreSQL ${to.version}`]
      : [`restart the server on PostgreSQL ${to.version} (new connections wait at the gateway)`]),
    'wait until the server accepts connections' + (twoNodes ? ' and the replica has caught up' : ''),
    `verify: the server says ${to.version}, every user table is still there and reads in full`,
    `record ${to.version} as the version (event dbplane.database.upgraded); a fresh base backup starts`,
  ];
}

/**
 * `when: now` starts an Upgrade operation (it takes the database's lock: 409 while another runs);
 * `when: maintenance_window` only records the request on the database. Either way the target must be
 * an offered upgrade (422 listing them) that dbplane can run, and the live database must pass the checks.
 */
export async function requestUpgrade(deps: UpgradeDeps, caller: Caller, idOrName: string, body: UpgradeBody): Promise<{ database: Database; operation?: Operation }> {
  const database = await findDatabase(deps.store, caller, idOrName);
  const to = chosenTarget(await upgradeTargets(deps, database), body.version, database.version, '/body/version');
  if (!to.available) throw new Unprocessable(to.reason!, { errors: [{ pointer: '/body/version', detail: to.reason! }] });
  if (database.activeOperation) throw new OperationInProgress(database.activeOperation);
  const { blocking } = await upgradeProblems(deps.agent, database, to);
  if (blocking.length > 0) {
    throw new Unprocessable(`the database cannot be upgraded as it is: ${blocking.map((b) => b.detail).join('; ')}`, {
      errors: blocking.map((b) => ({ pointer: '/body/version', detail: `${b.check}: ${b.detail}` })),
    });
  }
  const at = (deps.now ?? (() => new Date()))().toISOString();
  if (body.when === 'maintenance_window') {
    return { database: await deps.store.setPendingChange(database.id, { pendingUpgrade: { version: to.version, requestedAt: at } }) };
  }
  const input: UpgradeInput = { fromVersion: database.version, toVersion: to.version, strategy: to.strategy };
  return startOnRunning(deps, caller, database, { kind: 'upgrade', workflow: 'Upgrade', input, at });
}
