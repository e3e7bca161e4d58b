// Owns the device commands of the CLI: version, attach, detach, list.
import * as api from '../../control/protocol.js';
import type { Command } from '../command.js';
import * as path from 'node:path';
import { deviceOption, value } from '../command.js';

function describe(d: api.DeviceInfo): string {
  return `${d.name}\t${d.path}\t${d.size}\t${d.uri}${d.blockDevice ? `\t${d.blockDevice}` : ''}`;
}

export const deviceCommands: Command[] = [
  {
    name: 'version',
    summary: 'Print the version of blksnap (the daemon\'s).',
    options: {},
    async run(_o, io) {
      const v = await (await io.client()).call(api.Version, {});
      io.print(v, v.version);
    },
  },
  {
    name: 'attach',
    summary: 'Attach a regular file or a block device: the daemon opens it exclusively, tracks its changes and serves it over NBD.',
    options: {
      device: { kind: 'value', help: 'path of the file or block device', isRequired: true },
      name: { kind: 'value', help: 'export name (default: the base name of the path)' },
      readonly: { kind: 'flag', help: 'refuse writes' },
      untracked: { kind: 'flag', help: 'serve without change tracking' },
      loop: { kind: 'flag', help: 'also expose it (and its snapshot images) as a Linux block device /dev/loopN' },
    },
    async run(o, io) {
      const params: api.AttachParams = { path: path.resolve(value(o, 'device')), readOnly: o.flags.has('readonly'), tracking: !o.flags.has('untracked') };
      if (o.flags.has('loop')) params.loop = true;
      const name = o.values.get('name');
      if (name !== undefined) params.name = name;
      const d = await (await io.client()).call(api.DeviceAttach, params);
      io.print(d, describe(d));
    },
  },
  {
    name: 'detach',
    summary: 'Detach a device: tracking ends, its exports close, the daemon releases the store.',
    options: { device: { kind: 'value', help: 'device name, or a path to its store (with a /)', isRequired: true } },
    async run(o, io) {
      await (await io.client()).call(api.DeviceDetach, { device: deviceOption(o) });
      io.print({}, '');
    },
  },
  {
    name: 'list',
    summary: 'List the attached devices: name, path, size in bytes, NBD URI.',
    options: {},
    async run(_o, io) {
      const r = await (await io.client()).call(api.DeviceList, {});
      io.print(r, r.devices.map(describe).join('\n'));
    },
  },
];
