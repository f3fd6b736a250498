import { createCipheriv, createDecipheriv, randomBytes } from 'node:crypto';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';

/**
 * Each database has its own 256-bit data key, kept only wrapped by the master key: KMS in AWS, a local
 * master key file (0600) on one machine. The control plane creates and stores wrapped keys; the agent
 * unwraps one in memory to encrypt that database's backups and WAL. A clear data key is never stored or logged.
 */
export interface KeyWrapper {
  /** Wraps a clear data key; `databaseId` is bound to the result (KMS encryption context / GCM AAD). */
  wrap(clear: Buffer, databaseId: string): Promise<string>;
  /** Unwraps; fails if the wrapped key was tampered with or belongs to another database. */
  unwrap(wrapped: string, databaseId: string): Promise<Buffer>;
}

export const dataKeyBytes = 32;

/** A new data key for a database, returned wrapped only. */
export async function newWrappedDataKey(wrapper: KeyWrapper, databaseId: string): Promise<string> {
  const clear = randomBytes(dataKeyBytes);
  try {
    return await wrapper.wrap(clear, databaseId);
  } finally {
    clear.fill(0);
  }
}

const localFormat = 'local1';

/** The local stand-in for KMS: AES-256-GCM under a master key read from a file only its owner can read. */
export class LocalKeyWrapper implements KeyWrapper {
  private constructor(private readonly masterKey: Buffer) {}

  /** Reads the master key file, creating it (mode 0600) on first use. */
  static fromFile(path: string): LocalKeyWrapper {
    if (!existsSync(path)) writeFileSync(path, `${randomBytes(dataKeyBytes).toString('base64')}\n`, { mode: 0o600, flag: 'wx' });
    const key = Buffer.from(readFileSync(path, 'utf8').trim(), 'base64');
    if (key.length !== dataKeyBytes) throw new Error(`the master key file ${path} does not hold a 256-bit base64 key`);
    return new LocalKeyWrapper(key);
  }

  async wrap(clear: Buffer, databaseId: string): Promise<string> {
    const iv = randomBytes(12);
    const cipher = createCipheriv('aes-256-gcm', this.masterKey, iv).setAAD(Buffer.from(databaseId));
    const sealed = Buffer.concat([cipher.update(clear), cipher.final(), cipher.getAuthTag()]);
    return `${localFormat}:${iv.toString('base64')}:${sealed.toString('base64')}`;
  }

  async unwrap(wrapped: string, databaseId: string): Promise<Buffer> {
    const [format, iv, sealed] = wrapped.split(':');
    if (format !== localFormat || !iv || !sealed) throw new Error('not a locally wrapped data key');
    const bytes = Buffer.from(sealed, 'base64');
    const decipher = createDecipheriv('aes-256-gcm', this.masterKey, Buffer.from(iv, 'base64')).setAAD(Buffer.from(databaseId));
    decipher.setAuthTag(bytes.subarray(bytes.length - 16));
    return Buffer.concat([decipher.update(bytes.subarray(0, bytes.length - 16)), decipher.final()]);
  }
}

/** KMS in AWS: Encrypt/Decrypt under the master key with the database id as encryption context. */
export class KmsKeyWrapper implements KeyWrapper {
  constructor(private readonly keyId: string) {}

  async wrap(clear: Buffer, databaseId: string): Promise<string> {
    const { KMSClient, EncryptCommand } = await import('@aws-sdk/client-kms');
    const { CiphertextBlob } = await new KMSClient({}).send(new EncryptCommand({
      KeyId: this.keyId, Plaintext: clear, EncryptionContext: { databaseId },
    }));
    return `kms:${Buffer.from(CiphertextBlob!).toString('base64')}`;
  }

  async unwrap(wrapped: string, databaseId: string): Promise<Buffer> {
    if (!wrapped.startsWith('kms:')) throw new Error('not a KMS-wrapped data key');
    const { KMSClient, DecryptCommand } = await import('@aws-sdk/client-kms');
    const { Plaintext } = await new KMSClient({}).send(new DecryptCommand({
      KeyId: this.keyId, CiphertextBlob: Buffer.from(wrapped.slice(4), 'base64'), EncryptionContext: { databaseId },
    }));
    return Buffer.from(Plaintext!);
  }
}

export const keyEnvNames = {
  /** Locally: the master key file. */
  masterKeyFile: 'DBPLANE_MASTER_KEY_FILE',
  /** In AWS: the KMS key id or ARN. */
  masterKeyId: 'MASTER_KEY_ID',
} as const;

let fromEnv: KeyWrapper | undefined;
/** The master key as configured: a local file when DBPLANE_MASTER_KEY_FILE is set, else KMS. */
export function keyWrapperFromEnv(): KeyWrapper {
  if (fromEnv) return fromEnv;
  const file = process.env[keyEnvNames.masterKeyFile];
  const keyId = process.env[keyEnvNames.masterKeyId];
  if (file) return (fromEnv = LocalKeyWrapper.fromFile(file));
  if (keyId) return (fromEnv = new KmsKeyWrapper(keyId));
  throw new Error(`missing environment variable ${keyEnvNames.masterKeyFile} or ${keyEnvNames.masterKeyId}`);
}
