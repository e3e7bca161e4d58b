// Owns the keys of an encrypted repository (keys/ID.json): each wraps the one repository secret under
// a key of its own, made from a password (scrypt, its parameters stored beside it) or from a key file
// (32 random bytes, `blksnap key generate`). Any key opens the repository; keys are added and removed
// without touching anything else, and the last one cannot be removed. A key's every field is bound to
// its sealed secret (associated data), and it carries an authentication code under the repository
// secret, so that backup_verify finds a key object damaged even when another key opened the repository.
import * as crypto from 'node:crypto';
import { BlkError } from '../errors.js';
import type { Backend } from './backend.js';
import { NONCE_BYTES, SECRET_BYTES, TAG_BYTES } from './cipher.js';
import { thisHost } from './host.js';

/** What opens a repository: a password or a key file's bytes, and how it was given (for messages). */
export type KeySource = { kind: 'password'; password: Buffer; from: string } | { kind: 'keyfile'; key: Buffer; from: string };

/** A key as `blksnap key list` shows it. */
export interface KeyInfo {
  id: string;
  type: 'password' | 'keyfile';
  created: string;
  host: string;
}

interface ScryptParameters {
  name: 'scrypt';
  N: number;
  r: number;
  p: number;
  salt: string;
}

interface KeyObject extends KeyInfo {
  version: 1;
  /** How the wrapping key is made from the password or the key file. */
  kdf: ScryptParameters | { name: 'hkdf-sha256'; salt: string };
  /** The repository secret, sealed (AES-256-GCM) under the wrapping key: nonce · ciphertext · tag, base64. */
  sealed: string;
  /** HMAC-SHA-256 of the fields above under a key derived from the repository secret (hex). */
  mac: string;
}

/** scrypt's cost for a new password key: 64 MiB of memory and some 0.2 s of one core here. */
const SCRYPT = { N: 2 ** 16, r: 8, p: 1 } as const;
/** The most memory a stored key may ask scrypt for: a hostile key object must not exhaust memory. */
const SCRYPT_MAXIMUM_MEMORY = 1024 * 1024 * 1024;
const KEY_FILE_HEADER = 'blksnap-key-v1';

export const keyName = (id: string): string => `keys/${id}.json`;

/** A new key file's text: 32 random bytes. */
export function newKeyFileText(): string {
  return `${KEY_FILE_HEADER} ${crypto.randomBytes(32).toString('hex')}\n`;
}

/** The key a key file holds; EINVAL naming the file when it is not one. */
export function parseKeyFile(text: string, file: string): Buffer {
  const m = new RegExp(`^${KEY_FILE_HEADER} ([0-9a-f]{64})\\s*$`).exec(text);
  if (!m) throw new BlkError('EINVAL', `${file} is not a blksnap key file (blksnap key generate makes one)`);
  return Buffer.from(m[1] as string, 'hex');
}

function scrypt(password: Buffer, salt: Buffer, p: { N: number; r: number; p: number }): Promise<Buffer> {
  return new Promise((resolve, reject) => crypto.scrypt(password, salt, 32, { N: p.N, r: p.r, p: p.p, maxmem: SCRYPT_MAXIMUM_MEMORY }, (e, k) => (e ? reject(e) : resolve(k))));
}

async function wrappingKey(source: KeySource, kdf: KeyObject['kdf']): Promise<Buffer> {
  const salt = Buffer.from(kdf.salt, 'base64');
  if (source.kind === 'password') {
    if (kdf.name !== 'scrypt') throw new Error('not a password key');
    const { N, r, p } = kdf;
    if (!(Number.isSafeInteger(N) && N >= 2 && (N & (N - 1)) === 0 && Number.isSafeInteger(r) && r >= 1 && Number.isSafeInteger(p) && p >= 1 && p <= 16 && 128 * N * r <= SCRYPT_MAXIMUM_MEMORY / 2)) {
      throw new Error(`scrypt parameters N=${N} r=${r} p=${p} are not ones this program takes`);
    }
    return scrypt(source.password, salt, kdf);
  }
  if (kdf.name !== 'hkdf-sha256') throw new Error('not a key-file key');
  return Buffer.from(crypto.hkdfSync('sha256', source.key, salt, 'blksnap key file', 32));
}

/** What a key's sealed secret is bound to: every other field of the key object. */
function keyAad(o: Omit<KeyObject, 'sealed' | 'mac'>): Buffer {
  return Buffer.from(`blksnap key ${JSON.stringify([o.version, o.id, o.type, o.created, o.host, o.kdf])}`);
}

function keyMac(secret: Buffer, o: Omit<KeyObject, 'mac'>): string {
  const key = crypto.hkdfSync('sha256', secret, Buffer.alloc(0), 'blksnap repository keys', 32);
  return crypto.createHmac('sha256', Buffer.from(key)).update(keyAad(o)).update(o.sealed).digest('hex');
}

function gcm(key: Buffer, aad: Buffer): { seal(plain: Buffer): Buffer; open(sealed: Buffer): Buffer } {
  return {
    seal(plain) {
      const nonce = crypto.randomBytes(NONCE_BYTES);
      const c = crypto.createCipheriv('aes-256-gcm', key, nonce);
      c.setAAD(aad);
      return Buffer.concat([nonce, c.update(plain), c.final(), c.getAuthTag()]);
    },
    open(sealed) {
      if (sealed.length !== NONCE_BYTES + SECRET_BYTES + TAG_BYTES) throw new Error('its sealed secret has the wrong length');
      const d = crypto.createDecipheriv('aes-256-gcm', key, sealed.subarray(0, NONCE_BYTES));
      d.setAAD(aad);
      d.setAuthTag(sealed.subarray(sealed.length - TAG_BYTES));
      return Buffer.concat([d.update(sealed.subarray(NONCE_BYTES, sealed.length - TAG_BYTES)), d.final()]);
    },
  };
}

