// The requests' front door: a request that declines, throws, or settles later leaves the gate exactly
// once, so a close waits for what is inside and no longer.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { RequestGate } from '../../../src/core/request-gate.js';

const gate = (): RequestGate => new RequestGate(() => 'device d0', () => 1 << 20, () => false);

/** Whether close() finishes within a few turns of the event loop (nothing inside), else false. */
async function closesAtOnce(g: RequestGate): Promise<boolean> {
  return Promise.race([g.close().then(() => true), new Promise<boolean>((r) => setTimeout(() => r(false), 50))]);
}

describe('request gate', () => {
  it('a request that declines at once leaves at once', async () => {
    const g = gate();
    assert.equal(g.aroundUnlessDeclined('image read', 0, 4096, () => null), null);
    assert.equal(await closesAtOnce(g), true);
  });

  it('a request that throws leaves, and its error goes to the caller', async () => {
    const g = gate();
    assert.throws(() => g.aroundUnlessDeclined('image read', 0, 4096, () => { throw new Error('boom'); }), /boom/);
    assert.equal(await closesAtOnce(g), true);
  });

  it('a request under way holds a close until it settles, then leaves once', async () => {
    const g = gate();
    let settle = (): void => undefined;
    const work = g.aroundUnlessDeclined('image read', 0, 4096, () => new Promise<void>((r) => (settle = r)));
    assert.ok(work);
    const closed = g.close();
    let isClosed = false;
    void closed.then(() => (isClosed = true));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(isClosed, false, 'the close waits for the request inside');
    assert.throws(() => g.aroundUnlessDeclined('image read', 0, 4096, () => null), { code: 'ESHUTDOWN' });
    settle();
    await work;
    await closed;
    assert.equal(isClosed, true);
  });

  it('a range past the end is refused before any work runs', () => {
    const g = gate();
    assert.throws(() => g.aroundUnlessDeclined('image read', 1 << 20, 1, () => assert.fail('no work')), { code: 'EINVAL' });
  });
});
