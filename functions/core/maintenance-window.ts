import { randomInt } from 'node:crypto';
import { z } from 'zod';

/**
 * Weekly maintenance windows, as plain functions of a window and an instant (no clock of their own, so
 * tests walk a week of instants in milliseconds). A window starts on a whole UTC hour of a weekday and
 * lasts `durationHours`; a Sunday 22:00 window of 8 hours runs into Monday 06:00.
 */

export const weekdays = ['sunday', 'monday', 'tuesday', 'wednesday', 'thursday', 'friday', 'saturday'] as const;
export type Weekday = (typeof weekdays)[number];

/** 1 hour is the shortest window any maintenance fits in; 24 hours is a whole day, so windows never overlap the next week's. */
export const minWindowHours = 1;
export const maxWindowHours = 24;
export const defaultWindowHours = 8;

export const MaintenanceWindow = z.object({
  day: z.enum(weekdays).describe('the weekday the window starts on (UTC)'),
  hour: z.number().int().min(0, 'an hour from 0 to 23').max(23, 'an hour from 0 to 23').describe('the UTC hour it starts at, 0-23'),
  durationHours: z.number().int().min(minWindowHours, `from ${minWindowHours} to ${maxWindowHours} hours`)
    .max(maxWindowHours, `from ${minWindowHours} to ${maxWindowHours} hours`).default(defaultWindowHours)
    .describe(`how long it lasts, ${minWindowHours}-${maxWindowHours} hours (default ${defaultWindowHours})`),
}).strict();
export type MaintenanceWindow = z.infer<typeof MaintenanceWindow>;

export const hourMs = 3_600_000;
export const weekMs = 7 * 24 * hourMs;

/** Default windows start at night in Europe and evening in the Americas: 21:00-05:00 UTC. */
const nightHours = [21, 22, 23, 0, 1, 2, 3, 4, 5] as const;

/** A new database's window: a random weekday and night hour, 8 hours long (spreads the fleet like RDS's random default). */
export function randomDefaultWindow(): MaintenanceWindow {
  return { day: weekdays[randomInt(0, 7)], hour: nightHours[randomInt(0, nightHours.length)], durationHours: defaultWindowHours };
}

/** A stable night window derived from the id, for databases recorded before windows existed (no migration needed). */
export function derivedDefaultWindow(databaseId: string): MaintenanceWindow {
  let hash = 0;
  for (const char of databaseId) hash = (hash * 31 + char.charCodeAt(0)) >>> 0;
  return { day: weekdays[hash % 7], hour: nightHours[Math.floor(hash / 7) % nightHours.length], durationHours: defaultWindowHours };
}

/** Milliseconds from the start of the UTC week (Sunday 00:00) to the window's start. */
const offsetOf = (window: MaintenanceWindow) => (weekdays.indexOf(window.day) * 24 + window.hour) * hourMs;

/** The start of the UTC week (Sunday 00:00) that holds `at`. */
function weekStart(at: Date): number {
  const day = Date.UTC(at.getUTCFullYear(), at.getUTCMonth(), at.getUTCDate());
  return day - at.getUTCDay() * 24 * hourMs;
}

/** The latest start of the window at or before `at`. */
export function lastWindowStart(window: MaintenanceWindow, at: Date): Date {
  const start = weekStart(at) + offsetOf(window);
  return new Date(start > at.getTime() ? start - weekMs : start);
}

/** The first start of the window at or after `after`. */
export function nextWindowStart(window: MaintenanceWindow, after: Date): Date {
  const last = lastWindowStart(window, after);
  return last.getTime() === after.getTime() ? last : new Date(last.getTime() + weekMs);
}

export const windowEnd = (window: MaintenanceWindow, start: Date) => new Date(start.getTime() + window.durationHours * hourMs);

/** Whether the window is open at `now` (start inclusive, end exclusive). */
export function isOpen(window: MaintenanceWindow, now: Date): boolean {
  return remaining(window, now) > 0;
}

/** Milliseconds left in the window open at `now`; 0 when it is closed. */
export function remaining(window: MaintenanceWindow, now: Date): number {
  return Math.max(0, windowEnd(window, lastWindowStart(window, now)).getTime() - now.getTime());
}

/**
 * The window occurrence work is planned in at `now`: the one open now, else the next one; with `notBefore`
 * (an operator's notice period), the first whose start is not earlier than that.
 */
export function plannedWindowStart(window: MaintenanceWindow, now: Date, notBefore?: Date): Date {
  const current = lastWindowStart(window, now);
  if (isOpen(window, now) && (!notBefore || current >= notBefore)) return current;
  return nextWindowStart(window, notBefore && notBefore > now ? notBefore : now);
}

/** The start slot (`<weekday>#<hh>`) of a window occurrence: what the dispatcher's index is keyed by. */
export function slotOf(start: Date): string {
  return `${weekdays[start.getUTCDay()]}#${String(start.getUTCHours()).padStart(2, '0')}`;
}

/**
 * The start slots of every window that can be open at `now`: windows start on whole hours and last at most
 * `maxWindowHours`, so the current hour and the 23 before it.
 */
export function openSlots(now: Date): string[] {
  const hour = Math.floor(now.getTime() / hourMs) * hourMs;
  return Array.from({ length: maxWindowHours }, (_, i) => slotOf(new Date(hour - i * hourMs)));
}
