import { randomBytes } from 'node:crypto';

const alphabet = '0123456789abcdefghjkmnpqrstvwxyz';

/**
 * A lowercase ULID-style id: 10 characters of time then 16 random, so ids sort by creation time
 * (operation and event sort keys rely on that). A prefix says what the id names.
 */
export function newId(prefix: 'db' | 'op' | 'ev' | 'acc' | 'tok' | 'bk' | 'mt' | 'ro' | 'wh' | 'dlv', now = Date.now()): string {
  let time = '';
  for (let t = now, i = 0; i < 10; i++, t = Math.floor(t / 32)) time = alphabet[t % 32] + time;
  const random = Array.from(randomBytes(16), (b) => alphabet[b % 32]).join('');
  return `${prefix}-${time}${random}`;
}
