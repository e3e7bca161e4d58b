// Owns sending what a backup's workers build in memory for a store that takes objects in parts (a
// bucket): each pack's parts as they come, a few requests at once, a pack of one part by one PUT,
// each pack's index once the pack is whole. The bytes not yet sent are bounded: a producer that adds
// more waits, so a slow store slows the backup's reads rather than filling memory.
import { BlkError } from '../errors.js';
import type { Backend, PartUpload } from '../repository/backend.js';
import type { PackPiece } from '../repository/pack.js';

interface PackSends {
  upload: Promise<PartUpload> | null;
  parts: Array<Promise<void>>;
  /** Resolves once the pack exists whole in the store. */
  whole: Promise<void> | null;
}

export class PackUploads {
  readonly #backend: Backend;
  readonly #concurrency: number;
  readonly #limitBytes: number;
  readonly #packs = new Map<string, PackSends>();
  /** Sends and completions not yet settled (each settles with its failure kept, never an unhandled rejection). */
  #pending = 0;
  #waitingForAll: Array<() => void> = [];
  #failure: { error: unknown } | null = null;
  #running = 0;
  #waitingForSlot: Array<() => void> = [];
  #unsentBytes = 0;
  #waitingForRoom: Array<() => void> = [];

  /** `concurrency` requests at once; add() waits while more than `limitBytes` are not yet sent. */
  constructor(backend: Backend, concurrency: number, limitBytes: number) {
    if (!backend.startUpload) throw new BlkError('ENOTSUP', `${backend.location} takes no objects in parts`);
    this.#backend = backend;
    this.#concurrency = Math.max(1, concurrency);
    this.#limitBytes = limitBytes;
  }

  /**
   * Takes a worker's pieces (in the order it made them: taken synchronously, so a pack's last part
   * always finds its earlier ones) and resolves once the bytes not yet sent are within the limit.
   */
  async add(pieces: PackPiece[], giveBack?: (data: Uint8Array) => void): Promise<void> {
    for (const piece of pieces) {
      if (piece.kind === 'part') this.#addPart(piece, giveBack);
      else this.#addIndex(piece);
    }
    while (this.#unsentBytes > this.#limitBytes && !this.#failure) await new Promise<void>((wake) => this.#waitingForRoom.push(wake));
    if (this.#failure) throw this.#failure.error;
  }

  /** Resolves once everything added is in the store; rejects with the first failure. */
  async drain(): Promise<void> {
    await this.#settled();
    if (this.#failure) throw this.#failure.error;
  }

  /** After a failure: waits for the sends still running, then drops the parts of every pack not made whole. */
  async abort(): Promise<void> {
    await this.#settled();
    for (const pack of this.#packs.values()) {
      if (pack.upload) await (await pack.upload.catch(() => null))?.abort();
    }
    this.#packs.clear();
  }

  /** `giveBack` gets the part's bytes once they are sent (or failed): their memory may be filled again. */
  #addPart(piece: Extract<PackPiece, { kind: 'part' }>, giveBack?: (data: Uint8Array) => void): void {
    let pack = this.#packs.get(piece.name);
    if (!pack) {
      pack = { upload: null, parts: [], whole: null };
      this.#packs.set(piece.name, pack);
    }
    const bytes = piece.data.length;
    this.#unsentBytes += bytes;
    const sent = (p: Promise<void>): Promise<void> => this.#track(giveBack ? p.finally(() => giveBack(piece.data)) : p);
    if (piece.n === 1 && piece.last) {
      // One part: the whole pack by one PUT (a multipart upload would take three requests).
      pack.whole = sent(this.#send(bytes, () => this.#backend.write(piece.name, piece.data, { md5: piece.md5 })));
      return;
    }
    if (!pack.upload) {
      pack.upload = (this.#backend.startUpload as NonNullable<Backend['startUpload']>).call(this.#backend, piece.name);
      // Heard by the parts' sends (and abort()); until one waits on it, a failure is no unhandled rejection.
      pack.upload.catch(() => undefined);
    }
    const started = pack.upload;
    pack.parts.push(sent(this.#send(bytes, async () => (await started).part(piece.n, piece.data, piece.md5))));
    if (piece.last) {
      const parts = pack.parts;
      pack.whole = this.#track(
        Promise.all(parts).then(() =>
          this.#send(0, async () => {
            await (await started).complete();
            // Made whole: nothing of it is left to abort.
            (pack as PackSends).upload = null;
            (pack as PackSends).parts = [];
          }),
        ),
      );
    }
  }

  #addIndex(piece: Extract<PackPiece, { kind: 'index' }>): void {
    const whole = this.#packs.get(piece.pack)?.whole;
    if (!whole) throw new BlkError('EINVAL', `${piece.name} came before its pack ${piece.pack} was whole`);
    // An index never names a pack that is not there.
    this.#unsentBytes += piece.data.length;
    this.#track(whole.then(() => this.#send(piece.data.length, () => this.#backend.write(piece.name, piece.data))));
  }

  async #settled(): Promise<void> {
    while (this.#pending > 0) await new Promise<void>((wake) => this.#waitingForAll.push(wake));
  }

  /** Runs `send` once a request slot is free (nothing after a failure); its bytes count as unsent until it ends. */
  async #send(bytes: number, send: () => Promise<void>): Promise<void> {
    while (this.#running >= this.#concurrency) await new Promise<void>((wake) => this.#waitingForSlot.push(wake));
    this.#running++;
    try {
      if (!this.#failure) await send();
    } finally {
      this.#running--;
      this.#waitingForSlot.shift()?.();
      this.#unsentBytes -= bytes;
      if (this.#unsentBytes <= this.#limitBytes || this.#failure) for (const wake of this.#waitingForRoom.splice(0)) wake();
    }
  }

  /** Keeps `p` for drain(), its failure recorded (the first one wins) rather than thrown where nobody waits. */
  #track(p: Promise<void>): Promise<void> {
    this.#pending++;
    return p.then(
      () => this.#settle(),
      (error: unknown) => {
        this.#failure ??= { error };
        for (const wake of this.#waitingForRoom.splice(0)) wake();
        this.#settle();
      },
    );
  }

  #settle(): void {
    if (--this.#pending === 0) for (const wake of this.#waitingForAll.splice(0)) wake();
  }
}
