import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import fc from 'fast-check';
import { MemoryStorage } from '../../../src/backing/memory-storage.js';
import { Registry } from '../../../src/core/registry.js';
import { Handshake, type HandshakeStep } from '../../../src/frontends/nbd/handshake.js';
import { ByteQueue } from '../../../src/util/byte-queue.js';

const IHAVEOPT = Buffer.from('IHAVEOPT');

function option(code: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  IHAVEOPT.copy(h);
  h.writeUInt32BE(code, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

function goData(name: string, infos: number[] = []): Buffer {
  const n = Buffer.from(name);
  const b = Buffer.alloc(4 + n.length + 2 + 2 * infos.length);
  b.writeUInt32BE(n.length, 0);
  n.copy(b, 4);
  b.writeUInt16BE(infos.length, 4 + n.length);
  for (const [i, t] of infos.entries()) b.writeUInt16BE(t, 6 + n.length + 2 * i);
  return b;
}

function metaData(name: string, queries: string[]): Buffer {
  const parts = [Buffer.alloc(4), Buffer.from(name), Buffer.alloc(4)];
  parts[0]?.writeUInt32BE(Buffer.byteLength(name));
  parts[2]?.writeUInt32BE(queries.length);
  for (const q of queries) {
    const l = Buffer.alloc(4);
    l.writeUInt32BE(Buffer.byteLength(q));
    parts.push(l, Buffer.from(q));
  }
  return Buffer.concat(parts);
}

async function registry(): Promise<Registry> {
  const r = new Registry();
  await r.attach(new MemoryStorage(1 << 20, { path: '/x/disk0' }));
  return r;
}

/** Feeds input in the given pieces; returns everything sent and the final step. */
function drive(r: Registry, pieces: Buffer[]): { sent: Buffer; step: HandshakeStep } {
  const sent: Buffer[] = [];
  const hs = new Handshake(r, (b) => sent.push(b));
  const q = new ByteQueue();
  let step: HandshakeStep = { kind: 'more' };
  for (const p of pieces) {
    q.push(p);
    step = hs.feed(q);
    if (step.kind !== 'more') break;
  }
  return { sent: Buffer.concat(sent), step };
}

const session = Buffer.concat([
  Buffer.from([0, 0, 0, 3]),
  option(8),
  option(3),
  option(9, metaData('disk0', [])),
  option(10, metaData('disk0', ['base:allocation'])),
  option(6, goData('nope')),
  option(6, goData('disk0', [1, 2, 3])),
  option(99, Buffer.from('junk')),
  option(7, goData('disk0')),
]);

describe('NBD handshake', () => {
  it('negotiates structured replies, meta context and GO', async () => {
    const { step } = drive(await registry(), [session]);
    assert.equal(step.kind, 'transmission');
    if (step.kind !== 'transmission') return;
    assert.equal(step.agreement.device.name, 'disk0');
    assert.equal(step.agreement.isStructured, true);
    assert.deepEqual(step.agreement.contexts.map((c) => [c.id, c.name]), [[1, 'base:allocation']]);
  });

  it('gives the same replies however the input is split (re-splitting fuzz)', async () => {
    const r = await registry();
    const whole = drive(r, [session]).sent;
    fc.assert(
      fc.property(fc.array(fc.integer({ min: 1, max: session.length - 1 }), { maxLength: 40 }), (cuts) => {
        const points = [...new Set(cuts)].sort((a, b) => a - b);
        const pieces: Buffer[] = [];
        let last = 0;
        for (const p of points) {
          pieces.push(session.subarray(last, p));
          last = p;
        }
        pieces.push(session.subarray(last));
        const { sent, step } = drive(r, pieces);
        assert.equal(step.kind, 'transmission');
        assert.deepEqual(sent, whole);
      }),
      { numRuns: 300 },
    );
  });

  it('never throws on arbitrary bytes, and closes or waits', async () => {
    const r = await registry();
    fc.assert(
      fc.property(fc.uint8Array({ maxLength: 300 }), fc.boolean(), (bytes, withPrefix) => {
        const input = withPrefix ? Buffer.concat([Buffer.from([0, 0, 0, 1]), IHAVEOPT, Buffer.from(bytes)]) : Buffer.from(bytes);
        const { step } = drive(r, [input]);
        assert.ok(['more', 'close', 'transmission'].includes(step.kind));
      }),
      { numRuns: 500 },
    );
  });

  it('closes on unknown client flags, bad option magic and oversized options', async () => {
    const r = await registry();
    assert.equal(drive(r, [Buffer.from([0, 0, 0, 0x80])]).step.kind, 'close');
    assert.equal(drive(r, [Buffer.concat([Buffer.from([0, 0, 0, 1]), Buffer.alloc(16, 0x41)])]).step.kind, 'close');
    const big = Buffer.alloc(16);
    IHAVEOPT.copy(big);
    big.writeUInt32BE(7, 8);
    big.writeUInt32BE(0xffffffff, 12);
    assert.equal(drive(r, [Buffer.concat([Buffer.from([0, 0, 0, 1]), big])]).step.kind, 'close');
  });

  it('refuses SET_META_CONTEXT before structured replies and unknown exports', async () => {
    const r = await registry();
    const { sent } = drive(r, [Buffer.concat([Buffer.from([0, 0, 0, 1]), option(10, metaData('disk0', ['base:allocation'])), option(7, goData('missing'))])]);
    // Skip the 18-byte greeting; replies: ERR_INVALID for SET, ERR_UNKNOWN for GO.
    assert.equal(sent.readUInt32BE(18 + 12), 0x80000003);
    const second = 18 + 20 + sent.readUInt32BE(18 + 16);
    assert.equal(sent.readUInt32BE(second + 12), 0x80000006);
  });
});
