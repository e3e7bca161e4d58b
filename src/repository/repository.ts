// Owns a backup repository's format as its programs see it (docs/repository-format.md): made and
// opened with its config, the complete backups and their manifests, the prune lock, the sessions of
// its readers and writers, the commit that makes a backup exist, and the holds of the backups a
// daemon serves. It knows nothing of the programs that drive it.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { randomBytes } from 'node:crypto';
import { BlkError, toBlkError } from '../errors.js';
import { backup as params } from '../params.js';
import type { Backend, ObjectLock, RepositoryLock } from './backend.js';
import { backendAt } from './backends.js';
import { aadOf, cipherOf, type ObjectCipher, PLAIN, SECRET_BYTES } from './cipher.js';
import { addKey, type KeySource, unwrapSecret } from './keys.js';
import { BACKUP_ID_PATTERN, names, TEMP_MARK } from './layout.js';
import { encodeManifest, type Manifest, readManifest } from './manifest.js';
import { liveSessions, Session, type SessionKind } from './sessions.js';

export type Encryption = 'aes-256-gcm' | 'none';

export interface RepositoryConfig {
  version: 1;
  /** zstd level, or null: chunks are stored as they are. */
  zstdLevel: number | null;
  created: string;
  encryption: Encryption;
  /** S3 Object Lock: the objects a backup needs are retained this long (backup_init --object-lock). */
  objectLock?: ObjectLock;
}

/** config.json of an encrypted repository: what finds and unwraps its keys in the clear, the rest sealed. */
interface SealedConfigFile {
  version: 1;
  encryption: 'aes-256-gcm';
  created: string;
  /** In the clear (the backend must know it before anything is opened), bound to the sealed part. */
  objectLock?: ObjectLock;
  /** {zstdLevel}, sealed with the repository's cipher: base64. */
  sealed: string;
}

/** How to open a repository: the key sources to try on an encrypted one (none needed on a plain one). */
export interface OpenOptions {
  keys?: KeySource[];
  /** The repository secret itself (the daemon serving a backup gets it from its client). */
  secret?: Buffer;
}

export interface BackupSummary {
  id: string;
  time: string;
  /** Its host's name ('' for a backup made before hosts were recorded). */
  host: string;
  devices: Array<{ name: string; size: number; mode: 'full' | 'incremental' }>;
}

/** What a progress report is told while a command waits: the progress bar's note. */
export interface Notes {
  note(text: string): void;
}

/** Parses --compress: zstd, zstd:LEVEL (1-19) or none. */
export function parseCompression(text: string): number | null {
  if (text === 'none') return null;
  const m = /^zstd(?::(\d+))?$/.exec(text);
  const level = m ? Number(m[1] ?? params.zstdLevel) : Number.NaN;
  if (!(level >= 1 && level <= 19)) throw new BlkError('EINVAL', `--compress takes zstd, zstd:LEVEL (1-19) or none, not '${text}'`);
  return level;
}

/** What an encrypted config's sealed part is bound to: its name and the fields in the clear. */
function configAad(file: Omit<SealedConfigFile, 'sealed'>): Buffer {
  const clear = [file.version, file.encryption, file.created, ...(file.objectLock ? [file.objectLock] : [])];
  return aadOf('config', `${names.config} ${JSON.stringify(clear)}`);
}

/** An Object Lock as a config holds it, checked; EIO naming the file otherwise. */
function objectLockOf(v: unknown, file: string): ObjectLock | undefined {
  if (v === undefined) return undefined;
  const o = v as ObjectLock;
  if (typeof o !== 'object' || o === null || !Number.isInteger(o.days) || o.days < 1 || (o.mode !== 'compliance' && o.mode !== 'governance')) throw new BlkError('EIO', `${file}: objectLock ${JSON.stringify(v)} is not {days, mode}`);
  return { days: o.days, mode: o.mode };
}

