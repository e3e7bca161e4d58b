// The prune lock by a conditional object (what an object store has instead of flock), over a store
// that keeps S3's conditions (If-None-Match: *, If-Match: ETag) in memory: contenders racing never
// both hold it, a holder's lease that ran out or a dead local process does not bind, one of another
// host does and is named, and a release removes only its own object. The
// same calls against Ceph's gateway are in test/integration/s3-repository.test.ts.
import assert from 'node:assert/strict';
import { createHash } from 'node:crypto';
import * as os from 'node:os';
import { describe, it } from 'node:test';
import { type ConditionalStore, lockWithObjects, PRUNE_LOCK } from '../../../src/repository/lock-objects.js';
import { thisHost } from '../../../src/repository/host.js';

/** Objects in memory with S3's conditional PUT; each call yields to the event loop first, as a request would. */
class MemoryStore implements ConditionalStore {
  readonly location = 'memory';
  objects = new Map<string, Buffer>();
  #tag = (data: Buffer): string => `"${createHash('md5').update(data).digest('hex')}"`;
  async createIfAbsent(name: string, data: Uint8Array): Promise<string | null> {
    await new Promise((r) => setImmediate(r));
    if (this.objects.has(name)) return null;
    this.objects.set(name, Buffer.from(data));
    return this.#tag(Buffer.from(data));
  }
  async replaceIfMatch(name: string, data: Uint8Array, etag: string): Promise<string | null> {
    await new Promise((r) => setImmediate(r));
    const there = this.objects.get(name);
    if (!there || this.#tag(there) !== etag) return null;
    this.objects.set(name, Buffer.from(data));
    return this.#tag(Buffer.from(data));
  }
  async readTagged(name: string): Promise<{ data: Buffer; etag: string } | null> {
    await new Promise((r) => setImmediate(r));
    const there = this.objects.get(name);
    return there ? { data: there, etag: this.#tag(there) } : null;
  }
  async remove(name: string): Promise<void> {
    this.objects.delete(name);
  }
}

function holder(host: string, machineId: string, pid: number, refreshed: number): Buffer {
  return Buffer.from(JSON.stringify({ token: 'someone-else', host, machineId, pid, refreshed }));
}

describe('the prune lock object', () => {
  it('contenders racing: never two at once, each gets its turn; the release leaves no object', async () => {
    const store = new MemoryStore();
    let inside = 0;
    let most = 0;
    let turns = 0;
    await Promise.all(
      Array.from({ length: 4 }, async () => {
        const lock = await lockWithObjects(store);
        inside++;
        most = Math.max(most, inside);
        await new Promise((r) => setTimeout(r, 50));
        inside--;
        turns++;
        await lock.release();
      }),
    );
    assert.equal(most, 1);
    assert.equal(turns, 4);
    assert.equal(store.objects.size, 0);
  });

  it('a live holder of another host binds and is named; its lease run out, it is taken over', async () => {
    const store = new MemoryStore();
    store.objects.set(PRUNE_LOCK, holder('elsewhere', 'feedfacefeedfacefeedfacefeedface', 1, Date.now()));
    let named = '';
    let taken = false;
    const waiting = lockWithObjects(store, (h) => (named = h)).then((lock) => {
      taken = true;
      return lock;
    });
    await new Promise((r) => setTimeout(r, 1500));
    assert.equal(taken, false, 'a live holder binds');
    assert.match(named, /by pid 1 on elsewhere, refreshed /);
    // The holder stops refreshing: an hour later its lease has run out.
    store.objects.set(PRUNE_LOCK, holder('elsewhere', 'feedfacefeedfacefeedfacefeedface', 1, Date.now() - 3_600_000));
    const lock = await waiting;
    assert.equal(lock.isLost(), false);
    await lock.release();
  });

  it("a dead process of this machine does not bind; a release leaves a lock another took over alone", async () => {
    const store = new MemoryStore();
    const me = thisHost();
    // Above the kernel's largest pid (2^22): no process has it.
    store.objects.set(PRUNE_LOCK, holder(os.hostname(), me.machineId, 2 ** 22 + 1, Date.now()));
    const lock = await lockWithObjects(store);
    // Another client takes the object over (as one would once this holder's lease ran out).
    store.objects.set(PRUNE_LOCK, holder('elsewhere', 'feedfacefeedfacefeedfacefeedface', 1, Date.now()));
    await lock.release();
    assert.ok(store.objects.has(PRUNE_LOCK), "the release leaves another's lock alone");
  });
});
