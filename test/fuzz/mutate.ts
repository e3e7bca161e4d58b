// Owns the fuzzers' randomness: a seeded generator, byte- and field-level mutations, re-splitting input.

/** xorshift32: seeded, so a failing input is found again from its seed. */
export class Rng {
  #state: number;
  constructor(seed: number) {
    this.#state = seed >>> 0 || 0x9e3779b9;
  }
  u32(): number {
    let x = this.#state;
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    this.#state = x >>> 0;
    return this.#state;
  }
  int(n: number): number {
    return n <= 0 ? 0 : this.u32() % n;
  }
  chance(p: number): boolean {
    return this.u32() / 2 ** 32 < p;
  }
  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)] as T;
  }
  bytes(n: number): Buffer {
    const b = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) b[i] = this.u32() & 0xff;
    return b;
  }
}

/** Values that break parsers: edges of widths and of the protocol's own limits. */
export const INTERESTING_32 = [0, 1, 2, 3, 4, 7, 8, 16, 28, 511, 512, 4095, 4096, 65535, 65536, 0x7fff, 0x8000, 0xffff, 0x10000, 0x100000, 32 * 1024 * 1024, 32 * 1024 * 1024 + 1, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff];
export const INTERESTING_64 = [0n, 1n, 511n, 512n, 4096n, 1048575n, 1048576n, 2n ** 32n, 2n ** 53n - 1n, 2n ** 53n, 2n ** 53n + 1n, 2n ** 62n, 2n ** 63n - 1n, 2n ** 63n, 2n ** 64n - 512n, 2n ** 64n - 1n];

/** A field a structure-aware mutation may set to an interesting value. */
export interface Field {
  at: number;
  width: 1 | 2 | 4 | 8;
  endian: 'be' | 'le';
}

function setField(b: Buffer, f: Field, rng: Rng): void {
  if (f.at + f.width > b.length) return;
  if (f.width === 8) {
    const v = rng.chance(0.8) ? rng.pick(INTERESTING_64) : BigInt(rng.u32()) * 2n ** 32n + BigInt(rng.u32());
    if (f.endian === 'be') b.writeBigUInt64BE(v, f.at);
    else b.writeBigUInt64LE(v, f.at);
    return;
  }
  const v = (rng.chance(0.8) ? rng.pick(INTERESTING_32) : rng.u32()) % 2 ** (8 * f.width);
  if (f.width === 1) b[f.at] = v;
  else if (f.width === 2) (f.endian === 'be' ? b.writeUInt16BE(v, f.at) : b.writeUInt16LE(v, f.at));
  else (f.endian === 'be' ? b.writeUInt32BE(v, f.at) : b.writeUInt32LE(v, f.at));
}

/**
 * One to four mutations of `input`: most set a known field to an interesting value (lengths, flags,
 * offsets near 2^63), the rest are blind (bit flips, random bytes, insertions, deletions, splices,
 * truncation). Never longer than `maximumLength`.
 */
export function mutate(rng: Rng, input: Buffer, fields: readonly Field[], maximumLength = 1 << 20): Buffer {
  let b: Buffer = Buffer.from(input);
  const count = 1 + rng.int(4);
  for (let i = 0; i < count; i++) {
    const op = rng.int(fields.length > 0 ? 10 : 6);
    if (op >= 6) {
      setField(b, rng.pick(fields), rng);
      continue;
    }
    if (b.length === 0) b = rng.bytes(1 + rng.int(64));
    const at = rng.int(b.length);
    switch (op) {
      case 0:
        b[at] = (b[at] as number) ^ (1 << rng.int(8));
        break;
      case 1:
        b[at] = rng.pick([0, 0xff, 0x7f, 0x80, rng.u32() & 0xff]);
        break;
      case 2:
        b = Buffer.concat([b.subarray(0, at), rng.bytes(1 + rng.int(32)), b.subarray(at)]);
        break;
      case 3:
        b = Buffer.concat([b.subarray(0, at), b.subarray(Math.min(b.length, at + 1 + rng.int(32)))]);
        break;
      case 4: {
        const from = rng.int(b.length);
        const piece = b.subarray(from, Math.min(b.length, from + 1 + rng.int(64)));
        b = Buffer.concat([b.subarray(0, at), piece, b.subarray(at)]);
        break;
      }
      default:
        b = b.subarray(0, at);
    }
  }
  return b.length > maximumLength ? b.subarray(0, maximumLength) : b;
}

/** Cuts `b` into 1..8 pieces at random places: a parser must not care where reads end. */
export function split(rng: Rng, b: Buffer): Buffer[] {
  const pieces: Buffer[] = [];
  let at = 0;
  const cuts = rng.int(8);
  for (let i = 0; i < cuts && at < b.length; i++) {
    const n = 1 + rng.int(Math.max(1, b.length - at));
    pieces.push(b.subarray(at, at + n));
    at += n;
  }
  if (at < b.length) pieces.push(b.subarray(at));
  return pieces;
}
