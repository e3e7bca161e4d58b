// Owns binding loop devices to FUSE files, and the nbdfuse route: nbdfuse makes an NBD export a file, losetup binds /dev/loopN to it.
import { execFile, spawn } from 'node:child_process';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { BlkError } from '../errors.js';
import { unmountLazy } from './libc.js';

/** Everything needed to release a kernel block device, also after a crash (it is saved to disk). */
export interface LoopRecord {
  exportName: string;
  mountpoint: string;
  loop: string;
  /** The FUSE server's process id: nbdfuse's, or the daemon's own for its in-daemon FUSE. */
  pid: number;
}

function run(program: string, args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  return new Promise((resolve) => {
    execFile(program, args, { timeout: 30_000 }, (err, stdout, stderr) => {
      const code = err ? (typeof (err as { code?: unknown }).code === 'number' ? (err as { code: number }).code : 1) : 0;
      resolve({ code, stdout: String(stdout), stderr: String(stderr) });
    });
  });
}

async function waitFor(what: string, test: () => boolean, timeoutMs: number): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!test()) {
    if (Date.now() > deadline) throw new BlkError('ETIMEDOUT', `timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 20));
  }
}

/** The "major:minor" of a block device. */
export function deviceNumber(blockDevice: string): string {
  const st = fs.statSync(blockDevice);
  return `${Math.floor(st.rdev / 256) & 0xfff}:${(st.rdev & 0xff) | ((st.rdev >> 12) & 0xfff00)}`;
}

/** Mounts as [device number, mount point] (from /proc/self/mountinfo). */
function mounts(): Array<[string, string]> {
  const unescapeOctal = (s: string) => s.replace(/\\([0-7]{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  return fs
    .readFileSync('/proc/self/mountinfo', 'utf8')
    .split('\n')
    .map((line) => line.split(' '))
    .filter((f) => f[2] !== undefined && f[4] !== undefined)
    .map((f) => [f[2] as string, unescapeOctal(f[4] as string)]);
}

/** Mount points of filesystems mounted from a block device. */
export function mountPointsOf(blockDevice: string): string[] {
  const number = deviceNumber(blockDevice);
  return mounts()
    .filter(([device]) => device === number)
    .map(([, mountPoint]) => mountPoint);
}

/** The device number ("major:minor") of the filesystem mounted at `dir`, or null. */
export function mountDeviceNumber(dir: string): string | null {
  return mounts().find(([, mountPoint]) => mountPoint === dir)?.[0] ?? null;
}

function isMountPoint(dir: string): boolean {
  return mounts().some(([, mountPoint]) => mountPoint === dir);
}

/**
 * Makes export `exportName` of the NBD server at `nbdSocket` a block device: nbdfuse serves it as
 * the file `mountpoint/disk`, and a free loop device is bound to that file.
 */
export async function exposeThroughNbdfuse(exportName: string, nbdSocket: string, mountpoint: string, isReadOnly = false): Promise<LoopRecord> {
  fs.mkdirSync(mountpoint, { recursive: true, mode: 0o700 });
  const pidFile = `${mountpoint}.pid`;
  fs.rmSync(pidFile, { force: true });
  const uri = `nbd+unix:///${encodeURIComponent(exportName)}?socket=${nbdSocket}`;
  const child = spawn('nbdfuse', ['-P', pidFile, path.join(mountpoint, 'disk'), uri], { stdio: ['ignore', 'ignore', 'pipe'] });
  let stderr = '';
  child.stderr?.on('data', (d) => (stderr += d));
  const spawnFailed = new Promise<never>((_r, reject) => child.once('error', (e) => reject(new BlkError('ENOENT', `cannot run nbdfuse: ${e.message}`))));
  try {
    await Promise.race([waitFor('nbdfuse', () => fs.existsSync(pidFile) || child.exitCode !== null, 15_000), spawnFailed]);
    if (child.exitCode !== null) throw new BlkError('EIO', `nbdfuse exited: ${stderr.trim()}`);
    const pid = child.pid as number;
    child.unref();
    try {
      return { exportName, mountpoint, loop: await bindLoop(path.join(mountpoint, 'disk'), isReadOnly), pid };
    } catch (e) {
      await releaseLoopDevice({ exportName, mountpoint, loop: '', pid });
      throw e;
    }
  } catch (e) {
    if (child.exitCode === null) child.kill('SIGKILL');
    fs.rmSync(pidFile, { force: true });
    throw e;
  }
}

/** Binds a free loop device to `file` (read-only for a read-only export: it never opens the file for writing); its name (/dev/loopN). */
export async function bindLoop(file: string, isReadOnly = false): Promise<string> {
  const mode = isReadOnly ? ['--read-only'] : [];
  // Direct I/O skips a second page cache of the FUSE file: 2.5× the sequential write speed here
  // (bench/block-device.ts); a kernel that refuses it for the file gets buffered I/O.
  let r = await run('losetup', ['-f', '--show', ...mode, '--direct-io=on', file]);
  if (r.code !== 0) r = await run('losetup', ['-f', '--show', ...mode, file]);
  if (r.code !== 0) throw new BlkError('EIO', `losetup of ${file} failed: ${r.stderr.trim()}`);
  return r.stdout.trim();
}

/**
 * Detaches the record's loop device if it is still bound to our file. A loop device in use (a
 * mounted filesystem) is detached by the kernel when its last user lets go (autoclear).
 */
export async function unbindLoop(record: LoopRecord): Promise<void> {
  if (record.loop && isOurLoop(record)) await run('losetup', ['-d', record.loop]);
}

/** Releases a kernel block device (loop device, FUSE mount, nbdfuse), as far as it still exists; safe to call twice. */
export async function releaseLoopDevice(record: LoopRecord): Promise<void> {
  await unbindLoop(record);
  // Lazy: a filesystem still mounted from the loop device keeps the FUSE file busy. Not
  // existsSync: the mount point of a dead FUSE server fails stat (ENOTCONN) yet is mounted.
  if (isMountPoint(record.mountpoint)) unmountLazy(record.mountpoint);
  if (isNbdfuse(record.pid)) {
    process.kill(record.pid, 'SIGTERM');
    await waitFor('nbdfuse to exit', () => !isNbdfuse(record.pid), 5000).catch(() => process.kill(record.pid, 'SIGKILL'));
  }
  fs.rmSync(`${record.mountpoint}.pid`, { force: true });
  try {
    fs.rmdirSync(record.mountpoint);
  } catch {
    // Still busy (lazily unmounted); the next start cleans it.
  }
}

/** True when the loop device is still bound to our FUSE file (not reused by someone else since). */
function isOurLoop(record: LoopRecord): boolean {
  try {
    const name = path.basename(record.loop);
    const backing = fs.readFileSync(`/sys/block/${name}/loop/backing_file`, 'utf8').trim();
    return backing.startsWith(record.mountpoint);
  } catch {
    return false;
  }
}

function isNbdfuse(pid: number): boolean {
  try {
    return fs.readFileSync(`/proc/${pid}/cmdline`, 'utf8').split('\0')[0]?.endsWith('nbdfuse') ?? false;
  } catch {
    return false;
  }
}
