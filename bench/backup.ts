// Benchmark: the backup repository, plain and encrypted, against restic (repository v2, always
// encrypted) and borg (-C zstd,1; -e none against the plain row, -e repokey-blake2 against the
// encrypted one), each on its own copy of one 4 GiB data set: full backup (caches dropped),
// incremental after 640 random 64 KiB writes (a new change each round), restore of the latest to a
// file, verify of all data, and a read of the latest served by backup_attach (ours only); wall
// times, repository sizes, ratios.
// The full backup, incremental, restore and verify run in rounds, the tools taking turns in each;
// the table and ratios take each one's median.
//   node dist/bench/backup.js          (installs restic and borgbackup from Debian when missing)
//   BENCH_BACKUP_ROUNDS=1: one round (default 3)
//   BENCH_BACKUP_ENCRYPTED=0: the plain rows only
//   BENCH_BACKUP_GIB=1: a smaller data set (each quarter 1/4 GiB)
//   BENCH_DAEMON_ARGS='--cow-copy cached': more blksnapd options (A/B runs)
//   BENCH_PEERS=none: our figures alone (A/B runs; no ratios)
//   BENCH_S3=1: rows for a bucket too: ours (encrypted) and restic's S3 backend on a single-node Ceph
//     cluster's gateway this machine runs (the tests' fixture; or BLKSNAP_TEST_S3_ENDPOINT's server)
import { spawn } from 'node:child_process';
import { createHash, randomBytes, randomInt } from 'node:crypto';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { DeleteObjectsCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { type S3Server, startS3 } from '../test/helpers/ceph.js';
import { cpuTicks, median, root, runTool, spawnBlksnapd, stealBetween } from './common.js';

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

/** One tool's repository, step by step: each timed step runs with the page cache dropped first. */
interface Tool {
  name: string;
  /** A full backup into a fresh repository (any earlier one removed): seconds, and the host's steal meanwhile. */
  full(): Promise<{ seconds: number; steal: number }>;
  /** The repository's bytes on disk (or in the bucket). */
  size(): number | Promise<number>;
  /** The 640 random 64 KiB writes, made to the tool's own copy of the data set. */
  change(): Promise<void>;
  /** An incremental backup after the change: seconds (and, for ours, the bytes it read). */
  incremental(): Promise<{ seconds: number; readBytes?: number }>;
  /** A restore of the latest backup to a file (removed after): seconds. */
  restore(): Promise<number>;
  /** A check of all data: seconds. */
  verify(): Promise<number>;
  close(): Promise<void>;
}

/** The bytes of every object under `prefix` in a bucket. */
async function bucketBytes(s3: S3Server, bucket: string, prefix: string): Promise<number> {
  let total = 0;
  let token: string | undefined;
  do {
    const r = await s3.client().send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, ...(token ? { ContinuationToken: token } : {}) }));
    for (const o of r.Contents ?? []) total += o.Size ?? 0;
    token = r.IsTruncated ? r.NextContinuationToken : undefined;
  } while (token);
  return total;
}

