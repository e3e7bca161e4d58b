// Owns the snapshot commands of the CLI: blksnap's snapshot_create ... snapshot_destroy.
import * as api from '../../control/protocol.js';
import { BlkError } from '../../errors.js';
import type { Command, CommandIo } from '../command.js';
import * as path from 'node:path';
import { deviceOption, deviceRef, value, wholeNumber } from '../command.js';
import { parseSize } from '../../sizes.js';


async function waitEvent(io: CommandIo, id: string, timeoutMs: number): Promise<api.SnapshotEventResult> {
  return (await io.client()).call(api.SnapshotWaitEvent, { id, timeoutMs });
}

function describeEvent(e: api.SnapshotEventResult): string {
  const data = Object.entries(e.data).map(([k, v]) => `${k}=${v}`).join(' ');
  return `${new Date(e.time).toISOString()} ${e.code}${data ? ` ${data}` : ''}`;
}

const ID = { kind: 'value', help: 'snapshot UUID', isRequired: true } as const;

export const snapshotCommands: Command[] = [
  {
    name: 'snapshot_create',
    summary: 'Create a snapshot of devices over a difference storage; prints its UUID. Take it with snapshot_take.',
    options: {
      device: { kind: 'list', help: 'devices: names, or paths to their stores (with a /)', isRequired: true },
      file: { kind: 'value', help: 'difference storage: a file, a directory (an unnamed file is made there) or a block device', isRequired: true },
      limit: { kind: 'value', help: 'largest size of the difference storage, N[K|M|G|T]', isRequired: true },
      'diff-storage-minimum': { kind: 'value', help: 'growth step of a file difference storage, N[K|M|G] (default 1G)' },
      'chunk-minimum-shift': { kind: 'value', help: 'log2 of the smallest chunk size (default 18)' },
      force: { kind: 'flag', help: 'overwrite a --file that holds data (refused without it: EEXIST)' },
    },
    async run(o, io) {
      const params: api.SnapshotCreateParams = { devices: (o.lists.get('device') ?? []).map(deviceRef), diffStorage: path.resolve(value(o, 'file')), limit: parseSize(value(o, 'limit')) };
      if (o.flags.has('force')) params.force = true;
      const minimum = o.values.get('diff-storage-minimum');
      if (minimum !== undefined) params.diffStorageMinimum = parseSize(minimum);
      const shift = wholeNumber(o, 'chunk-minimum-shift');
      if (shift !== undefined) params.chunkMinimumShift = shift;
      const r = await (await io.client()).call(api.SnapshotCreate, params);
      io.print(r, r.id);
    },
  },
  {
    name: 'snapshot_add',
    summary: 'Add a device to a snapshot that is not taken yet.',
    options: { id: ID, device: { kind: 'value', help: 'device name, or a path to its store (with a /)', isRequired: true } },
    async run(o, io) {
      await (await io.client()).call(api.SnapshotAdd, { id: value(o, 'id'), device: deviceOption(o) });
      io.print({}, '');
    },
  },
  {
    name: 'snapshot_take',
    summary: 'Take the snapshot: one point in time across all its devices; their images appear.',
    options: { id: ID },
    async run(o, io) {
      const r = await (await io.client()).call(api.SnapshotTake, { id: value(o, 'id') });
      for (const w of r.warnings) process.stderr.write(`blksnap snapshot_take: warning: ${w}\n`);
      io.print(r, '');
    },
  },
  {
    name: 'snapshot_collect',
    summary: 'List the UUIDs of all snapshots.',
    options: {},
    async run(_o, io) {
      const r = await (await io.client()).call(api.SnapshotCollect, {});
      io.print(r, r.ids.join('\n'));
    },
  },
  {
    name: 'snapshot_info',
    summary: 'Print the image (NBD URI) and error code of a device\'s snapshot.',
    options: {
      device: { kind: 'value', help: 'device name, or a path to its store (with a /)', isRequired: true },
      field: { kind: 'value', help: 'print only this field: image or error_code' },
    },
    async run(o, io) {
      const device = deviceOption(o);
      const info = await (await io.client()).call(api.SnapshotGetInfo, { device });
      if (info.id === null) throw new BlkError('ESRCH', `device ${device} belongs to no snapshot (snapshot_create makes one)`);
      const field = o.values.get('field');
      if (field !== undefined && field !== 'image' && field !== 'error_code') throw new BlkError('EINVAL', `--field takes image or error_code, not '${field}'`);
      const image = info.image ? info.image.uri : '';
      const text = field === 'image' ? image : field === 'error_code' ? String(info.errorCode) : `id=${info.id}\nerror_code=${info.errorCode}\nimage=${image}`;
      // --field picks the text; JSON keeps every field, so scripts read one document shape.
      io.print(info, text);
    },
  },
  {
    name: 'snapshot_waitevent',
    summary: 'Wait for the next event of a snapshot (corrupted, no_space, low_space) or the timeout.',
    options: { id: ID, timeout: { kind: 'value', help: 'milliseconds to wait', isRequired: true } },
    async run(o, io) {
      const e = await waitEvent(io, value(o, 'id'), wholeNumber(o, 'timeout') ?? 0);
      io.print(e, describeEvent(e));
    },
  },
  {
    name: 'snapshot_watcher',
    summary: 'Print the events of a snapshot as they come, until it is destroyed.',
    options: { id: ID },
    async run(o, io) {
      const id = value(o, 'id');
      const events: api.SnapshotEventResult[] = [];
      for (;;) {
        let e: api.SnapshotEventResult;
        try {
          e = await waitEvent(io, id, 60_000);
        } catch (err) {
          if (err instanceof BlkError && err.code === 'ESRCH') break;
          throw err;
        }
        if (e.code === 'timeout') continue;
        events.push(e);
        if (!io.isJson) process.stdout.write(`${describeEvent(e)}\n`);
      }
      io.print({ events }, '');
    },
  },
  {
    name: 'snapshot_destroy',
    summary: 'Destroy a snapshot: its images and difference storage go away; tracking goes on.',
    options: { id: ID },
    async run(o, io) {
      await (await io.client()).call(api.SnapshotDestroy, { id: value(o, 'id') });
      io.print({}, '');
    },
  },
];
