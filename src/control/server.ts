// Owns the control socket: accepts clients, frames JSON-RPC lines, dispatches them and writes the replies.
import * as fs from 'node:fs';
import * as net from 'node:net';
import { BlkError, toBlkError } from '../errors.js';
import { processGroups } from '../os/credentials.js';
import { peerCredentials } from '../os/libc.js';
import { socketDescriptor } from '../os/socket-descriptor.js';
import { claimSocketPath } from '../os/socket-path.js';
import { control as limits } from '../params.js';
import { LineFramer } from './framing.js';
import { dispatch, type Handler } from './handlers.js';
import { isStateChanging, type RpcResponse } from './protocol.js';
import type { Caller } from './service.js';

function errorResponse(id: RpcResponse['id'], e: unknown): RpcResponse {
  const err = toBlkError(e);
  return { jsonrpc: '2.0', id, error: { code: -err.errno, message: err.message, data: { errno: err.code } } };
}

/** Who may use the control socket: root, the daemon's own user, and members of one group if given. */
export interface ControlAccess {
  uid: number;
  /** --control-group: its members too (the socket is made mode 0660, owned by that group); null: nobody else. */
  groupId: number | null;
}

export class ControlServer {
  #server: net.Server | null = null;
  #sockets = new Set<net.Socket>();
  #socketPath: string;
  #handlers: ReadonlyMap<string, Handler>;
  #log: (line: string) => void;
  /** Logs each connection as it opens and closes (blksnapd --verbose). */
  #isVerbose: boolean;
  #connectionCount = 0;
  #access: ControlAccess;

  constructor(socketPath: string, handlers: ReadonlyMap<string, Handler>, log: (line: string) => void, options: { isVerbose?: boolean; access?: ControlAccess } = {}) {
    this.#socketPath = socketPath;
    this.#handlers = handlers;
    this.#log = log;
    this.#isVerbose = options.isVerbose ?? false;
    this.#access = options.access ?? { uid: process.getuid?.() ?? 0, groupId: null };
  }

