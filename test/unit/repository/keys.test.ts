// An encrypted repository's keys: several open it, a removed one no longer does, the last cannot be
// removed, a wrong password is EACCES naming what was tried at no cost beyond the KDF, and a key
// object bent anywhere opens nothing and is found under the repository's secret.
import assert from 'node:assert/strict';
import { randomBytes, scrypt } from 'node:crypto';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { addKey, checkKeys, type KeySource, listKeys, removeKey } from '../../../src/repository/keys.js';
import { Repository } from '../../../src/repository/repository.js';
import { tempDir } from '../../helpers/tools.js';

const keyFile = (key: Buffer): KeySource => ({ kind: 'keyfile', key, from: '--key-file k' });
const password = (text: string): KeySource => ({ kind: 'password', password: Buffer.from(text), from: `password '${text}'` });

async function withRepository(body: (location: string, fileKey: Buffer) => Promise<void>): Promise<void> {
  const t = tempDir('blksnap-keys-');
  try {
    const fileKey = randomBytes(32);
    const location = path.join(t.dir, 'r');
    await Repository.init(location, { key: keyFile(fileKey) });
    await body(location, fileKey);
  } finally {
    t.remove();
  }
}

describe('repository keys', () => {
  it('a key file and an added password both open it; a removed key no longer does; the last key stays', async () => {
    await withRepository(async (location, fileKey) => {
      const repo = await Repository.open(location, { keys: [keyFile(fileKey)] });
      assert.equal(repo.config.encryption, 'aes-256-gcm');
      const added = await addKey(repo.backend, repo.cipher.secret as Buffer, password('correct horse'));
      const keys = await listKeys(repo.backend);
      assert.deepEqual(keys.map((k) => k.type).sort(), ['keyfile', 'password']);
      const byPassword = await Repository.open(location, { keys: [password('correct horse')] });
      assert.equal(byPassword.keyId, added.id);
      assert.ok(byPassword.cipher.secret?.equals(repo.cipher.secret as Buffer), 'both keys unwrap the one secret');
      await removeKey(repo.backend, repo.keyId as string);
      await assert.rejects(Repository.open(location, { keys: [keyFile(fileKey)] }), /EACCES: no key opens .*: tried --key-file k: the repository has no key-file key/);
      await assert.rejects(removeKey(repo.backend, added.id), /EBUSY: key [0-9a-f]+ is the last key/);
      await assert.rejects(removeKey(repo.backend, 'feedfeedfeedfeed'), /ENOENT/);
      assert.deepEqual(await checkKeys(repo.backend, repo.cipher.secret as Buffer), []);
    });
  });

  it('no key given, or a wrong one, is EACCES naming the sources tried; a wrong password costs no more CPU than its KDF', async () => {
    await withRepository(async (location, fileKey) => {
      const repo = await Repository.open(location, { keys: [keyFile(fileKey)] });
      await addKey(repo.backend, repo.cipher.secret as Buffer, password('right'));
      await assert.rejects(Repository.open(location), /EACCES: .* is encrypted: give --password-file/);
      await assert.rejects(Repository.open(location, { keys: [keyFile(randomBytes(32)), password('wrong')] }), /EACCES: no key opens .*: tried --key-file k on keys\/[0-9a-f]+\.json; password 'wrong' on keys\/[0-9a-f]+\.json$/);
      const kdf = process.cpuUsage();
      await new Promise((resolve, reject) => scrypt('wrong', randomBytes(32), 32, { N: 2 ** 16, r: 8, p: 1, maxmem: 2 ** 30 }, (e, k) => (e ? reject(e) : resolve(k))));
      const kdfSeconds = cpuSeconds(process.cpuUsage(kdf));
      const start = process.cpuUsage();
      await assert.rejects(Repository.open(location, { keys: [password('wrong')] }), /EACCES/);
      const openSeconds = cpuSeconds(process.cpuUsage(start));
      assert.ok(openSeconds - kdfSeconds < 0.25, `a wrong password took ${openSeconds.toFixed(3)} s of CPU, its KDF ${kdfSeconds.toFixed(3)} s`);
    });
  });

  it('a key object with one bit flipped anywhere opens nothing (EACCES naming it) and backup_verify\'s check names it', async () => {
    await withRepository(async (location, fileKey) => {
      const repo = await Repository.open(location, { keys: [keyFile(fileKey)] });
      const file = path.join(location, 'keys', `${repo.keyId}.json`);
      const original = fs.readFileSync(file);
      // Every kind of field: the date, the host, the KDF's salt, the sealed secret, the code.
      const object = JSON.parse(original.toString('utf8')) as { created: string; host: string; kdf: { salt: string }; sealed: string; mac: string };
      const fields = { created: object.created, host: object.host, 'kdf salt': object.kdf.salt, sealed: object.sealed, mac: object.mac };
      for (const [field, text] of Object.entries(fields)) {
        const at = original.indexOf(text) + Math.floor(text.length / 2);
        const bent = Buffer.from(original);
        bent[at] = (bent[at] as number) ^ 0x01;
        fs.writeFileSync(file, bent);
        const found = await checkKeys(repo.backend, repo.cipher.secret as Buffer);
        assert.equal(found.length, 1, `${field}: ${found.join('; ')}`);
        assert.match(found[0] as string, new RegExp(`keys/${repo.keyId}.json is damaged`));
        if (field !== 'mac') await assert.rejects(Repository.open(location, { keys: [keyFile(fileKey)] }), new RegExp(`EACCES: no key opens .*keys/${repo.keyId}\\.json`), field);
      }
      fs.writeFileSync(file, original);
      assert.equal((await Repository.open(location, { keys: [keyFile(fileKey)] })).keyId, repo.keyId);
    });
  });

  it('a flipped bit in the config (its sealed part or a field in the clear) is EIO naming config.json, not a wrong key', async () => {
    await withRepository(async (location, fileKey) => {
      const file = path.join(location, 'config.json');
      const original = fs.readFileSync(file);
      const config = JSON.parse(original.toString('utf8')) as { created: string; sealed: string };
      for (const text of [config.created, config.sealed]) {
        const at = original.indexOf(text) + Math.floor(text.length / 2);
        const bent = Buffer.from(original);
        bent[at] = (bent[at] as number) ^ 0x01;
        fs.writeFileSync(file, bent);
        await assert.rejects(Repository.open(location, { keys: [keyFile(fileKey)] }), /EIO: .*config\.json fails authentication/);
      }
    });
  });
});

function cpuSeconds(u: NodeJS.CpuUsage): number {
  return (u.user + u.system) / 1e6;
}
