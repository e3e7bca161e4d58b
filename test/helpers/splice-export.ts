// An in-process NBD server over a memory device whose bytes say where they are (each 4-byte word is
// its own offset), exported with reads that go by splice first, as an image's reads past the page
// cache do: for tests of the server's spliced replies and their fallbacks.
import * as path from 'node:path';
import { MemoryStorage } from '../../src/backing/memory-storage.js';
import { type BlockDevice, type BlockDeviceFastPaths, IoFlag } from '../../src/core/block-device.js';
import type { Device } from '../../src/core/device.js';
import { Registry } from '../../src/core/registry.js';
import { NbdServer } from '../../src/frontends/nbd/server.js';
import { NbdClient } from './nbd-client.js';
import { tempDir } from './tools.js';

/** The export's reads: the plain one, and the splice tried first (it fills the pipe, or rejects). */
export interface SpliceReads {
  read: BlockDevice['read'];
  spliceTo: NonNullable<BlockDeviceFastPaths['spliceTo']>;
}

export interface SpliceExport {
  device: Device;
  client: NbdClient;
  close: () => Promise<void>;
}

/** Whether `data`, read at `offset`, holds the words a patterned device has there. */
export function isPatternAt(data: Buffer, offset: number): boolean {
  for (let at = 0; at < data.length; at += 4) if (data.readUInt32LE(at) !== offset + at) return false;
  return true;
}

/** Serves a patterned device of `size` bytes as export 'disk' with the reads `readsOf` makes of it, and connects a client. */
export async function serveSpliceExport(size: number, readsOf: (device: Device) => SpliceReads): Promise<SpliceExport> {
  const tmp = tempDir();
  const device = await new Registry().attach(new MemoryStorage(size, { path: '/test/disk' }));
  const data = Buffer.alloc(size);
  for (let at = 0; at < size; at += 4) data.writeUInt32LE(at, at);
  await device.write(0, data, IoFlag.None);
  const reads = readsOf(device);
  const exported: BlockDevice = {
    name: 'disk',
    size: device.size,
    isReadOnly: false,
    canTrim: device.canTrim,
    read: reads.read,
    write: (offset, payload, flags) => device.write(offset, payload, flags),
    zero: (offset, length, flags) => device.zero(offset, length, flags),
    trim: (offset, length, flags) => device.trim(offset, length, flags),
    flush: () => device.flush(),
    extents: (offset, length, maximumCount) => device.extents(offset, length, maximumCount),
    cache: (offset, length) => device.cache(offset, length),
    onClose: device.onClose,
    changes: () => device.changes(),
    fast: {
      readNow: () => false,
      sendTo: () => null,
      spliceTo: reads.spliceTo,
      sharedReads: () => null,
    },
  };
  const socketPath = path.join(tmp.dir, 'nbd.sock');
  const server = new NbdServer({ catalogue: { lookupExport: (n) => (n === 'disk' ? exported : undefined), exports: () => [exported] }, socketPath, sendFileMinimum: 4096, log: () => undefined });
  await server.start();
  const client = await NbdClient.connect(socketPath, 'disk');
  return {
    device,
    client,
    close: async () => {
      client.close();
      await server.close();
      await device.close();
      tmp.remove();
    },
  };
}
