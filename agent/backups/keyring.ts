import type { WrappedKey } from '#core/agent-api.ts';
import { keyWrapperFromEnv, type KeyWrapper } from '#core/keys.ts';

/**
 * Clear data keys, in memory only (never written, never logged), by database and key version. A key
 * arrives wrapped (in an instance spec, a restore request or a backup's metadata) and is unwrapped
 * once with the master key.
 */
export class KeyRing {
  private readonly keys = new Map<string, Map<number, Buffer>>();
  private readonly current = new Map<string, number>();

  constructor(private readonly wrapper: () => KeyWrapper = keyWrapperFromEnv) {}

  /** Unwraps (once) and keeps the key; `makeCurrent`: new objects of this database are sealed with it. */
  async add(databaseId: string, key: WrappedKey, makeCurrent = false): Promise<void> {
    let versions = this.keys.get(databaseId);
    if (!versions) this.keys.set(databaseId, (versions = new Map()));
    if (!versions.has(key.version)) versions.set(key.version, await this.wrapper().unwrap(key.wrapped, databaseId));
    if (makeCurrent) this.current.set(databaseId, key.version);
  }

  /** The key new objects of this database are sealed with. */
  sealing(databaseId: string): { key: Buffer; version: number } | undefined {
    const version = this.current.get(databaseId);
    const key = version === undefined ? undefined : this.keys.get(databaseId)?.get(version);
    return key && version !== undefined ? { key, version } : undefined;
  }

  /** Picks a key by the version an object names. */
  opener(databaseId: string): (version: number) => Buffer | undefined {
    return (version) => this.keys.get(databaseId)?.get(version);
  }
}
