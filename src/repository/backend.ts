// Owns the seam under the repository format: where its objects live. Names are relative paths
// ("config.json", "chunks/ID.pack", "backups/ID/manifest.json"); a backend stores each whole. The
// local directory is the first backend; an object store is another behind the same calls.
import type { BlkError } from '../errors.js';

/** What opens a backend again, in another thread (the repository's workers open their own). */
export type BackendSpec = { kind: 'local'; dir: string };

export interface Backend {
  readonly spec: BackendSpec;
  /** How messages name the repository: its directory, or its URL. */
  readonly location: string;

  /** An object's bytes; ENOENT (a BlkError naming it) when there is none. */
  read(name: string): Promise<Buffer>;
  /** Up to `into.length` bytes of an object from `offset`: the bytes read (fewer only at its end). */
  readRange(name: string, offset: number, into: Uint8Array): Promise<number>;
  /**
   * An object written whole, or not at all; durable at the next sync(). With `inExistingFolder`, a
   * local backend refuses (ENOENT) rather than make the folder: a hold placed in a backup a prune
   * has just taken away must fail.
   */
  write(name: string, data: Uint8Array, options?: { inExistingFolder?: boolean }): Promise<void>;
  /** The names of the objects (and folders, with a trailing '/') directly under `folder` ('' for the top). */
  list(folder: string): Promise<string[]>;
  /** An object's size, or null when there is none. */
  size(name: string): Promise<number | null>;
  /** Removes an object (or a folder and all under it); no error when there is none. */
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

  /**
   * The repository's lock: shared by writers and readers, exclusive for a prune's sweep. Waits (and
   * calls `onWait` once) while the other kind holds it; the release lets it go.
   */
  lock(exclusive: boolean, onWait?: () => void): Promise<() => void>;

  /** Where an object lies as a local file, for the fast paths of a local backend (O_DIRECT reads and writes); null elsewhere. */
  localPath(name: string): string | null;
}

/** The error a backend gives for an object that is not there. */
export function isMissing(e: unknown): boolean {
  return (e as BlkError | NodeJS.ErrnoException)?.code === 'ENOENT';
}
