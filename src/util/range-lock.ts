// Owns exclusive access to byte ranges: holders of overlapping ranges go one at a time.

interface Held {
  start: number;
  end: number;
  released: Promise<void>;
}

/**
 * Ranges held now are few (the writes in flight), so a list is searched; a waiter looks again
 * after each release it waited for, since another may have taken an overlapping range meanwhile.
 */
export class RangeLock {
  #held: Held[] = [];

  /** Resolves, once no held range overlaps [start, end), with the function that releases it. */
  async lock(start: number, end: number): Promise<() => void> {
    for (;;) {
      const overlapping = this.#held.find((h) => h.start < end && start < h.end);
      if (!overlapping) break;
      await overlapping.released;
    }
    let release!: () => void;
    const held: Held = { start, end, released: new Promise<void>((resolve) => (release = resolve)) };
    this.#held.push(held);
    return () => {
      this.#held.splice(this.#held.indexOf(held), 1);
      release();
    };
  }

  /** Ranges held now. */
  get size(): number {
    return this.#held.length;
  }
}
