// Owns the key commands of the CLI (an encrypted repository's keys): key generate, list, add, remove, passwd.
import * as fs from 'node:fs';
import { BlkError } from '../../errors.js';
import { addKey, type KeySource, listKeys, newKeyFileText, parseKeyFile, removeKey } from '../../repository/keys.js';
import type { Repository } from '../../repository/repository.js';
import type { Command, ParsedOptions } from '../command.js';
import { value } from '../command.js';
import { KEY_OPTIONS, openRepository, passwordOf, promptPassword } from '../key-options.js';
import { REMOTE_OPTIONS, REPO } from '../remote-options.js';


async function openEncrypted(o: ParsedOptions): Promise<Repository> {
  const repo = await openRepository(o, value(o, 'repo'));
  if (!repo.cipher.isSealed || !repo.cipher.secret) throw new BlkError('EINVAL', `${repo.location} is not encrypted: it has no keys`);
  return repo;
}

/** The new key --new-password-file or --new-key-file gives (a password typed twice on a terminal without them). */
async function newKey(o: ParsedOptions): Promise<KeySource> {
  const passwordFile = o.values.get('new-password-file');
  const keyFile = o.values.get('new-key-file');
  if (passwordFile !== undefined && keyFile !== undefined) throw new BlkError('EINVAL', 'give --new-password-file or --new-key-file, not both');
  if (passwordFile !== undefined) return { kind: 'password', password: passwordOf(fs.readFileSync(passwordFile, 'utf8')), from: passwordFile };
  if (keyFile !== undefined) return { kind: 'keyfile', key: parseKeyFile(fs.readFileSync(keyFile, 'utf8'), keyFile), from: keyFile };
  const first = await promptPassword('new password: ');
  if (!first.equals(await promptPassword('the same password again: '))) throw new BlkError('EINVAL', 'the two passwords differ');
  return { kind: 'password', password: first, from: 'the password typed' };
}

const NEW_KEY = {
  'new-password-file': { kind: 'value', help: 'the new key: a password, from this file (first line)' },
  'new-key-file': { kind: 'value', help: 'the new key: a key file (blksnap key generate makes one)' },
} as const;

export const keyCommands: Command[] = [
  {
    name: 'key generate',
    summary: 'Make a key file (32 random bytes, mode 0600) for an encrypted repository: backup_init --key-file, key add --new-key-file.',
    options: { file: { kind: 'value', help: 'the new key file (never overwritten)', isRequired: true } },
    async run(o, io) {
      const file = value(o, 'file');
      let fd: number;
      try {
        fd = fs.openSync(file, fs.constants.O_WRONLY | fs.constants.O_CREAT | fs.constants.O_EXCL | fs.constants.O_NOFOLLOW, 0o600);
      } catch (e) {
        const code = (e as NodeJS.ErrnoException).code;
        throw new BlkError(code === 'EEXIST' ? 'EEXIST' : 'EACCES', `cannot make key file ${file}: ${code === 'EEXIST' ? 'it exists (a key file is never overwritten)' : String(code)}`);
      }
      try {
        fs.writeSync(fd, newKeyFileText());
        fs.fsyncSync(fd);
      } finally {
        fs.closeSync(fd);
      }
      io.print({ file }, `key file ${file}: keep a copy where the repository is not`);
    },
  },
  {
    name: 'key list',
    summary: "List an encrypted repository's keys: each opens it.",
    options: { repo: REPO, ...KEY_OPTIONS, ...REMOTE_OPTIONS },
    async run(o, io) {
      const repo = await openEncrypted(o);
      const keys = await listKeys(repo.backend);
      io.print({ keys }, keys.map((k) => `${k.id}  ${k.type.padEnd(8)}  ${k.created}  ${k.host}${k.id === repo.keyId ? '  (opened with)' : ''}`).join('\n'));
    },
  },
  {
    name: 'key add',
    summary: 'Add a key to an encrypted repository (opened with a key it has): a password or a key file, one per host or operator.',
    options: { repo: REPO, ...KEY_OPTIONS, ...REMOTE_OPTIONS, ...NEW_KEY },
    async run(o, io) {
      const repo = await openEncrypted(o);
      const key = await addKey(repo.backend, repo.cipher.secret as Buffer, await newKey(o));
      await repo.backend.sync();
      io.print(key, `key ${key.id} (${key.type}) added`);
    },
  },
  {
    name: 'key remove',
    summary: 'Remove a key of an encrypted repository; the last key cannot be removed.',
    options: { repo: REPO, ...KEY_OPTIONS, ...REMOTE_OPTIONS, id: { kind: 'value', help: 'the key (see key list)', isRequired: true } },
    async run(o, io) {
      const repo = await openEncrypted(o);
      const id = value(o, 'id');
      await removeKey(repo.backend, id);
      io.print({ removed: id }, `key ${id} removed`);
    },
  },
  {
    name: 'key passwd',
    summary: 'Change the password of the key that opens the repository: a new password key in its place.',
    options: { repo: REPO, ...KEY_OPTIONS, ...REMOTE_OPTIONS, 'new-password-file': NEW_KEY['new-password-file'] },
    async run(o, io) {
      const repo = await openEncrypted(o);
      const key = await newKey(o);
      const added = await addKey(repo.backend, repo.cipher.secret as Buffer, key);
      await repo.backend.sync();
      if (repo.keyId !== null) await removeKey(repo.backend, repo.keyId);
      io.print({ added: added.id, removed: repo.keyId }, `key ${added.id} (password) replaces key ${repo.keyId}`);
    },
  },
];
