// Owns reaching the file descriptor behind a Node socket, for the system calls Node has no API for.
import * as fs from 'node:fs';
import type * as net from 'node:net';
import { toBlkError } from '../errors.js';

/**
 * The descriptor of a connected socket (sendfile, FIONREAD, SO_SNDBUF), or -1 where there is
 * none to be had (a TLS socket, a closed one). Relies on net.Socket's `_handle.fd`, stable
 * across Node 12–22.
 */
export function socketDescriptor(socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}

/** write(2) to a non-blocking descriptor: the bytes written, 0 when it is full. */
export function writeNonBlocking(fd: number, data: Uint8Array): number {
  try {
    return fs.writeSync(fd, data);
  } catch (e) {
    if ((e as NodeJS.ErrnoException).code === 'EAGAIN') return 0;
    throw toBlkError(e);
  }
}