export class Repository {
  readonly backend: Backend;
  readonly config: RepositoryConfig;
  /** How its objects are named and sealed: plain, or AES-256-GCM under its secret. */
  readonly cipher: ObjectCipher;
  /** The key that opened it (an encrypted repository), for `key passwd`. */
  readonly keyId: string | null;

  private constructor(backend: Backend, config: RepositoryConfig, cipher: ObjectCipher, keyId: string | null) {
    this.backend = backend;
    this.config = config;
    this.cipher = cipher;
    this.keyId = keyId;
  }

  /** How messages name it: its directory. */
  get location(): string {
    return this.backend.location;
  }

  /**
   * Makes a new repository at `location` (an empty or missing directory); EEXIST when one is there.
   * With `key`, an encrypted one: a random secret, wrapped by that key (more can be added); without,
   * a plain one.
   */
  static async init(location: string | Backend, options: { zstdLevel?: number | null; key?: KeySource | null; objectLock?: ObjectLock | null } = {}): Promise<Repository> {
    const backend = typeof location === 'string' ? backendAt(location) : location;
    if ((await backend.size(names.config)) !== null) throw new BlkError('EEXIST', `${backend.location} already holds a backup repository`);
    if ((await backend.list('')).length > 0) throw new BlkError('EEXIST', `${backend.location} is not empty; a repository needs a place of its own`);
    const zstdLevel = options.zstdLevel === undefined ? params.zstdLevel : options.zstdLevel;
    const created = new Date().toISOString();
    const objectLock = options.objectLock ?? undefined;
    if (objectLock) {
      if (backend.spec.kind !== 's3' || !backend.checkObjectLock) throw new BlkError('ENOTSUP', `${backend.location}: --object-lock needs a repository in an S3 bucket made with Object Lock`);
      await backend.checkObjectLock();
      backend.spec.objectLock = objectLock;
    }
    const lockField = objectLock ? { objectLock } : {};
    if (!options.key) {
      const config: RepositoryConfig = { version: 1, zstdLevel, created, encryption: 'none', ...lockField };
      const { encryption: _plain, ...file } = config;
      await backend.write(names.config, Buffer.from(`${JSON.stringify(file, null, 2)}\n`));
      await backend.sync();
      return new Repository(backend, config, PLAIN, null);
    }
    const secret = randomBytes(SECRET_BYTES);
    const cipher = cipherOf(secret);
    const key = await addKey(backend, secret, options.key);
    const clear = { version: 1 as const, encryption: 'aes-256-gcm' as const, created, ...lockField };
    const file: SealedConfigFile = { ...clear, sealed: cipher.seal(Buffer.from(JSON.stringify({ zstdLevel })), configAad(clear)).toString('base64') };
    await backend.write(names.config, Buffer.from(`${JSON.stringify(file, null, 2)}\n`));
    await backend.sync();
    return new Repository(backend, { version: 1, zstdLevel, created, encryption: 'aes-256-gcm', ...lockField }, cipher, key.id);
  }

