// Owns a client's connection to the control socket: JSON-RPC calls with typed methods, errors as BlkError.
import * as net from 'node:net';
import { BlkError, type Errno } from '../errors.js';
import { LineFramer } from '../control/framing.js';
import type { Method, RpcResponse } from '../control/protocol.js';
import { defaultControlPath } from '../control/paths.js';
import { peerCredentials } from '../os/libc.js';
import { socketDescriptor } from '../os/socket-descriptor.js';

export class BlksnapClient {
  #socket: net.Socket;
  #nextId = 1;
  #waiting = new Map<number, { resolve: (v: unknown) => void; reject: (e: BlkError) => void }>();
  #closedError: BlkError | null = null;

  private constructor(socket: net.Socket) {
    this.#socket = socket;
    const framer = new LineFramer(64 * 1024 * 1024);
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      for (const line of framer.push(chunk)) this.#receive(line);
    });
    socket.on('error', (e) => this.#fail(new BlkError('ECONNRESET', `control connection failed: ${e.message}`)));
    socket.on('close', () => this.#fail(new BlkError('ECONNRESET', 'control connection closed by the daemon')));
  }

  /** Connects to the daemon's control socket. */
  static connect(socketPath: string = defaultControlPath()): Promise<BlksnapClient> {
    return new Promise((resolve, reject) => {
      const socket = net.createConnection(socketPath);
      socket.once('connect', () => {
        socket.removeAllListeners('error');
        // A socket another user serves (a directory they made first) would be told our requests and could answer anything.
        const fd = socketDescriptor(socket);
        const server = fd >= 0 ? peerCredentials(fd) : null;
        const me = process.getuid?.() ?? 0;
        if (server !== null && server.uid !== 0 && server.uid !== me) {
          socket.destroy();
          reject(new BlkError('EACCES', `${socketPath} is served by uid ${server.uid} (pid ${server.pid}), neither root nor you (uid ${me}); refusing to talk to it`));
          return;
        }
        resolve(new BlksnapClient(socket));
      });
      socket.once('error', (e: NodeJS.ErrnoException) => {
        const code = (e.code === 'ENOENT' || e.code === 'ECONNREFUSED' ? e.code : 'EIO') as Errno;
        reject(new BlkError(code, `cannot reach blksnapd at ${socketPath}: ${e.message} (is the daemon running? see --control or BLKSNAP_CONTROL)`));
      });
    });
  }

  /** Calls a method; rejects with the daemon's BlkError (errno name and message). */
  call<P, R>(method: Method<P, R>, params: P): Promise<R> {
    if (this.#closedError) return Promise.reject(this.#closedError);
    const id = this.#nextId++;
    return new Promise<R>((resolve, reject) => {
      this.#waiting.set(id, { resolve: resolve as (v: unknown) => void, reject });
      this.#socket.write(`${JSON.stringify({ jsonrpc: '2.0', id, method: method.name, params })}\n`);
    });
  }

  close(): Promise<void> {
    return new Promise((resolve) => {
      if (this.#socket.destroyed) return resolve();
      this.#socket.once('close', () => resolve());
      this.#socket.end();
    });
  }

  #receive(line: string): void {
    let response: RpcResponse;
    try {
      response = JSON.parse(line) as RpcResponse;
    } catch {
      return this.#fail(new BlkError('EPROTO', 'the daemon sent a malformed reply'));
    }
    if (response.id === null && 'error' in response) {
      // The daemon refused the connection itself (EACCES: who may use it), or a line it could not read.
      return this.#fail(new BlkError((response.error.data?.errno ?? 'EIO') as Errno, response.error.message));
    }
    const waiter = typeof response.id === 'number' ? this.#waiting.get(response.id) : undefined;
    if (!waiter) return;
    this.#waiting.delete(response.id as number);
    if ('error' in response) {
      const code = (response.error.data?.errno ?? 'EIO') as Errno;
      waiter.reject(new BlkError(code, response.error.message));
    } else {
      waiter.resolve(response.result);
    }
  }

  #fail(e: BlkError): void {
    this.#closedError ??= e;
    for (const w of this.#waiting.values()) w.reject(e);
    this.#waiting.clear();
  }
}
