// Owns how the CLI gets the key of an encrypted repository: --password-file, --key-file,
// $BLKSNAP_PASSWORD, or a password typed on the terminal (never echoed), tried in that order.
import * as fs from 'node:fs';
import { BlkError } from '../errors.js';
import { type KeySource, parseKeyFile } from '../repository/keys.js';
import { type OpenOptions, Repository } from '../repository/repository.js';
import type { OptionSpec, ParsedOptions } from './command.js';
import { backendOf } from './remote-options.js';

export const KEY_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  'password-file': { kind: 'value', help: "an encrypted repository's password, from this file (first line)" },
  'key-file': { kind: 'value', help: "an encrypted repository's key file (blksnap key generate makes one)" },
};

function readSecretFile(file: string, what: string): string {
  try {
    return fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new BlkError('EACCES', `cannot read the ${what} ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
}

/** A password as a file holds it: its first line, without the line end. */
export function passwordOf(text: string): Buffer {
  return Buffer.from(text.split(/\r?\n/)[0] ?? '', 'utf8');
}

/** KEY_OPTIONS for a second repository (backup_copy's): each named with `prefix` ('from-', 'to-'). */
export function prefixedOptions(options: Readonly<Record<string, OptionSpec>>, prefix: string, whose: string): Record<string, OptionSpec> {
  return Object.fromEntries(Object.entries(options).map(([name, spec]) => [`${prefix}${name}`, { ...spec, help: `${spec.help} (of ${whose})` }]));
}

/**
 * The key sources the options and the environment give, in the order they are tried; with a
 * prefix, the options so named (BLKSNAP_PASSWORD serves only the repository of the unprefixed ones).
 */
export function keySources(o: ParsedOptions, env: NodeJS.ProcessEnv = process.env, prefix = ''): KeySource[] {
  const sources: KeySource[] = [];
  const passwordFile = o.values.get(`${prefix}password-file`);
  if (passwordFile !== undefined) sources.push({ kind: 'password', password: passwordOf(readSecretFile(passwordFile, 'password file')), from: `--${prefix}password-file ${passwordFile}` });
  const keyFile = o.values.get(`${prefix}key-file`);
  if (keyFile !== undefined) sources.push({ kind: 'keyfile', key: parseKeyFile(readSecretFile(keyFile, 'key file'), keyFile), from: `--${prefix}key-file ${keyFile}` });
  const hasPassword = env.BLKSNAP_PASSWORD !== undefined && env.BLKSNAP_PASSWORD !== '';
  if (hasPassword && prefix === '') sources.push({ kind: 'password', password: Buffer.from(env.BLKSNAP_PASSWORD as string, 'utf8'), from: 'BLKSNAP_PASSWORD' });
  return sources;
}

/** Reads a line from the terminal without echoing it; EACCES when there is no terminal. */
export function promptPassword(question: string): Promise<Buffer> {
  const input = process.stdin;
  if (!input.isTTY) return Promise.reject(new BlkError('EACCES', 'no terminal to ask for a password on: give --password-file, --key-file or BLKSNAP_PASSWORD'));
  process.stderr.write(question);
  input.setRawMode(true);
  input.resume();
  return new Promise((resolve, reject) => {
    const typed: number[] = [];
    const done = (e?: Error): void => {
      input.setRawMode(false);
      input.pause();
      input.off('data', onData);
      process.stderr.write('\n');
      if (e) reject(e);
      else resolve(Buffer.from(typed));
    };
    const onData = (chunk: Buffer): void => {
      for (const byte of chunk) {
        if (byte === 3) return done(new BlkError('ECANCELED', 'interrupted'));
        if (byte === 13 || byte === 10) return done();
        if (byte === 127 || byte === 8) typed.pop();
        else typed.push(byte);
      }
    };
    input.on('data', onData);
  });
}

/** Opens --repo with the key sources given; a password typed on the terminal when none is and the repository is encrypted. */
export async function openRepository(o: ParsedOptions, location: string, extra: OpenOptions = {}, prefixes: { keys?: string; site?: string } = {}): Promise<Repository> {
  const keys = keySources(o, process.env, prefixes.keys);
  const backend = backendOf(o, location, prefixes.site);
  try {
    return await Repository.open(backend, { ...extra, keys });
  } catch (e) {
    const isMissingKey = e instanceof BlkError && e.code === 'EACCES' && keys.length === 0 && /is encrypted/.test(e.message);
    if (!isMissingKey || !process.stdin.isTTY) throw e;
  }
  const password = await promptPassword(`password of ${location}: `);
  return Repository.open(backend, { ...extra, keys: [{ kind: 'password', password, from: 'the password typed' }] });
}

/** The key a new repository (or a new key) is made with: the options' first source, or a password typed twice. */
export async function newKeySource(o: ParsedOptions, what: string): Promise<KeySource> {
  const given = keySources(o)[0];
  if (given) return given;
  const first = await promptPassword(`new password for ${what}: `);
  const again = await promptPassword('the same password again: ');
  if (!first.equals(again)) throw new BlkError('EINVAL', 'the two passwords differ');
  if (first.length === 0) throw new BlkError('EINVAL', 'an empty password');
  return { kind: 'password', password: first, from: 'the password typed' };
}
