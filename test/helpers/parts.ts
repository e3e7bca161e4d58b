// Owns a write's data given in parts by a test, as a large NBD payload arrives: parts pushed in order, then the end.
import type { IncomingParts } from '../../src/core/block-device.js';

export class PartsSource implements IncomingParts {
  readonly length: number;
  #land: ((part: Uint8Array) => void) | null = null;
  #waiting: Uint8Array[] = [];
  #given = 0;
  #isEnded = false;
  #done: ((n: number) => void) | null = null;

  constructor(length: number) {
    this.length = length;
  }

  deliver(land: (part: Uint8Array) => void): Promise<number> {
    this.#land = land;
    for (const part of this.#waiting.splice(0)) land(part);
    return new Promise((resolve) => {
      this.#done = resolve;
      if (this.#isEnded) resolve(this.#given);
    });
  }

  push(part: Uint8Array): void {
    this.#given += part.length;
    if (this.#land) this.#land(part);
    else this.#waiting.push(part);
  }

  /** No more parts: the write ends with what was pushed. */
  end(): void {
    this.#isEnded = true;
    this.#done?.(this.#given);
  }
}
