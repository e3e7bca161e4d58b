// Sending what a backup's workers build in memory, against a store kept in memory: a pack of many
// parts becomes one object made whole from them, a pack of one part one PUT, each index only after
// its pack is whole; at most `concurrency` sends at once and add() waits while too much is unsent;
// a failed part fails the backup, and abort() drops every upload not made whole.
import assert from 'node:assert/strict';
import { createHash, randomBytes } from 'node:crypto';
import { describe, it } from 'node:test';
import { PackUploads } from '../../../src/backup/pack-uploads.js';
import type { Backend, PartUpload } from '../../../src/repository/backend.js';
import type { PackPiece } from '../../../src/repository/pack.js';

const md5 = (b: Uint8Array): string => createHash('md5').update(b).digest('base64');

/** A store in memory whose sends take a turn of the event loop each (or wait on `gate`), recording the order things happened in. */
function memoryStore(o: { failPart?: number; gate?: () => Promise<void> } = {}) {
  const objects = new Map<string, Buffer>();
  const events: string[] = [];
  let running = 0;
  let mostRunning = 0;
  const aborted: string[] = [];
  const send = async <T>(what: string, f: () => T): Promise<T> => {
    running++;
    mostRunning = Math.max(mostRunning, running);
    try {
      await (o.gate ? o.gate() : new Promise((r) => setImmediate(r)));
      events.push(what);
      return f();
    } finally {
      running--;
    }
  };
  const backend = {
    location: 'memory',
    async write(name: string, data: Uint8Array, options?: { md5?: string }) {
      if (options?.md5 !== undefined) assert.equal(options.md5, md5(data));
      await send(`put ${name}`, () => objects.set(name, Buffer.from(data)));
    },
    async startUpload(name: string): Promise<PartUpload> {
      const parts = new Map<number, Buffer>();
      events.push(`start ${name}`);
      return {
        part: (n, data, sum) => send(`part ${name} ${n}`, () => {
          assert.equal(sum, md5(data));
          if (n === o.failPart) throw Object.assign(new Error(`part ${n} refused`), { code: 'EIO' });
          parts.set(n, Buffer.from(data));
        }),
        complete: () => send(`complete ${name}`, () => {
          objects.set(name, Buffer.concat([...parts.keys()].sort((a, b) => a - b).map((k) => parts.get(k) as Buffer)));
        }),
        abort: async () => {
          aborted.push(name);
        },
      };
    },
  } as unknown as Backend;
  return { backend, objects, events, aborted, mostRunning: () => mostRunning };
}

/** A pack's pieces as a streaming PackWriter makes them: its bytes cut into parts, then its index. */
function packPieces(name: string, bytes: Buffer, partBytes: number): PackPiece[] {
  const pieces: PackPiece[] = [];
  for (let at = 0, n = 1; at < bytes.length || n === 1; at += partBytes, n++) {
    const data = new Uint8Array(bytes.subarray(at, at + partBytes));
    pieces.push({ kind: 'part', name, n, data, md5: md5(data), last: at + partBytes >= bytes.length });
  }
  pieces.push({ kind: 'index', name: name.replace('.pack', '.idx'), pack: name, data: new Uint8Array(Buffer.from(`index of ${name}`)) });
  return pieces;
}

describe('PackUploads', () => {
  it('packs of many parts and of one, each index after its pack, every part buffer given back', async () => {
    const store = memoryStore();
    const uploads = new PackUploads(store.backend, 3, 1 << 30);
    const a = randomBytes(10 * 1000 + 7);
    const b = randomBytes(900);
    const given: Uint8Array[] = [];
    // Interleaved as two workers' results come: a's parts over several adds.
    const pa = packPieces('chunks/a.pack', a, 1000);
    await uploads.add(pa.slice(0, 4), (buf) => given.push(buf));
    await uploads.add(packPieces('chunks/b.pack', b, 1000), (buf) => given.push(buf));
    await uploads.add(pa.slice(4), (buf) => given.push(buf));
    await uploads.drain();
    assert.deepEqual(store.objects.get('chunks/a.pack'), a);
    assert.deepEqual(store.objects.get('chunks/b.pack'), b);
    assert.equal(store.objects.get('chunks/a.idx')?.toString(), 'index of chunks/a.pack');
    assert.ok(store.events.indexOf('complete chunks/a.pack') < store.events.indexOf('put chunks/a.idx'));
    assert.ok(store.events.indexOf('put chunks/b.pack') < store.events.indexOf('put chunks/b.idx'));
    assert.ok(!store.events.includes('start chunks/b.pack'), 'a pack of one part is one PUT');
    assert.equal(given.length, pa.length - 1 + 1, 'every part (11 of a, 1 of b) given back');
    assert.ok(store.mostRunning() <= 3, `${store.mostRunning()} sends at once`);
  });

  it('add() waits while more than the limit is unsent, and goes on as sends finish', async () => {
    const waiting: Array<() => void> = [];
    const store = memoryStore({ gate: () => new Promise<void>((r) => waiting.push(r)) });
    const uploads = new PackUploads(store.backend, 2, 2500);
    const pieces = packPieces('chunks/c.pack', randomBytes(6000), 1000);
    let added = false;
    const adding = uploads.add(pieces.slice(0, 4)).then(() => {
      added = true;
    });
    await new Promise((r) => setImmediate(r));
    assert.equal(added, false, '4000 bytes unsent, the limit 2500: add() waits');
    while (!added) {
      waiting.shift()?.();
      await new Promise((r) => setImmediate(r));
    }
    await adding;
    const rest = uploads.add(pieces.slice(4));
    const release = setInterval(() => waiting.shift()?.(), 1);
    try {
      await rest;
      await uploads.drain();
    } finally {
      clearInterval(release);
    }
    assert.equal(store.objects.get('chunks/c.pack')?.length, 6000);
  });

  it('a refused part fails drain() with its error, no index is written, and abort() drops the upload', async () => {
    const store = memoryStore({ failPart: 2 });
    const uploads = new PackUploads(store.backend, 2, 1 << 30);
    await uploads.add(packPieces('chunks/d.pack', randomBytes(3500), 1000)).catch(() => undefined);
    await assert.rejects(uploads.drain(), /part 2 refused/);
    await uploads.abort();
    assert.deepEqual(store.aborted, ['chunks/d.pack']);
    assert.ok(!store.objects.has('chunks/d.pack') && !store.objects.has('chunks/d.idx'));
  });
});
