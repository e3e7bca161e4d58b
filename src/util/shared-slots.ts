// Owns slots of memory shared by threads: a buffer one thread fills and another sends, writes or
// reads, then frees, with no message to give it back. A transferred ArrayBuffer is a new object to
// the thread receiving it, its bytes counted as the heap's external memory: a stream of 8 MiB ones
// made the main thread collect garbage for "external memory pressure" (docs/performance.md).

/** What another thread needs to use the same slots (sent once, in a task). */
export interface SharedSlotsHandle {
  memory: SharedArrayBuffer;
  /** One Int32 per slot: 0 free, 1 taken. */
  states: SharedArrayBuffer;
  slotBytes: number;
}

/** A slot of the memory: its number and the bytes of it in use. */
export interface SlotRef {
  slot: number;
  length: number;
}

export class SharedSlots {
  readonly handle: SharedSlotsHandle;
  readonly #states: Int32Array;

  constructor(handle: SharedSlotsHandle) {
    this.handle = handle;
    this.#states = new Int32Array(handle.states);
  }

  /** `count` slots of `slotBytes` (pages are only backed once used; the lowest free slot is taken first, so few are). */
  static create(count: number, slotBytes: number): SharedSlots {
    return new SharedSlots({ memory: new SharedArrayBuffer(count * slotBytes), states: new SharedArrayBuffer(count * 4), slotBytes });
  }

  get count(): number {
    return this.#states.length;
  }

  /** A free slot, now the caller's; null when every slot is taken (the caller makes a buffer of its own). */
  claim(): number | null {
    for (let slot = 0; slot < this.#states.length; slot++) if (Atomics.compareExchange(this.#states, slot, 0, 1) === 0) return slot;
    return null;
  }

  /** Frees a slot, from any thread. */
  release(slot: number): void {
    Atomics.store(this.#states, slot, 0);
  }

  /** The first `length` bytes of a slot. */
  view(slot: number, length = this.handle.slotBytes): Buffer {
    if (!Number.isInteger(slot) || slot < 0 || slot >= this.#states.length || length > this.handle.slotBytes) throw new RangeError(`slot ${slot} (${length} bytes) is not one of ${this.#states.length} of ${this.handle.slotBytes} bytes`);
    return Buffer.from(this.handle.memory, slot * this.handle.slotBytes, length);
  }

  /** Where `data` lies in a slot from its start; null for memory of its own. */
  refOf(data: Uint8Array): SlotRef | null {
    if (data.buffer !== this.handle.memory || data.byteOffset % this.handle.slotBytes !== 0) return null;
    return { slot: data.byteOffset / this.handle.slotBytes, length: data.byteLength };
  }

  /** A claimed slot's bytes by reference, or `data` itself where it is not in one. */
  ref(data: Uint8Array): SlotRef | Uint8Array {
    return this.refOf(data) ?? data;
  }

  /** The bytes a `ref` names. */
  resolve(ref: SlotRef | Uint8Array): Uint8Array {
    return ref instanceof Uint8Array ? ref : this.view(ref.slot, ref.length);
  }
}
