// A real database end to end: PostgreSQL's data directory on ext4 on the /dev/loopN of an attached
// device, pgbench writing and a client committing numbered rows, a backup taken with the shipped
// PostgreSQL hook (packaging/hooks/postgresql: a CHECKPOINT at freeze) and the filesystem frozen;
// the backup restored to a new file, attached, mounted, and PostgreSQL started on it: it starts,
// pg_amcheck finds nothing, and every row whose commit was acknowledged before the freeze is there.
import assert from 'node:assert/strict';
import { type ChildProcess, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { type Created, withDaemon } from '../helpers/backup.js';
import { Mounts, mkfs } from '../helpers/mounts.js';
import { check, missing, run, sparseFile, tempDir } from '../helpers/tools.js';

const MiB = 1024 * 1024;

/** A TCP port nothing listens on now (the servers' ports: a fixed one may be taken by another suite's). */
function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = net.createServer();
    server.on('error', reject);
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as net.AddressInfo;
      server.close(() => resolve(port));
    });
  });
}

/** PostgreSQL's programs (Debian: /usr/lib/postgresql/VERSION/bin), or null. */
function postgresBin(): string | null {
  const root = '/usr/lib/postgresql';
  if (!fs.existsSync(root)) return null;
  for (const v of fs.readdirSync(root).sort().reverse()) if (fs.existsSync(path.join(root, v, 'bin', 'pg_amcheck'))) return path.join(root, v, 'bin');
  return null;
}

const bin = postgresBin();
const hasPostgresUser = fs.readFileSync('/etc/passwd', 'utf8').split('\n').some((l) => l.startsWith('postgres:'));
const skip = process.getuid?.() !== 0 ? 'needs root' : !bin || !hasPostgresUser ? 'PostgreSQL is not installed (Debian: postgresql; scripts/prepare.sh installs it)' : missing('mkfs.ext4', 'losetup', 'runuser');
const hookSource = path.resolve('packaging/hooks/postgresql');

