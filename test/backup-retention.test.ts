import { describe, expect, it } from 'vitest';
import { branchesOf, pointInTimeBase, retentionExpiries } from '../functions/core/backups.ts';
import { findPlan } from '../functions/core/catalog.ts';
import type { Backup, Operation } from '../functions/core/model.ts';

const starter = findPlan('starter-512')!.backupPolicy; // 7 daily, 4 weekly, 0 monthly, PITR 7 days, 5 manual
const business = findPlan('business-1024')!.backupPolicy; // 7 daily, 8 weekly, 12 monthly, PITR 14 days
const day = 86_400_000;

function backup(id: string, consistentAt: string, overrides: Partial<Backup> = {}): Backup {
  return {
    id, databaseId: 'db-1', accountId: 'acc-1', kind: 'scheduled', status: 'completed', operationId: `op-${id}`, version: '17.10',
    startedAt: consistentAt, finishedAt: consistentAt, consistentAt, copies: [], ...overrides,
  };
}

/** One scheduled backup a day at 03:00 UTC, from `first` for `days` days; ids are the dates. */
function daily(first: string, days: number): Backup[] {
  return Array.from({ length: days }, (_, i) => {
    const at = new Date(Date.parse(`${first}T03:00:00.000Z`) + i * day).toISOString();
    return backup(at.slice(0, 10), at);
  });
}

const days = (from: string, to: string) => (Date.parse(to) - Date.parse(from)) / day;

describe('retention (grandfather-father-son)', () => {
  it('keeps each daily backup for the daily retention, as long as the point-in-time window needs it as a base', () => {
    const backups = daily('2026-11-02', 21); // Mon 2 Nov … Sun 22 Nov
    const expiries = retentionExpiries(backups, starter, false);

    // Thursday 5 Nov is not the newest of its week: 7 days, or until the next backup leaves the 7-day window.
    expect(days('2026-11-05T03:00:00.000Z', expiries.get('2026-11-05')!)).toBe(8);
    // Sunday 8 Nov is the newest of ISO week 45: kept 4 weeks.
    expect(days('2026-11-08T03:00:00.000Z', expiries.get('2026-11-08')!)).toBe(28);
  });

  it('never expires the newest completed backup of a live database', () => {
    const backups = [...daily('2026-01-01', 3), backup('failed-later', '2026-02-01T00:00:00.000Z', { status: 'failed' })];
    const expiries = retentionExpiries(backups, starter, false);

    expect(expiries.has('2026-01-03')).toBe(false);
    expect(expiries.get('2026-01-01')).toBeDefined();
  });

  it('keeps the newest of each month for the monthly retention on business plans', () => {
    const backups = daily('2026-09-25', 10); // 25 Sep … 4 Oct
    const expiries = retentionExpiries(backups, business, false);

    expect(days('2026-09-30T03:00:00.000Z', expiries.get('2026-09-30')!)).toBe(31 * 12);
    expect(days('2026-09-29T03:00:00.000Z', expiries.get('2026-09-29')!)).toBe(15); // until 30 Sep + the 14-day window
  });

  it('keeps the newest manual backups only, expiring older ones at once', () => {
    const manual = Array.from({ length: 7 }, (_, i) => backup(`m${i}`, `2026-03-0${i + 1}T12:00:00.000Z`, { kind: 'manual' }));
    const expiries = retentionExpiries([...manual, ...daily('2026-03-10', 1)], starter, false);

    expect([...expiries.keys()].filter((id) => id.startsWith('m')).sort()).toEqual(['m0', 'm1']);
    expect(expiries.get('m0')).toBe(manual[0].consistentAt);
  });

  it('expires a failed backup after a day', () => {
    const failed = backup('f', '2026-05-01T03:00:00.000Z', { status: 'failed', finishedAt: '2026-05-01T03:10:00.000Z' });
    expect(retentionExpiries([failed], starter, false).get('f')).toBe('2026-05-02T03:10:00.000Z');
  });

  it('lets every backup of a deleted database expire, the newest after the daily retention', () => {
    const backups = daily('2026-06-01', 3);
    const expiries = retentionExpiries(backups, starter, true);

    expect(expiries.size).toBe(3);
    expect(expiries.get('2026-06-03')).toBe(new Date(Date.parse('2026-06-03T03:00:00.000Z') + 7 * day).toISOString());
  });
});

describe('the base backup for an instant', () => {
  // 10:00 base backup; 10:10 a restore in place back to it starts, takes its undo backup at 10:11, finishes at 10:12.
  const base = backup('base', '2026-11-02T10:00:00.000Z');
  const undo = backup('undo', '2026-11-02T10:11:00.000Z', { kind: 'pre_restore', startedAt: '2026-11-02T10:10:30.000Z' });
  const branch = { restoredTo: base.consistentAt!, finishedAt: '2026-11-02T10:12:00.000Z' };

  it('skips a backup of the branch a restore in place abandoned, for an instant after that restore', () => {
    expect(pointInTimeBase([base, undo], [branch], '2026-11-02T10:20:00.000Z')?.id).toBe('base');
  });

  it('takes that backup for an instant before the restore, on the branch that was live then', () => {
    expect(pointInTimeBase([base, undo], [branch], '2026-11-02T10:11:30.000Z')?.id).toBe('undo');
  });

  it('still knows the branch once the backup it restored has been pruned', () => {
    const restore = {
      kind: 'restore', status: 'succeeded', finishedAt: branch.finishedAt,
      input: { into: 'same', sourceDatabaseId: 'db', sourceBackupId: 'base', restoredTo: base.consistentAt, backupId: 'undo' },
    } as unknown as Operation;

    expect(branchesOf([restore], [undo])).toEqual([branch]);
    expect(pointInTimeBase([undo], branchesOf([restore], [undo]), '2026-11-02T10:20:00.000Z')).toBeUndefined();
  });

  it('takes a backup made after the restore, on its new branch', () => {
    const after = backup('after', '2026-11-02T10:13:00.000Z', { kind: 'post_restore', startedAt: '2026-11-02T10:12:10.000Z' });
    expect(pointInTimeBase([base, undo, after], [branch], '2026-11-02T10:20:00.000Z')?.id).toBe('after');
  });
});
