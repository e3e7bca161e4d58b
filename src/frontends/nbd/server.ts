// Owns the NBD listeners (Unix socket, optional TCP) and each connection's life: handshake, transmission, close.
import * as fs from 'node:fs';
import * as net from 'node:net';
import { raiseSendBuffer } from '../../os/libc.js';
import { claimSocketPath } from '../../os/socket-path.js';
import { ByteQueue } from '../../util/byte-queue.js';
import type { Disposable } from '../../util/emitter.js';
import { Handshake, type ExportCatalogue } from './handshake.js';
import { adoptWithReceiver, ReceiveArena } from './receive-socket.js';
import { Transmission } from './transmission.js';

/** Below this a copy costs less than the page-cache probe and the extra system call. */
const DEFAULT_SEND_FILE_MINIMUM = 64 * 1024;

/** Two maximum-size replies' worth, so large reads leave in one piece. */
const SEND_BUFFER_BYTES = 8 * 1024 * 1024;

export interface NbdServerOptions {
  catalogue: ExportCatalogue;
  socketPath: string;
  /** "HOST:PORT" for an additional TCP listener. */
  listen?: string;
  /** Reads from this size on are sent by the kernel (sendfile) where the device can; 0: never. */
  sendFileMinimum?: number;
  log: (line: string) => void;
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
  #sockets = new Set<net.Socket>();
  #connectionCount = 0;
  tcpPort: number | undefined;

  constructor(options: NbdServerOptions) {
    this.#options = options;
  }

  async start(): Promise<void> {
    const { socketPath, listen } = this.#options;
    await claimSocketPath(socketPath);
    const unixServer = net.createServer((s) => this.#accept(s));
    await listenOn(unixServer, () => unixServer.listen(socketPath));
    fs.chmodSync(socketPath, 0o600);
    this.#servers.push(unixServer);
    if (listen) {
      const { host, port } = parseListenAddress(listen);
      const tcpServer = net.createServer((s) => this.#accept(s));
      await listenOn(tcpServer, () => tcpServer.listen(port, host));
      const address = tcpServer.address();
      this.tcpPort = typeof address === 'object' && address ? address.port : port;
      this.#servers.push(tcpServer);
    }
  }

  async close(): Promise<void> {
    for (const socket of this.#sockets) socket.destroy();
    const servers = this.#servers;
    this.#servers = [];
    await Promise.all(servers.map((s) => new Promise<void>((resolve) => s.close(() => resolve()))));
    if (servers.length > 0) fs.rmSync(this.#options.socketPath, { force: true });
  }

  #accept(accepted: net.Socket): void {
    const id = ++this.#connectionCount;
    const { log, catalogue } = this.#options;
    const queue = new ByteQueue();
    let transmission: Transmission | null = null;
    let deviceWatch: Disposable | null = null;
    // Reads go into a fresh chunk for the queue, or straight into a large write's payload buffer.
    let isReadingPayload = false;
    const arena = new ReceiveArena();
    const socket = adoptWithReceiver(accepted, {
      nextBuffer: () => {
        const target = transmission?.receiveTarget() ?? null;
        isReadingPayload = target !== null;
        return target ?? arena.window();
      },
      received: (n) => {
        if (isReadingPayload) transmission?.received(n);
        else queue.push(arena.filled(n));
        pump();
      },
    });
    this.#sockets.add(socket);
    if (socket.remoteAddress) socket.setNoDelay(true);
    const handleFd = (socket as unknown as { _handle?: { fd?: number } })._handle?.fd;
    const fd = typeof handleFd === 'number' && handleFd >= 0 ? handleFd : -1;
    if (fd >= 0) raiseSendBuffer(fd, SEND_BUFFER_BYTES);
    const end = (reason: string): void => {
      if (socket.destroyed) return;
      log(`nbd connection ${id} closed: ${reason}`);
      socket.destroy();
    };
    const pump = (): void => {
      if (socket.destroyed) return;
      if (transmission === null) {
        // A client that sends options without reading the replies must not grow our buffers.
        if (socket.writableNeedDrain) return void socket.pause();
        if (socket.isPaused()) socket.resume();
        const step = handshake.feed(queue);
        if (step.kind === 'close') return end(step.reason);
        if (step.kind === 'more') return;
        const { agreement } = step;
        transmission = new Transmission(socket, { socketFd: fd, sendFileMinimum: this.#options.sendFileMinimum ?? DEFAULT_SEND_FILE_MINIMUM }, agreement, onProgress);
        deviceWatch = agreement.device.onClose(() => end(`export ${agreement.device.name} went away`));
      }
      const step = transmission.feed(queue);
      if (step.kind === 'close') return end(step.reason);
      if (step.kind === 'paused') socket.pause();
      else if (socket.isPaused()) socket.resume();
      if (transmission.isDisconnecting && transmission.isIdle) {
        socket.end();
      }
    };
    // Called when a request completes or the socket drains: ends a DISC'd session once idle, or
    // resumes a paused one (the common case, a completion with nothing waiting, costs nothing).
    const onProgress = (): void => {
      if (!transmission) return pump();
      if (transmission.isDisconnecting) {
        if (transmission.isIdle) socket.end();
      } else if (socket.isPaused() && !transmission.isBusy) pump();
    };
    const handshake = new Handshake(catalogue, (b) => socket.write(b));
    socket.on('drain', onProgress);
    socket.on('error', (e) => end(`socket error: ${e.message}`));
    socket.on('close', () => {
      this.#sockets.delete(socket);
      deviceWatch?.dispose();
      transmission?.dispose();
      queue.clear();
    });
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
