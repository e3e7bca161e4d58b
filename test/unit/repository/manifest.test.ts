// A backup's manifest: read back as written, and one whose content is not what this program writes
// (its checksum made right again, as a careless or hostile writer would) refused, naming the field.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { after, describe, it } from 'node:test';
import { decodeManifest, encodeManifest, type Manifest } from '../../../src/repository/manifest.js';
import { tempDir } from '../../helpers/tools.js';

describe('backup manifest', () => {
  const t = tempDir('blksnap-manifest-');
  after(() => t.remove());
  const good: Manifest = {
    version: 1,
    id: '20261128T091500Z-abcd',
    time: '2026-11-28T09:15:00.000Z',
    devices: [{ name: 'disk', size: 1 << 30, chunkSize: 65536, mode: 'full', generationId: 'g', changesNumber: 3, readBytes: 1 << 20, storedBytes: 1 << 19, index: 'disk.index' }],
  };
  const written = (m: unknown, name: string): string => {
    const file = path.join(t.dir, `${name}.json`);
    fs.writeFileSync(file, encodeManifest(m as Manifest));
    return file;
  };

  const readManifest = (file: string): Manifest => decodeManifest(fs.readFileSync(file), file);

  it('reads back what was written', () => {
    assert.deepEqual(readManifest(written(good, 'good')), good);
  });

  const device = good.devices[0] as Manifest['devices'][0];
  for (const [what, m, field] of [
    ['an index outside the backup', { ...good, devices: [{ ...device, index: '../../chunks/x.idx' }] }, /devices\[0\]\.index/],
    ['an index named ..', { ...good, devices: [{ ...device, index: '..' }] }, /devices\[0\]\.index/],
    ['a size that is no count', { ...good, devices: [{ ...device, size: -1 }] }, /devices\[0\]\.size/],
    ['a chunk size as text', { ...good, devices: [{ ...device, chunkSize: '65536' }] }, /devices\[0\]\.chunkSize/],
    ['an unknown mode', { ...good, devices: [{ ...device, mode: 'differential' }] }, /devices\[0\]\.mode/],
    ['devices that are no list', { ...good, devices: { disk: device } }, /devices is not a list/],
    ['a device that is no object', { ...good, devices: [null] }, /devices\[0\] is not an object/],
    ['another version', { ...good, version: 2 }, /version 2/],
  ] as const) {
    it(`refuses ${what}`, () => {
      const file = written(m, what.replace(/\W+/g, '-'));
      assert.throws(() => readManifest(file), (e: Error & { code?: string }) => e.code === 'EIO' && /^manifest /.test(e.message) && field.test(e.message));
    });
  }
});