/** Ours, on a plain repository or (with a key file) an encrypted one; in a bucket of `s3` when given (encrypted, a fresh prefix per full backup). */
async function ours(dir: string, file: string, encrypted: boolean, s3?: { server: S3Server; bucket: string }): Promise<Tool & { attachRead(): Promise<number> }> {
  let fresh = 0;
  const repoNow = (): string => (s3 ? `s3://${s3.bucket}/ours-${fresh}` : path.join(dir, 'repo'));
  fs.mkdirSync(dir, { recursive: true });
  const keyFile = path.join(dir, 'repo.key');
  const daemon = await spawnBlksnapd(dir, { args: ['--attach', `${file}=disk`], stateDir: path.join(dir, 'state') });
  const { control, nbd } = daemon;
  await new Promise((r) => setTimeout(r, 300));
  const remote = s3 ? ['--s3-endpoint', s3.server.endpoint, '--cache-dir', path.join(dir, 'cache')] : [];
  const blksnap = (...args: string[]): Promise<string> =>
    runTool(process.execPath, [path.join(root, 'bin/blksnap'), ...args, '--control', control, ...(args[0]?.startsWith('backup_') ? remote : [])], s3 ? { ...process.env, ...s3.server.env } : process.env);
  if (encrypted) await blksnap('key', 'generate', '--file', keyFile);
  // Every command that opens the repository: with its key.
  const cli = (...args: string[]): Promise<string> => blksnap(...args, ...(encrypted && args[0]?.startsWith('backup_') ? ['--key-file', keyFile] : []));
  const latest = async (): Promise<string> => (JSON.parse(await cli('backup_list', '--repo', repoNow(), '--json')) as { backups: Array<{ id: string }> }).backups.at(-1)?.id as string;
  const create = (): Promise<string> => cli('backup_create', '--repo', repoNow(), '--device', 'disk', '--diff-storage', dir, '--json');
  return {
    name: s3 ? 'blksnap+s3' : encrypted ? 'blksnap+e' : 'blksnap',
    async full() {
      // A fresh prefix in a bucket, the last one emptied (as restic's is): the cluster's disk holds a few rounds of a 4 GiB set.
      if (s3) await emptyPrefix(s3.server, s3.bucket, `ours-${fresh++}/`);
      else fs.rmSync(repoNow(), { recursive: true, force: true });
      await (encrypted ? cli('backup_init', '--repo', repoNow()) : cli('backup_init', '--repo', repoNow(), '--encryption', 'none'));
      await dropCaches();
      return await timedWithSteal(create);
    },
    size: () => (s3 ? bucketBytes(s3.server, s3.bucket, `ours-${fresh}/`) : du(repoNow())),
    async change() {
      const { NbdClient } = await import('../src/client/nbd-client.js');
      const client = await NbdClient.connect(`nbd+unix:///disk?socket=${nbd}`);
      await change((o, d) => client.write(o, d));
      await client.flush();
      await client.close();
    },
    async incremental() {
      let readBytes = 0;
      const seconds = await timed(async () => {
        readBytes = (JSON.parse(await create()) as { devices: Array<{ readBytes: number }> }).devices[0]?.readBytes ?? 0;
      });
      return { seconds, readBytes };
    },
    async restore() {
      const id = await latest();
      await dropCaches();
      const seconds = await timed(() => cli('backup_restore', '--repo', repoNow(), '--id', id, '--device', 'disk', '--to', path.join(dir, 'restored.img'), '--json'));
      fs.rmSync(path.join(dir, 'restored.img'));
      return seconds;
    },
    async verify() {
      await dropCaches();
      return await timed(() => cli('backup_verify', '--repo', repoNow(), '--json'));
    },
    /** The latest backup served as a device, read whole by nbdcopy (chunks loaded, checked, decompressed on demand). */
    async attachRead() {
      const served = JSON.parse(await cli('backup_attach', '--repo', repoNow(), '--id', await latest(), '--device', 'disk', '--name', 'served', '--json')) as { uri: string };
      await dropCaches();
      const seconds = await timed(() => runTool('nbdcopy', [served.uri, 'null:']));
      await cli('detach', '--device', 'served');
      return seconds;
    },
    close: () => daemon.stop(),
  };
}

/** A peer working on its own copy of the data set (`file`), which `change` writes to directly. */
function peer(name: string, file: string, env: NodeJS.ProcessEnv, commands: { repo: string; fresh: string[]; init: string; full: string; incremental: string; restore: (out: string) => string; verify: string }): Tool {
  const dir = path.dirname(file);
  return {
    name,
    async full() {
      for (const d of commands.fresh) fs.rmSync(d, { recursive: true, force: true });
      await sh(commands.init, env);
      await dropCaches();
      return await timedWithSteal(() => sh(commands.full, env));
    },
    size: () => du(commands.repo),
    async change() {
      const fd = fs.openSync(file, 'r+');
      await change(async (offset, data) => {
        fs.writeSync(fd, data, 0, data.length, offset);
      });
      fs.closeSync(fd);
    },
    incremental: async () => ({ seconds: await timed(() => sh(commands.incremental, env)) }),
    async restore() {
      const out = path.join(dir, `${name}-out`);
      fs.mkdirSync(out);
      await dropCaches();
      const seconds = await timed(() => sh(commands.restore(out), env));
      fs.rmSync(out, { recursive: true, force: true });
      return seconds;
    },
    async verify() {
      await dropCaches();
      return await timed(() => sh(commands.verify, env));
    },
    close: async () => undefined,
  };
}