/** Host name (and the start of the machine id where there is one) of this machine, for `key list`. */
export function hostName(): string {
  const { name, machineId } = thisHost();
  return machineId ? `${name} (${machineId.slice(0, 8)})` : name;
}

/** Wraps the repository secret under a new key of `source`, stored as keys/ID.json; its description. */
export async function addKey(backend: Backend, secret: Buffer, source: KeySource): Promise<KeyInfo> {
  const id = crypto.randomBytes(8).toString('hex');
  const salt = crypto.randomBytes(32);
  const kdf: KeyObject['kdf'] = source.kind === 'password' ? { name: 'scrypt', ...SCRYPT, salt: salt.toString('base64') } : { name: 'hkdf-sha256', salt: salt.toString('base64') };
  const wrapKey = await wrappingKey(source, kdf);
  const info: KeyInfo = { id, type: source.kind, created: new Date().toISOString(), host: hostName() };
  const fields = { version: 1 as const, ...info, kdf };
  const sealed = { ...fields, sealed: gcm(wrapKey, keyAad(fields)).seal(secret).toString('base64') };
  const object: KeyObject = { ...sealed, mac: keyMac(secret, sealed) };
  await backend.write(keyName(id), Buffer.from(`${JSON.stringify(object, null, 2)}\n`));
  return info;
}

async function readKeyObjects(backend: Backend): Promise<Array<{ object: KeyObject | null; name: string; problem?: string }>> {
  const names = (await backend.list('keys/')).filter((n) => n.endsWith('.json'));
  const out: Array<{ object: KeyObject | null; name: string; problem?: string }> = [];
  for (const n of names) {
    const name = `keys/${n}`;
    try {
      const object = JSON.parse((await backend.read(name)).toString('utf8')) as KeyObject;
      if (object.version !== 1 || typeof object.id !== 'string' || `${object.id}.json` !== n || (object.type !== 'password' && object.type !== 'keyfile') || typeof object.sealed !== 'string' || typeof object.kdf?.salt !== 'string') throw new Error('not a key this program writes');
      out.push({ object, name });
    } catch (e) {
      out.push({ object: null, name, problem: (e as Error).message });
    }
  }
  return out;
}

/** The repository's keys, as `key list` shows them. */
export async function listKeys(backend: Backend): Promise<KeyInfo[]> {
  return (await readKeyObjects(backend)).flatMap(({ object }) => (object ? [{ id: object.id, type: object.type, created: object.created, host: object.host }] : []));
}

/**
 * The repository secret, unwrapped by the first key any of `sources` opens, and that key's id.
 * EACCES naming the sources tried and the keys they were tried on when none opens.
 */
export async function unwrapSecret(backend: Backend, sources: KeySource[]): Promise<{ secret: Buffer; keyId: string }> {
  if (sources.length === 0) throw new BlkError('EACCES', `${backend.location} is encrypted: give --password-file FILE, --key-file FILE or BLKSNAP_PASSWORD (or type the password on a terminal)`);
  const keys = await readKeyObjects(backend);
  const tried: string[] = [];
  for (const source of sources) {
    const fitting = keys.filter((k) => k.object?.type === source.kind);
    for (const { object, name } of fitting) {
      const key = object as KeyObject;
      try {
        const secret = gcm(await wrappingKey(source, key.kdf), keyAad(key)).open(Buffer.from(key.sealed, 'base64'));
        return { secret, keyId: key.id };
      } catch (e) {
        tried.push(`${source.from} on ${name}${(e as Error).message.includes('parameters') ? ` (${(e as Error).message})` : ''}`);
      }
    }
    if (fitting.length === 0) tried.push(`${source.from}: the repository has no ${source.kind === 'password' ? 'password' : 'key-file'} key`);
  }
  const damaged = keys.filter((k) => k.object === null).map((k) => `${k.name}: ${k.problem}`);
  throw new BlkError('EACCES', `no key opens ${backend.location}: tried ${tried.join('; ')}${damaged.length ? `; unreadable: ${damaged.join('; ')}` : ''}`);
}

/** What is wrong with the repository's key objects, checked under its secret: one line each, naming the object. */
export async function checkKeys(backend: Backend, secret: Buffer): Promise<string[]> {
  const keys = await readKeyObjects(backend);
  if (keys.length === 0) return ['keys/: an encrypted repository without a key'];
  return keys.flatMap(({ object, name, problem }) => {
    if (!object) return [`${name} is damaged: ${problem}`];
    const { mac, ...rest } = object;
    return typeof mac === 'string' && mac === keyMac(secret, rest) ? [] : [`${name} is damaged: its authentication code does not match`];
  });
}

/** Removes key `id`; ENOENT when there is none, EBUSY when it is the last (the repository could not be opened again). */
export async function removeKey(backend: Backend, id: string): Promise<void> {
  const keys = (await readKeyObjects(backend)).filter((k) => k.object !== null);
  if (!keys.some((k) => k.object?.id === id)) throw new BlkError('ENOENT', `${backend.location} has no key ${id} (see blksnap key list)`);
  if (keys.length === 1) throw new BlkError('EBUSY', `key ${id} is the last key of ${backend.location}: add another before removing it`);
  await backend.remove(keyName(id));
}