  /** Opens a repository; an encrypted one with the first key `options` opens (EACCES naming what was tried). */
  static async open(location: string | Backend, options: OpenOptions = {}): Promise<Repository> {
    const backend = typeof location === 'string' ? backendAt(location) : location;
    let config: RepositoryConfig;
    let bytes: Buffer;
    try {
      bytes = await backend.read(names.config);
    } catch (e) {
      const isMissing = (e as BlkError).code === 'ENOENT';
      throw new BlkError(isMissing ? 'ENOENT' : 'EIO', `${backend.location} is not a backup repository (${isMissing ? 'no config.json; make one with backup_init' : (e as Error).message})`);
    }
    let file: RepositoryConfig | SealedConfigFile;
    try {
      file = JSON.parse(bytes.toString('utf8')) as RepositoryConfig | SealedConfigFile;
    } catch {
      throw new BlkError('EIO', `${backend.location}/config.json is not readable JSON`);
    }
    if (file.version !== 1) throw new BlkError('EINVAL', `${backend.location} has repository format ${file.version}, not 1`);
    let cipher: ObjectCipher = PLAIN;
    let keyId: string | null = null;
    if ('encryption' in file && file.encryption !== undefined && (file.encryption as string) !== 'none') {
      const sealedFile = file as SealedConfigFile;
      if (sealedFile.encryption !== 'aes-256-gcm' || typeof sealedFile.sealed !== 'string') throw new BlkError('EIO', `${backend.location}/config.json: encryption ${JSON.stringify(file.encryption)} is not one this program knows`);
      let secret = options.secret;
      if (secret === undefined) ({ secret, keyId } = await unwrapSecret(backend, options.keys ?? []));
      cipher = cipherOf(secret);
      let inner: { zstdLevel: number | null };
      try {
        inner = JSON.parse(cipher.open(Buffer.from(sealedFile.sealed, 'base64'), configAad(sealedFile), `${backend.location}/config.json`).toString('utf8')) as { zstdLevel: number | null };
      } catch (e) {
        const err = toBlkError(e);
        throw new BlkError(options.secret ? 'EACCES' : 'EIO', options.secret ? `the key given does not open ${backend.location}` : err.message);
      }
      const objectLock = objectLockOf(sealedFile.objectLock, `${backend.location}/config.json`);
      config = { version: 1, zstdLevel: inner.zstdLevel, created: sealedFile.created, encryption: 'aes-256-gcm', ...(objectLock ? { objectLock } : {}) };
    } else {
      const objectLock = objectLockOf((file as RepositoryConfig).objectLock, `${backend.location}/config.json`);
      config = { ...(file as RepositoryConfig), encryption: 'none', ...(objectLock ? { objectLock } : {}) };
    }
    if (config.objectLock && backend.spec.kind === 's3') backend.spec.objectLock = config.objectLock;
    const level = config.zstdLevel;
    if (level !== null && !(Number.isInteger(level) && level >= 1 && level <= 19)) throw new BlkError('EIO', `${backend.location}/config.json: zstdLevel ${JSON.stringify(level)} is not a level from 1 to 19 or null`);
    return new Repository(backend, config, cipher, keyId);
  }

  /** Ids of the complete backups (a manifest in place), oldest first. */
  async backupIds(): Promise<string[]> {
    // One listing of the whole tree, not a look-up per backup (an object store's requests).
    const ids = (await this.backend.listTree(names.backups)).filter((n) => n.endsWith('/manifest.json')).map((n) => n.slice(0, -'/manifest.json'.length));
    return ids.filter((id) => BACKUP_ID_PATTERN.test(id)).sort();
  }

  /** Backup `id`'s manifest: EINVAL for an id that is not one, ENOENT when there is no such backup, EIO when it is damaged. */
  manifest(id: string): Promise<Manifest> {
    if (!BACKUP_ID_PATTERN.test(id)) return Promise.reject(new BlkError('EINVAL', `'${id}' is not a backup id (see backup_list)`));
    return readManifest(this.backend, id, this.cipher);
  }

  /** Every complete backup, oldest first; one whose manifest is damaged is listed by id with no devices. */
  async list(): Promise<BackupSummary[]> {
    const out: BackupSummary[] = [];
    for (const id of await this.backupIds()) {
      try {
        const m = await this.manifest(id);
        out.push({ id, time: m.time, host: m.host?.name ?? '', devices: m.devices.map((d) => ({ name: d.name, size: d.size, mode: d.mode })) });
      } catch {
        out.push({ id, time: '', host: '', devices: [] });
      }
    }
    return out;
  }

  /** Takes the prune lock: one prune at a time; backups, restores and verifies take none (they keep sessions). */
  lock(onWait?: (holder: string) => void): Promise<RepositoryLock> {
    return this.backend.lock(onWait);
  }