function restic(dir: string, file: string): Tool {
  const env = { RESTIC_REPOSITORY: path.join(dir, 'restic'), RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: path.join(dir, 'restic-cache') };
  return peer('restic', file, env, {
    repo: env.RESTIC_REPOSITORY,
    fresh: [env.RESTIC_REPOSITORY, env.RESTIC_CACHE_DIR],
    init: 'restic init --repository-version 2 -q',
    full: `restic backup -q ${file}`,
    incremental: `restic backup -q ${file}`,
    restore: (out) => `restic restore latest -q --target ${out}`,
    verify: 'restic check -q --read-data',
  });
}

/** restic with its S3 backend on the same gateway as ours (its repository emptied before each full backup). */
function resticS3(dir: string, file: string, s3: { server: S3Server; bucket: string }): Tool {
  const env = { ...s3.server.env, RESTIC_REPOSITORY: `s3:${s3.server.endpoint}/${s3.bucket}/restic`, RESTIC_PASSWORD: 'bench', RESTIC_CACHE_DIR: path.join(dir, 'restic-s3-cache') };
  const tool = peer('restic+s3', file, env, {
    repo: '',
    fresh: [env.RESTIC_CACHE_DIR],
    init: 'restic init --repository-version 2 -q',
    full: `restic backup -q ${file}`,
    incremental: `restic backup -q ${file}`,
    restore: (out) => `restic restore latest -q --target ${out}`,
    verify: 'restic check -q --read-data',
  });
  return {
    ...tool,
    async full() {
      await emptyPrefix(s3.server, s3.bucket, 'restic/');
      return tool.full();
    },
    size: () => bucketBytes(s3.server, s3.bucket, 'restic/'),
  };
}

/** Removes every object under `prefix`. */
async function emptyPrefix(s3: S3Server, bucket: string, prefix: string): Promise<void> {
  for (;;) {
    const r = await s3.client().send(new ListObjectsV2Command({ Bucket: bucket, Prefix: prefix, MaxKeys: 1000 }));
    const keys = (r.Contents ?? []).flatMap((o) => (o.Key ? [{ Key: o.Key }] : []));
    if (keys.length === 0) return;
    await s3.client().send(new DeleteObjectsCommand({ Bucket: bucket, Delete: { Objects: keys, Quiet: true } }));
  }
}

