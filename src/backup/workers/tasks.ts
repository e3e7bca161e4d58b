// Owns what the repository's worker threads are asked and answer, one union per kind of worker:
// types only, so a program that starts workers loads none of their code.
import type { BackendSpec } from '../../repository/backend.js';
import type { ChunkLocation, LoadItem } from '../../repository/chunk-index.js';
import type { PackPiece } from '../../repository/pack.js';
import type { SharedSlotsHandle, SlotRef } from '../../util/shared-slots.js';

/** Bytes [at, at + length) of the memory shared with a worker by a `share` task. */
export interface SharedBytes {
  at: number;
  length: number;
}

/** Every worker's first task in an encrypted repository: the secret its objects are sealed and named under (never written anywhere). */
export type CipherTask = { kind: 'cipher'; secret: Uint8Array | null };
export type CipherResult = { kind: 'cipher' };

/**
 * Bytes of a pack from `offset`, fetched by the main thread, holding the records of a task's items
 * (in any order): in a slot of the memory a `rangeSlots` task shared (the worker frees it once the
 * task is done), or moved with the task.
 */
export interface FetchedRange {
  offset: number;
  data: SlotRef | Uint8Array;
}

/** A piece of a pack as it crosses to the main thread: a part's bytes in a slot of the memory a `partSlots` task shared (the main thread frees it once sent), or moved with it. */
export type WirePiece = (Omit<Extract<PackPiece, { kind: 'part' }>, 'data'> & { data: SlotRef | Uint8Array }) | Extract<PackPiece, { kind: 'index' }>;

/** What backup_create's workers do: hash the chunks of a run, store the new ones in a pack of their own. */
export type CreateTask =
  /**
   * Takes memory the main thread reads into, for `hash` tasks to name their bytes in: no buffer moves
   * between threads per task (each moved buffer counted as new memory outside the heap, and the main
   * thread's collector ran 190 times in a 4 GiB backup for that alone).
   */
  | { kind: 'share'; buffer: SharedArrayBuffer }
  /** Hashes consecutive chunks of `data`; keeps the bytes under `id` for a `store` to follow. */
  | { kind: 'hash'; id: number; data: Uint8Array | SharedBytes; lengths: number[] }
  /** Appends chunks `which` of hashed task `id` to this worker's pack, then forgets the task's bytes. */
  | { kind: 'store'; id: number; which: number[]; repository: BackendSpec; level: number | null }
  /** Puts this worker's packs in place (durable, indexed, visible). */
  | { kind: 'finish' }
  /** Memory for the parts of packs this worker builds (a bucket's), filled in place and freed by the main thread once sent. */
  | { kind: 'partSlots'; slots: SharedSlotsHandle }
  | CipherTask;

export type CreateResult =
  | CipherResult
  | { kind: 'share' }
  | { kind: 'hash'; digests: Uint8Array }
  /** `pieces`: parts of packs (and their indexes) for the main thread to send, where the store takes objects in parts. */
  | { kind: 'store'; locations: Array<ChunkLocation & { index: number }>; storedBytes: number; pieces: WirePiece[] }
  | { kind: 'finish'; packs: string[]; requests: Record<string, number>; pieces: WirePiece[] }
  | { kind: 'partSlots' };

/** What the workers that read chunks do: a restore's, and a daemon's serving a backup. */
export type ReadTask =
  /**
   * Loads and checks chunks of the repository whose secret is `secret` (null: plain); returns their
   * bytes. Packs that are not local files (an object store's) are read by range from `repository`.
   */
  | { kind: 'load'; items: LoadItem[]; secret: Uint8Array | null; repository?: BackendSpec }
  /**
   * Loads and checks chunks and writes them at their offsets (zero chunks only when `writeZeros`):
   * consecutive chunks of local packs read by the worker, or any chunks whose records are all in
   * `fetched` (a range of a pack in a bucket, read by the main thread). `fd`
   * may be opened O_DIRECT (`direct`): pieces not aligned to 4 KiB then go through `bufferedFd`. A
   * restore's workers only.
   */
  | { kind: 'write'; items: LoadItem[]; secret: Uint8Array | null; fetched?: FetchedRange; fd: number; direct: boolean; bufferedFd: number; writeZeros: boolean }
  /**
   * Closes the packs this worker read from folder `dir` (all with none): a served backup detached, a
   * restore done; and forgets the cipher of `secret` (an encrypted repository's key, given for that attach only).
   */
  | { kind: 'closePacks'; dir?: string; forget?: Uint8Array | null }
  /** Memory the main thread fetches ranges into for `write` tasks (a restore from a bucket). */
  | { kind: 'rangeSlots'; slots: SharedSlotsHandle };

export type ReadResult = { kind: 'load'; data: Uint8Array[] } | { kind: 'write'; writtenBytes: number } | { kind: 'closePacks'; closed: number } | { kind: 'rangeSlots' };

/** What backup_verify's workers do: read a pack whole and check every record against its index and its digest. */
export type VerifyTask =
  /** A pack in local files (`pack`, `idx`), or in the bucket `repository` (read by range; `size` its bytes). */
  | { kind: 'checkPack'; id: string; pack: string; idx: string }
  | { kind: 'checkPack'; id: string; repository: BackendSpec; size: number }
  | CipherTask;
export type VerifyResult = CipherResult | { kind: 'checkPack'; checked: number; bad: Array<{ digest: string; reason: string }> };

/** Any worker's task and result, as the pool carries them. */
export type WorkerTask = CreateTask | ReadTask | VerifyTask;
export type WorkerResult = CreateResult | ReadResult | VerifyResult;
