// Owns gathering a write's data into one buffer, for a device that lands it whole.
import { totalLength } from '../util/byte-queue.js';
import { isIncomingParts, type WriteData } from './block-device.js';

/** The data as one buffer: as it is, pieces joined, or parts gathered as they come (fewer bytes when the source ends early). */
export async function gathered(data: WriteData): Promise<Uint8Array> {
  if (!isIncomingParts(data)) return Array.isArray(data) ? Buffer.concat(data as Buffer[]) : (data as Uint8Array);
  const whole = Buffer.allocUnsafe(data.length);
  let at = 0;
  const n = await data.deliver((part) => {
    whole.set(part, at);
    at += part.length;
  });
  return whole.subarray(0, n);
}

/** The length of data that is all there (whole or pieces). */
export function lengthOf(data: Uint8Array | readonly Buffer[]): number {
  return Array.isArray(data) ? totalLength(data as Buffer[]) : (data as Uint8Array).length;
}
