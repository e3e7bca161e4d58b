// Owns claiming a Unix socket path: a stale socket file is replaced; a live one (another daemon's), or anything that is not a socket, is never touched.
import * as fs from 'node:fs';
import * as net from 'node:net';
import { BlkError } from '../errors.js';

export async function claimSocketPath(socketPath: string): Promise<void> {
  let st: fs.Stats;
  try {
    st = await fs.promises.lstat(socketPath);
  } catch {
    return; // nothing there
  }
  // Only a socket may be replaced: a mistyped path must never cost a user a file.
  if (!st.isSocket()) throw new BlkError('EEXIST', `${socketPath} exists and is not a socket; refusing to replace it`, { path: socketPath });
  const isLive = await new Promise<boolean>((resolve) => {
    const probe = net.createConnection(socketPath);
    probe.once('connect', () => {
      probe.destroy();
      resolve(true);
    });
    probe.once('error', () => resolve(false));
  });
  if (isLive) throw new BlkError('EBUSY', `another process is listening on ${socketPath}`, { path: socketPath });
  fs.rmSync(socketPath, { force: true });
}
