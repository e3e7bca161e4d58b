// Owns the S3 server of the tests: a single-node Ceph cluster from Debian's packages (one monitor, one
// BlueStore OSD on a sparse file, one RADOS Gateway on 127.0.0.1), all its state in a temp directory,
// no auth between its daemons, a user made with radosgw-admin; stopped by the pids it wrote and
// removed. Or, when BLKSNAP_TEST_S3_ENDPOINT is set, that server (with AWS_ACCESS_KEY_ID and
// AWS_SECRET_ACCESS_KEY from the environment) and nothing started: the same tests against AWS or MinIO.
import { spawnSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { CreateBucketCommand, S3Client } from '@aws-sdk/client-s3';
import { tempDir } from './tools.js';

export interface S3Server {
  endpoint: string;
  /** The same gateway over HTTPS with a certificate of the test's own CA (caFile), where the fixture made one. */
  https?: { endpoint: string; caFile: string };
  accessKey: string;
  secretKey: string;
  /** The environment a CLI or worker needs to reach it. */
  env: NodeJS.ProcessEnv;
  /** A new bucket of the server's, its name; with `objectLock`, made with S3 Object Lock (and so versioned). */
  bucket(o?: { objectLock?: boolean }): Promise<string>;
  client(): S3Client;
  /** Stops the gateway (the cluster goes on) and starts it again: a gateway killed mid-backup. */
  restartGateway?(pause: () => Promise<void>): Promise<void>;
  stop(): Promise<void>;
}

/** Why the tests cannot have a Ceph cluster here (its programs missing), or false. */
export function cephMissing(): string | false {
  if (process.env.BLKSNAP_TEST_S3_ENDPOINT) return false;
  for (const p of ['ceph-mon', 'ceph-osd', 'radosgw', 'radosgw-admin', 'ceph']) if (spawnSync('sh', ['-c', `command -v ${p}`]).status !== 0) return `${p} is not installed (Debian: ceph-mon ceph-osd radosgw; scripts/prepare.sh installs them)`;
  return false;
}

function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const port = (server.address() as net.AddressInfo).port;
      server.close(() => resolve(port));
    });
  });
}

function must(program: string, args: string[], env: NodeJS.ProcessEnv, what: string): string {
  const r = spawnSync(program, args, { env, encoding: 'utf8', timeout: 120_000 });
  if (r.status !== 0) throw new Error(`${what}: ${program} ${args.join(' ')} exited ${r.status ?? r.signal}: ${r.stderr}`);
  return r.stdout;
}

async function until(what: string, ms: number, test: () => boolean): Promise<void> {
  const deadline = Date.now() + ms;
  while (!test()) {
    if (Date.now() > deadline) throw new Error(`Ceph: ${what} not within ${ms / 1000} s`);
    await new Promise((r) => setTimeout(r, 300));
  }
}

function clientOf(endpoint: string, accessKey: string, secretKey: string): S3Client {
  // As src/repository/s3-backend.ts: the SDK's notice that its releases after January 2027 need Node 22 is no fault of the tests.
  process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';
  return new S3Client({ endpoint, region: 'us-east-1', forcePathStyle: true, credentials: { accessKeyId: accessKey, secretAccessKey: secretKey }, requestChecksumCalculation: 'WHEN_REQUIRED', responseChecksumValidation: 'WHEN_REQUIRED' });
}

function serverOf(endpoint: string, accessKey: string, secretKey: string, stop: () => Promise<void>, restartGateway?: S3Server['restartGateway'], https?: S3Server['https']): S3Server {
  const client = clientOf(endpoint, accessKey, secretKey);
  return {
    endpoint,
    ...(https ? { https } : {}),
    accessKey,
    secretKey,
    env: { AWS_ACCESS_KEY_ID: accessKey, AWS_SECRET_ACCESS_KEY: secretKey, AWS_REGION: 'us-east-1' },
    async bucket(o = {}) {
      const name = `blksnap-test-${randomUUID().slice(0, 8)}`;
      await client.send(new CreateBucketCommand({ Bucket: name, ...(o.objectLock ? { ObjectLockEnabledForBucket: true } : {}) }));
      return name;
    },
    client: () => client,
    ...(restartGateway ? { restartGateway } : {}),
    stop,
  };
}

/** Starts the tests' S3 server (see above). */
export async function startS3(): Promise<S3Server> {
  const given = process.env.BLKSNAP_TEST_S3_ENDPOINT;
  if (given) return serverOf(given, process.env.AWS_ACCESS_KEY_ID ?? '', process.env.AWS_SECRET_ACCESS_KEY ?? '', async () => {});
  // A new OSD now and then asks the monitor before it has the monitor's map, is refused ('wrong
  // fsid') and exits: a cluster that did not come up is removed and made anew, up to three times.
  for (let attempt = 1; ; attempt++) {
    try {
      return await startCeph();
    } catch (e) {
      if (attempt >= 3) throw e;
    }
  }
}

