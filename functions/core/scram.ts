import { createHash, createHmac, pbkdf2Sync, randomBytes } from 'node:crypto';

const iterations = 4096;

/**
 * The SCRAM-SHA-256 verifier PostgreSQL stores for a password (RFC 5802/7677). The control plane
 * hands only this to the agent, so the clear password is shown once to the customer and stored nowhere.
 */
export function scramVerifier(password: string, salt = randomBytes(16)): string {
  const saltedPassword = pbkdf2Sync(password.normalize('NFKC'), salt, iterations, 32, 'sha256');
  const clientKey = createHmac('sha256', saltedPassword).update('Client Key').digest();
  const storedKey = createHash('sha256').update(clientKey).digest();
  const serverKey = createHmac('sha256', saltedPassword).update('Server Key').digest();
  return `SCRAM-SHA-256$${iterations}:${salt.toString('base64')}$${storedKey.toString('base64')}:${serverKey.toString('base64')}`;
}

/** A random password that needs no quoting in a URL or a shell. */
export function generatePassword(): string {
  return randomBytes(24).toString('base64url');
}
