// An encrypted repository end to end against a real daemon: full and incremental backups, restore,
// rollback, verify, prune and backup_attach bit-identical; no plaintext of the device anywhere in the
// repository (a plain repository beside it holds it, so the search can find); salts and nonces never
// repeated; the key given to the daemon for an attach never on its disk or in its log; a flipped bit
// in each kind of object, and a record copied over another, found by verify and refused by restore
// naming the object, with nothing written; the key commands of the CLI.
import assert from 'node:assert/strict';
import { randomBytes, randomFillSync, randomInt } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { createBackup } from '../../src/backup/backup-create.js';
import { pruneRepository } from '../../src/backup/backup-prune.js';
import { restoreBackup } from '../../src/backup/backup-restore.js';
import { verifyRepository } from '../../src/backup/backup-verify.js';
import { BlksnapClient } from '../../src/client/connection.js';
import { NbdClient } from '../../src/client/nbd-client.js';
import { NONCE_BYTES, SALT_BYTES } from '../../src/repository/cipher.js';
import { newKeyFileText, parseKeyFile } from '../../src/repository/keys.js';
import { entriesOf, RECORD_HEADER, readPackIndex } from '../../src/repository/pack.js';
import { packIds } from '../../src/repository/chunk-index.js';
import { Repository } from '../../src/repository/repository.js';
import { keyFileSource, withDaemon, writeRandomBlocks } from '../helpers/backup.js';
import { blksnapCli } from '../helpers/daemon.js';
import { check, missing, run, tempDir } from '../helpers/tools.js';

const KiB = 1024;
const MiB = 1024 * KiB;
const BLOCK = 64 * KiB;

/** Every file under `dir`, recursively. */
function filesUnder(dir: string): string[] {
  return fs.readdirSync(dir, { recursive: true, withFileTypes: true }).filter((e) => e.isFile()).map((e) => path.join(e.parentPath ?? e.path, e.name));
}

/** Writes a key file as `blksnap key generate` does; its path and its key. */
function makeKeyFile(dir: string, name = 'repo.key'): { file: string; key: Buffer } {
  const file = path.join(dir, name);
  fs.writeFileSync(file, newKeyFileText(), { mode: 0o600 });
  return { file, key: parseKeyFile(fs.readFileSync(file, 'utf8'), file) };
}

/**
 * Changes the base64 digit of `file` at `at` to another digit (a flipped bit could make it a quote
 * and the file no JSON at all, which is another test): the sealed bytes change, the JSON does not.
 */
function bendBase64(file: string, at: number): void {
  const bytes = fs.readFileSync(file);
  bytes[at] = bytes[at] === 0x41 ? 0x42 : 0x41;
  fs.writeFileSync(file, bytes);
}

/** Flips one bit of `file` at `at`. */
function flipBit(file: string, at: number): void {
  const bytes = fs.readFileSync(file);
  bytes[at] = (bytes[at] as number) ^ 0x10;
  fs.writeFileSync(file, bytes);
}

