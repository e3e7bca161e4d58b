// Owns reaching the file descriptor behind a Node socket, for the system calls Node has no API for.
import type * as net from 'node:net';

/**
 * The descriptor of a connected socket (sendfile, FIONREAD, SO_SNDBUF), or -1 where there is
 * none to be had (a TLS socket, a closed one). Relies on net.Socket's `_handle.fd`, stable
 * across Node 12–22.
 */
export function socketDescriptor(socket: net.Socket): number {
  const fd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
  return typeof fd === 'number' && fd >= 0 ? fd : -1;
}
