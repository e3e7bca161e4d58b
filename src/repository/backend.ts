// Owns the seam under the repository format: where its objects live. Names are relative paths
// ("config.json", "chunks/ID.pack", "backups/ID/manifest.json"); a backend stores each whole. The
// local directory is the first backend; an object store is another behind the same calls.
import type { BlkError } from '../errors.js';
import type { RateLimitState } from '../util/rate-limit.js';

/** Where an S3 repository is and how to reach it; credentials come from the environment (AWS_*), never from here. */
export interface S3BackendSpec {
  kind: 's3';
  bucket: string;
  /** '' or a prefix ending in '/'. */
  prefix: string;
  /** The S3 API's URL (Ceph's gateway, MinIO); unset: AWS's endpoint of `region`. */
  endpoint: string | null;
  region: string;
  /** Bucket in the path (https://HOST/BUCKET/KEY) rather than in the host name. */
  pathStyle: boolean;
  /** A CA bundle to trust for HTTPS besides the system's: a file, or its PEM text (a daemon handed it). */
  caFile: string | null;
  caPem?: string | null;
  /** Credentials given with the spec (a daemon serving a backup gets its client's); none: the AWS environment and files. */
  credentials?: S3Credentials | null;
  /** Where fetched objects are cached and uploads are built. */
  cacheDir: string;
  /** Byte rates the whole process keeps to (shared by its threads), or null. */
  uploadLimit: RateLimitState | null;
  downloadLimit: RateLimitState | null;
  /** S3 Object Lock: how long the objects a backup needs are retained, and how (set from the config once read). */
  objectLock?: ObjectLock | null;
}

/** A repository's immutability (backup_init --object-lock): each object a backup needs retained this long from its writing. */
export interface ObjectLock {
  days: number;
  /** compliance: nobody can shorten or remove it; governance: those allowed to bypass it can. */
  mode: 'compliance' | 'governance';
}

export interface S3Credentials {
  accessKeyId: string;
  secretAccessKey: string;
  sessionToken?: string;
}

/** What opens a backend again, in another thread (the repository's workers open their own). */
export type BackendSpec = { kind: 'local'; dir: string } | S3BackendSpec;

export interface Backend {
  readonly spec: BackendSpec;
  /** How messages name the repository: its directory, or its URL. */
  readonly location: string;
  /** The size a pack is closed at, where it is not the format's default (an object store uploads smaller packs while a backup reads). */
  readonly packBytes?: number;
  /** Small objects (index pages, pack indexes, sizes) worth reading or writing at once: in an object store each is a request of a round trip. */
  readonly requestsAtOnce: number;

  /** An object's bytes; ENOENT (a BlkError naming it) when there is none. */
  read(name: string): Promise<Buffer>;
  /** Up to `into.length` bytes of an object from `offset`: the bytes read (fewer only at its end). */
  readRange(name: string, offset: number, into: Uint8Array): Promise<number>;
  /**
   * An object written whole, or not at all; durable at the next sync(). With `inExistingFolder`, a
   * local backend refuses (ENOENT) rather than make the folder: a hold placed in a backup a prune
   * has just taken away must fail. `md5`: the data's MD5 (base64), where the writer has it already.
   */
  write(name: string, data: Uint8Array, options?: { inExistingFolder?: boolean; md5?: string }): Promise<void>;
  /** The names of the objects (and folders, with a trailing '/') directly under `folder` ('' for the top). */
  list(folder: string): Promise<string[]>;
  /** The names (relative to `folder`) of every object under it, at any depth: one request per 1000 in an object store. */
  listTree(folder: string): Promise<string[]>;
  /** An object's size, or null when there is none. */
  size(name: string): Promise<number | null>;
  /** The bytes of every object of the repository (one listing in an object store). */
  totalBytes(): Promise<number>;
  /**
   * An object's size, when it was last written by the store's clock (ms since the epoch; an object
   * store's to the second), and until when the store retains it (S3 Object Lock; null: not
   * retained): one look (a HEAD). null when there is none.
   */
  stat(name: string): Promise<ObjectStat | null>;
  /** Removes an object, or a folder (named with its trailing '/') and all under it; no error when there is none. */
  remove(name: string): Promise<void>;

  /**
   * Where a writer builds an object before it is put in place (a local file: the repository's own
   * folder for a local backend, so that putting it in place is a rename).
   */
  stagingPath(name: string): string;
  /**
   * Puts what was built at stagingPath(name) in place as `name`: a file, or a folder of files (a
   * backup's, its manifest last); a rename here, uploads elsewhere.
   */
  commit(name: string): Promise<void>;
  /** Makes every object written so far durable (a filesystem's syncfs). */
  sync(): Promise<void>;
  /** Makes each of these objects retained at least as long as one written now: how many it extended. */
  extendRetention?(objects: string[]): Promise<number>;
  /** Checks the store can retain objects (a bucket made with Object Lock); ENOTSUP naming why not. */
  checkObjectLock?(): Promise<void>;
  /**
   * Begins an object written in parts as they are made (an object store's multipart upload): a
   * writer that holds no file of it sends each part once full. Where absent, objects go by commit().
   */
  startUpload?(name: string): Promise<PartUpload>;
  /** Aborts uploads begun before `before` (ms since the epoch) and never finished (an object store's multipart uploads); how many. */
  abortUploads?(before: number): Promise<number>;

  /**
   * The prune lock: one prune at a time (writers and readers take none; they keep sessions). Waits
   * (and calls `onWait` once, with who holds it where that is known) while another holds it. The
   * release lets it go; `isLost()` tells whether it was taken away meanwhile (an expired lease).
   */
  lock(onWait?: (holder: string) => void): Promise<RepositoryLock>;

  /**
   * Where an object lies as a local file, for the paths that read packs by descriptor (restore,
   * verify, attach): a local backend's own file; null for an object store (read by range).
   */
  localPath(name: string): string | null;
  /**
   * From now on every read goes to the store itself, never to a cached copy (backup_verify: what it
   * checks is what the store holds).
   */
  bypassCache(): void;
}

/** An object being written in parts (numbered from 1, each but the last at least 5 MiB, with its MD5 in base64). */
export interface PartUpload {
  part(n: number, data: Uint8Array, md5: string): Promise<void>;
  /** Makes the object exist, whole, from the parts sent. */
  complete(): Promise<void>;
  /** Drops the parts sent; the object never appears. */
  abort(): Promise<void>;
}

export interface ObjectStat {
  size: number;
  modified: number;
  retainedUntil: number | null;
}

export interface RepositoryLock {
  release(): Promise<void>;
  /** Whether another client took the lock over (this one stopped refreshing it for a lease). */
  isLost(): boolean;
}

/** The error a backend gives for an object that is not there. */
export function isMissing(e: unknown): boolean {
  return (e as BlkError | NodeJS.ErrnoException)?.code === 'ENOENT';
}