async function startCeph(): Promise<S3Server> {
  const { dir, remove } = tempDir('blksnap-ceph-');
  const [monPort, rgwPort, rgwTlsPort] = [await freePort(), await freePort(), await freePort()];
  const conf = path.join(dir, 'ceph.conf');
  const fsid = randomUUID();
  for (const d of ['mon', 'osd', 'run', 'log', 'rgw', 'tls']) fs.mkdirSync(path.join(dir, d));
  // A CA of the test's own and a certificate for 127.0.0.1 it signed: the gateway's HTTPS endpoint.
  const tls = path.join(dir, 'tls');
  const openssl = (...args: string[]): string => must('openssl', args, process.env, 'the test CA');
  openssl('req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-days', '2', '-subj', '/CN=blksnap test CA', '-keyout', `${tls}/ca.key`, '-out', `${tls}/ca.pem`);
  openssl('req', '-newkey', 'rsa:2048', '-nodes', '-subj', '/CN=127.0.0.1', '-keyout', `${tls}/key.pem`, '-out', `${tls}/req.pem`);
  fs.writeFileSync(`${tls}/ext.cnf`, 'subjectAltName = IP:127.0.0.1\n');
  openssl('x509', '-req', '-in', `${tls}/req.pem`, '-CA', `${tls}/ca.pem`, '-CAkey', `${tls}/ca.key`, '-CAcreateserial', '-days', '2', '-extfile', `${tls}/ext.cnf`, '-out', `${tls}/cert.pem`);
  fs.writeFileSync(
    conf,
    `[global]
fsid = ${fsid}
mon host = v1:127.0.0.1:${monPort}
mon initial members = a
auth cluster required = none
auth service required = none
auth client required = none
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
run dir = ${dir}/run
admin socket = ${dir}/run/$name.asok
log file = ${dir}/log/$name.log
pid file = ${dir}/run/$name.pid
osd objectstore = bluestore
osd data = ${dir}/osd
bluestore block path = ${dir}/osd.block
bluestore block create = true
bluestore block size = 8589934592
bluestore fsck on mount = false
osd memory target = 939524096
mon data = ${dir}/mon
osd max object name len = 256
osd max object namespace len = 64
ms crc data = false
ms crc header = false
rgw gc obj min wait = 0
rgw gc processor period = 10
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:${rgwPort} ssl_endpoint=127.0.0.1:${rgwTlsPort} ssl_certificate=${dir}/tls/cert.pem ssl_private_key=${dir}/tls/key.pem
rgw data = ${dir}/rgw
`,
  );
  // glibc hands each large message buffer its own fresh mapping unless told to keep freed memory.
  const env = { ...process.env, CEPH_CONF: conf, MALLOC_MMAP_THRESHOLD_: String(64 * 1024 * 1024), MALLOC_TRIM_THRESHOLD_: String(256 * 1024 * 1024) };
  const pids = (): number[] =>
    fs
      .readdirSync(path.join(dir, 'run'))
      .filter((f) => f.endsWith('.pid'))
      .map((f) => Number(fs.readFileSync(path.join(dir, 'run', f), 'utf8').trim()))
      .filter((p) => Number.isSafeInteger(p) && p > 0);
  const alive = (pid: number): boolean => {
    try {
      process.kill(pid, 0);
      return true;
    } catch {
      return false;
    }
  };
  const stopPids = async (which: number[]): Promise<void> => {
    for (const pid of which) if (alive(pid)) process.kill(pid, 'SIGTERM');
    const deadline = Date.now() + 20_000;
    while (which.some(alive) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
    for (const pid of which) if (alive(pid)) process.kill(pid, 'SIGKILL');
  };
  const stop = async (): Promise<void> => {
    await stopPids(pids());
    remove();
  };
  const gatewayUp = (): boolean => spawnSync('curl', ['-s', '-o', '/dev/null', `http://127.0.0.1:${rgwPort}`]).status === 0;
  try {
    must('ceph-mon', ['--mkfs', '-i', 'a', '--fsid', fsid], env, 'the monitor');
    must('ceph-mon', ['-i', 'a'], env, 'the monitor');
    await until('the monitor', 30_000, () => spawnSync('ceph', ['-s', '--connect-timeout', '2'], { env }).status === 0);
    const osdUuid = randomUUID();
    const id = must('ceph', ['osd', 'new', osdUuid], env, 'the OSD').trim();
    must('ceph-osd', ['-i', id, '--mkfs', '--osd-uuid', osdUuid], env, 'the OSD');
    spawnSync('ceph', ['osd', 'crush', 'add', `osd.${id}`, '1', 'root=default', 'host=localhost'], { env });
    must('ceph-osd', ['-i', id], env, 'the OSD');
    await until('the OSD', 60_000, () => /1 up/.test(spawnSync('ceph', ['osd', 'stat'], { env, encoding: 'utf8' }).stdout ?? ''));
    must('radosgw', ['-n', 'client.rgw.a'], env, 'the gateway');
    await until('the gateway', 90_000, gatewayUp);
    const accessKey = 'BLKSNAPTEST';
    const secretKey = randomUUID().replace(/-/g, '');
    must('radosgw-admin', ['user', 'create', '--uid=blksnap-test', '--display-name=blksnap test', `--access-key=${accessKey}`, `--secret=${secretKey}`], env, 'the S3 user');
    const restartGateway = async (pause: () => Promise<void>): Promise<void> => {
      await stopPids([Number(fs.readFileSync(path.join(dir, 'run', 'client.rgw.a.pid'), 'utf8').trim())]);
      await pause();
      must('radosgw', ['-n', 'client.rgw.a'], env, 'the gateway');
      await until('the gateway again', 90_000, gatewayUp);
    };
    return serverOf(`http://127.0.0.1:${rgwPort}`, accessKey, secretKey, stop, restartGateway, { endpoint: `https://127.0.0.1:${rgwTlsPort}`, caFile: `${tls}/ca.pem` });
  } catch (e) {
    const logs = fs.existsSync(path.join(dir, 'log')) ? fs.readdirSync(path.join(dir, 'log')).map((f) => `${f}: ${fs.readFileSync(path.join(dir, 'log', f), 'utf8').slice(-1500)}`) : [];
    await stop();
    throw new Error(`${(e as Error).message}\n${logs.join('\n')}`);
  }
}
