// Owns the backup repository commands of the CLI: backup_init ... backup_attach, each a call
// of the library's Repository with its typed result printed as text or as one JSON document.
import * as fs from 'node:fs';
import { attachBackup } from '../../backup/backup-attach.js';
import { type CreateOptions, createBackup } from '../../backup/backup-create.js';
import { pruneRepository } from '../../backup/backup-prune.js';
import { backupDeviceName, restoreBackup } from '../../backup/backup-restore.js';
import { verifyRepository } from '../../backup/backup-verify.js';
import type { NbdTlsOptions } from '../../client/nbd-client.js';
import { parseCompression, Repository } from '../../repository/repository.js';
import { KEY_OPTIONS, newKeySource, openRepository } from '../key-options.js';
import { backendOf, REMOTE_OPTIONS, REPO } from '../remote-options.js';
import { BlkError, toBlkError } from '../../errors.js';
import { backup as backupParams } from '../../params.js';
import { parseSize } from '../../sizes.js';
import type { Command, CommandIo, ParsedOptions } from '../command.js';
import { deviceRef, value, wholeNumber } from '../command.js';
import { progressBar } from '../progress-bar.js';

/** The options of a command that opens a repository: where it is, and how to open it when it is encrypted. */
const REPO_OPTIONS = { repo: REPO, ...KEY_OPTIONS, ...REMOTE_OPTIONS } as const;
const ID = { kind: 'value', help: 'backup id (see backup_list)', isRequired: true } as const;


function open(o: ParsedOptions): Promise<Repository> {
  return openRepository(o, value(o, 'repo'));
}

function mib(n: number): string {
  return `${(n / 2 ** 20).toFixed(1)} MiB`;
}

/** A host name as --host gives it: printable, no more than 253 characters. */
function hostOption(name: string): string {
  const isPrintable = [...name].every((c) => c.charCodeAt(0) >= 0x20 && c.charCodeAt(0) !== 0x7f);
  if (name === '' || name.length > 253 || !isPrintable) throw new BlkError('EINVAL', `--host takes a name of 1-253 printable characters, not ${JSON.stringify(name)}`);
  return name;
}

/** A progress bar on a terminal (none with --json); notes on stderr either way. */
function progress(io: CommandIo): ReturnType<typeof progressBar> {
  return progressBar(process.stderr, { bar: !io.isJson });
}

/** --nbd HOST:PORT with --tls-certs or --tls-psk: where and how backup_create reads the images. */
function imageOverTcp(o: ParsedOptions): Pick<CreateOptions, 'imageUri' | 'tls'> {
  const address = o.values.get('nbd');
  const certsDir = o.values.get('tls-certs');
  const pskFile = o.values.get('tls-psk');
  const tlsMode = o.values.get('tls');
  if (tlsMode !== undefined && tlsMode !== 'on' && tlsMode !== 'off') throw new BlkError('EINVAL', `backup_create: --tls takes on or off, not '${tlsMode}'`);
  if (address === undefined) {
    if (certsDir !== undefined || pskFile !== undefined || tlsMode !== undefined) throw new BlkError('EINVAL', 'backup_create: --tls, --tls-certs and --tls-psk go with --nbd HOST:PORT');
    return {};
  }
  if (!/^[^\s/]+:\d+$/.test(address)) throw new BlkError('EINVAL', `backup_create: --nbd takes HOST:PORT, not '${address}'`);
  const hasCredentials = certsDir !== undefined || pskFile !== undefined;
  if (tlsMode === 'off' && hasCredentials) throw new BlkError('EINVAL', 'backup_create: --tls off and TLS credentials contradict each other');
  // The images cross the network: in the clear only when asked for in so many words.
  if (tlsMode !== 'off' && !hasCredentials) throw new BlkError('EINVAL', `backup_create: --nbd ${address} reads the images over the network: give --tls-certs DIR or --tls-psk FILE, or --tls off to read them in the clear`);
  let tls: NbdTlsOptions | undefined;
  if (pskFile !== undefined) {
    const line = fs.readFileSync(pskFile, 'utf8').split('\n').find((l) => l.includes(':'));
    if (!line) throw new BlkError('EINVAL', `${pskFile} holds no username:hexkey line`);
    const [identity, key] = line.trim().split(':') as [string, string];
    tls = { psk: { identity, key } };
  } else if (certsDir !== undefined) {
    tls = { certsDir };
  }
  const scheme = tls ? 'nbds' : 'nbd';
  return { imageUri: (image) => `${scheme}://${address}/${encodeURIComponent(image.name)}`, ...(tls ? { tls } : {}) };
}

