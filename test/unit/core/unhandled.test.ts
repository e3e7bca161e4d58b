// No promise of the core may be left to reject unhandled when image I/O or background growth fails.
import assert from 'node:assert/strict';
import { after, before, describe, it } from 'node:test';
import { MemoryStorage } from '../../../src/backing/memory-storage.js';
import { ChunkState } from '../../../src/core/chunk-map.js';
import { DiffArea } from '../../../src/core/diff-area.js';
import { DiffStorage } from '../../../src/core/diff-storage.js';
import { BlkError } from '../../../src/errors.js';
import { tempDir } from '../../helpers/tools.js';

const CHUNK = 4096;

/** A store whose reads and writes fail, a few event-loop turns after they are asked for. */
class FailingLater extends MemoryStorage {
  override async read(): Promise<void> {
    await new Promise((r) => setTimeout(r, 5));
    throw new BlkError('EIO', 'read failed');
  }
  override async write(): Promise<void> {
    await new Promise((r) => setTimeout(r, 5));
    throw new BlkError('EIO', 'write failed');
  }
}

describe('no unhandled rejections', () => {
  const unhandled: unknown[] = [];
  const onUnhandled = (e: unknown): void => void unhandled.push(e);
  before(() => process.on('unhandledRejection', onUnhandled));
  after(() => process.off('unhandledRejection', onUnhandled));

  async function settle(): Promise<void> {
    await new Promise((r) => setTimeout(r, 30));
  }

  async function area(origin: MemoryStorage, diffStore: MemoryStorage): Promise<DiffArea> {
    const diff = await DiffStorage.over(diffStore, 'file', { limit: 1024 * 1024, minimum: 16 * CHUNK });
    return new DiffArea('dev', origin, diff, { error: null, corrupt() {} }, { chunkMinimumShift: 12, maximumInQueue: 4 });
  }

  it('an image read that fails on a later chunk leaves no earlier read unhandled', async () => {
    unhandled.length = 0;
    const a = await area(new FailingLater(4 * CHUNK), new MemoryStorage(4 * CHUNK));
    a.chunks.state[1] = ChunkState.Failed;
    await assert.rejects(a.readImage(0, new Uint8Array(2 * CHUNK)), (e: BlkError) => e.code === 'EIO');
    await settle();
    assert.deepEqual(unhandled, []);
  });

  it('an image write that fails on a later chunk leaves no earlier write unhandled', async () => {
    unhandled.length = 0;
    const a = await area(new MemoryStorage(4 * CHUNK), new FailingLater(16 * CHUNK));
    a.chunks.state[0] = ChunkState.Stored; // kept: its write goes to the failing store
    a.chunks.slot[0] = 0;
    a.chunks.state[1] = ChunkState.Failed;
    await assert.rejects(a.writeImage(0, new Uint8Array(2 * CHUNK)), (e: BlkError) => e.code === 'EIO');
    await settle();
    assert.deepEqual(unhandled, []);
  });

  it('a background growth of the difference storage that fails with EIO is not unhandled', async () => {
    unhandled.length = 0;
    const tmp = tempDir();
    const diff = await DiffStorage.open(tmp.dir, { limit: 1024 * 1024, minimum: 64 * 1024, devices: [] });
    try {
      (diff.store as unknown as { grow: () => Promise<void> }).grow = () => Promise.reject(new BlkError('EIO', 'fallocate failed'));
      await diff.allocate(48 * 1024, 4096); // below half a step free: growth starts in the background
      await settle();
      assert.deepEqual(unhandled, []);
    } finally {
      await diff.close();
      tmp.remove();
    }
  });
});
