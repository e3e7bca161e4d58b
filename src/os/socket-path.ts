// Owns claiming a Unix socket path: a stale socket file is replaced, a live one (another daemon's) is never stolen.
import * as fs from 'node:fs';
import * as net from 'node:net';
import { BlkError } from '../errors.js';

export async function claimSocketPath(socketPath: string): Promise<void> {
  if (!fs.existsSync(socketPath)) return;
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
