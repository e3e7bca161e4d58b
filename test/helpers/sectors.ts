// Owns blksnap's "corrupt" test data: every 512-byte sector carries a header (checksum, sequence, sector, time).
import { createHash } from 'node:crypto';

export const SECTOR = 512;

/** Fills `into` (a whole number of sectors starting at `firstSector`) with stamped sectors. */
export function stampSectors(into: Buffer, firstSector: number, sequence: number, time = Date.now()): Buffer {
  for (let s = 0; s < into.length / SECTOR; s++) {
    const at = s * SECTOR;
    into.writeUInt32LE(sequence, at + 4);
    into.writeDoubleLE(firstSector + s, at + 8);
    into.writeDoubleLE(time, at + 16);
    // Body: a cheap pseudo-random fill that depends on sequence and sector.
    let x = (sequence * 2654435761 + (firstSector + s) * 40503) >>> 0;
    for (let i = at + 24; i < at + SECTOR; i += 4) {
      x = (x * 1664525 + 1013904223) >>> 0;
      into.writeUInt32LE(x, i);
    }
    into.writeUInt32LE(checksum(into, at), at);
  }
  return into;
}

function checksum(b: Buffer, at: number): number {
  return createHash('md5').update(b.subarray(at + 4, at + SECTOR)).digest().readUInt32LE(0);
}

/** Checks stamped sectors: returns a description of the first bad one, or null. */
export function verifySectors(b: Buffer, firstSector: number, expectedSequence: (sector: number) => number): string | null {
  for (let s = 0; s < b.length / SECTOR; s++) {
    const at = s * SECTOR;
    const sector = firstSector + s;
    if (b.readUInt32LE(at) !== checksum(b, at)) return `sector ${sector}: bad checksum (torn or corrupted)`;
    const seq = b.readUInt32LE(at + 4);
    if (b.readDoubleLE(at + 8) !== sector) return `sector ${sector}: header names sector ${b.readDoubleLE(at + 8)}`;
    if (seq !== expectedSequence(sector)) return `sector ${sector}: sequence ${seq}, expected ${expectedSequence(sector)}`;
  }
  return null;
}
