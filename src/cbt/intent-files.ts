// Owns a device's write-intent record on disk: two slot files written in turn in place (pwrite,
// fdatasync), each checked by a SHA-256, so a write torn by a crash leaves the other slot whole.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import type { IntentRecord } from './write-intent.js';
import { syncDirectory } from '../os/state-file.js';
import { syncWriter } from '../os/sync-writer.js';

const MAGIC = Buffer.from('BLKSNAPW', 'latin1');
const VERSION = 1;
/** magic (8) · version (4) · reserved (4) · sequence (8) · region size (8) · region count (8) · SHA-256 of all else (32). */
const HEADER_LENGTH = 72;
const SUMMED_HEADER = 40;

/** The record as last written whole: one byte per region (1 = may have been written). */
export interface IntentRead {
  sequence: number;
  regionSize: number;
  regions: Uint8Array;
}

function slotPaths(dir: string, name: string): [string, string] {
  return [path.join(dir, `${name}.intent-a`), path.join(dir, `${name}.intent-b`)];
}

function checksum(data: Buffer): Buffer {
  return createHash('sha256').update(data.subarray(0, SUMMED_HEADER)).update(data.subarray(HEADER_LENGTH)).digest();
}

function encode(sequence: number, regionSize: number, regions: Uint8Array): Buffer {
  const data = Buffer.alloc(HEADER_LENGTH + Math.ceil(regions.length / 8));
  MAGIC.copy(data, 0);
  data.writeUInt32LE(VERSION, 8);
  data.writeBigUInt64LE(BigInt(sequence), 16);
  data.writeBigUInt64LE(BigInt(regionSize), 24);
  data.writeBigUInt64LE(BigInt(regions.length), 32);
  for (let r = 0; r < regions.length; r++) if (regions[r]) data[HEADER_LENGTH + (r >> 3)] = (data[HEADER_LENGTH + (r >> 3)] as number) | (1 << (r & 7));
  checksum(data).copy(data, SUMMED_HEADER);
  return data;
}

/** One slot's record, or why it cannot be used. */
function decode(data: Buffer): IntentRead | string {
  if (data.length < HEADER_LENGTH || !data.subarray(0, 8).equals(MAGIC)) return 'not a write-intent record';
  if (data.readUInt32LE(8) !== VERSION) return `format version ${data.readUInt32LE(8)}, not ${VERSION}`;
  const count = Number(data.readBigUInt64LE(32));
  const length = HEADER_LENGTH + Math.ceil(count / 8);
  // A slot may be longer than its record (an earlier, larger one); the checksum covers the record.
  if (data.length < length) return 'truncated';
  const record = data.subarray(0, length);
  if (!checksum(record).equals(record.subarray(SUMMED_HEADER, HEADER_LENGTH))) return 'fails its checksum';
  const regions = new Uint8Array(count);
  for (let r = 0; r < count; r++) regions[r] = ((record[HEADER_LENGTH + (r >> 3)] as number) >> (r & 7)) & 1;
  return { sequence: Number(record.readBigUInt64LE(16)), regionSize: Number(record.readBigUInt64LE(24)), regions };
}

/**
 * The newest whole record of device `name` in `dir`: null when neither slot exists; a reason when
 * slots exist and none is whole (the caller cannot tell what was written: a new generation).
 */
export async function readIntent(dir: string, name: string): Promise<IntentRead | null | { reason: string }> {
  const found: IntentRead[] = [];
  const problems: string[] = [];
  for (const file of slotPaths(dir, name)) {
    let data: Buffer;
    try {
      data = await fs.promises.readFile(file);
    } catch (e) {
      if ((e as NodeJS.ErrnoException).code === 'ENOENT') continue;
      problems.push(`${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
      continue;
    }
    const r = decode(data);
    if (typeof r === 'string') problems.push(`${file} ${r}`);
    else found.push(r);
  }
  if (found.length > 0) return found.reduce((a, b) => (b.sequence > a.sequence ? b : a));
  return problems.length > 0 ? { reason: problems.join('; ') } : null;
}

/** The record of one attached device: slots written in turn, the sequence going on from what is on disk. */
export class IntentFiles implements IntentRecord {
  #handles: [fs.promises.FileHandle, fs.promises.FileHandle];
  #sequence: number;

  private constructor(handles: [fs.promises.FileHandle, fs.promises.FileHandle], sequence: number) {
    this.#handles = handles;
    this.#sequence = sequence;
  }

  static async open(dir: string, name: string): Promise<IntentFiles> {
    await fs.promises.mkdir(dir, { recursive: true, mode: 0o700 });
    const last = await readIntent(dir, name);
    const sequence = last !== null && 'sequence' in last ? last.sequence : 0;
    const [a, b] = slotPaths(dir, name);
    const first = await fs.promises.open(a, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600);
    const second = await fs.promises.open(b, fs.constants.O_RDWR | fs.constants.O_CREAT | fs.constants.O_NOFOLLOW, 0o600).catch(async (e: unknown) => {
      await first.close();
      throw e;
    });
    await syncDirectory(dir);
    return new IntentFiles([first, second], sequence);
  }

  async write(regions: Uint8Array, regionSize: number): Promise<void> {
    this.#sequence++;
    const data = encode(this.#sequence, regionSize, regions);
    const handle = this.#handles[this.#sequence % 2] as fs.promises.FileHandle;
    // On a thread of its own: through the libuv pool it would wait behind the stores' bulk writes.
    await syncWriter.writeDurably(handle.fd, data, 0);
  }

  async close(): Promise<void> {
    await Promise.all(this.#handles.map((h) => h.close()));
  }

  /** Removes both slots (detach: nothing of the tracker comes back). */
  static async remove(dir: string, name: string): Promise<void> {
    await Promise.all(slotPaths(dir, name).map((f) => fs.promises.rm(f, { force: true })));
  }
}
