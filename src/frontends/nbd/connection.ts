// Owns one NBD connection's life: how its bytes are received, the handshake (with STARTTLS), transmission, close.
import type * as net from 'node:net';
import { nbdIo } from '../../params.js';
import { bytesReadable, raiseSendBuffer } from '../../os/libc.js';
import { socketDescriptor } from '../../os/socket-descriptor.js';
import { ByteQueue } from '../../util/byte-queue.js';
import type { Disposable } from '../../util/emitter.js';
import { Handshake, type ExportCatalogue, type TlsPolicy } from './handshake.js';
import type { RequestObservers } from './request-observer.js';
import { adoptWithReceiver, ReceiveArena } from '../../nbd/receive-socket.js';
import type { PeerIdentity } from './authz.js';
import type { TlsServer } from './tls.js';
import { Transmission } from './transmission.js';

export interface ConnectionOptions {
  id: number;
  catalogue: ExportCatalogue;
  /** The listener's TLS: null for none (the Unix socket, or TCP with --tls off). */
  tls: TlsServer | null;
  handshakeTimeoutMs: number;
  /** After the handshake, a connection with nothing in flight that sends nothing for this long is closed; 0: never. */
  idleTimeoutMs: number;
  sendFileMinimum: number;
  busyPollMicroseconds: number;
  /** Shared by the server's connections: which one last received bytes, and when another one did before it. */
  activity: ConnectionActivity;
  log: (line: string) => void;
  /** Also log what TLS proved about each peer (blksnapd --verbose). */
  isVerbose?: boolean;
  onClose: () => void;
  /** Tells metrics about each request of an export (blksnapd --metrics). */
  observers?: RequestObservers;
}

/** Which connection last received bytes, and when the receiving connection last changed (performance.now(), ms). */
export interface ConnectionActivity {
  lastId: number;
  switchedAt: number;
}

/** A spin waits only for a client alone: with others, the event loop has their requests to serve. */
const ALONE_FOR_MS = 1;

/**
 * A plain connection reads with `onread` into buffers the protocol picks (a large payload straight
 * into its own buffer) and may send replies by sendfile; a TLS connection gets plaintext as 'data'
 * chunks into the same queue, and replies go through the TLS socket. A handshake that has not
 * finished within the limit ends the connection, so idle half-open clients hold nothing.
 */
export class NbdConnection {
  readonly id: number;
  #options: ConnectionOptions;
  #socket: net.Socket;
  #fd = -1;
  #queue = new ByteQueue();
  #handshake: Handshake;
  #transmission: Transmission | null = null;
  #deviceWatch: Disposable | null = null;
  #handshakeTimer: NodeJS.Timeout | null;
  #idleTimer: NodeJS.Timeout | null = null;
  /** When bytes last came (performance.now(), ms): the idle timeout counts from there. */
  #lastReceivedAt = performance.now();
  #isReadingPayload = false;
  #isUpgrading = false;
  /** When every request was last answered (performance.now(), ms), while no byte has come since; 0 otherwise. */
  #idleSince = 0;
  /** Whether the last request came within the busy-poll time of the answer before it. */
  #isPingPong = false;

