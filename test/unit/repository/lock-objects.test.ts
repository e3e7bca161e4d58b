// The lock by lock objects (what an object store has instead of flock), over a local directory's
// objects: shared holders together, an exclusive one alone (contenders racing never both hold it),
// a released lock's object gone, and a lease that ran out or a dead local process not binding.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as os from 'node:os';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { LocalBackend } from '../../../src/repository/local-backend.js';
import { lockWithObjects } from '../../../src/repository/lock-objects.js';
import { tempDir } from '../../helpers/tools.js';

function withStore(body: (backend: LocalBackend, dir: string) => Promise<void>): Promise<void> {
  const { dir, remove } = tempDir('blksnap-locks-');
  return body(new LocalBackend(dir), dir).finally(remove);
}

describe('lock objects', () => {
  it('shared holders hold together; an exclusive contender waits for them, naming one', () =>
    withStore(async (backend) => {
      const a = await lockWithObjects(backend, false);
      const b = await lockWithObjects(backend, false);
      let holder = '';
      let taken = false;
      const exclusive = lockWithObjects(backend, true, (h) => (holder = h)).then((release) => {
        taken = true;
        return release;
      });
      await new Promise((r) => setTimeout(r, 1500));
      assert.equal(taken, false);
      assert.match(holder, new RegExp(`held by pid ${process.pid} on ${os.hostname()}`));
      await a();
      await b();
      const release = await exclusive;
      assert.equal((await backend.list('locks/')).length, 1);
      await release();
      assert.deepEqual(await backend.list('locks/'), []);
    }));

  it('exclusive contenders racing: never two at once, each gets its turn', () =>
    withStore(async (backend) => {
      let inside = 0;
      let most = 0;
      let turns = 0;
      await Promise.all(
        Array.from({ length: 4 }, async () => {
          const release = await lockWithObjects(backend, true);
          inside++;
          most = Math.max(most, inside);
          await new Promise((r) => setTimeout(r, 50));
          inside--;
          turns++;
          await release();
        }),
      );
      assert.equal(most, 1);
      assert.equal(turns, 4);
    }));

  it('a lock whose lease ran out, or whose process is gone from this host, does not bind; one of another host does', () =>
    withStore(async (backend, dir) => {
      fs.mkdirSync(path.join(dir, 'locks'));
      const put = (name: string, host: string, pid: number, refreshed: number): void => fs.writeFileSync(path.join(dir, 'locks', name), JSON.stringify({ exclusive: true, host, pid, refreshed }));
      put('aaaaaaaaaaaaaaaa.json', 'elsewhere', 1, Date.now() - 10 * 60_000);
      // Above the kernel's largest pid (2^22): no process has it.
      put('bbbbbbbbbbbbbbbb.json', os.hostname(), 2 ** 22 + 1, Date.now());
      put('cccccccccccccccc.json', 'elsewhere', 1, Date.now());
      let holder = '';
      const waiting = lockWithObjects(backend, false, (h) => (holder = h));
      await new Promise((r) => setTimeout(r, 1500));
      assert.match(holder, /exclusively by pid 1 on elsewhere/);
      fs.rmSync(path.join(dir, 'locks', 'cccccccccccccccc.json'));
      await (await waiting)();
      const release = await lockWithObjects(backend, true);
      await release();
    }));
});
