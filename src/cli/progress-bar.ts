// Owns the progress line of long repository work on a terminal: phase, bytes done of total, rate,
// time left; redrawn at most 5 times a second on stderr, and not drawn when stderr is no terminal or
// the output is JSON. Notes (waiting for a lock, say) are written to stderr either way.
import type { Progress } from '../backup/progress.js';

function bytes(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let u = 0;
  while (n >= 1024 && u < units.length - 1) {
    n /= 1024;
    u++;
  }
  return `${n.toFixed(u === 0 ? 0 : 1)} ${units[u]}`;
}

function duration(seconds: number): string {
  if (!Number.isFinite(seconds)) return '--:--';
  const s = Math.round(seconds);
  return s >= 3600 ? `${Math.floor(s / 3600)}h${String(Math.floor((s % 3600) / 60)).padStart(2, '0')}m` : `${Math.floor(s / 60)}:${String(s % 60).padStart(2, '0')}`;
}

export function progressBar(stream: NodeJS.WriteStream = process.stderr, options: { bar?: boolean } = {}): Progress {
  if (!stream.isTTY || options.bar === false) return { start() {}, advance() {}, note: (text) => void stream.write(`${text}\n`), done() {} };
  let label = '';
  let total = 0;
  let done = 0;
  let started = 0;
  let drawn = 0;
  const draw = (force: boolean): void => {
    const now = Date.now();
    if (!force && now - drawn < 200) return;
    drawn = now;
    const seconds = (now - started) / 1000;
    const rate = seconds > 0 ? done / seconds : 0;
    const share = total > 0 ? Math.min(1, done / total) : 1;
    const width = 24;
    const bar = '#'.repeat(Math.round(share * width)).padEnd(width, '.');
    const line = `${label} [${bar}] ${bytes(done)}/${bytes(total)} ${bytes(rate)}/s ETA ${duration(rate > 0 ? (total - done) / rate : Number.POSITIVE_INFINITY)}`;
    stream.write(`\r${line.slice(0, (stream.columns || 100) - 1)}\x1b[K`);
  };
  return {
    start(l, t) {
      label = l;
      total = t;
      done = 0;
      started = Date.now();
      draw(true);
    },
    advance(n) {
      done += n;
      draw(false);
    },
    note(text) {
      stream.write(`\r\x1b[K${text}\n`);
    },
    done() {
      draw(true);
      stream.write('\n');
    },
  };
}
