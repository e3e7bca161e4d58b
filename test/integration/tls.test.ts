// NBD over TCP with TLS and the limits on every listener, with real clients: nbdinfo,
// nbdcopy and qemu-img with X.509 and PSK; clients without TLS or with wrong credentials refused.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { blksnapd, TestDaemon } from '../helpers/daemon.js';
import { NBD, RawNbd } from '../helpers/raw-nbd.js';
import { startTls } from '../helpers/tls-nbd.js';
import { check, missing, run, tempDir } from '../helpers/tools.js';

const MiB = 1024 * 1024;
const skip = missing('openssl', 'nbdinfo', 'nbdcopy', 'qemu-img');
const OPT_GO = 7;
const OPT_STARTTLS = 5;
const REP_ERR_TLS_REQD = 0x80000005;

/** A CA, and certificates it signs (QEMU's file names), made with openssl. */
async function makeCa(dir: string, name: string): Promise<void> {
  fs.mkdirSync(dir, { recursive: true });
  await check('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', path.join(dir, 'ca-key.pem'), '-out', path.join(dir, 'ca-cert.pem'), '-days', '2', '-subj', `/CN=${name}`]);
}

async function signCertificate(caDir: string, outDir: string, kind: 'server' | 'client', subject = kind === 'server' ? '/CN=localhost' : '/CN=blksnap-client'): Promise<void> {
  fs.mkdirSync(outDir, { recursive: true });
  const key = path.join(outDir, `${kind}-key.pem`);
  const csr = path.join(outDir, `${kind}.csr`);
  const ext = path.join(outDir, `${kind}.ext`);
  await check('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', csr, '-subj', subject]);
  fs.writeFileSync(ext, kind === 'server' ? 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' : 'extendedKeyUsage=clientAuth\n');
  await check('openssl', ['x509', '-req', '-in', csr, '-CA', path.join(caDir, 'ca-cert.pem'), '-CAkey', path.join(caDir, 'ca-key.pem'), '-CAcreateserial', '-out', path.join(outDir, `${kind}-cert.pem`), '-days', '2', '-extfile', ext]);
}

/** A client certificate our CA signed that expired in 2020 (openssl ca takes explicit dates). */
async function signExpiredCertificate(caDir: string, outDir: string): Promise<void> {
  fs.mkdirSync(path.join(outDir, 'newcerts'), { recursive: true });
  fs.writeFileSync(path.join(outDir, 'index.txt'), '');
  fs.writeFileSync(path.join(outDir, 'serial'), '1000\n');
  const cnf = path.join(outDir, 'ca.cnf');
  fs.writeFileSync(cnf, `[ca]\ndefault_ca = d\n[d]\ndatabase = ${outDir}/index.txt\nnew_certs_dir = ${outDir}/newcerts\nserial = ${outDir}/serial\ndefault_md = sha256\npolicy = p\n[p]\ncommonName = supplied\n`);
  const csr = path.join(outDir, 'client.csr');
  await check('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', path.join(outDir, 'client-key.pem'), '-out', csr, '-subj', '/CN=expired-client']);
  const ext = path.join(outDir, 'client.ext');
  fs.writeFileSync(ext, 'extendedKeyUsage=clientAuth\n');
  await check('openssl', ['ca', '-batch', '-config', cnf, '-cert', path.join(caDir, 'ca-cert.pem'), '-keyfile', path.join(caDir, 'ca-key.pem'), '-in', csr, '-out', path.join(outDir, 'client-cert.pem'), '-startdate', '20200101000000Z', '-enddate', '20200102000000Z', '-extfile', ext, '-notext']);
}

/** NBD_OPT_GO and a 4 KiB read; what came back, or the error that ended it. */
async function tryRead(client: RawNbd, exportName: string): Promise<Buffer | Error> {
  try {
    await client.handshake(exportName, { afterStartTls: true });
    client.request(NBD.READ, 0, 4096);
    const r = await client.simpleReply(4096);
    return r.error === 0 ? r.data : new Error(`read error ${r.error}`);
  } catch (e) {
    return e as Error;
  } finally {
    client.close();
  }
}

function credentialsIn(dir: string): { cert: Buffer; key: Buffer } {
  return { cert: fs.readFileSync(path.join(dir, 'client-cert.pem')), key: fs.readFileSync(path.join(dir, 'client-key.pem')) };
}

