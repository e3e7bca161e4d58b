// Owns durations as users write them: 90s, 30m, 24h, 7d, 2w, combined (1h30m), or 0.
import { BlkError } from '../errors.js';

const UNIT_MS: Record<string, number> = { s: 1000, m: 60_000, h: 3_600_000, d: 86_400_000, w: 604_800_000 };

/** Milliseconds of a duration; EINVAL naming the option for anything else. */
export function parseDuration(text: string, option: string): number {
  if (text === '0') return 0;
  const parts = /^(?:\d+[smhdw])+$/.test(text) ? [...text.matchAll(/(\d+)([smhdw])/g)] : [];
  if (parts.length === 0) throw new BlkError('EINVAL', `${option} takes a duration such as 90s, 30m, 24h, 7d, 2w or 1h30m, not '${text}'`);
  return parts.reduce((ms, [, n, unit]) => ms + Number(n) * (UNIT_MS[unit as string] as number), 0);
}

/** A duration as parseDuration() reads it, in its largest whole units (86400000 → '24h'). */
export function formatDuration(ms: number): string {
  if (ms === 0) return '0';
  for (const unit of ['w', 'd', 'h', 'm', 's']) {
    const size = UNIT_MS[unit] as number;
    if (ms % size === 0) return `${ms / size}${unit}`;
  }
  return `${Math.ceil(ms / 1000)}s`;
}
