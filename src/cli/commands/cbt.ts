// Owns the change-tracking commands of the CLI: cbtinfo, readcbtmap, markdirtyblock.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { Cbt } from '../../client/cbt.js';
import * as api from '../../control/protocol.js';
import { BlkError } from '../../errors.js';
import type { Command } from '../command.js';
import { deviceOption, value } from '../command.js';

/** Parses blksnap's SECTOR:COUNT range form. */
export function parseSectorRange(text: string): api.SectorRange {
  const m = /^(\d+):(\d+)$/.exec(text);
  const sector = m ? Number(m[1]) : NaN;
  const count = m ? Number(m[2]) : NaN;
  if (!Number.isSafeInteger(sector) || !Number.isSafeInteger(count) || count < 1) {
    throw new BlkError('EINVAL', `invalid range '${text}': expected SECTOR:COUNT with COUNT >= 1`);
  }
  return { sector, count };
}

export const cbtCommands: Command[] = [
  {
    name: 'cbtinfo',
    summary: 'Print the change tracking state of a device: capacity, block size and count, generation, changes number.',
    options: { device: { kind: 'value', help: 'device name, or a path to its store (with a /)', isRequired: true } },
    async run(o, io) {
      const i = await new Cbt(await io.client(), deviceOption(o)).info();
      const text = [
        `device_capacity=${i.deviceCapacity}`,
        `block_size=${i.blockSize}`,
        `block_count=${i.blockCount}`,
        `generation_id=${i.generationId}`,
        `changes_number=${i.changesNumber}`,
        `origin=${i.origin}`,
        ...(i.originReason === undefined ? [] : [`origin_reason=${i.originReason}`]),
      ].join('\n');
      io.print(i, text);
    },
  },
  {
    name: 'readcbtmap',
    summary: 'Write the CBT read map of a device to a file: one byte per tracking block, the number of the snapshot that last changed it.',
    options: {
      device: { kind: 'value', help: 'device name, or a path to its store (with a /)', isRequired: true },
      file: { kind: 'value', help: 'output file', isRequired: true },
    },
    async run(o, io) {
      const cbt = new Cbt(await io.client(), deviceOption(o));
      const map = await cbt.readMap();
      const file = value(o, 'file');
      fs.writeFileSync(file, map);
      io.print({ file, blockCount: map.length }, `${map.length} blocks written to ${file}`);
    },
  },
  {
    name: 'markdirtyblock',
    summary: 'Mark sector ranges of a device as changed in both CBT maps, so the next backup copies them.',
    options: {
      device: { kind: 'value', help: 'device name, or a path to its store (with a /)', isRequired: true },
      range: { kind: 'list', help: 'SECTOR:COUNT ranges of 512-byte sectors' },
      file: { kind: 'value', help: 'a file on a filesystem mounted from the device\'s block device: marks its extents' },
    },
    async run(o, io) {
      const file = o.values.get('file');
      if (file !== undefined) {
        await (await io.client()).call(api.CbtMarkDirty, { device: deviceOption(o), file: path.resolve(file) });
        io.print({ file }, '');
        return;
      }
      const texts = o.lists.get('range') ?? [];
      if (texts.length === 0) throw new BlkError('EINVAL', 'markdirtyblock: give --range SECTOR:COUNT... or --file F');
      const ranges = texts.map(parseSectorRange);
      await new Cbt(await io.client(), deviceOption(o)).markDirty(ranges);
      io.print({ ranges }, '');
    },
  },
];
