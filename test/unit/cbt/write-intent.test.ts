// The write-intent record (core/write-intent.ts): group commit, first touch only, shrinking after a
// save, failures; and a model check that at every moment a crash loses no write: each write that went
// on is in the saved map or all its regions are in the record on disk.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { type IntentRecord, WriteIntent } from '../../../src/cbt/write-intent.js';

const REGION = 4096;

/** A record whose writes finish when the test says so. */
class ManualRecord implements IntentRecord {
  pending: Array<{ regions: Uint8Array; resolve: () => void; reject: (e: Error) => void }> = [];
  /** The record as last written whole: what a crash would find. */
  disk = new Uint8Array(0);
  writes = 0;

  write(regions: Uint8Array): Promise<void> {
    this.writes++;
    return new Promise((resolve, reject) => this.pending.push({ regions, resolve, reject }));
  }

  finish(): void {
    const w = this.pending.shift();
    if (!w) return;
    this.disk = w.regions.slice();
    w.resolve();
  }

  fail(): void {
    this.pending.shift()?.reject(new Error('EIO: disk gone'));
  }
}

const settle = (): Promise<void> => new Promise((r) => setImmediate(r));

describe('write intent', () => {
  it('a first write into a region waits for one record write shared by all waiting then; later writes go on at once', async () => {
    const record = new ManualRecord();
    const intent = new WriteIntent(16 * REGION, REGION, record);
    const a = intent.admit(0, 10);
    const b = intent.admit(REGION + 5, REGION); // regions 1 and 2
    assert.ok(a && b);
    assert.equal(record.writes, 0, 'the record write starts after this turn');
    await Promise.resolve();
    assert.equal(record.writes, 1, 'one record write for both');
    const c = intent.admit(3 * REGION, 1);
    assert.ok(c);
    assert.equal(record.writes, 1, 'a region asked for during a record write waits for the next one');
    let cDone = false;
    void c.then(() => (cDone = true));
    record.finish();
    await a;
    await b;
    await settle();
    assert.equal(cDone, false, 'region 3 was not in the first record write');
    assert.equal(record.writes, 2, 'the next record write started once the first was done');
    record.finish();
    await c;
    assert.deepEqual([...record.disk.subarray(0, 5)], [1, 1, 1, 1, 0]);
    assert.equal(intent.admit(100, 10), undefined, 'a recorded region: no wait');
    assert.ok(intent.covers(0, 4 * REGION));
    assert.ok(!intent.covers(0, 5 * REGION));
  });

  it('after a save, regions not written since leave the record; a write during the save keeps its region', async () => {
    const record = new ManualRecord();
    const intent = new WriteIntent(8 * REGION, REGION, record);
    const first = intent.admit(0, 3 * REGION);
    await settle();
    record.finish();
    await first;
    intent.beginSave();
    assert.equal(intent.admit(REGION, 1), undefined, 'still recorded during the save');
    const shrink = intent.endSave();
    assert.ok(!intent.covers(0, 1), 'a cleared region is no longer relied on');
    const again = intent.admit(0, 1); // asked for again in the same turn: the same record write
    await settle();
    record.finish();
    await shrink;
    await again;
    assert.deepEqual([...record.disk.subarray(0, 3)], [1, 1, 0], 'region 2, not written during the save, left the record');
    assert.equal(record.pending.length, 0);
    // A save with no write during it empties the record.
    intent.beginSave();
    const empty = intent.endSave();
    await settle();
    record.finish();
    await empty;
    assert.deepEqual([...record.disk.subarray(0, 3)], [0, 0, 0]);
    assert.equal(intent.isTouched, false);
    intent.admit(7 * REGION, 1);
    assert.equal(intent.isTouched, true);
  });

  it('a failed record write fails the writes that waited for it with EIO, and the next write tries again', async () => {
    const record = new ManualRecord();
    const intent = new WriteIntent(4 * REGION, REGION, record);
    const waiting = intent.admit(0, 1);
    await settle();
    record.fail();
    await assert.rejects(waiting as Promise<void>, /EIO.*cannot record write intent/);
    const retry = intent.admit(0, 1);
    assert.ok(retry, 'the region is still not recorded');
    await settle();
    record.finish();
    await retry;
    assert.equal(record.disk[0], 1);
  });

  it('model: at any moment a crash finds every write that went on in the saved map or in the record', async () => {
    type Op = { kind: 'write'; first: number; count: number } | { kind: 'finish' } | { kind: 'fail' } | { kind: 'beginSave' } | { kind: 'endSave' };
    const regions = 12;
    const op = fc.oneof(
      { weight: 5, arbitrary: fc.record({ kind: fc.constant('write' as const), first: fc.nat(regions - 1), count: fc.integer({ min: 1, max: 3 }) }) },
      { weight: 4, arbitrary: fc.constant({ kind: 'finish' as const }) },
      { weight: 1, arbitrary: fc.constant({ kind: 'fail' as const }) },
      { weight: 2, arbitrary: fc.constant({ kind: 'beginSave' as const }) },
      { weight: 2, arbitrary: fc.constant({ kind: 'endSave' as const }) },
    );
    await fc.assert(
      fc.asyncProperty(fc.array(op, { maxLength: 80 }), async (ops: Op[]) => {
        const record = new ManualRecord();
        record.disk = new Uint8Array(regions);
        const intent = new WriteIntent(regions * REGION, REGION, record);
        // Writes by index: their regions, whether they went on, whether the saved map has their mark.
        const writes: Array<{ first: number; last: number; wentOn: boolean; saved: boolean }> = [];
        let saving: number[] | null = null; // the writes marked when the save began
        const check = (): void => {
          for (const w of writes) {
            if (!w.wentOn || w.saved) continue;
            for (let r = w.first; r <= w.last; r++) assert.equal(record.disk[r], 1, `a write into regions ${w.first}-${w.last} went on, is not saved, and region ${r} is not recorded`);
          }
        };
        for (const o of ops) {
          if (o.kind === 'write') {
            const last = Math.min(o.first + o.count - 1, regions - 1);
            const w = { first: o.first, last, wentOn: false, saved: false };
            writes.push(w);
            const wait = intent.admit(o.first * REGION, (last - o.first + 1) * REGION);
            if (wait === undefined) w.wentOn = true;
            else wait.then(() => (w.wentOn = true), () => undefined);
          } else if (o.kind === 'finish') {
            record.finish();
          } else if (o.kind === 'fail') {
            record.fail();
          } else if (o.kind === 'beginSave' && saving === null) {
            intent.beginSave();
            saving = writes.map((_, i) => i);
          } else if (o.kind === 'endSave' && saving !== null) {
            for (const i of saving) (writes[i] as { saved: boolean }).saved = true;
            saving = null;
            void intent.endSave().catch(() => undefined);
          }
          await settle();
          check();
        }
        // Liveness: once every record write is done, no write is left waiting.
        while (record.pending.length > 0) {
          record.finish();
          await settle();
        }
        check();
        for (const w of writes) {
          if (!w.wentOn) {
            // Only a write whose record write failed may be left (its caller got EIO).
            assert.ok(ops.some((o) => o.kind === 'fail'), 'a write waits although no record write failed');
          }
        }
      }),
      { numRuns: 300 },
    );
  });
});