  constructor(accepted: net.Socket, options: ConnectionOptions) {
    this.id = options.id;
    this.#options = options;
    if (options.tls === null) {
      const arena = new ReceiveArena();
      // Reads go into a fresh chunk for the queue, or straight into a large write's payload buffer.
      this.#socket = adoptWithReceiver(accepted, {
        nextBuffer: () => {
          const target = this.#transmission?.receiveTarget() ?? null;
          this.#isReadingPayload = target !== null;
          return target ?? arena.window();
        },
        received: (n) => {
          this.#lastReceivedAt = performance.now();
          const activity = this.#options.activity;
          if (activity.lastId !== this.id) {
            activity.lastId = this.id;
            activity.switchedAt = performance.now();
          }
          if (this.#idleSince > 0) {
            this.#isPingPong = (performance.now() - this.#idleSince) * 1000 < this.#options.busyPollMicroseconds * 2;
            this.#idleSince = 0;
          }
          if (this.#isReadingPayload) this.#transmission?.received(n);
          else this.#queue.push(arena.filled(n));
          this.#pump();
        },
      });
      this.#fd = socketDescriptor(this.#socket);
      if (this.#fd >= 0) raiseSendBuffer(this.#fd, nbdIo.sendBufferBytes);
    } else {
      this.#socket = accepted;
      this.#listen(accepted);
    }
    if (this.#socket.remoteAddress) this.#socket.setNoDelay(true);
    this.#watch(this.#socket);
    this.#socket.on('close', () => this.#closed());
    const policy: TlsPolicy = options.tls === null ? 'none' : 'required';
    this.#handshakeTimer = setTimeout(() => this.end(`handshake not finished within ${options.handshakeTimeoutMs / 1000} s`), options.handshakeTimeoutMs);
    this.#handshakeTimer.unref();
    this.#handshake = new Handshake(options.catalogue, (b) => this.#socket.write(b), policy);
  }

  get socket(): net.Socket {
    return this.#socket;
  }

  end(reason: string): void {
    if (this.#socket.destroyed) return;
    this.#options.log(`nbd connection ${this.id} closed: ${reason}`);
    this.#socket.destroy();
  }

  /** Plaintext 'data' chunks (a TLS connection, or one waiting for STARTTLS) go to the queue. */
  #listen(socket: net.Socket): void {
    socket.on('data', (chunk: Buffer) => {
      this.#lastReceivedAt = performance.now();
      this.#queue.push(chunk);
      this.#pump();
    });
  }

  #watch(socket: net.Socket): void {
    socket.on('drain', () => this.#onProgress());
    socket.on('error', (e) => this.end(`socket error: ${e.message}`));
  }

  #closed(): void {
    if (this.#handshakeTimer) clearTimeout(this.#handshakeTimer);
    if (this.#idleTimer) clearInterval(this.#idleTimer);
    this.#deviceWatch?.dispose();
    this.#transmission?.dispose();
    this.#queue.clear();
    this.#options.onClose();
  }

  #pump(): void {
    const socket = this.#socket;
    if (socket.destroyed || this.#isUpgrading) return;
    let transmission = this.#transmission;
    if (transmission === null) {
      // A client that sends options without reading the replies must not grow our buffers.
      if (socket.writableNeedDrain) return void socket.pause();
      if (socket.isPaused()) socket.resume();
      const step = this.#handshake.feed(this.#queue);
      if (step.kind === 'close') return this.end(step.reason);
      if (step.kind === 'more') return;
      if (step.kind === 'starttls') return this.#startTls();
      if (this.#handshakeTimer) clearTimeout(this.#handshakeTimer);
      this.#handshakeTimer = null;
      const { agreement } = step;
      const observer = this.#options.observers?.(agreement.device.name) ?? null;
      transmission = new Transmission(socket, { socketFd: this.#fd, sendFileMinimum: this.#options.sendFileMinimum, observer }, agreement, () => this.#onProgress());
      this.#transmission = transmission;
      this.#deviceWatch = agreement.device.onClose(() => this.end(`export ${agreement.device.name} went away`));
      this.#watchIdle();
    }
    const step = transmission.feed(this.#queue);
    if (step.kind === 'close') return this.end(step.reason);
    if (step.kind === 'paused') socket.pause();
    else if (socket.isPaused()) socket.resume();
    if (transmission.isDisconnecting && transmission.isIdle) socket.end();
    else if (transmission.isIdle && this.#queue.length === 0 && this.#fd >= 0) this.#awaitNext();
  }

  /** Closes the connection once nothing is in flight and nothing has come for the idle timeout. */
  #watchIdle(): void {
    const limit = this.#options.idleTimeoutMs;
    if (limit <= 0) return;
    this.#idleTimer = setInterval(() => {
      const transmission = this.#transmission;
      if (transmission?.isIdle && performance.now() - this.#lastReceivedAt >= limit) this.end(`idle for ${limit / 1000} s (--idle-timeout)`);
    }, Math.max(50, limit / 4));
    this.#idleTimer.unref();
  }

  /**
   * Everything is answered. A client sending one request at a time sends its next one within tens
   * of µs: spinning on the socket that long lets the event loop find it without going to sleep.
   */
  #awaitNext(): void {
    const now = performance.now();
    // Alone: another client's requests would wait behind the spin (4 clients at depth 1 lost half their rate).
    const isAlone = now - this.#options.activity.switchedAt > ALONE_FOR_MS;
    if (this.#isPingPong && isAlone && this.#options.busyPollMicroseconds > 0) {
      const until = now + this.#options.busyPollMicroseconds / 1000;
      while (bytesReadable(this.#fd) === 0 && performance.now() < until);
    }
    this.#idleSince = now;
  }

  /** STARTTLS was acknowledged: the rest of the connection runs over TLS, once the peer passed its checks. */
  #startTls(): void {
    const plain = this.#socket;
    const server = this.#options.tls as TlsServer;
    this.#isUpgrading = true;
    plain.removeAllListeners('data');
    plain.removeAllListeners('drain');
    plain.removeAllListeners('error');
    plain.removeAllListeners('close');
    plain.on('error', () => undefined);
    plain.once('close', () => {
      if (this.#socket === plain) this.#closed();
    });
    server.upgrade(plain, {
      secure: (secure, check) => {
        this.#socket = secure;
        this.#watch(secure);
        secure.on('close', () => this.#closed());
        if (plain.destroyed) return void secure.destroy();
        if ('refused' in check) return this.end(check.refused);
        this.#isUpgrading = false;
        this.#handshake.tlsStarted(check.policy);
        if (this.#options.isVerbose) this.#options.log(`nbd connection ${this.id}: TLS peer ${peerText(check.peer)}`);
        this.#listen(secure);
        this.#pump();
      },
      failed: (reason) => {
        this.#options.log(`nbd connection ${this.id} closed: ${reason}`);
        plain.destroy();
      },
    });
  }

  /**
   * A request completed or the socket drained: ends a DISC'd session once idle, or resumes a paused
   * one (the common case, a completion with nothing waiting, costs nothing).
   */
  #onProgress(): void {
    const transmission = this.#transmission;
    if (!transmission) return this.#pump();
    if (transmission.isDisconnecting) {
      if (transmission.isIdle) this.#socket.end();
    } else if (this.#socket.isPaused() && !transmission.isBusy) this.#pump();
  }
}

function peerText(peer: PeerIdentity | null): string {
  if (peer === null) return 'unidentified';
  return peer.kind === 'x509' ? `certificate ${peer.dn}` : `PSK identity ${peer.identity}`;
}