describe('encrypted repository', { skip: missing('nbdcopy', 'qemu-io', 'qemu-img') }, () => {
  it('full, incremental, restore, rollback, verify, prune and attach are bit-identical; no marker on disk; no salt and nonce twice; the attach key never on the daemon\'s disk or log', async () => {
    const { dir: keys, remove } = tempDir('blksnap-keys-');
    const { file: keyPath, key } = makeKeyFile(keys);
    try {
      await withDaemon({ 'e.img': 24 * MiB }, async (daemon, repo, dir) => {
        const client = await BlksnapClient.connect(daemon.controlPath);
        const nbd = await NbdClient.connect(daemon.uri('e.img'));
        try {
          // Random data, a marker repeated, and log-like text holding the marker (compressible).
          const marker = `BLKSNAP-MARKER-${randomBytes(8).toString('hex')}`;
          for (let at = 0; at < 8 * MiB; at += MiB) await nbd.write(at, randomFillSync(Buffer.alloc(MiB)));
          await nbd.write(8 * MiB, Buffer.alloc(2 * MiB, marker));
          const text = Array.from({ length: 40_000 }, (_, i) => `line ${i}: ${i % 3 === 0 ? marker : 'nothing to see'}\n`).join('');
          await nbd.write(10 * MiB, Buffer.from(text).subarray(0, 2 * MiB));
          const copy = async (name: string): Promise<string> => {
            const file = path.join(dir, name);
            await check('nbdcopy', [daemon.uri('e.img'), file]);
            return file;
          };

          const b1 = await createBackup(repo, client, { devices: ['e.img'], diffStorage: dir });
          const copy1 = await copy('copy1');
          const touched = await writeRandomBlocks(nbd, 30, 24 * MiB, BLOCK);
          const b2 = await createBackup(repo, client, { devices: ['e.img'], diffStorage: dir });
          assert.equal(b2.devices[0]?.mode, 'incremental');
          assert.equal(b2.devices[0]?.readBytes, touched.size * BLOCK, 'the incremental read only what CBT marked');
          const copy2 = await copy('copy2');

          for (const [b, saved] of [[b1, copy1], [b2, copy2]] as const) {
            const to = path.join(dir, `restored-${b.id}`);
            assert.equal((await restoreBackup(repo, { id: b.id, device: 'e.img', to })).mode, 'file');
            await check('cmp', [to, saved]);
          }
          const verified = await verifyRepository(repo, {});
          assert.equal(verified.ok, true, verified.problems.join('; '));
          assert.ok(verified.checkedChunks >= 8 * MiB / BLOCK);

          // Rollback: the blocks written since b2 go back, and only those.
          for (let i = 0; i < 10; i++) await nbd.write(randomInt((24 * MiB) / BLOCK) * BLOCK, randomFillSync(Buffer.alloc(BLOCK)));
          const rolled = await restoreBackup(repo, { id: b2.id, device: 'e.img', to: 'device:e.img', client });
          assert.equal(rolled.mode, 'rollback');
          assert.ok(rolled.writtenBytes <= 10 * BLOCK);
          await check('cmp', [await copy('now'), copy2]);

          // backup_attach: the daemon is given the key for this attach only.
          const served = await daemon.json<{ uri: string }>('backup_attach', '--repo', repo.location, '--id', b1.id, '--device', 'e.img', '--name', 'old', '--key-file', keyPath);
          await check('qemu-img', ['compare', '-f', 'raw', '-F', 'raw', copy1, served.uri]);
          await daemon.json('detach', '--device', 'old');
          const noKey = await daemon.cli('backup_attach', '--repo', repo.location, '--id', b1.id, '--device', 'e.img', '--name', 'nokey');
          assert.equal(noKey.code, 13, noKey.stderr);
          assert.match(noKey.stderr, /EACCES: .* is encrypted/);
          const secret = repo.cipher.secret as Buffer;
          for (const form of [secret.toString('base64'), secret.toString('hex'), key.toString('hex')]) assert.ok(!daemon.log.includes(form), 'the key is not in the log');
          for (const file of filesUnder(dir).filter((f) => !f.startsWith(repo.location) && !f.endsWith('.img') && !/copy|now|restored/.test(f))) {
            const bytes = fs.readFileSync(file);
            assert.ok(!bytes.includes(secret) && !bytes.includes(secret.toString('base64')), `${file} holds no key`);
          }

          // Nothing of the marker in any file of the encrypted repository; a plain one holds it.
          const plain = await Repository.init(path.join(dir, 'plain'), { zstdLevel: null });
          await createBackup(plain, client, { devices: ['e.img'], diffStorage: dir, full: true });
          assert.ok(filesUnder(plain.location).some((f) => fs.readFileSync(f).includes(marker)), 'the search finds the marker where it is stored in the clear');
          for (const file of filesUnder(repo.location)) assert.ok(!fs.readFileSync(file).includes(marker), `${file} holds the marker`);

          // Every sealed thing's salt and nonce: the records of every pack, and every other object.
          const used = new Map<string, string>();
          const note = (bytes: Buffer, what: string): void => {
            const nonce = bytes.toString('hex', 0, SALT_BYTES + NONCE_BYTES);
            assert.equal(used.get(nonce), undefined, `${what} reuses the salt and nonce of ${used.get(nonce)}`);
            used.set(nonce, what);
          };
          const salts = new Set<string>();
          for (const id of await packIds(repo.backend)) {
            const pack = fs.readFileSync(path.join(repo.location, 'chunks', `${id}.pack`));
            for (const e of entriesOf(await readPackIndex(repo.backend, id, repo.cipher))) {
              const stored = pack.subarray(e.offset + RECORD_HEADER, e.offset + RECORD_HEADER + e.storedLength);
              note(stored, `record at ${e.offset} of pack ${id}`);
              salts.add(stored.toString('hex', 0, SALT_BYTES));
            }
          }
          assert.ok(salts.size >= 2, `the records came from ${salts.size} writer(s)`);
          for (const file of filesUnder(repo.location).filter((f) => !f.endsWith('.pack') && !f.endsWith('config.json') && !f.includes('/keys/'))) note(fs.readFileSync(file), path.relative(repo.location, file));
          assert.ok(used.size >= 128 + 30, `${used.size} sealed things`);

          // Prune down to the newest: it verifies and restores as before.
          const pruned = await pruneRepository(repo, { keepLast: 1 });
          assert.deepEqual(pruned.removed, [b1.id]);
          const after = await verifyRepository(repo, {});
          assert.equal(after.ok, true, after.problems.join('; '));
          const last = path.join(dir, 'restored-after-prune');
          await restoreBackup(repo, { id: b2.id, device: 'e.img', to: last });
          await check('cmp', [last, copy2]);
        } finally {
          await nbd.close();
          await client.close();
        }
      }, [], keyFileSource(key));
    } finally {
      remove();
    }
  });

  it('a flipped bit in a chunk record, an index page, an index root, a pack index, a manifest, the key or the config is found by verify and refused by restore, naming it; a record copied over another is refused; nothing is written', async () => {
    const { dir: keys, remove } = tempDir('blksnap-keys-');
    const { file: keyPath, key } = makeKeyFile(keys);
    try {
      await withDaemon({ 't.img': 4 * MiB }, async (daemon, repo, dir) => {
        await check('qemu-io', ['-f', 'raw', '-c', 'write -P 7 0 1M', daemon.uri('t.img')]);
        const nbd = await NbdClient.connect(daemon.uri('t.img'));
        await nbd.write(MiB, randomFillSync(Buffer.alloc(2 * MiB)));
        await nbd.close();
        const b = await daemon.json<{ id: string }>('backup_create', '--repo', repo.location, '--device', 't.img', '--diff-storage', dir, '--key-file', keyPath);
        const pristine = path.join(dir, 'pristine');
        fs.cpSync(repo.location, pristine, { recursive: true });
        // A pack with two random chunks: stored uncompressed, so their records have one length.
        let pack = '';
        let random: ReturnType<typeof entriesOf> = [];
        for (const id of await packIds(repo.backend)) {
          const stored = entriesOf(await readPackIndex(repo.backend, id, repo.cipher)).filter((e) => e.storedLength > e.size);
          if (stored.length >= 2 && stored.length > random.length) [pack, random] = [id, stored];
        }
        assert.ok(random.length >= 2 && random[0]?.storedLength === random[1]?.storedLength, 'two random chunks stored alike');
        const [first, second] = random as [(typeof random)[0], (typeof random)[0]];
        const one = (sub: string): string => {
          const found = filesUnder(path.join(repo.location, sub));
          assert.ok(found.length > 0, sub);
          return found[0] as string;
        };
        const cases: Array<{ what: string; damage: () => void; verify: RegExp; restore: RegExp }> = [
          { what: 'a chunk record', damage: () => flipBit(path.join(repo.location, 'chunks', `${pack}.pack`), first.offset + RECORD_HEADER + 100), verify: new RegExp(`chunk ${first.digest.toString('hex')} is damaged: the record fails authentication`), restore: /EIO: .*offset \d+.*damaged/ },
          {
            what: 'a record copied over another of its length',
            damage: () => {
              const file = path.join(repo.location, 'chunks', `${pack}.pack`);
              const bytes = fs.readFileSync(file);
              bytes.copy(bytes, second.offset + RECORD_HEADER, first.offset + RECORD_HEADER, first.offset + RECORD_HEADER + first.storedLength);
              fs.writeFileSync(file, bytes);
            },
            verify: new RegExp(`chunk ${second.digest.toString('hex')} is damaged: the record fails authentication`),
            restore: /EIO: .*offset \d+.*damaged/,
          },
          { what: 'an index page', damage: () => flipBit(one('pages'), 40), verify: /index page [0-9a-f]{64} of t\.img is damaged/, restore: /EIO: index page [0-9a-f]{64} of .* fails authentication/ },
          { what: 'an index root', damage: () => flipBit(path.join(repo.location, 'backups', b.id, fs.readdirSync(path.join(repo.location, 'backups', b.id)).find((n) => n.endsWith('.index')) as string), 40), verify: /backup .*: index .*\.index fails authentication/, restore: /EIO: index .*\.index fails authentication/ },
          { what: 'a pack index', damage: () => flipBit(path.join(repo.location, 'chunks', `${pack}.idx`), 60), verify: new RegExp(`pack index .*chunks/${pack}\\.idx fails authentication`), restore: new RegExp(`EIO: pack index .*chunks/${pack}\\.idx fails authentication`) },
          { what: 'a manifest', damage: () => flipBit(path.join(repo.location, 'backups', b.id, 'manifest.json'), 30), verify: /manifest .*manifest\.json fails authentication/, restore: /EIO: manifest .*manifest\.json fails authentication/ },
          { what: 'the key', damage: () => flipBit(one('keys'), fs.readFileSync(one('keys'), 'utf8').indexOf('"sealed"') + 20), verify: /EACCES: no key opens .*keys\/[0-9a-f]+\.json/, restore: /EACCES: no key opens .*keys\/[0-9a-f]+\.json/ },
          { what: 'the config', damage: () => bendBase64(path.join(repo.location, 'config.json'), fs.readFileSync(path.join(repo.location, 'config.json'), 'utf8').indexOf('"sealed"') + 20), verify: /EIO: .*config\.json fails authentication/, restore: /EIO: .*config\.json fails authentication/ },
        ];
        for (const c of cases) {
          fs.rmSync(repo.location, { recursive: true });
          fs.cpSync(pristine, repo.location, { recursive: true });
          c.damage();
          const v = await daemon.cli('backup_verify', '--repo', repo.location, '--key-file', keyPath);
          assert.notEqual(v.code, 0, `${c.what}: verify fails`);
          assert.match(v.stdout + v.stderr, c.verify, c.what);
          const to = path.join(dir, 'restored');
          const r = await daemon.cli('backup_restore', '--repo', repo.location, '--id', b.id, '--device', 't.img', '--to', to, '--key-file', keyPath);
          assert.notEqual(r.code, 0, `${c.what}: restore fails`);
          assert.match(r.stderr, c.restore, c.what);
          assert.ok(!fs.existsSync(to), `${c.what}: nothing written`);
        }
        // The pristine copy restores, so each failure above was the damage's.
        fs.rmSync(repo.location, { recursive: true });
        fs.cpSync(pristine, repo.location, { recursive: true });
        const to = path.join(dir, 'restored');
        const r = await daemon.cli('backup_restore', '--repo', repo.location, '--id', b.id, '--device', 't.img', '--to', to, '--key-file', keyPath);
        assert.equal(r.code, 0, r.stderr);
        await check('cmp', [to, path.join(dir, 't.img')]);
      }, [], keyFileSource(key));
    } finally {
      remove();
    }
  });

  it('the CLI: backup_init encrypts by default; key add, list, passwd and remove; a wrong password is EACCES (13) and writes nothing', async () => {
    const { dir, remove } = tempDir('blksnap-key-cli-');
    const cli = (env: Record<string, string>, ...args: string[]) => run(process.execPath, [blksnapCli, ...args], { env: { ...process.env, BLKSNAP_PASSWORD: '', ...env } });
    try {
      const repo = path.join(dir, 'repo');
      const keyFile = path.join(dir, 'k1');
      assert.equal((await cli({}, 'key', 'generate', '--file', keyFile)).code, 0);
      assert.equal(fs.statSync(keyFile).mode & 0o777, 0o600);
      assert.equal((await cli({}, 'key', 'generate', '--file', keyFile)).code, 17, 'a key file is never overwritten');
      const init = await cli({}, 'backup_init', '--repo', repo, '--key-file', keyFile, '--json');
      assert.equal(init.code, 0, init.stderr);
      assert.equal((JSON.parse(init.stdout) as { encryption: string }).encryption, 'aes-256-gcm');
      const noKey = await cli({}, 'backup_list', '--repo', repo);
      assert.equal(noKey.code, 13);
      assert.match(noKey.stderr, /EACCES: .* is encrypted: give --password-file FILE, --key-file FILE or BLKSNAP_PASSWORD/);

      fs.writeFileSync(path.join(dir, 'pw1'), 'first password\n');
      const added = await cli({}, 'key', 'add', '--repo', repo, '--key-file', keyFile, '--new-password-file', path.join(dir, 'pw1'), '--json');
      assert.equal(added.code, 0, added.stderr);
      const listed = JSON.parse((await cli({ BLKSNAP_PASSWORD: 'first password' }, 'key', 'list', '--repo', repo, '--json')).stdout) as { keys: Array<{ id: string; type: string; created: string; host: string }> };
      assert.deepEqual(listed.keys.map((k) => k.type).sort(), ['keyfile', 'password']);
      for (const k of listed.keys) assert.ok(k.id && k.created && k.host);

      fs.writeFileSync(path.join(dir, 'pw2'), 'second password\n');
      const passwd = await cli({}, 'key', 'passwd', '--repo', repo, '--password-file', path.join(dir, 'pw1'), '--new-password-file', path.join(dir, 'pw2'), '--json');
      assert.equal(passwd.code, 0, passwd.stderr);
      const wrong = await cli({ BLKSNAP_PASSWORD: 'first password' }, 'backup_restore', '--repo', repo, '--id', '20261207T000000.000Z-0000', '--device', 'x', '--to', path.join(dir, 'out'), '--offline');
      assert.equal(wrong.code, 13, wrong.stderr);
      assert.match(wrong.stderr, /EACCES: no key opens .*tried BLKSNAP_PASSWORD on keys\//);
      assert.ok(!fs.existsSync(path.join(dir, 'out')));
      assert.equal((await cli({}, 'backup_list', '--repo', repo, '--password-file', path.join(dir, 'pw2'))).code, 0, 'the new password opens it');

      const keyFileId = listed.keys.find((k) => k.type === 'keyfile')?.id as string;
      assert.equal((await cli({}, 'key', 'remove', '--repo', repo, '--password-file', path.join(dir, 'pw2'), '--id', keyFileId)).code, 0);
      assert.equal((await cli({}, 'backup_list', '--repo', repo, '--key-file', keyFile)).code, 13, 'the removed key opens nothing');
      const ids = (JSON.parse((await cli({}, 'key', 'list', '--repo', repo, '--password-file', path.join(dir, 'pw2'), '--json')).stdout) as { keys: Array<{ id: string }> }).keys;
      const last = await cli({}, 'key', 'remove', '--repo', repo, '--password-file', path.join(dir, 'pw2'), '--id', ids[0]?.id as string);
      assert.equal(last.code, 16);
      assert.match(last.stderr, /EBUSY: key .* is the last key/);

      const plain = await cli({}, 'backup_init', '--repo', path.join(dir, 'plain'), '--encryption', 'none', '--json');
      assert.equal((JSON.parse(plain.stdout) as { encryption: string }).encryption, 'none');
      assert.equal((await cli({}, 'backup_list', '--repo', path.join(dir, 'plain'))).code, 0, 'a plain repository needs no key');
    } finally {
      remove();
    }
  });
});
