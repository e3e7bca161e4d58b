// Owns how sizes are written on command lines: N[K|M|G|T], binary units, for the tool and the daemon alike.
import { BlkError } from './errors.js';

/** Parses N[K|M|G|T] (binary units, optional "iB"/"B") into bytes; EINVAL otherwise. */
export function parseSize(text: string): number {
  const m = /^(\d+)([KMGT]?)i?B?$/i.exec(text.trim());
  const unit = { '': 1, K: 2 ** 10, M: 2 ** 20, G: 2 ** 30, T: 2 ** 40 }[(m?.[2] ?? '').toUpperCase() as '' | 'K' | 'M' | 'G' | 'T'];
  const n = m ? Number(m[1]) * unit : NaN;
  if (!Number.isSafeInteger(n) || n <= 0) throw new BlkError('EINVAL', `invalid size '${text}': expected N[K|M|G|T]`);
  return n;
}