describe('PostgreSQL, backed up with its hook, restored and started', { skip }, () => {
  it('starts on the restored backup, pg_amcheck finds nothing, and every commit acknowledged before the freeze is there', async () => {
    const pg = bin as string;
    const t = tempDir('blksnap-pg-hooks-');
    const hooks = path.join(t.dir, 'hooks.d');
    fs.mkdirSync(hooks);
    const freezeLog = path.join(t.dir, 'freeze.log');
    const sockets = path.join(t.dir, 'sockets');
    fs.mkdirSync(sockets, { mode: 0o777 });
    fs.chmodSync(sockets, 0o777);
    fs.chmodSync(t.dir, 0o755);
    const port = await freePort();
    // The shipped hook, told where this test's server listens.
    fs.writeFileSync(path.join(hooks, '50-postgresql'), `#!/bin/sh\necho "$1 $(date +%s%3N)" >> ${freezeLog}\nPGHOST=${sockets} PGPORT=${port} PGUSER=postgres exec ${hookSource} "$1"\n`, { mode: 0o755 });
    const servers: string[] = [];
    const asPostgres = (program: string, args: string[]): Promise<string> => check('runuser', ['-u', 'postgres', '--', path.join(pg, program), ...args], { timeoutMs: 120_000 });
    const start = (data: string, p: number): Promise<string> => {
      servers.push(data);
      return asPostgres('pg_ctl', ['-D', data, '-l', path.join(data, '..', 'server.log'), '-w', '-t', '120', '-o', `-k ${sockets} -p ${p} -c listen_addresses=''`, 'start']);
    };
    const sql = (p: number, statement: string): Promise<string> => check(path.join(pg, 'psql'), ['-X', '-q', '-t', '-A', '-v', 'ON_ERROR_STOP=1', '-h', sockets, '-p', String(p), '-U', 'postgres', '-d', 'postgres', '-c', statement]);
    const background: ChildProcess[] = [];
    try {
      await withDaemon({}, async (daemon, repo, dir) => {
        fs.chmodSync(dir, 0o755);
        const mounts = new Mounts(dir);
        try {
          const dev = await daemon.json<{ blockDevice: string }>('attach', '--device', sparseFile(path.join(dir, 'pg.img'), 512 * MiB), '--name', 'pg', '--loop');
          await mkfs('ext4', dev.blockDevice);
          const mnt = await mounts.mount(dev.blockDevice, 'pg');
          fs.chmodSync(mnt, 0o755);
          await check('chown', ['postgres:postgres', mnt]);
          const data = path.join(mnt, 'data');
          await asPostgres('initdb', ['-D', data, '--auth=trust', '-U', 'postgres', '--no-sync']);
          await start(data, port);
          await sql(port, 'CREATE TABLE marks (id integer PRIMARY KEY, at timestamptz DEFAULT now())');
          await check(path.join(pg, 'pgbench'), ['-i', '-s', '5', '-q', '-h', sockets, '-p', String(port), '-U', 'postgres', 'postgres'], { timeoutMs: 180_000 });
          const bench = spawn(path.join(pg, 'pgbench'), ['-T', '60', '-c', '2', '-h', sockets, '-p', String(port), '-U', 'postgres', 'postgres'], { stdio: 'ignore' });
          background.push(bench);
          // Rows committed one by one; each acknowledged commit noted with the time it was.
          const acknowledged: Array<{ id: number; at: number }> = [];
          let writing = true;
          const writer = (async () => {
            for (let id = 1; writing; id++) {
              const r = await run(path.join(pg, 'psql'), ['-X', '-q', '-v', 'ON_ERROR_STOP=1', '-h', sockets, '-p', String(port), '-U', 'postgres', '-d', 'postgres', '-c', `INSERT INTO marks (id) VALUES (${id})`]);
              if (r.code !== 0) throw new Error(`insert ${id}: ${r.stderr}`);
              acknowledged.push({ id, at: Date.now() });
            }
          })();
          await new Promise((r) => setTimeout(r, 2000));
          const made = await daemon.json<Created>('backup_create', '--repo', repo.location, '--device', 'pg', '--diff-storage', dir);
          await new Promise((r) => setTimeout(r, 500));
          writing = false;
          await writer;
          bench.kill('SIGINT');
          const freezeAt = Number(fs.readFileSync(freezeLog, 'utf8').split('\n').find((l) => l.startsWith('freeze '))?.split(' ')[1]);
          assert.ok(freezeAt > 0, 'the hook ran at the take');
          assert.match(fs.readFileSync(freezeLog, 'utf8'), /^freeze \d+\nthaw \d+\n$/);
          const before = acknowledged.filter((a) => a.at < freezeAt).map((a) => a.id);
          assert.ok(before.length > 5 && acknowledged.length > before.length, `commits before the freeze ${before.length}, after ${acknowledged.length - before.length}`);

          // The first server stopped (its pid, which the backup's postmaster.pid names, would otherwise
          // look like a server still running): then the backup is restored to a new file, attached
          // with its own block device, mounted, and started.
          await asPostgres('pg_ctl', ['-D', data, '-m', 'fast', '-w', 'stop']);
          servers.splice(servers.indexOf(data), 1);
          const restored = path.join(dir, 'restored.img');
          await daemon.json('backup_restore', '--repo', repo.location, '--id', made.id, '--device', 'pg', '--to', restored);
          const copy = await daemon.json<{ blockDevice: string }>('attach', '--device', restored, '--name', 'pg-restored', '--loop');
          const mnt2 = await mounts.mount(copy.blockDevice, 'pg-restored');
          const port2 = await freePort();
          // The copy's postmaster.pid names the first server's pid, which another process may have by
          // now: as for any file-level copy of a running server, it goes before the start.
          fs.rmSync(path.join(mnt2, 'data', 'postmaster.pid'), { force: true });
          await start(path.join(mnt2, 'data'), port2).catch((e: unknown) => {
            throw new Error(`${(e as Error).message}\nserver log: ${fs.readFileSync(path.join(mnt2, 'server.log'), 'utf8').slice(-2000)}`);
          });
          const present = Number((await sql(port2, `SELECT count(*) FROM marks WHERE id <= ${Math.max(...before)}`)).trim());
          assert.equal(present, before.length, 'every row acknowledged before the freeze is in the backup');
          const amcheck = await run(path.join(pg, 'pg_amcheck'), ['--install-missing', '--heapallindexed', '-h', sockets, '-p', String(port2), '-U', 'postgres', '-d', 'postgres'], { timeoutMs: 300_000 });
          assert.equal(amcheck.code, 0, `pg_amcheck: ${amcheck.stdout}${amcheck.stderr}`);
          const accounts = Number((await sql(port2, 'SELECT count(*) FROM pgbench_accounts')).trim());
          assert.equal(accounts, 500_000, "pgbench's accounts, all there");
        } finally {
          for (const data of servers.splice(0).reverse()) await run('runuser', ['-u', 'postgres', '--', path.join(pg, 'pg_ctl'), '-D', data, '-m', 'immediate', '-w', 'stop']);
          await mounts.cleanup();
        }
      }, ['--hooks-dir', hooks]);
    } finally {
      for (const p of background) if (p.exitCode === null) p.kill('SIGKILL');
      t.remove();
    }
  });
});
