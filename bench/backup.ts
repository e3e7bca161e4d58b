// Benchmark: the backup repository against restic (repository v2) and borg (-e none -C zstd,1) on the
// same 4 GiB device file, in one run: full backup (caches dropped), incremental after 640 random 64 KiB
// writes, restore of the latest to a file, verify of all data, and a read of the latest served by
// backup_attach (ours only); wall times, repository sizes, ratios.
//   node dist/bench/backup.js          (installs restic and borgbackup from Debian when missing)
//   BENCH_BACKUP_GIB=1: a smaller data set (each quarter 1/4 GiB)
//   BENCH_DAEMON_ARGS='--cow-copy cached': more blksnapd options (A/B runs)
//   BENCH_PEERS=none: our figures alone (A/B runs; no ratios)
import { spawn } from 'node:child_process';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { cpuTicks, root, runTool, spawnBlksnapd, stealBetween } from './common.js';

const quarter = Number(process.env.BENCH_BACKUP_GIB ?? 4) * 2 ** 30 / 4;
const MiB = 2 ** 20;

function sh(cmd: string, env: NodeJS.ProcessEnv = {}): Promise<string> {
  return new Promise((resolve, reject) => {
    const child = spawn('sh', ['-c', cmd], { env: { ...process.env, ...env }, stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '';
    let err = '';
    child.stdout.on('data', (d) => (out += d));
    child.stderr.on('data', (d) => (err += d));
    child.on('exit', (code) => (code === 0 ? resolve(out) : reject(new Error(`${cmd} failed (${code}): ${err.slice(-2000)}`))));
  });
}

async function timed(what: () => Promise<unknown>): Promise<number> {
  const t = process.hrtime.bigint();
  await what();
  return Number(process.hrtime.bigint() - t) / 1e9;
}

/** A share as a whole percentage. */
function pct(share: number): string {
  return `${(share * 100).toFixed(0)} %`;
}

/** As timed, with the host's steal of CPU time meanwhile. */
async function timedWithSteal(what: () => Promise<unknown>): Promise<{ seconds: number; steal: number }> {
  const before = cpuTicks();
  const seconds = await timed(what);
  return { seconds, steal: stealBetween(before, cpuTicks()) };
}

async function dropCaches(): Promise<void> {
  await sh('sync; echo 3 > /proc/sys/vm/drop_caches').catch(() => undefined);
}

function du(dir: string): number {
  let total = 0;
  const walk = (d: string): void => {
    for (const e of fs.readdirSync(d, { withFileTypes: true })) {
      const p = path.join(d, e.name);
      if (e.isDirectory()) walk(p);
      else total += fs.statSync(p).size;
    }
  };
  walk(dir);
  return total;
}

/** 1/4 random, 1/4 compressible text (distinct words, so no chunk repeats), 1/4 a copy of the first quarter, 1/4 never written. */
function makeDataSet(file: string): void {
  const fd = fs.openSync(file, 'w+');
  fs.ftruncateSync(fd, 4 * quarter);
  const random = randomBytes(64 * MiB);
  for (let at = 0; at < quarter; at += random.length) {
    // A fresh random buffer each 64 MiB, so the quarter does not repeat itself.
    fs.writeSync(fd, at === 0 ? random : randomBytes(random.length), 0, Math.min(random.length, quarter - at), at);
  }
  // Text from 2000 random words picked by a fast generator (crypto's randomInt per word would take minutes).
  const words = Array.from({ length: 2000 }, () => Buffer.from(`${randomBytes(6).toString('base64').replace(/[^a-z]/gi, '').toLowerCase() || 'w'} `));
  let seed = randomInt(2 ** 31);
  const next = (): number => {
    seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
    return seed >>> 8;
  };
  const text = Buffer.alloc(8 * MiB);
  for (let at = quarter; at < 2 * quarter; at += text.length) {
    let n = 0;
    while (n < text.length) {
      const word = words[next() % words.length] as Buffer;
      n += word.copy(text, n);
      if (next() % 12 === 0 && n < text.length) text[n - 1] = 0x0a;
    }
    fs.writeSync(fd, text, 0, Math.min(text.length, 2 * quarter - at), at);
  }
  const copy = Buffer.alloc(64 * MiB);
  for (let at = 0; at < quarter; at += copy.length) {
    const n = fs.readSync(fd, copy, 0, copy.length, at);
    fs.writeSync(fd, copy, 0, n, 2 * quarter + at);
  }
  fs.closeSync(fd);
}

/** 640 random 64 KiB writes (40 MiB) into the data part of the file, through `write(offset, data)`. */
async function change(write: (offset: number, data: Buffer) => Promise<void>): Promise<void> {
  const blocks = new Set<number>();
  while (blocks.size < 640) blocks.add(randomInt((3 * quarter) / (64 * 1024)));
  for (const b of blocks) await write(b * 64 * 1024, randomBytes(64 * 1024));
}

interface Figures {
  full: number;
  /** The host's steal of CPU time during the full backup (cpuTicks). */
  fullSteal: number;
  incremental: number;
  growth: number;
  restore: number;
  verify: number;
  size: number;
}

async function ours(dir: string, file: string): Promise<Figures & { readBytes: number; attachRead: number }> {
  const repo = path.join(dir, 'repo');
  fs.mkdirSync(dir, { recursive: true });
  const daemon = await spawnBlksnapd(dir, { args: ['--attach', `${file}=disk`], stateDir: path.join(dir, 'state') });
  const { control, nbd } = daemon;
  await new Promise((r) => setTimeout(r, 300));
  const cli = (...args: string[]): Promise<string> => runTool(process.execPath, [path.join(root, 'bin/blksnap'), ...args, '--control', control]);
  try {
    await cli('backup_init', '--repo', repo);
    await dropCaches();
    const { seconds: full, steal: fullSteal } = await timedWithSteal(() => cli('backup_create', '--repo', repo, '--device', 'disk', '--diff-storage', dir, '--json'));
    const size = du(repo);
    const { NbdClient } = await import('../src/client/nbd-client.js');
    const client = await NbdClient.connect(`nbd+unix:///disk?socket=${nbd}`);
    await change((o, d) => client.write(o, d));
    await client.flush();
    await client.close();
    let readBytes = 0;
    const incremental = await timed(async () => {
      const r = JSON.parse(await cli('backup_create', '--repo', repo, '--device', 'disk', '--diff-storage', dir, '--json')) as { devices: Array<{ readBytes: number }> };
      readBytes = r.devices[0]?.readBytes ?? 0;
    });
    const growth = du(repo) - size;
    const list = JSON.parse(await cli('backup_list', '--repo', repo, '--json')) as { backups: Array<{ id: string }> };
    const id = list.backups.at(-1)?.id as string;
    await dropCaches();
    const restore = await timed(() => cli('backup_restore', '--repo', repo, '--id', id, '--device', 'disk', '--to', path.join(dir, 'restored.img'), '--json'));
    fs.rmSync(path.join(dir, 'restored.img'));
    await dropCaches();
    const verify = await timed(() => cli('backup_verify', '--repo', repo, '--json'));
    // The latest backup served as a device, read whole by nbdcopy (chunks loaded, checked, decompressed on demand).
    const served = JSON.parse(await cli('backup_attach', '--repo', repo, '--id', id, '--device', 'disk', '--name', 'served', '--json')) as { uri: string };
    await dropCaches();
    const attachRead = await timed(() => runTool('nbdcopy', [served.uri, 'null:']));
    return { full, fullSteal, incremental, growth, restore, verify, size, readBytes, attachRead };
  } finally {
    await daemon.stop();
  }
}

async function restic(dir: string, file: string, apply: () => Promise<void>): Promise<Figures> {
  const env = { RESTIC_REPOSITORY: path.join(dir, 'restic'), RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: path.join(dir, 'restic-cache') };
  await sh('restic init --repository-version 2 -q', env);
  await dropCaches();
  const { seconds: full, steal: fullSteal } = await timedWithSteal(() => sh(`restic backup -q ${file}`, env));
  const size = du(env.RESTIC_REPOSITORY);
  await apply();
  const incremental = await timed(() => sh(`restic backup -q ${file}`, env));
  const growth = du(env.RESTIC_REPOSITORY) - size;
  await dropCaches();
  const restore = await timed(() => sh(`restic restore latest -q --target ${path.join(dir, 'restic-out')}`, env));
  fs.rmSync(path.join(dir, 'restic-out'), { recursive: true, force: true });
  await dropCaches();
  const verify = await timed(() => sh('restic check -q --read-data', env));
  return { full, fullSteal, incremental, growth, restore, verify, size };
}

async function borg(dir: string, file: string, apply: () => Promise<void>): Promise<Figures> {
  const env = { BORG_REPO: path.join(dir, 'borg'), BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes', BORG_BASE_DIR: path.join(dir, 'borg-base') };
  await sh('borg init -e none', env);
  await dropCaches();
  const { seconds: full, steal: fullSteal } = await timedWithSteal(() => sh(`borg create -C zstd,1 ::a ${file}`, env));
  const size = du(env.BORG_REPO);
  await apply();
  const incremental = await timed(() => sh(`borg create -C zstd,1 ::b ${file}`, env));
  const growth = du(env.BORG_REPO) - size;
  await dropCaches();
  const out = path.join(dir, 'borg-out');
  fs.mkdirSync(out);
  const restore = await timed(() => sh(`cd ${out} && borg extract ::b`, env));
  fs.rmSync(out, { recursive: true, force: true });
  await dropCaches();
  const verify = await timed(() => sh('borg check --verify-data', env));
  return { full, fullSteal, incremental, growth, restore, verify, size };
}

/** SHA-256 bytes per second on one core (64 KiB pieces), times the cores: the hashing limit. */
function sha256Limit(): number {
  const piece = randomBytes(64 * 1024);
  const t = process.hrtime.bigint();
  let n = 0;
  while (Number(process.hrtime.bigint() - t) < 1e9) {
    createHash('sha256').update(piece).digest();
    n += piece.length;
  }
  return n * os.availableParallelism();
}

async function main(): Promise<void> {
  const missing = ['restic', 'borg'].filter((t) => spawnSyncOk(t) === false);
  if (missing.length > 0) await sh(`apt-get install -y -qq ${missing.map((t) => (t === 'borg' ? 'borgbackup' : t)).join(' ')} >/dev/null`);
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blksnap-backup-bench-'));
  try {
    const file = path.join(dir, 'disk.img');
    makeDataSet(file);
    const gib = (4 * quarter) / 2 ** 30;
    console.log(`# backup benchmark: a ${gib} GiB device file (random, text, a copy of the random part, never written), ${os.availableParallelism()} cores`);
    const o = await ours(path.join(dir, "ours"), file);
    if (process.env.BENCH_PEERS === 'none') {
      console.log(`blksnap: full ${o.full.toFixed(1)} s (the host stole ${pct(o.fullSteal)} of the CPU time), incremental ${o.incremental.toFixed(1)} s, +${(o.growth / 1e6).toFixed(0)} MB, restore ${o.restore.toFixed(1)} s, verify ${o.verify.toFixed(1)} s, repository ${(o.size / 1e6).toFixed(0)} MB, attached read ${o.attachRead.toFixed(1)} s`);
      return;
    }
    fs.mkdirSync(path.join(dir, 'r'));
    // The peers back up the file as it was before our incremental's writes, then after the same kind of change.
    const fresh = path.join(dir, 'peer.img');
    makeDataSet(fresh);
    const apply = async (): Promise<void> => {
      const fd = fs.openSync(fresh, 'r+');
      await change(async (offset, data) => {
        fs.writeSync(fd, data, 0, data.length, offset);
      });
      fs.closeSync(fd);
    };
    const r = await restic(path.join(dir, 'r'), fresh, apply);
    fs.rmSync(fresh);
    makeDataSet(fresh);
    fs.mkdirSync(path.join(dir, 'b'));
    const b = await borg(path.join(dir, 'b'), fresh, apply);
    const row = (name: string, f: Figures): string =>
      `${name.padEnd(10)}${f.full.toFixed(1).padStart(8)}${f.incremental.toFixed(1).padStart(10)}${(f.growth / 1e6).toFixed(0).padStart(10)}${f.restore.toFixed(1).padStart(10)}${f.verify.toFixed(1).padStart(9)}${(f.size / 1e6).toFixed(0).padStart(10)}`;
    console.log(`\n${'tool'.padEnd(10)}${'full s'.padStart(8)}${'incr s'.padStart(10)}${'+MB'.padStart(10)}${'restore s'.padStart(10)}${'verify s'.padStart(9)}${'repo MB'.padStart(10)}`);
    console.log(row('blksnap', o));
    console.log(row('restic', r));
    console.log(row('borg', b));
    const faster = (k: keyof Figures): number => Math.min(r[k], b[k]);
    console.log('\n# ratios to the faster (or smaller) peer, and targets');
    console.log(`full backup     ${(o.full / faster('full')).toFixed(2)}×  (target ≤ 0.5); the host stole ${pct(o.fullSteal)} of the CPU time during ours, ${pct(r.fullSteal)} during restic's, ${pct(b.fullSteal)} during borg's`);
    console.log(`incremental     ${(o.incremental / faster('incremental')).toFixed(2)}×  (target ≤ 0.1); growth ${(o.growth / (40 * MiB)).toFixed(2)}× the 40 MiB changed (target ≤ 1.5); read ${(o.readBytes / MiB).toFixed(1)} MiB`);
    console.log(`restore         ${(o.restore / faster('restore')).toFixed(2)}×  (target ≤ 0.5)`);
    console.log(`verify          ${(o.verify / faster('verify')).toFixed(2)}×  (target ≤ 0.5)`);
    console.log(`repository      ${(o.size / faster('size')).toFixed(2)}×  (target ≤ 1.05)`);
    console.log(`attached backup  nbdcopy of the latest backup served by backup_attach: ${o.attachRead.toFixed(1)} s, ${(3 * quarter / o.attachRead / 1e6).toFixed(0)} MB/s of allocated data (no peer figure)`);
    const limit = sha256Limit();
    const allocated = 3 * quarter;
    console.log(`full backup throughput ${(allocated / o.full / 1e6).toFixed(0)} MB/s of allocated data: ${((allocated / o.full / limit) * 100).toFixed(0)}% of the SHA-256 limit of ${os.availableParallelism()} cores (${(limit / 1e6).toFixed(0)} MB/s)`);
  } finally {
    fs.rmSync(dir, { recursive: true, force: true });
  }
}

function spawnSyncOk(tool: string): boolean {
  try {
    return fs.existsSync(`/usr/bin/${tool}`);
  } catch {
    return false;
  }
}

main().catch((e: unknown) => {
  console.error(e);
  process.exitCode = 1;
});