  async start(): Promise<void> {
    await claimSocketPath(this.#socketPath);
    const server = net.createServer((s) => this.#accept(s));
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(this.#socketPath, () => {
        server.off('error', reject);
        resolve();
      });
    });
    const group = this.#access.groupId;
    if (group === null) fs.chmodSync(this.#socketPath, 0o600);
    else {
      fs.chownSync(this.#socketPath, this.#access.uid, group);
      fs.chmodSync(this.#socketPath, 0o660);
    }
    this.#server = server;
  }

  async close(): Promise<void> {
    for (const s of this.#sockets) s.destroy();
    const server = this.#server;
    this.#server = null;
    if (!server) return;
    await new Promise<void>((resolve) => server.close(() => resolve()));
    fs.rmSync(this.#socketPath, { force: true });
  }

  /** Why a peer may not use the socket, or null. The socket's mode is not relied on alone. */
  #refusal(peer: { uid: number; gid: number; pid: number } | null): string | null {
    if (peer === null) return 'the peer\'s credentials cannot be read (SO_PEERCRED)';
    const { uid, groupId } = this.#access;
    if (peer.uid === 0 || peer.uid === uid) return null;
    if (groupId !== null && (peer.gid === groupId || processGroups(peer.pid).includes(groupId))) return null;
    return `uid ${peer.uid} (pid ${peer.pid}) may not use this control socket: only root, uid ${uid}${groupId === null ? '' : ` and group ${groupId}`} may`;
  }

  #accept(socket: net.Socket): void {
    if (this.#sockets.size >= limits.maximumConnections) {
      this.#log(`control connection refused: ${limits.maximumConnections} connections already`);
      socket.destroy();
      return;
    }
    const fd = socketDescriptor(socket);
    const peer = fd >= 0 ? peerCredentials(fd) : null;
    const refusal = this.#refusal(peer);
    if (refusal !== null) {
      this.#log(`control connection refused: ${refusal}`);
      socket.on('error', () => undefined);
      socket.end(`${JSON.stringify(errorResponse(null, new BlkError('EACCES', refusal)))}\n`);
      return;
    }
    this.#sockets.add(socket);
    const id = ++this.#connectionCount;
    if (this.#isVerbose) {
      this.#log(`control connection ${id} opened`);
      socket.once('close', () => this.#log(`control connection ${id} closed`));
    }
    socket.setEncoding('utf8');
    const framer = new LineFramer(limits.maximumLineLength);
    const closeHooks: Array<() => void> = [];
    const caller: Caller = {
      onClose: (run) => (socket.destroyed ? queueMicrotask(run) : closeHooks.push(run)),
      peer: peer === null ? null : { uid: peer.uid, pid: peer.pid },
    };
    const send = (r: RpcResponse): void => {
      if (!socket.destroyed) socket.write(`${JSON.stringify(r)}\n`);
    };
    // At most this many requests of one connection run at once (snapshot.waitEvent may wait for a
    // day), and none starts while the client leaves replies unread: later lines wait their turn
    // and reading pauses meanwhile, so one client can pile up neither work nor reply bytes. One
    // request starts per turn of the event loop, so the reply of one that answers at once (a
    // cbt.read of 2 MiB) is counted before the next one starts.
    let inFlight = 0;
    let isStartScheduled = false;
    const waiting: string[] = [];
    const isReplyBacklogged = (): boolean => socket.writableLength >= limits.maximumUnreadReplyBytes;
    const next = (): void => {
      if (!isStartScheduled && !socket.destroyed && inFlight < limits.maximumRequestsInFlight && waiting.length > 0 && !isReplyBacklogged()) {
        inFlight++;
        this.#handleLine(waiting.shift() as string, send, caller).finally(() => {
          inFlight--;
          next();
        });
        if (waiting.length > 0) {
          isStartScheduled = true;
          setImmediate(() => {
            isStartScheduled = false;
            next();
          });
        }
      }
      if (waiting.length > 0 || isReplyBacklogged()) socket.pause();
      else if (socket.isPaused() && !socket.destroyed) socket.resume();
    };
    socket.on('drain', next);
    socket.on('data', (chunk: string) => {
      let lines: string[];
      try {
        lines = framer.push(chunk);
      } catch (e) {
        send(errorResponse(null, e));
        socket.end();
        return;
      }
      waiting.push(...lines);
      next();
    });
    socket.on('error', () => socket.destroy());
    socket.on('close', () => {
      this.#sockets.delete(socket);
      for (const run of closeHooks.splice(0)) run();
    });
  }

  #handleLine(line: string, send: (r: RpcResponse) => void, caller: Caller): Promise<void> {
    let request: unknown;
    try {
      request = JSON.parse(line);
    } catch {
      send(errorResponse(null, new BlkError('EINVAL', 'control message is not valid JSON')));
      return Promise.resolve();
    }
    if (typeof request !== 'object' || request === null || Array.isArray(request)) {
      send(errorResponse(null, new BlkError('EINVAL', 'control message must be a JSON-RPC request object')));
      return Promise.resolve();
    }
    const { id: rawId, method, params } = request as Record<string, unknown>;
    const id = typeof rawId === 'number' || typeof rawId === 'string' ? rawId : null;
    if (typeof method !== 'string') {
      send(errorResponse(id, new BlkError('EINVAL', "control request has no 'method' string")));
      return Promise.resolve();
    }
    if (isStateChanging(method) && this.#handlers.has(method)) {
      const asked = caller.peer ? `uid ${caller.peer.uid} (pid ${caller.peer.pid})` : 'an unknown peer';
      this.#log(`control: ${asked} asks ${method} ${summarize(params)}`);
    }
    return dispatch(this.#handlers, method, params, caller).then(
      (result) => send({ jsonrpc: '2.0', id, result }),
      (e: unknown) => send(errorResponse(id, e)),
    );
  }
}

/** The params of a logged request, short: one line, at most 200 characters, a repository's secret and a bucket's credentials left out. */
function summarize(params: unknown): string {
  const text = JSON.stringify(params ?? {}, (key, value) => (key === 'secret' || key === 'secretAccessKey' || key === 'sessionToken' || key === 'ca' ? '(not logged)' : value)) ?? '';
  return text.length > 200 ? `${text.slice(0, 197)}...` : text;
}
