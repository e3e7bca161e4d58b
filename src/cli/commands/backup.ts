// Owns the backup repository commands of the CLI: backup_init ... backup_attach, each a call
// of the library's Repository with its typed result printed as text or as one JSON document.
import * as fs from 'node:fs';
import { attachBackup } from '../../backup/backup-attach.js';
import { type CreateOptions, createBackup } from '../../backup/backup-create.js';
import { copyBackups } from '../../backup/backup-copy.js';
import { pruneRepository } from '../../backup/backup-prune.js';
import { GROUP_BYS, type GroupBy, KEEP_COUNTS, type RetentionRules } from '../../backup/retention-policy.js';
import { backupDeviceName, restoreBackup } from '../../backup/backup-restore.js';
import { parseSubset, verifyRepository } from '../../backup/backup-verify.js';
import type { NbdTlsOptions } from '../../client/nbd-client.js';
import { parseCompression, Repository } from '../../repository/repository.js';
import { KEY_OPTIONS, newKeySource, openRepository, prefixedOptions } from '../key-options.js';
import { backendOf, REMOTE_OPTIONS, REPO, SITE_OPTIONS } from '../remote-options.js';
import { BlkError, toBlkError } from '../../errors.js';
import { backup as backupParams } from '../../params.js';
import { parseSize } from '../../sizes.js';
import { formatDuration, parseDuration } from '../../util/duration.js';
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
      'object-lock': { kind: 'value', help: 'in an S3 bucket made with Object Lock: retain every object a backup needs for DAYS days from its writing (prune keeps what is retained; each backup extends what it reuses)' },
      'object-lock-mode': { kind: 'value', help: 'compliance (default: nobody can shorten or remove a retention) or governance (those allowed to bypass it can)' },
      ...KEY_OPTIONS,
      ...REMOTE_OPTIONS,
    },
    async run(o, io) {
      const encryption = o.values.get('encryption') ?? 'aes-256-gcm';
      if (encryption !== 'aes-256-gcm' && encryption !== 'none') throw new BlkError('EINVAL', `backup_init: --encryption takes aes-256-gcm or none, not '${encryption}'`);
      const days = wholeNumber(o, 'object-lock');
      if (days !== undefined && !(days >= 1 && days <= 36500)) throw new BlkError('EINVAL', 'backup_init: --object-lock takes a number of days from 1 to 36500');
      const mode = o.values.get('object-lock-mode') ?? 'compliance';
      if (mode !== 'compliance' && mode !== 'governance') throw new BlkError('EINVAL', `backup_init: --object-lock-mode takes compliance or governance, not '${mode}'`);
      if (days === undefined && o.values.has('object-lock-mode')) throw new BlkError('EINVAL', 'backup_init: --object-lock-mode goes with --object-lock DAYS');
      const location = value(o, 'repo');
      const key = encryption === 'none' ? null : await newKeySource(o, location);
      const repo = await Repository.init(backendOf(o, location), { zstdLevel: parseCompression(o.values.get('compress') ?? 'zstd'), key, objectLock: days === undefined ? null : { days, mode } });
      const compress = repo.config.zstdLevel === null ? 'none' : `zstd:${repo.config.zstdLevel}`;
      const lock = repo.config.objectLock;
      io.print(
        { repo: repo.location, compress, encryption: repo.config.encryption, ...(repo.keyId ? { key: repo.keyId } : {}), ...(lock ? { objectLock: lock } : {}) },
        `repository ${repo.location} (${repo.config.encryption === 'none' ? 'not encrypted' : `encrypted, key ${repo.keyId}`}${lock ? `; objects retained ${lock.days} days, ${lock.mode} mode` : ''})`,
      );
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
      'discard-after-read': { kind: 'flag', help: "trim what is read on the snapshot's image: the chunks read give their difference storage back, so a long backup of a busy device needs less of it" },
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
        discardAfterRead: o.flags.has('discard-after-read'),
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
    options: { ...REPO_OPTIONS, host: { kind: 'value', help: 'only the backups of this host' }, device: { kind: 'value', help: 'only the backups of this device' } },
    async run(o, io) {
      const host = o.values.get('host');
      const device = o.values.get('device');
      const backups = (await (await open(o)).list()).filter((b) => (host === undefined || b.host === host) && (device === undefined || b.devices.some((d) => d.name === device)));
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
    summary: 'Re-read and re-hash every chunk (or those of one backup, or a share of the packs), check every index and manifest and that every chunk a backup names is in a pack; exit status 1 when anything is damaged.',
    options: {
      ...REPO_OPTIONS,
      id: { kind: 'value', help: 'only this backup' },
      metadata: { kind: 'flag', help: 'read no chunk: check manifests, indexes, pack indexes, and that every chunk a backup names exists (fast)' },
      'read-data-subset': { kind: 'value', help: 'read only a share of the packs: K/N (slice K of N by pack id: N runs with K = 1..N read them all) or N% (at random)' },
      'max-duration': { kind: 'value', help: 'start no pack read after this long (30m, 2h); the result says how many packs were read' },
    },
    async run(o, io) {
      const id = o.values.get('id');
      const subset = o.values.get('read-data-subset');
      const duration = o.values.get('max-duration');
      if (subset !== undefined && o.flags.has('metadata')) throw new BlkError('EINVAL', 'backup_verify: --metadata reads no pack; --read-data-subset goes without it');
      const bar = progress(io);
      const r = await verifyRepository(await open(o), {
        ...(id === undefined ? {} : { id }),
        ...(subset === undefined ? {} : { subset: parseSubset(subset) }),
        ...(duration === undefined ? {} : { maxDurationMs: parseDuration(duration, '--max-duration') }),
        metadataOnly: o.flags.has('metadata'),
        progress: bar,
      });
      const read = `${r.packsChecked} of ${r.packsTotal} packs read`;
      io.print(r, r.ok ? `ok: ${r.checkedChunks} chunks checked (${read})` : [`DAMAGED: ${r.badChunks.length} bad chunks; backups affected: ${r.damagedBackups.join(', ') || 'none'} (${read})`, ...r.problems.map((p) => `  ${p}`)].join('\n'));
      if (!r.ok) io.exitStatus = 1;
    },
  },
  {
    name: 'backup_copy',
    summary: "Copy backups to a second repository (local or s3://), moving only the chunks it lacks; each lands as a backup there like any other (same id, time and host), its packs read back and checked before its manifest is written. Without --id or --latest, every backup the target lacks.",
    options: {
      from: { ...REPO, help: 'the repository copied from: a directory, or s3://BUCKET[/PREFIX]' },
      to: { ...REPO, help: 'the repository copied to (made with backup_init)' },
      id: { kind: 'value', help: 'only this backup' },
      latest: { kind: 'flag', help: 'only the newest backup' },
      ...KEY_OPTIONS,
      ...prefixedOptions(KEY_OPTIONS, 'to-', 'the target, when it is encrypted with another key'),
      ...REMOTE_OPTIONS,
      ...prefixedOptions(SITE_OPTIONS, 'from-', 'the source'),
      ...prefixedOptions(SITE_OPTIONS, 'to-', 'the target'),
    },
    async run(o, io) {
      const id = o.values.get('id');
      const source = await openRepository(o, value(o, 'from'), {}, { site: 'from-' });
      // The target opens with the --to- key options where given, else with the source's.
      const ownKey = o.values.has('to-key-file') || o.values.has('to-password-file');
      const target = await openRepository(o, value(o, 'to'), {}, { site: 'to-', keys: ownKey ? 'to-' : '' });
      const r = await copyBackups(source, target, { ...(id === undefined ? {} : { id }), latest: o.flags.has('latest'), progress: progress(io) });
      const lines = r.copied.map((c) => `copied ${c.id}: ${c.copiedChunks} chunks (${mib(c.copiedBytes)}) stored, ${c.presentChunks} already there`);
      io.print(r, [...lines, ...(r.present.length > 0 ? [`already in ${target.location}: ${r.present.join(', ')}`] : [])].join('\n') || 'nothing to copy');
    },
  },
  {
    name: 'backup_prune',
    summary: 'Remove backups a policy does not keep, applied per group (by default each host and device); mark the chunks and index pages no backup references, and delete what an earlier prune marked once the grace period has passed and every backup, restore or verify running then has ended. One prune at a time; backups go on meanwhile.',
    options: {
      ...REPO_OPTIONS,
      'keep-last': { kind: 'value', help: 'keep the newest N backups of each group', isRequired: true },
      'keep-hourly': { kind: 'value', help: 'and the newest backup of each of the last N hours that have one' },
      'keep-daily': { kind: 'value', help: 'and of each of the last N days' },
      'keep-weekly': { kind: 'value', help: 'and of each of the last N ISO weeks' },
      'keep-monthly': { kind: 'value', help: 'and of each of the last N months' },
      'keep-yearly': { kind: 'value', help: 'and of each of the last N years' },
      'keep-within': { kind: 'value', help: "and every backup made within DURATION (30d, 12h, 2w) before the group's newest" },
      'group-by': { kind: 'value', help: 'which backups the rules count together: host,device (default), device, host, or none' },
      'dry-run': { kind: 'flag', help: 'say, per group, what would be kept (by which rule) and removed; remove nothing' },
      'prune-grace': { kind: 'value', help: `delete what a prune marked no sooner than this after (90s, 30m, 24h, 7d; 0: at once where no session was running; default ${formatDuration(backupParams.pruneGraceMs)})` },
    },
    async run(o, io) {
      const bar = progress(io);
      const grace = o.values.get('prune-grace');
      const within = o.values.get('keep-within');
      const groupBy = o.values.get('group-by') ?? 'host,device';
      if (!(GROUP_BYS as readonly string[]).includes(groupBy)) throw new BlkError('EINVAL', `backup_prune: --group-by takes ${GROUP_BYS.join(', ')}, not '${groupBy}'`);
      const counts: Partial<RetentionRules> = {};
      for (const [option, key] of Object.entries(KEEP_COUNTS)) {
        const n = wholeNumber(o, option);
        if (n !== undefined) counts[key] = n;
      }
      const r = await pruneRepository(await open(o), {
        keepLast: 0,
        ...counts,
        ...(within === undefined ? {} : { keepWithinMs: parseDuration(within, '--keep-within') }),
        groupBy: groupBy as GroupBy,
        ...(grace === undefined ? {} : { graceMs: parseDuration(grace, '--prune-grace') }),
        dryRun: o.flags.has('dry-run'),
        progress: bar,
      });
      for (const w of r.warnings) process.stderr.write(`blksnap backup_prune: warning: ${w}\n`);
      for (const b of r.retained.backups) process.stderr.write(`blksnap backup_prune: backup ${b.id} is retained by the bucket until ${b.until}: kept\n`);
      if (r.retained.objects > 0) process.stderr.write(`blksnap backup_prune: ${r.retained.objects} objects due for deletion are retained by the bucket: kept marked, for a prune after their retention\n`);
      const groupLines = r.groups.map((g) => {
        const name = [g.host, g.device].filter((x) => x !== undefined).map((x) => x || '-').join(' ') || 'all backups';
        return `  ${name}: keep ${g.keep.map((k) => `${k.id} (${k.reasons.join(', ')})`).join(', ') || 'none'}; remove ${g.remove.join(', ') || 'none'}`;
      });
      const pending = r.pending.packs + r.pending.pages > 0 ? `; ${r.pending.packs} packs and ${r.pending.pages} index pages (${mib(r.pending.bytes)}) marked, deleted by a prune after ${r.pending.deletableAfter} once the backups running now have ended` : '';
      const summary = `${r.dryRun ? 'would remove' : 'removed'} ${r.removed.length} backups (${r.removed.join(', ') || 'none'}); kept ${r.kept.length}${r.dryRun ? '' : `; ${r.removedChunks} chunks and ${r.removedPages} index pages deleted, ${mib(r.freedBytes)} freed${pending}`}`;
      io.print(r, [summary, ...(r.dryRun ? groupLines : [])].join('\n'));
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
