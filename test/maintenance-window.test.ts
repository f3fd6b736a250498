import { describe, expect, it } from 'vitest';
import {
  derivedDefaultWindow, hourMs, isOpen, lastWindowStart, MaintenanceWindow, nextWindowStart, openSlots, plannedWindowStart, randomDefaultWindow,
  remaining, slotOf, weekMs,
} from '../functions/core/maintenance-window.ts';

const at = (iso: string) => new Date(iso);
// 2026-11-22 is a Sunday.
const sundayNight: MaintenanceWindow = { day: 'sunday', hour: 22, durationHours: 8 };

describe('weekly maintenance windows', () => {
  it('runs a Sunday 22:00 window of 8 hours into Monday 06:00', () => {
    expect(isOpen(sundayNight, at('2026-11-22T21:59:59.999Z'))).toBe(false);
    expect(isOpen(sundayNight, at('2026-11-22T22:00:00.000Z'))).toBe(true);
    expect(isOpen(sundayNight, at('2026-11-22T23:59:59.999Z'))).toBe(true);
    expect(isOpen(sundayNight, at('2026-11-23T00:00:00.000Z'))).toBe(true);
    expect(isOpen(sundayNight, at('2026-11-23T05:59:59.999Z'))).toBe(true);
    expect(isOpen(sundayNight, at('2026-11-23T06:00:00.000Z'))).toBe(false);
    expect(remaining(sundayNight, at('2026-11-23T05:00:00.000Z'))).toBe(hourMs);
    expect(remaining(sundayNight, at('2026-11-23T06:00:00.000Z'))).toBe(0);
  });

  it('crosses the week boundary: a Saturday 23:00 window is open early on Sunday', () => {
    const saturday: MaintenanceWindow = { day: 'saturday', hour: 23, durationHours: 3 };
    expect(isOpen(saturday, at('2026-11-29T01:30:00.000Z'))).toBe(true); // Sunday 01:30, in the week after its start
    expect(lastWindowStart(saturday, at('2026-11-29T01:30:00.000Z')).toISOString()).toBe('2026-11-28T23:00:00.000Z');
    expect(remaining(saturday, at('2026-11-29T01:30:00.000Z'))).toBe(0.5 * hourMs);
    expect(isOpen(saturday, at('2026-11-29T02:00:00.000Z'))).toBe(false);
    expect(nextWindowStart(saturday, at('2026-11-29T02:00:00.000Z')).toISOString()).toBe('2026-12-05T23:00:00.000Z');
  });

  it('finds the next start at or after an instant, a week on once it has started', () => {
    expect(nextWindowStart(sundayNight, at('2026-11-22T22:00:00.000Z')).toISOString()).toBe('2026-11-22T22:00:00.000Z');
    expect(nextWindowStart(sundayNight, at('2026-11-22T22:00:00.001Z')).toISOString()).toBe('2026-11-29T22:00:00.000Z');
    expect(nextWindowStart(sundayNight, at('2026-11-25T12:00:00.000Z')).toISOString()).toBe('2026-11-29T22:00:00.000Z');
    const midnight: MaintenanceWindow = { day: 'wednesday', hour: 0, durationHours: 1 };
    expect(nextWindowStart(midnight, at('2026-11-24T23:59:59.999Z')).toISOString()).toBe('2026-11-25T00:00:00.000Z');
    expect(isOpen(midnight, at('2026-11-25T00:59:59.999Z'))).toBe(true);
    expect(isOpen(midnight, at('2026-11-25T01:00:00.000Z'))).toBe(false);
  });

  it('agrees with a minute-by-minute walk over a whole week, for every weekday, hour and some durations', () => {
    const weekStart = Date.parse('2026-11-22T00:00:00.000Z');
    for (const day of ['sunday', 'wednesday', 'saturday'] as const) {
      for (const hour of [0, 5, 21, 23]) {
        for (const durationHours of [1, 8, 24]) {
          const window = { day, hour, durationHours };
          const start = weekStart + (['sunday', 'monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday'].indexOf(day) * 24 + hour) * hourMs;
          for (let t = weekStart - weekMs; t < weekStart + 2 * weekMs; t += 37 * 60_000) {
            // Open when t falls in [start + k weeks, start + k weeks + duration) for some k.
            const sinceStart = (((t - start) % weekMs) + weekMs) % weekMs;
            const open = sinceStart < durationHours * hourMs;
            expect(isOpen(window, new Date(t)), `${day} ${hour}h ${durationHours}h at ${new Date(t).toISOString()}`).toBe(open);
            expect(remaining(window, new Date(t))).toBe(open ? durationHours * hourMs - sinceStart : 0);
            const next = nextWindowStart(window, new Date(t)).getTime();
            expect(next - t).toBe(sinceStart === 0 ? 0 : weekMs - sinceStart);
          }
        }
      }
    }
  });

  it('plans into the window open now, or the next one, and never before a notice period ends', () => {
    const now = at('2026-11-22T23:00:00.000Z'); // inside the Sunday night window
    expect(plannedWindowStart(sundayNight, now).toISOString()).toBe('2026-11-22T22:00:00.000Z');
    expect(plannedWindowStart(sundayNight, now, new Date(now.getTime() + 24 * hourMs)).toISOString()).toBe('2026-11-29T22:00:00.000Z');
    // A notice period ending just before a start: that start is allowed (24 h ahead exactly).
    expect(plannedWindowStart(sundayNight, at('2026-11-28T22:00:00.000Z'), at('2026-11-29T22:00:00.000Z')).toISOString()).toBe('2026-11-29T22:00:00.000Z');
  });

  it('names the start slot and the 24 slots that can be open', () => {
    expect(slotOf(at('2026-11-22T22:00:00.000Z'))).toBe('sunday#22');
    const slots = openSlots(at('2026-11-23T01:30:00.000Z'));
    expect(slots).toHaveLength(24);
    expect(slots.slice(0, 4)).toEqual(['monday#01', 'monday#00', 'sunday#23', 'sunday#22']);
    expect(slots.at(-1)).toBe('sunday#02');
  });

  it('defaults to a night window of 8 hours: random at creation, derived from the id for older records', () => {
    for (let i = 0; i < 200; i++) {
      const window = randomDefaultWindow();
      expect(window.hour >= 21 || window.hour <= 5, String(window.hour)).toBe(true);
      expect(window.durationHours).toBe(8);
    }
    expect(derivedDefaultWindow('db-abc')).toEqual(derivedDefaultWindow('db-abc'));
    const derived = new Set(Array.from({ length: 100 }, (_, i) => JSON.stringify(derivedDefaultWindow(`db-${i}`))));
    expect(derived.size).toBeGreaterThan(20);
  });

  it('rejects an unknown weekday, an hour outside 0-23 and a duration outside 1-24 hours, naming the field', () => {
    const issues = (value: unknown) => MaintenanceWindow.safeParse(value).error?.issues.map((i) => i.path.join('/'));
    expect(issues({ day: 'funday', hour: 2 })).toEqual(['day']);
    expect(issues({ day: 'monday', hour: 24 })).toEqual(['hour']);
    expect(issues({ day: 'monday', hour: -1 })).toEqual(['hour']);
    expect(issues({ day: 'monday', hour: 2, durationHours: 25 })).toEqual(['durationHours']);
    expect(issues({ day: 'monday', hour: 2, durationHours: 0 })).toEqual(['durationHours']);
    expect(MaintenanceWindow.parse({ day: 'monday', hour: 2 })).toEqual({ day: 'monday', hour: 2, durationHours: 8 });
  });
});
