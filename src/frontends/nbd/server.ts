// Owns the NBD listeners (Unix socket, optional TCP) and each connection's life: handshake, transmission, close.
import * as fs from 'node:fs';
import * as net from 'node:net';
import { claimSocketPath } from '../../os/socket-path.js';
import { nbd as limits, nbdIo } from '../../params.js';
import { type ConnectionActivity, NbdConnection } from './connection.js';
import type { RequestObservers } from './request-observer.js';
import type { ExportCatalogue } from './handshake.js';
import type { TlsServer } from './tls.js';

export interface NbdServerOptions {
  catalogue: ExportCatalogue;
  socketPath: string;
  /** "HOST:PORT" for an additional TCP listener. */
  listen?: string;
  /** TLS on the TCP listener (the Unix socket never offers it: it is local, mode 0600); null: none. */
  tls?: TlsServer | null;
  /** Connections at once on each listener (so TCP clients cannot crowd out the Unix socket's); more are closed at accept. */
  maximumConnections?: number;
  /** On TCP, a connection past its handshake with nothing in flight that sends nothing this long is closed; 0: never. */
  idleTimeoutMs?: number;
  /** A handshake not finished by then ends the connection. */
  handshakeTimeoutMs?: number;
  /** Reads from this size on are sent by the kernel (sendfile) where the device can; 0: never. */
  sendFileMinimum?: number;
  /** A client sending one request at a time is waited for by spinning this long after an answer; 0: never. */
  busyPollMicroseconds?: number;
  log: (line: string) => void;
  /** Also log each connection as it opens and closes (blksnapd --verbose). */
  isVerbose?: boolean;
  /** Tells metrics about each request, per export (blksnapd --metrics). */
  observers?: RequestObservers;
}

/** Parses "HOST:PORT", "[v6]:PORT" or ":PORT". */
export function parseListenAddress(text: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]*)):(\d{1,5})$/.exec(text);
  const port = m ? Number(m[3]) : NaN;
  if (!m || port < 0 || port > 65535) throw new Error(`invalid --listen address '${text}': expected HOST:PORT`);
  return { host: m[1] ?? (m[2] || '127.0.0.1'), port };
}

export class NbdServer {
  #options: NbdServerOptions;
  #servers: net.Server[] = [];
  #connections = new Set<NbdConnection>();
  /** The connections of each listener, counted against its own cap. */
  #perListener = new Map<net.Server, number>();
  /** Which connection last received bytes: a busy-poll spin is only for a client alone. */
  #activity: ConnectionActivity = { lastId: -1, switchedAt: 0 };

  /** Connections open now, over all listeners. */
  get connectionCount(): number {
    return this.#connections.size;
  }
  #connectionCount = 0;
  tcpPort: number | undefined;

  constructor(options: NbdServerOptions) {
    this.#options = options;
  }

  async start(): Promise<void> {
    const { socketPath, listen } = this.#options;
    await claimSocketPath(socketPath);
    const unixServer: net.Server = net.createServer((s) => this.#accept(s, null, unixServer, 'unix socket'));
    await listenOn(unixServer, () => unixServer.listen(socketPath));
    fs.chmodSync(socketPath, 0o600);
    this.#servers.push(unixServer);
    if (listen) {
      const { host, port } = parseListenAddress(listen);
      const tls = this.#options.tls ?? null;
      const tcpServer: net.Server = net.createServer((s) => this.#accept(s, tls, tcpServer, 'tcp'));
      await listenOn(tcpServer, () => tcpServer.listen(port, host));
      const address = tcpServer.address();
      this.tcpPort = typeof address === 'object' && address ? address.port : port;
      this.#servers.push(tcpServer);
    }
  }

  async close(): Promise<void> {
    for (const c of this.#connections) c.socket.destroy();
    const servers = this.#servers;
    this.#servers = [];
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    if (servers.length > 0) fs.rmSync(this.#options.socketPath, { force: true });
  }

  #accept(accepted: net.Socket, tls: TlsServer | null, listener: net.Server, kind: 'unix socket' | 'tcp'): void {
    const id = ++this.#connectionCount;
    const { log, catalogue } = this.#options;
    const maximum = this.#options.maximumConnections ?? limits.maximumConnections;
    const open = this.#perListener.get(listener) ?? 0;
    if (open >= maximum) {
      log(`nbd connection ${id} refused: ${maximum} connections already on the ${kind} (--max-connections)`);
      accepted.destroy();
      return;
    }
    this.#perListener.set(listener, open + 1);
    const connection: NbdConnection = new NbdConnection(accepted, {
      id,
      catalogue,
      tls,
      handshakeTimeoutMs: this.#options.handshakeTimeoutMs ?? limits.handshakeTimeoutMs,
      idleTimeoutMs: kind === 'tcp' ? (this.#options.idleTimeoutMs ?? limits.idleTimeoutMs) : 0,
      sendFileMinimum: this.#options.sendFileMinimum ?? nbdIo.sendFileMinimum,
      busyPollMicroseconds: this.#options.busyPollMicroseconds ?? nbdIo.busyPollMicroseconds,
      activity: this.#activity,
      log,
      isVerbose: this.#options.isVerbose ?? false,
      ...(this.#options.observers ? { observers: this.#options.observers } : {}),
      onClose: () => {
        this.#connections.delete(connection);
        this.#perListener.set(listener, (this.#perListener.get(listener) ?? 1) - 1);
        if (this.#options.isVerbose) log(`nbd connection ${id} closed`);
      },
    });
    this.#connections.add(connection);
    if (this.#options.isVerbose) log(`nbd connection ${id} opened (${accepted.remoteAddress ? `tcp from ${accepted.remoteAddress}:${accepted.remotePort}` : 'unix socket'})`);
  }
}

function listenOn(server: net.Server, start: () => void): Promise<void> {
  return new Promise((resolve, reject) => {
    server.once('error', reject);
    server.once('listening', () => {
      server.off('error', reject);
      server.on('error', () => {});
      resolve();
    });
    start();
  });
}