describe('NBD over TLS', { skip }, () => {
  let tmp: { dir: string; remove: () => void };
  let disk: string;
  const dirs = { ca: '', server: '', client: '', clientWithCert: '', otherCa: '', clientOfOtherCa: '', selfSigned: '', expired: '', operator: '' };

  before(async () => {
    tmp = tempDir();
    for (const k of Object.keys(dirs) as Array<keyof typeof dirs>) dirs[k] = path.join(tmp.dir, k);
    await makeCa(dirs.ca, 'blksnap test CA');
    await signCertificate(dirs.ca, dirs.server, 'server');
    fs.copyFileSync(path.join(dirs.ca, 'ca-cert.pem'), path.join(dirs.server, 'ca-cert.pem'));
    // Clients: the CA only; the CA and a client certificate; a certificate of another CA.
    fs.mkdirSync(dirs.client);
    fs.copyFileSync(path.join(dirs.ca, 'ca-cert.pem'), path.join(dirs.client, 'ca-cert.pem'));
    await signCertificate(dirs.ca, dirs.clientWithCert, 'client');
    fs.copyFileSync(path.join(dirs.ca, 'ca-cert.pem'), path.join(dirs.clientWithCert, 'ca-cert.pem'));
    await makeCa(dirs.otherCa, 'another CA');
    await signCertificate(dirs.otherCa, dirs.clientOfOtherCa, 'client');
    fs.copyFileSync(path.join(dirs.ca, 'ca-cert.pem'), path.join(dirs.clientOfOtherCa, 'ca-cert.pem'));
    // What a hostile client offers: a self-signed certificate, and one of our CA that has expired.
    fs.mkdirSync(dirs.selfSigned);
    await check('openssl', ['req', '-x509', '-newkey', 'rsa:2048', '-nodes', '-keyout', path.join(dirs.selfSigned, 'client-key.pem'), '-out', path.join(dirs.selfSigned, 'client-cert.pem'), '-days', '2', '-subj', '/CN=blksnap-client']);
    await signExpiredCertificate(dirs.ca, dirs.expired);
    await signCertificate(dirs.ca, dirs.operator, 'client', '/O=Example/CN=backup01');
    fs.copyFileSync(path.join(dirs.ca, 'ca-cert.pem'), path.join(dirs.operator, 'ca-cert.pem'));
    disk = path.join(tmp.dir, 'disk');
    fs.writeFileSync(disk, randomBytes(4 * MiB));
  });
  after(() => tmp?.remove());

  async function tlsDaemon(...tlsArgs: string[]): Promise<TestDaemon> {
    return TestDaemon.start(['--listen', '127.0.0.1:0', ...tlsArgs, '--attach', disk]);
  }

  function port(daemon: TestDaemon): number {
    const m = /nbd tcp port (\d+)/.exec(daemon.log);
    assert.ok(m, daemon.log);
    return Number(m[1]);
  }

  it('X.509: nbdinfo, nbdcopy and qemu-img over nbds://; a client without TLS gets TLS_REQD, never data', async () => {
    const daemon = await tlsDaemon('--tls-certs', dirs.server);
    try {
      const p = port(daemon);
      const uri = `nbds://localhost:${p}/disk?tls-certificates=${dirs.client}`;
      const info = JSON.parse(await check('nbdinfo', ['--json', uri])) as { TLS: boolean; exports: Array<{ 'export-size': number }> };
      assert.equal(info.TLS, true);
      assert.equal(info.exports[0]?.['export-size'], 4 * MiB);
      const copy = path.join(tmp.dir, 'copy-x509');
      await check('nbdcopy', ['--connections=2', uri, copy]);
      assert.ok(fs.readFileSync(copy).equals(fs.readFileSync(disk)), 'nbdcopy over TLS copied the disk exactly');
      const qemuCopy = path.join(tmp.dir, 'copy-qemu');
      await check('qemu-img', ['convert', '--object', `tls-creds-x509,id=tls0,dir=${dirs.client},endpoint=client`, '--image-opts', `driver=nbd,host=localhost,port=${p},export=disk,tls-creds=tls0`, '-O', 'raw', qemuCopy]);
      assert.ok(fs.readFileSync(qemuCopy).equals(fs.readFileSync(disk)), 'qemu-img over TLS copied the disk exactly');
      // No TLS: refused by a real client ...
      const plain = await run('nbdinfo', [`nbd://localhost:${p}/disk`]);
      assert.notEqual(plain.code, 0);
      // ... and on the wire: OPT_GO answered with TLS_REQD, EXPORT_NAME ends the connection.
      const raw = await RawNbd.connect(p);
      await raw.read(18);
      raw.write(Buffer.from([0, 0, 0, 1]));
      const go = Buffer.alloc(4 + 4 + 2);
      go.writeUInt32BE(4, 0);
      go.write('disk', 4);
      raw.sendOption(OPT_GO, go);
      const reply = await raw.readOptionReply();
      assert.equal(reply.type, REP_ERR_TLS_REQD);
      raw.sendOption(1 /* EXPORT_NAME */, Buffer.from('disk'));
      assert.ok(await raw.waitClosed(), 'EXPORT_NAME without TLS closes the connection');
      // Bytes right behind STARTTLS, before its reply, end the connection too.
      const eager = await RawNbd.connect(p);
      await eager.read(18);
      eager.write(Buffer.from([0, 0, 0, 1]));
      eager.sendOption(OPT_STARTTLS);
      eager.sendOption(OPT_GO, go);
      assert.ok(await eager.waitClosed(), 'data after STARTTLS before its reply closes the connection');
      // A client that does not trust our CA gives up.
      const distrust = await run('nbdinfo', [`nbds://localhost:${p}/disk?tls-certificates=${dirs.otherCa}`]);
      assert.notEqual(distrust.code, 0);
      assert.ok(daemon.isAlive);
    } finally {
      await daemon.stop();
    }
  });

  it('X.509 with --tls-verify-peer: a client certificate of our CA is needed', async () => {
    const daemon = await tlsDaemon('--tls-certs', dirs.server, '--tls-verify-peer');
    try {
      const p = port(daemon);
      const ok = await run('nbdinfo', ['--size', `nbds://localhost:${p}/disk?tls-certificates=${dirs.clientWithCert}`]);
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(ok.stdout.trim(), String(4 * MiB));
      const noCert = await run('nbdinfo', ['--size', `nbds://localhost:${p}/disk?tls-certificates=${dirs.client}`]);
      assert.notEqual(noCert.code, 0, 'a client without a certificate is refused');
      const wrongCa = await run('nbdinfo', ['--size', `nbds://localhost:${p}/disk?tls-certificates=${dirs.clientOfOtherCa}`]);
      assert.notEqual(wrongCa.code, 0, 'a certificate of another CA is refused');
      assert.ok(daemon.isAlive);
    } finally {
      await daemon.stop();
    }
  });

  it('--tls-verify-peer refuses what a hostile client offers: a self-signed certificate, another CA\'s, an expired one, none', async () => {
    const daemon = await tlsDaemon('--tls-certs', dirs.server, '--tls-verify-peer');
    try {
      const p = port(daemon);
      const expected = fs.readFileSync(disk).subarray(0, 4096);
      const good = await tryRead(await startTls(p, credentialsIn(dirs.clientWithCert)), 'disk');
      assert.ok(Buffer.isBuffer(good) && good.equals(expected), `a certificate of our CA reads: ${String(good)}`);
      for (const [what, dir] of [['self-signed', dirs.selfSigned], ['another CA', dirs.clientOfOtherCa], ['expired', dirs.expired]] as const) {
        const r = await startTls(p, credentialsIn(dir)).then((c) => tryRead(c, 'disk'), (e: Error) => e);
        assert.ok(r instanceof Error, `a ${what} certificate got data`);
      }
      const none = await startTls(p, {}).then((c) => tryRead(c, 'disk'), (e: Error) => e);
      assert.ok(none instanceof Error, 'no certificate got data');
      assert.match(daemon.log, /client certificate refused: .*SELF_SIGNED/);
      assert.match(daemon.log, /client certificate refused: CERT_HAS_EXPIRED/);
      assert.ok(daemon.isAlive);
    } finally {
      await daemon.stop();
    }
  });

  it('--tls-authz: each identity opens only its exports, read-only where the rule says; others get NBD_REP_ERR_POLICY', async () => {
    const pskFile = path.join(tmp.dir, 'authz.psk');
    const aliceKey = randomBytes(32);
    fs.writeFileSync(pskFile, `alice:${aliceKey.toString('hex')}\nmallory:${randomBytes(32).toString('hex')}\n`);
    const authz = path.join(tmp.dir, 'authz.json');
    fs.writeFileSync(authz, JSON.stringify({ rules: [{ dn: 'CN=backup01,O=Example', exports: ['disk'], access: 'ro' }, { psk: 'alice', exports: ['dis?', 'vm-*'], access: 'rw' }] }));
    const second = path.join(tmp.dir, 'second');
    fs.writeFileSync(second, Buffer.alloc(MiB));
    const x509 = await TestDaemon.start(['--listen', '127.0.0.1:0', '--tls-certs', dirs.server, '--tls-verify-peer', '--tls-authz', authz, '--attach', disk, '--attach', second]);
    try {
      const p = port(x509);
      // The operator's certificate: disk read-only; second refused; LIST shows disk alone.
      const operator = credentialsIn(dirs.operator);
      assert.ok(Buffer.isBuffer(await tryRead(await startTls(p, operator), 'disk')));
      const refused = await tryRead(await startTls(p, operator), 'second');
      assert.match(String(refused), /type 0x80000002/, 'another export: NBD_REP_ERR_POLICY');
      const ro = await startTls(p, operator);
      await ro.handshake('disk', { afterStartTls: true });
      assert.ok(ro.transmissionFlags & 2, 'advertised read-only');
      ro.request(NBD.WRITE, 0, 512, 0, Buffer.alloc(512, 1));
      assert.equal((await ro.simpleReply()).error, 1, 'a write is EPERM');
      ro.close();
      const lister = await startTls(p, operator);
      lister.sendOption(3);
      const names: string[] = [];
      for (let r = await lister.readOptionReply(); r.type === 2; r = await lister.readOptionReply()) names.push(r.data.subarray(4).toString());
      lister.close();
      assert.deepEqual(names, ['disk']);
      // A certificate of our CA that no rule names may open nothing, not even a list.
      const stranger = await startTls(p, credentialsIn(dirs.clientWithCert));
      stranger.sendOption(3);
      assert.equal((await stranger.readOptionReply()).type, 0x80000002);
      stranger.close();
      // The real client sees it read-only too.
      const info = JSON.parse(await check('nbdinfo', ['--json', `nbds://localhost:${p}/disk?tls-certificates=${dirs.operator}`])) as { exports: Array<{ 'is_read_only': boolean }> };
      assert.equal(info.exports[0]?.is_read_only, true);
    } finally {
      await x509.stop();
    }
    const psk = await TestDaemon.start(['--listen', '127.0.0.1:0', '--tls-psk', pskFile, '--tls-authz', authz, '--attach', disk, '--attach', second]);
    try {
      const p = port(psk);
      const alice = await startTls(p, { psk: { identity: 'alice', key: aliceKey } });
      await alice.handshake('disk', { afterStartTls: true });
      alice.request(NBD.WRITE, 0, 512, 0, fs.readFileSync(disk).subarray(0, 512));
      assert.equal((await alice.simpleReply()).error, 0, 'alice writes disk');
      alice.close();
      assert.match(String(await tryRead(await startTls(p, { psk: { identity: 'alice', key: aliceKey } }), 'second')), /type 0x80000002/);
      const size = await check('nbdinfo', ['--size', `nbds://alice@localhost:${p}/disk?tls-psk-file=${pskFile}`]);
      assert.equal(size.trim(), String(4 * MiB));
      const mallory = await run('nbdinfo', ['--size', `nbds://mallory@localhost:${p}/disk?tls-psk-file=${pskFile}`]);
      assert.notEqual(mallory.code, 0, 'an identity without a rule opens nothing');
      assert.ok(psk.isAlive);
    } finally {
      await psk.stop();
    }
  });

  it('PSK (nbdkit\'s file): the right key works with nbdinfo and nbdcopy; a wrong key or user is refused', async () => {
    const pskFile = path.join(tmp.dir, 'keys.psk');
    fs.writeFileSync(pskFile, `# users\nalice:${randomBytes(32).toString('hex')}\n`);
    const wrongFile = path.join(tmp.dir, 'wrong.psk');
    fs.writeFileSync(wrongFile, `alice:${randomBytes(32).toString('hex')}\nbob:${randomBytes(32).toString('hex')}\n`);
    const daemon = await tlsDaemon('--tls-psk', pskFile);
    try {
      const p = port(daemon);
      const size = await check('nbdinfo', ['--size', `nbds://alice@localhost:${p}/disk?tls-psk-file=${pskFile}`]);
      assert.equal(size.trim(), String(4 * MiB));
      const copy = path.join(tmp.dir, 'copy-psk');
      await check('nbdcopy', [`nbds://alice@localhost:${p}/disk?tls-psk-file=${pskFile}`, copy]);
      assert.ok(fs.readFileSync(copy).equals(fs.readFileSync(disk)));
      // Writes over TLS, large payloads in many TLS records: what lands is what was sent.
      const source = path.join(tmp.dir, 'new-content');
      fs.writeFileSync(source, randomBytes(4 * MiB));
      await check('nbdcopy', ['--request-size=1048576', source, `nbds://alice@localhost:${p}/disk?tls-psk-file=${pskFile}`]);
      const back = path.join(tmp.dir, 'back');
      await check('nbdcopy', [daemon.uri('disk'), back]);
      assert.ok(fs.readFileSync(back).equals(fs.readFileSync(source)), 'the device holds what came over TLS');
      assert.notEqual((await run('nbdinfo', ['--size', `nbds://alice@localhost:${p}/disk?tls-psk-file=${wrongFile}`])).code, 0, 'wrong key');
      assert.notEqual((await run('nbdinfo', ['--size', `nbds://bob@localhost:${p}/disk?tls-psk-file=${wrongFile}`])).code, 0, 'unknown user');
      assert.ok(daemon.isAlive);
    } finally {
      await daemon.stop();
    }
  });

  it('--listen without TLS credentials refuses to start unless --tls off', async () => {
    const { dir, remove } = tempDir();
    try {
      const r = await run(process.execPath, [blksnapd, '--state-dir', dir, '--control', path.join(dir, 'c'), '--nbd', path.join(dir, 'n'), '--listen', '127.0.0.1:0'], { timeoutMs: 10_000 });
      assert.equal(r.code, 2);
      assert.match(r.stderr, /EINVAL: --listen .* needs TLS/);
      const bad = await run(process.execPath, [blksnapd, '--state-dir', dir, '--control', path.join(dir, 'c'), '--nbd', path.join(dir, 'n'), '--listen', '127.0.0.1:0', '--tls-certs', path.join(dir, 'nothing')], { timeoutMs: 10_000 });
      assert.equal(bad.code, 1);
      assert.match(bad.stderr, /ENOENT: TLS certificate directory: cannot read .*ca-cert.pem/);
    } finally {
      remove();
    }
  });
});

