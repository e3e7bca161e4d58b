// Owns reading an accepted connection into buffers the protocol chooses (Node's `onread`), which
// net.Server does not offer for the sockets it accepts.
import { nbdIo } from '../params.js';
import * as net from 'node:net';

export interface Receiver {
  /** The buffer the next read(2) fills; it may take as many bytes as the buffer holds. */
  nextBuffer(): Buffer;
  /** `n` bytes arrived at the start of `buffer` (the last one nextBuffer gave). */
  received(n: number, buffer: Buffer): void;
}

interface SocketInternals {
  _handle: unknown;
  _server: unknown;
}

/**
 * Moves an accepted connection to a socket that reads with `onread`: every read(2) goes into the
 * receiver's buffer instead of a fresh 64 KiB chunk, so a large payload is read in few calls and
 * copied once. The connection stays counted by its server (close() waits for it).
 * Relies on net.Socket's `_handle` and `_server` (stable across Node 12–22).
 */
export function adoptWithReceiver(accepted: net.Socket, receiver: Receiver): net.Socket {
  const old = accepted as unknown as SocketInternals;
  const handle = old._handle;
  const server = old._server;
  if (!handle) return accepted;
  old._handle = null;
  old._server = null;
  accepted.destroy();
  const socket = new net.Socket({
    handle,
    readable: true,
    writable: true,
    onread: {
      buffer: () => receiver.nextBuffer(),
      callback: (n: number, buffer: Uint8Array) => {
        receiver.received(n, buffer as Buffer);
        return true;
      },
    },
  } as net.SocketConstructorOpts);
  (socket as unknown as SocketInternals)._server = server;
  return socket;
}


/**
 * Where reads that are not payload targets go: consecutive windows of one large buffer, so the
 * bytes of many small requests share an allocation (a fresh 64 KiB buffer per read, kept alive by
 * a 4 KiB request, costs the garbage collector dearly). What was read stays where it is; queued
 * views keep an old arena alive until they are gone.
 */
export class ReceiveArena {
  #arena = Buffer.allocUnsafeSlow(nbdIo.receiveArenaBytes);
  #used = 0;

  /** The next window: at most `most` bytes (a reader that wants only a header asks for no more). */
  window(most: number = nbdIo.receiveWindowBytes): Buffer {
    if (nbdIo.receiveArenaBytes - this.#used < nbdIo.receiveSmallestWindowBytes) {
      this.#arena = Buffer.allocUnsafeSlow(nbdIo.receiveArenaBytes);
      this.#used = 0;
    }
    return this.#arena.subarray(this.#used, Math.min(nbdIo.receiveArenaBytes, this.#used + Math.min(most, nbdIo.receiveWindowBytes)));
  }

  /** The first `n` bytes of the last window were filled; the next window starts after them. */
  filled(n: number): Buffer {
    const data = this.#arena.subarray(this.#used, this.#used + n);
    this.#used += n;
    return data;
  }
}