export const backupCommands: Command[] = [
  {
    name: 'backup_init',
    summary: 'Make a backup repository in an empty (or new) directory, or in an S3 bucket under a prefix that holds nothing yet.',
    options: {
      repo: REPO,
      compress: { kind: 'value', help: `zstd, zstd:LEVEL (1-19) or none (default zstd:${backupParams.zstdLevel})` },
      encryption: { kind: 'value', help: 'aes-256-gcm (default: chunks, indexes and manifests sealed; a key needed to open it) or none' },
      ...KEY_OPTIONS,
      ...REMOTE_OPTIONS,
    },
    async run(o, io) {
      const encryption = o.values.get('encryption') ?? 'aes-256-gcm';
      if (encryption !== 'aes-256-gcm' && encryption !== 'none') throw new BlkError('EINVAL', `backup_init: --encryption takes aes-256-gcm or none, not '${encryption}'`);
      const location = value(o, 'repo');
      const key = encryption === 'none' ? null : await newKeySource(o, location);
      const repo = await Repository.init(backendOf(o, location), { zstdLevel: parseCompression(o.values.get('compress') ?? 'zstd'), key });
      const compress = repo.config.zstdLevel === null ? 'none' : `zstd:${repo.config.zstdLevel}`;
      io.print({ repo: repo.location, compress, encryption: repo.config.encryption, ...(repo.keyId ? { key: repo.keyId } : {}) }, `repository ${repo.location} (${repo.config.encryption === 'none' ? 'not encrypted' : `encrypted, key ${repo.keyId}`})`);
    },
  },
  {
    name: 'backup_create',
    summary:
      'Back up devices: one snapshot across them all (filesystems frozen at the take), each image read over NBD and stored as chunks. ' +
      'Incremental (only the blocks CBT says changed) when the previous backup of a device is of the same CBT generation; else a full read, deduplicated.',
    options: {
      ...REPO_OPTIONS,
      device: { kind: 'list', help: 'devices: names, or paths to their stores (with a /); a backup knows each by its name', isRequired: true },
      'diff-storage': { kind: 'value', help: "difference storage of the backup's snapshot (default: the repository directory)" },
      limit: { kind: 'value', help: 'its largest size, N[K|M|G|T] (default 1/4 of the devices, at least 1G)' },
      full: { kind: 'flag', help: 'read every allocated block, even where an incremental could be made' },
      host: { kind: 'value', help: "the host the backup is recorded under (default: this machine's hostname); the incremental base is the newest backup of the same host and device" },
      'read-fronts': { kind: 'value', help: `places of a device read at once, 1-16 (default ${backupParams.readFronts}; 1 for a rotating disk)` },
      nbd: { kind: 'value', help: "read the images over the daemon's TCP listener HOST:PORT (default: its Unix socket); needs TLS credentials or --tls off" },
      tls: { kind: 'value', help: 'with --nbd: off reads the images in the clear (refused otherwise without credentials)' },
      'tls-certs': { kind: 'value', help: 'with --nbd: TLS with X.509, QEMU\'s layout (ca-cert.pem; client-cert.pem, client-key.pem)' },
      'tls-psk': { kind: 'value', help: "with --nbd: TLS with a pre-shared key, nbdkit's file format (the first username:hexkey line)" },
    },
    async run(o, io) {
      const repo = await open(o);
      const limit = o.values.get('limit');
      const diffStorage = o.values.get('diff-storage');
      const fronts = o.values.get('read-fronts');
      const readFronts = fronts === undefined ? undefined : Number(fronts);
      if (readFronts !== undefined && !(Number.isInteger(readFronts) && readFronts >= 1 && readFronts <= 16)) throw new BlkError('EINVAL', `backup_create: --read-fronts takes 1 to 16, not '${fronts}'`);
      const bar = progress(io);
      const r = await createBackup(repo, await io.client(), {
        ...imageOverTcp(o),
        devices: (o.lists.get('device') ?? []).map(deviceRef),
        ...(diffStorage === undefined ? {} : { diffStorage }),
        ...(limit === undefined ? {} : { limit: parseSize(limit) }),
        full: o.flags.has('full'),
        ...(o.values.has('host') ? { host: hostOption(o.values.get('host') as string) } : {}),
        ...(readFronts === undefined ? {} : { readFronts }),
        progress: bar,
      });
      for (const w of r.warnings) process.stderr.write(`blksnap backup_create: warning: ${w}\n`);
      const { warnings: _w, ...json } = r;
      io.print(json, [`backup ${r.id}`, ...r.devices.map((d) => `  ${d.name}: ${d.mode}, read ${mib(d.readBytes)}, stored ${mib(d.storedBytes)} (snapshot ${d.changesNumber}, generation ${d.generationId})`)].join('\n'));
    },
  },
  {
    name: 'backup_list',
    summary: 'List the backups of a repository, oldest first.',
    options: { ...REPO_OPTIONS },
    async run(o, io) {
      const backups = await (await open(o)).list();
      io.print({ backups }, backups.map((b) => `${b.id}  ${b.time}  ${b.host || '-'}  ${b.devices.map((d) => `${d.name} (${d.mode}, ${d.size} bytes)`).join(', ')}`).join('\n'));
    },
  },
  {
    name: 'backup_restore',
    summary:
      'Restore a device of a backup. --to device:NAME is the attached device NAME; an NBD URI is that export; anything else is a path. ' +
      "A path that is an attached device's store (any name for it: a symlink, a hard link, /dev/disk/by-*) is restored through the daemon, " +
      "and when that device's CBT generation is the backup's, only the blocks written since the backup are written back (rollback). " +
      'A file is written beside the target and put in its place only when whole (sparse: zero chunks stay holes); a block device must not be ' +
      'mounted or in use; paths on the daemon\'s devices, or under its stores, are refused. Every chunk is checked before it is written.',
    options: {
      ...REPO_OPTIONS,
      id: ID,
      device: { kind: 'value', help: 'the device of the backup: its name, or the path of the attached device it was made from', isRequired: true },
      to: { kind: 'value', help: 'device:NAME, an NBD URI, or a path (./NAME for a file here)', isRequired: true },
      offline: { kind: 'flag', help: 'write an existing target although blksnapd cannot be reached to say whether it is attached' },
    },
    async run(o, io) {
      const repo = await open(o);
      const to = value(o, 'to');
      // The daemon says which paths are attached devices; without it only new files, URIs and --offline.
      let daemonError = '';
      const client = await io.client().catch((e: unknown) => {
        daemonError = toBlkError(e).toString();
        return null;
      });
      const bar = progress(io);
      const r = await restoreBackup(repo, { id: value(o, 'id'), device: value(o, 'device'), to, client, daemonError, offline: o.flags.has('offline'), progress: bar });
      io.print(r, `${r.mode}${r.device ? ` ${r.device}` : ''}: wrote ${mib(r.writtenBytes)}, skipped ${mib(r.skippedBytes)}`);
    },
  },
  {
    name: 'backup_verify',
    summary: 'Re-read and re-hash every chunk (or those of one backup), check every index and manifest; exit status 1 when anything is damaged.',
    options: { ...REPO_OPTIONS, id: { kind: 'value', help: 'only this backup' } },
    async run(o, io) {
      const id = o.values.get('id');
      const bar = progress(io);
      const r = await verifyRepository(await open(o), { ...(id === undefined ? {} : { id }), progress: bar });
      io.print(r, r.ok ? `ok: ${r.checkedChunks} chunks checked` : [`DAMAGED: ${r.badChunks.length} bad chunks; backups affected: ${r.damagedBackups.join(', ') || 'none'}`, ...r.problems.map((p) => `  ${p}`)].join('\n'));
      if (!r.ok) io.exitStatus = 1;
    },
  },
  {
    name: 'backup_prune',
    summary: 'Remove backups a policy does not keep, then the chunks no backup references. Waits for running backups before it sweeps.',
    options: {
      ...REPO_OPTIONS,
      'keep-last': { kind: 'value', help: 'keep the newest N backups', isRequired: true },
      'keep-daily': { kind: 'value', help: 'and the newest backup of each of the last N days that have one' },
      'keep-weekly': { kind: 'value', help: 'and the newest backup of each of the last N ISO weeks that have one' },
      'dry-run': { kind: 'flag', help: 'say what would be removed; remove nothing' },
    },
    async run(o, io) {
      const bar = progress(io);
      const keepDaily = wholeNumber(o, 'keep-daily');
      const keepWeekly = wholeNumber(o, 'keep-weekly');
      const r = await pruneRepository(await open(o), {
        keepLast: wholeNumber(o, 'keep-last') ?? 0,
        ...(keepDaily === undefined ? {} : { keepDaily }),
        ...(keepWeekly === undefined ? {} : { keepWeekly }),
        dryRun: o.flags.has('dry-run'),
        progress: bar,
      });
      for (const w of r.warnings) process.stderr.write(`blksnap backup_prune: warning: ${w}\n`);
      io.print(r, `${r.dryRun ? 'would remove' : 'removed'} ${r.removed.length} backups (${r.removed.join(', ') || 'none'}); kept ${r.kept.length}${r.dryRun ? '' : `; ${r.removedChunks} chunks and ${r.removedPages} index pages freed ${mib(r.freedBytes)}`}`);
    },
  },
  {
    name: 'backup_attach',
    summary: 'Serve a device of a backup as a device of the daemon (NBD, and /dev/loopN with --loop): read-only, or --writable with a throw-away overlay. detach ends it.',
    options: {
      ...REPO_OPTIONS,
      id: ID,
      device: { kind: 'value', help: 'the device of the backup: its name, or the path of the attached device it was made from', isRequired: true },
      name: { kind: 'value', help: 'export name (default DEVICE.ID)' },
      loop: { kind: 'flag', help: 'also give it a Linux block device /dev/loopN' },
      writable: { kind: 'flag', help: 'accept writes into an overlay that is dropped at detach' },
    },
    async run(o, io) {
      const name = o.values.get('name');
      const client = await io.client();
      const d = await attachBackup(await open(o), client, {
        id: value(o, 'id'),
        device: await backupDeviceName(value(o, 'device'), client),
        ...(name === undefined ? {} : { name }),
        ...(o.flags.has('loop') ? { loop: true } : {}),
        ...(o.flags.has('writable') ? { writable: true } : {}),
      });
      io.print(d, [d.name, d.uri, ...(d.blockDevice ? [d.blockDevice] : [])].join('\n'));
    },
  },
];
