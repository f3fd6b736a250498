import { createHash, randomBytes } from 'node:crypto';
import { newId } from './ids.ts';
import type { Caller, Scope, TokenRecord } from './model.ts';
import type { Store } from './store.ts';

/** API tokens: `dbp_<random>`; only their SHA-256 is stored, so a leaked table leaks no token. */

export function hashToken(token: string): string {
  return createHash('sha256').update(token).digest('hex');
}

export async function issueToken(store: Store, accountId: string, name: string, scopes: Scope[], now = new Date()): Promise<TokenRecord & { token: string }> {
  const token = `dbp_${randomBytes(32).toString('base64url')}`;
  const record: TokenRecord = { id: newId('tok'), accountId, name, scopes, createdAt: now.toISOString() };
  await store.putToken(hashToken(token), record);
  return { ...record, token };
}

/** The caller a bearer token stands for, or undefined when the token is missing or unknown. */
export async function authenticate(store: Store, authorization: string | undefined): Promise<Caller | undefined> {
  const token = /^Bearer (\S+)$/i.exec(authorization ?? '')?.[1];
  if (!token) return undefined;
  const record = await store.getToken(hashToken(token));
  return record && { accountId: record.accountId, scopes: record.scopes };
}
