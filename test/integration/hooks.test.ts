// The take's application-consistency hooks (blksnapd --hooks-dir): executables run in name order with
// `freeze` before the take and in reverse order with `thaw` after it, told the snapshot and its
// devices; other files are left alone; a failing freeze hook aborts the take and thaws those frozen
// before it; one past --hook-timeout is killed and counts as failed; a failing thaw hook does not
// stop the other thaws; a client killed mid-take leaves every hook thawed; backup_create takes
// through the same path.
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { withDaemon } from '../helpers/backup.js';
import { blksnapCli } from '../helpers/daemon.js';
import { missing, tempDir } from '../helpers/tools.js';

const MiB = 1024 * 1024;

/** A hook script that appends "NAME PHASE DEVICES" to `log`, and exits `status` for `failOn`. */
function hook(dir: string, name: string, log: string, o: { failOn?: 'freeze' | 'thaw'; sleep?: number } = {}): void {
  const script = [
    '#!/bin/sh',
    `echo "${name} $1 $BLKSNAP_DEVICES $BLKSNAP_SNAPSHOT_ID" >> ${log}`,
    ...(o.sleep ? [`[ "$1" = freeze ] && sleep ${o.sleep}`] : []),
    ...(o.failOn ? [`[ "$1" = ${o.failOn} ] && { echo "${name} refuses to ${o.failOn}" >&2; exit 3; }`] : []),
    'exit 0',
  ].join('\n');
  fs.writeFileSync(path.join(dir, name), `${script}\n`, { mode: 0o755 });
}

describe('take hooks', { skip: missing('sh') }, () => {
  it('freeze in name order before the take, thaw in reverse after it; a failing or slow freeze hook aborts the take, thawing those frozen', async () => {
    const t = tempDir('blksnap-hooks-');
    const hooks = path.join(t.dir, 'hooks.d');
    const log = path.join(t.dir, 'hooks.log');
    fs.mkdirSync(hooks);
    hook(hooks, '10-db', log);
    hook(hooks, '20-app', log);
    fs.writeFileSync(path.join(hooks, '15-not-executable'), '#!/bin/sh\necho never >> /dev/null\n', { mode: 0o644 });
    hook(hooks, '30-old.dpkg-old', log);
    const lines = (): string[] => (fs.existsSync(log) ? fs.readFileSync(log, 'utf8').trim().split('\n') : []);
    try {
      await withDaemon({ 'h.img': 8 * MiB }, async (daemon, repo, dir) => {
        const take = async (): Promise<{ code: number | null; stderr: string; id: string }> => {
          const { id } = await daemon.json<{ id: string }>('snapshot_create', '--device', 'h.img', '--file', dir, '--limit', '64M');
          const r = await daemon.cli('snapshot_take', '--id', id);
          return { code: r.code, stderr: r.stderr, id };
        };
        const first = await take();
        assert.equal(first.code, 0, first.stderr);
        assert.deepEqual(lines(), [`10-db freeze h.img ${first.id}`, `20-app freeze h.img ${first.id}`, `20-app thaw h.img ${first.id}`, `10-db thaw h.img ${first.id}`]);
        assert.match(daemon.log, /hooks frozen: 10-db, 20-app/);
        await daemon.json('snapshot_destroy', '--id', first.id);

        // The second hook refuses: no take; the first is thawed, the second never was frozen.
        fs.rmSync(log);
        hook(hooks, '20-app', log, { failOn: 'freeze' });
        const refused = await take();
        assert.equal(refused.code, 125, refused.stderr);
        assert.match(refused.stderr, /ECANCELED: snapshot .* not taken: freeze hook 20-app exited 3: 20-app refuses to freeze; 10-db thawed/);
        assert.deepEqual(lines().map((l) => l.split(' ').slice(0, 2).join(' ')), ['10-db freeze', '20-app freeze', '10-db thaw']);
        const info = await daemon.json<{ image: unknown }>('snapshot_info', '--device', 'h.img');
        assert.equal(info.image, null, 'no image: the take did not happen');
        await daemon.json('snapshot_destroy', '--id', refused.id);

        // A freeze hook past the timeout (2 s here) is killed: the take fails, ETIMEDOUT.
        fs.rmSync(log);
        hook(hooks, '20-app', log, { sleep: 30 });
        const slow = await take();
        assert.equal(slow.code, 110, slow.stderr);
        assert.match(slow.stderr, /ETIMEDOUT: .*freeze hook 20-app did not finish within 2 s/);
        await daemon.json('snapshot_destroy', '--id', slow.id);

        // A failing thaw hook is logged; the take stands and the other hooks thaw.
        fs.rmSync(log);
        hook(hooks, '20-app', log, { failOn: 'thaw' });
        const thawFails = await take();
        assert.equal(thawFails.code, 0, thawFails.stderr);
        assert.deepEqual(lines().map((l) => l.split(' ').slice(0, 2).join(' ')), ['10-db freeze', '20-app freeze', '20-app thaw', '10-db thaw']);
        assert.match(daemon.log, /thaw hook 20-app exited 3/);
        await daemon.json('snapshot_destroy', '--id', thawFails.id);

        // The client killed while the hooks freeze: the daemon finishes the take and thaws them all.
        fs.rmSync(log);
        hook(hooks, '20-app', log, { sleep: 1 });
        const { id: orphanId } = await daemon.json<{ id: string }>('snapshot_create', '--device', 'h.img', '--file', dir, '--limit', '64M');
        const client = spawn(process.execPath, [blksnapCli, 'snapshot_take', '--id', orphanId], { env: { ...process.env, BLKSNAP_CONTROL: daemon.controlPath }, stdio: 'ignore' });
        await new Promise((r) => setTimeout(r, 400));
        client.kill('SIGKILL');
        for (let i = 0; i < 50 && lines().length < 4; i++) await new Promise((r) => setTimeout(r, 100));
        assert.deepEqual(lines().map((l) => l.split(' ').slice(0, 2).join(' ')), ['10-db freeze', '20-app freeze', '20-app thaw', '10-db thaw']);
        await daemon.json('snapshot_destroy', '--id', orphanId);

        // backup_create takes through the same path.
        fs.rmSync(log);
        hook(hooks, '20-app', log);
        const made = await daemon.json<{ id: string }>('backup_create', '--repo', repo.location, '--device', 'h.img', '--diff-storage', dir);
        assert.ok(made.id);
        assert.deepEqual(lines().map((l) => l.split(' ').slice(0, 2).join(' ')), ['10-db freeze', '20-app freeze', '20-app thaw', '10-db thaw']);
      }, ['--hooks-dir', hooks, '--hook-timeout', '2']);
    } finally {
      t.remove();
    }
  });
});