/** borg, plain (-e none) or encrypted (-e repokey-blake2: AES-256-CTR with a BLAKE2b MAC, chunk ids keyed). */
function borg(dir: string, file: string, encrypted: boolean): Tool {
  const env = { BORG_REPO: path.join(dir, 'borg'), BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK: 'yes', BORG_BASE_DIR: path.join(dir, 'borg-base'), BORG_PASSPHRASE: 'bench' };
  return peer(encrypted ? 'borg+e' : 'borg', file, env, {
    repo: env.BORG_REPO,
    fresh: [env.BORG_REPO, env.BORG_BASE_DIR],
    init: encrypted ? 'borg init -e repokey-blake2' : 'borg init -e none',
    full: `borg create -C zstd,1 ::a ${file}`,
    incremental: `borg create -C zstd,1 ::b ${file}`,
    restore: (out) => `cd ${out} && borg extract ::b`,
    verify: 'borg check --verify-data',
  });
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

/** Times one step of every tool, `rounds` times, the tools taking turns within each round (so a slow spell of the host falls on all of them). */
async function inRounds<T>(tools: Tool[], rounds: number, step: (t: Tool) => Promise<T>): Promise<T[][]> {
  const out: T[][] = tools.map(() => []);
  for (let r = 0; r < rounds; r++) for (const [i, t] of tools.entries()) out[i]?.push(await step(t));
  return out;
}

const seconds = (xs: number[]): string => xs.map((x) => x.toFixed(1)).join(' ');

async function main(): Promise<void> {
  const missing = ['restic', 'borg'].filter((t) => spawnSyncOk(t) === false);
  if (missing.length > 0) await sh(`apt-get install -y -qq ${missing.map((t) => (t === 'borg' ? 'borgbackup' : t)).join(' ')} >/dev/null`);
  const rounds = Math.max(1, Number(process.env.BENCH_BACKUP_ROUNDS ?? 3));
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), 'blksnap-backup-bench-'));
  const tools: Tool[] = [];
  let s3Server: S3Server | null = null;
  try {
    const gib = (4 * quarter) / 2 ** 30;
    console.log(`# backup benchmark: a ${gib} GiB device file (random, text, a copy of the random part, never written), ${os.availableParallelism()} cores, median of ${rounds} rounds`);
    // Each tool its own copy of the data set (made alike, random content drawn anew), as ours changes through the daemon.
    const dataSet = (name: string): string => {
      fs.mkdirSync(path.join(dir, name));
      const file = path.join(dir, name, 'disk.img');
      makeDataSet(file);
      return file;
    };
    const encrypted = process.env.BENCH_BACKUP_ENCRYPTED !== '0';
    const withPeers = process.env.BENCH_PEERS !== 'none';
    const o = await ours(path.join(dir, 'ours'), dataSet('ours'), false);
    tools.push(o);
    const oe = encrypted ? await ours(path.join(dir, 'ours-e'), dataSet('ours-e'), true) : null;
    if (oe) tools.push(oe);
    if (withPeers) tools.push(restic(path.join(dir, 'r'), dataSet('r')), borg(path.join(dir, 'b'), dataSet('b'), false));
    if (withPeers && encrypted) tools.push(borg(path.join(dir, 'be'), dataSet('be'), true));
    if (process.env.BENCH_S3 === '1') {
      // A single-node Ceph cluster's gateway on this machine (the tests' fixture), or BLKSNAP_TEST_S3_ENDPOINT's server.
      s3Server = await startS3();
      const s3 = { server: s3Server, bucket: await s3Server.bucket() };
      tools.push(await ours(path.join(dir, 'ours-s3'), dataSet('ours-s3'), true, s3), resticS3(path.join(dir, 'rs'), dataSet('rs'), s3));
    }
    const fulls = await inRounds(tools, rounds, (t) => t.full());
    const sizes = await Promise.all(tools.map((t) => t.size()));
    // Each round a new change of 640 blocks and an incremental after it, the tools taking turns; the
    // growth and the bytes read are the first round's (one change's worth).
    const growths: number[] = tools.map(() => 0);
    const incrementalRounds = await inRounds(tools, rounds, async (t) => {
      const i = tools.indexOf(t);
      const before = await t.size();
      await t.change();
      const r = await t.incremental();
      if (growths[i] === 0) growths[i] = (await t.size()) - before;
      return r;
    });
    const incrementals = incrementalRounds.map((rs) => ({ seconds: median(rs.map((r) => r.seconds)), readBytes: rs[0]?.readBytes ?? 0 }));
    const restores = await inRounds(tools, rounds, (t) => t.restore());
    const verifies = await inRounds(tools, rounds, (t) => t.verify());
    const attachRead = await o.attachRead();
    const attachReadEncrypted = oe ? await oe.attachRead() : null;
    const fig = tools.map((t, i) => ({
      name: t.name,
      full: median((fulls[i] ?? []).map((f) => f.seconds)),
      steal: median((fulls[i] ?? []).map((f) => f.steal)),
      incremental: incrementals[i]?.seconds ?? 0,
      readBytes: incrementals[i]?.readBytes ?? 0,
      growth: growths[i] ?? 0,
      restore: median(restores[i] ?? []),
      verify: median(verifies[i] ?? []),
      size: sizes[i] ?? 0,
    }));
    type Figures = (typeof fig)[number];
    const named = (name: string): Figures | undefined => fig.find((f) => f.name === name);
    console.log(`\n${'tool'.padEnd(10)}${'full s'.padStart(8)}${'incr s'.padStart(10)}${'+MB'.padStart(10)}${'restore s'.padStart(10)}${'verify s'.padStart(9)}${'repo MB'.padStart(10)}`);
    for (const f of fig) {
      console.log(`${f.name.padEnd(10)}${f.full.toFixed(1).padStart(8)}${f.incremental.toFixed(1).padStart(10)}${(f.growth / 1e6).toFixed(0).padStart(10)}${f.restore.toFixed(1).padStart(10)}${f.verify.toFixed(1).padStart(9)}${(f.size / 1e6).toFixed(0).padStart(10)}`);
    }
    console.log('(+e: encrypted: ours AES-256-GCM with HMAC-SHA-256 chunk ids, borg repokey-blake2; restic always encrypts)');
    console.log('\n# every round (s), in the order run');
    for (const [i, f] of fig.entries()) {
      console.log(`${f.name.padEnd(11)}full ${seconds((fulls[i] ?? []).map((x) => x.seconds))}; incremental ${seconds((incrementalRounds[i] ?? []).map((x) => x.seconds))}; restore ${seconds(restores[i] ?? [])}; verify ${seconds(verifies[i] ?? [])}; the host stole ${pct(f.steal)} of the CPU time in its full backups (median)`);
    }
    const us = fig[0] as Figures;
    const allocated = 3 * quarter;
    console.log(`\nattached backup  nbdcopy of the latest backup served by backup_attach: ${attachRead.toFixed(1)} s, ${(allocated / attachRead / 1e6).toFixed(0)} MB/s of allocated data${attachReadEncrypted === null ? '' : `; encrypted ${attachReadEncrypted.toFixed(1)} s`} (no peer figure)`);
    const limit = sha256Limit();
    console.log(`full backup throughput ${(allocated / us.full / 1e6).toFixed(0)} MB/s of allocated data: ${((allocated / us.full / limit) * 100).toFixed(0)}% of the SHA-256 limit of ${os.availableParallelism()} cores (${(limit / 1e6).toFixed(0)} MB/s)`);
    const ue = named('blksnap+e');
    if (ue) {
      console.log('\n# the encrypted repository against the plain one, same data (target ≤ 1.10 each)');
      for (const k of ['full', 'incremental', 'restore', 'verify'] as const) console.log(`${k.padEnd(16)}${(ue[k] / us[k]).toFixed(2)}×`);
      console.log(`repository      ${(ue.size / us.size).toFixed(3)}× the bytes (salts, nonces and tags)`);
    }
    const [us3, rs3, local] = [named('blksnap+s3'), named('restic+s3'), named('blksnap+e')];
    if (us3 && rs3 && local) {
      console.log("\n# the bucket (a Ceph RADOS Gateway on this machine): ours against restic's S3 backend on it, and against our local encrypted repository");
      console.log(`full backup     ${(us3.full / rs3.full).toFixed(2)}× restic's  (target ≤ 0.5); ${(us3.full / local.full).toFixed(2)}× our local  (target ≤ 1.5)`);
      console.log(`incremental     ${(us3.incremental / rs3.incremental).toFixed(2)}× restic's  (target ≤ 0.1)`);
      console.log(`restore         ${(us3.restore / rs3.restore).toFixed(2)}× restic's  (target ≤ 0.5); ${(us3.restore / local.restore).toFixed(2)}× our local`);
      console.log(`verify          ${(us3.verify / rs3.verify).toFixed(2)}× restic's; ${(us3.verify / local.verify).toFixed(2)}× our local`);
    }
    if (!withPeers) return;
    const ratios = (title: string, mine: Figures, peers: Figures[], keys: ReadonlyArray<'full' | 'incremental' | 'restore' | 'verify' | 'size'>): void => {
      const faster = (k: (typeof keys)[number]): number => Math.min(...peers.map((p) => p[k]));
      const targets = { full: '≤ 0.5', incremental: '≤ 0.1', restore: '≤ 0.5', verify: '≤ 0.5', size: '≤ 1.05' };
      console.log(`\n# ${title}: ratios of the medians to the faster (or smaller) of ${peers.map((p) => p.name).join(' and ')}, and targets`);
      for (const k of keys) {
        const extra = k === 'incremental' ? `; growth ${(mine.growth / (40 * MiB)).toFixed(2)}× the 40 MiB changed (target ≤ 1.5); read ${(mine.readBytes / MiB).toFixed(1)} MiB` : '';
        console.log(`${(k === 'size' ? 'repository' : k === 'full' ? 'full backup' : k).padEnd(16)}${(mine[k] / faster(k)).toFixed(2)}×  (target ${targets[k]})${extra}`);
      }
    };
    ratios('plain', us, [named('restic'), named('borg')].filter((f): f is Figures => f !== undefined), ['full', 'incremental', 'restore', 'verify', 'size']);
    if (ue) ratios('encrypted', ue, [named('restic'), named('borg+e')].filter((f): f is Figures => f !== undefined), ['full', 'incremental', 'restore', 'verify', 'size']);
  } finally {
    for (const t of tools) await t.close().catch(() => undefined);
    await s3Server?.stop();
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