  /**
   * Runs `work` in a session of this process (repository/sessions.ts): what a prune marks meanwhile
   * stays until the session ends, so nothing it reads or reuses disappears under it.
   */
  async inSession<T>(kind: SessionKind, work: (session: Session) => Promise<T>, backup?: string): Promise<T> {
    const session = await this.openSession(kind, backup);
    try {
      return await work(session);
    } finally {
      await session.close();
    }
  }

  /** Opens a session of this process (see inSession), naming the backup it writes or serves. */
  openSession(kind: SessionKind, backup?: string): Promise<Session> {
    return Session.open(this.backend, kind, backup);
  }

  /** Starts writing backup `id`: its files staged where nobody sees them until commit(). */
  async beginBackup(id: string, session: Session): Promise<BackupWriter> {
    return BackupWriter.start(this.backend, id, this.cipher, session);
  }

  /**
   * Marks backup `id` as served by this process (backup_attach): a session naming it, which a prune
   * honours (it keeps the backup) while it lives, on any host. ENOENT when the backup is gone (a
   * prune took it away). The release ends the session.
   */
  async hold(id: string): Promise<() => Promise<void>> {
    const session = await Session.open(this.backend, 'attach', id);
    try {
      await this.manifest(id);
    } catch (e) {
      await session.close();
      throw e;
    }
    return () => session.close();
  }

  /** The backups live sessions hold (backup_attach, and backups being written). */
  async heldBackups(): Promise<Set<string>> {
    return new Set((await liveSessions(this.backend)).flatMap((s) => (s.backup ? [s.backup] : [])));
  }
}

/**
 * A backup being written: its device index roots staged where no reader looks, then its manifest
 * and the commit that makes it exist, after everything it names is durable.
 */
export class BackupWriter {
  readonly id: string;
  #backend: Backend;
  #cipher: ObjectCipher;
  #folder: string;
  #session: Session;
  #isDone = false;

  private constructor(backend: Backend, id: string, folder: string, cipher: ObjectCipher, session: Session) {
    this.id = id;
    this.#backend = backend;
    this.#folder = folder;
    this.#cipher = cipher;
    this.#session = session;
  }

  static async start(backend: Backend, id: string, cipher: ObjectCipher, session: Session): Promise<BackupWriter> {
    const folder = backend.stagingPath(names.backup(id));
    await fs.promises.mkdir(folder, { recursive: true });
    return new BackupWriter(backend, id, folder, cipher, session);
  }

  /** A device's index root, beside the manifest (sealed as itself in an encrypted repository). */
  async addIndexRoot(file: string, bytes: Uint8Array): Promise<void> {
    const sealed = this.#cipher.seal(bytes, aadOf('index root', names.indexRoot(this.id, file)));
    await fs.promises.writeFile(path.join(this.#folder, file), sealed, { mode: 0o644 });
  }

  /**
   * Makes the backup exist: everything written so far (packs, pages, its files) durable first, then
   * its manifest, then the commit that puts the backup in place, durable too.
   */
  async commit(manifest: Manifest): Promise<void> {
    await this.#backend.sync();
    // Only while the session kept a prune from deleting what this backup reuses.
    this.#session.assertAlive();
    const handle = await fs.promises.open(path.join(this.#folder, 'manifest.json'), 'w', 0o644);
    try {
      await handle.writeFile(this.#cipher.seal(encodeManifest(manifest), aadOf('manifest', names.manifest(this.id))));
      await handle.sync();
    } finally {
      await handle.close();
    }
    await this.#backend.commit(names.backup(this.id));
    this.#isDone = true;
    await this.#backend.sync();
  }

  /** Takes away what was staged, unless committed. */
  async abandon(): Promise<void> {
    if (!this.#isDone) await fs.promises.rm(this.#folder, { recursive: true, force: true });
  }
}

/** Whether a name under backups/ (or chunks/, pages/XX/) is a writer's temporary one, and of which process. */
export function temporaryOwner(name: string): number | null {
  const m = new RegExp(`${TEMP_MARK.replace(/\./g, '\\.')}(\\d+)(?:\\.|/|$)`).exec(name);
  return m ? Number(m[1]) : null;
}