describe('limits on every listener', () => {
  it('a handshake must finish in time; each listener has its own cap, so idle TCP clients cannot lock out the Unix socket', async () => {
    const daemon = await TestDaemon.start(['--handshake-timeout', '2', '--max-connections', '2', '--listen', '127.0.0.1:0', '--tls', 'off']);
    try {
      const tcpPort = Number(/nbd tcp port (\d+)/.exec(daemon.log)?.[1]);
      const idleTcp = [];
      for (let i = 0; i < 8; i++) idleTcp.push(await RawNbd.connect(tcpPort));
      // Two TCP clients hold the TCP listener's places; the other six are closed at once.
      let closedAtOnce = 0;
      for (const c of idleTcp.slice(2)) if (await c.waitClosed(1000)) closedAtOnce++;
      assert.equal(closedAtOnce, 6);
      assert.match(daemon.log, /refused: 2 connections already on the tcp/);
      // The Unix socket still takes a real client while TCP is full.
      const v = await run('nbdinfo', ['--list', `nbd+unix:///?socket=${daemon.nbdPath}`]);
      assert.equal(v.code, 0, v.stderr);
      const idleUnix = [await RawNbd.connect(daemon.nbdPath), await RawNbd.connect(daemon.nbdPath)];
      const third = await RawNbd.connect(daemon.nbdPath);
      assert.ok(await third.waitClosed(2000), 'a third Unix connection is closed at once');
      const started = Date.now();
      for (const c of [...idleTcp.slice(0, 2), ...idleUnix]) assert.ok(await c.waitClosed(5000), 'an idle handshake is closed');
      assert.ok(Date.now() - started < 4000);
      assert.match(daemon.log, /handshake not finished within 2 s/);
    } finally {
      await daemon.stop();
    }
  });

  it('--idle-timeout: a TCP client idle after its handshake is closed; one with a request in flight or on the Unix socket is not', async () => {
    const { dir, remove } = tempDir();
    const disk = path.join(dir, 'disk');
    fs.writeFileSync(disk, Buffer.alloc(MiB));
    const daemon = await TestDaemon.start(['--idle-timeout', '1', '--listen', '127.0.0.1:0', '--tls', 'off', '--attach', disk]);
    try {
      const tcpPort = Number(/nbd tcp port (\d+)/.exec(daemon.log)?.[1]);
      const tcp = await RawNbd.connect(tcpPort);
      await tcp.handshake('disk');
      const unix = await RawNbd.connect(daemon.nbdPath);
      await unix.handshake('disk');
      // Busy for 1.5 s: a request every 300 ms keeps it open.
      for (let i = 0; i < 5; i++) {
        tcp.request(NBD.READ, 0, 4096);
        assert.equal((await tcp.simpleReply(4096)).error, 0);
        await new Promise((r) => setTimeout(r, 300));
      }
      assert.ok(!tcp.isClosed);
      assert.ok(await tcp.waitClosed(3000), 'closed once idle');
      assert.match(daemon.log, /idle for 1 s \(--idle-timeout\)/);
      assert.ok(!unix.isClosed, 'the Unix socket has no idle timeout');
      unix.close();
    } finally {
      await daemon.stop();
      remove();
    }
  });
});
