// NBD over TCP with TLS (SPEC §10) and the limits on every listener, with real clients: nbdinfo,
// nbdcopy and qemu-img with X.509 and PSK; clients without TLS or with wrong credentials refused.
import assert from 'node:assert/strict';
import { randomBytes } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, before, describe, it } from 'node:test';
import { blksnapd, TestDaemon } from '../helpers/daemon.js';
import { RawNbd } from '../helpers/raw-nbd.js';
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

async function signCertificate(caDir: string, outDir: string, kind: 'server' | 'client'): Promise<void> {
  fs.mkdirSync(outDir, { recursive: true });
  const key = path.join(outDir, `${kind}-key.pem`);
  const csr = path.join(outDir, `${kind}.csr`);
  const ext = path.join(outDir, `${kind}.ext`);
  await check('openssl', ['req', '-newkey', 'rsa:2048', '-nodes', '-keyout', key, '-out', csr, '-subj', `/CN=${kind === 'server' ? 'localhost' : 'blksnap-client'}`]);
  fs.writeFileSync(ext, kind === 'server' ? 'subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n' : 'extendedKeyUsage=clientAuth\n');
  await check('openssl', ['x509', '-req', '-in', csr, '-CA', path.join(caDir, 'ca-cert.pem'), '-CAkey', path.join(caDir, 'ca-key.pem'), '-CAcreateserial', '-out', path.join(outDir, `${kind}-cert.pem`), '-days', '2', '-extfile', ext]);
}

describe('NBD over TLS', { skip }, () => {
  let tmp: { dir: string; remove: () => void };
  let disk: string;
  const dirs = { ca: '', server: '', client: '', clientWithCert: '', otherCa: '', clientOfOtherCa: '' };

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
  it('a handshake must finish in time; connections beyond --max-connections are closed at once', async () => {
    const daemon = await TestDaemon.start(['--handshake-timeout', '1', '--max-connections', '2', '--listen', '127.0.0.1:0', '--tls', 'off']);
    try {
      const tcpPort = Number(/nbd tcp port (\d+)/.exec(daemon.log)?.[1]);
      const idle = [await RawNbd.connect(daemon.nbdPath), await RawNbd.connect(tcpPort)];
      const third = await RawNbd.connect(daemon.nbdPath);
      assert.ok(await third.waitClosed(2000), 'a third connection is closed at once');
      const started = Date.now();
      for (const c of idle) assert.ok(await c.waitClosed(5000), 'an idle handshake is closed');
      assert.ok(Date.now() - started < 3000);
      assert.match(daemon.log, /handshake not finished within 1 s/);
      assert.match(daemon.log, /refused: 2 connections already/);
      // Room again: a real client gets in.
      const v = await run('nbdinfo', ['--list', `nbd+unix:///?socket=${daemon.nbdPath}`]);
      assert.equal(v.code, 0, v.stderr);
    } finally {
      await daemon.stop();
    }
  });
});
