// Owns a pipelined NBD client for data-heavy tests: many requests in flight, simple replies, errno on failure.
import type * as net from 'node:net';
import { encodeRequest, RawNbd } from './raw-nbd.js';

export class NbdError extends Error {
  readonly errno: number;
  constructor(errno: number, what: string) {
    super(`${what} failed with NBD error ${errno}`);
    this.errno = errno;
  }
}

interface Pending {
  length: number;
  what: string;
  resolve: (data: Buffer) => void;
  reject: (e: Error) => void;
}

export class NbdClient {
  readonly size: number;
  #socket: net.Socket;
  #pending = new Map<bigint, Pending>();
  #cookie = 1n;
  #chunks: Buffer[] = [];
  #buffered = 0;
  #closedError: Error | null = null;

  private constructor(raw: RawNbd) {
    this.size = raw.size;
    this.#socket = raw.socket;
    this.#socket.removeAllListeners('data');
    this.#socket.removeAllListeners('close');
    this.#socket.on('data', (b: Buffer) => this.#receive(b));
    this.#socket.on('close', () => this.#fail(new Error('NBD connection closed')));
  }

  static async connect(socketPath: string, exportName: string): Promise<NbdClient> {
    const raw = await RawNbd.connect(socketPath);
    await raw.handshake(exportName);
    return new NbdClient(raw);
  }

  pread(offset: number, length: number): Promise<Buffer> {
    return this.#request(0, offset, length, undefined, 0, `read ${offset}+${length}`);
  }

  async pwrite(offset: number, data: Buffer, fua = false): Promise<void> {
    await this.#request(1, offset, data.length, data, fua ? 1 : 0, `write ${offset}+${data.length}`);
  }

  async flush(): Promise<void> {
    await this.#request(3, 0, 0, undefined, 0, 'flush');
  }

  async zero(offset: number, length: number): Promise<void> {
    await this.#request(6, offset, length, undefined, 0, `zero ${offset}+${length}`);
  }

  /** Stops reading replies (they pile up in the server's socket) until resume(). */
  pause(): void {
    this.#socket.pause();
  }

  resume(): void {
    this.#socket.resume();
  }

  close(): void {
    this.#socket.destroy();
  }

  #request(type: number, offset: number, length: number, payload: Buffer | undefined, flags: number, what: string): Promise<Buffer> {
    if (this.#closedError) return Promise.reject(this.#closedError);
    const cookie = this.#cookie++;
    const h = encodeRequest(type, flags, cookie, offset, length);
    return new Promise((resolve, reject) => {
      this.#pending.set(cookie, { length: type === 0 ? length : 0, what, resolve, reject });
      this.#socket.write(h);
      if (payload) this.#socket.write(payload);
    });
  }

  #receive(b: Buffer): void {
    this.#chunks.push(b);
    this.#buffered += b.length;
    for (;;) {
      if (this.#buffered < 16) return;
      const head = this.#peek(16);
      const error = head.readUInt32BE(4);
      const cookie = head.readBigUInt64BE(8);
      const p = this.#pending.get(cookie);
      if (!p) return this.#fail(new Error(`reply for unknown cookie ${cookie}`));
      const dataLength = error === 0 ? p.length : 0;
      if (this.#buffered < 16 + dataLength) return;
      const all = this.#take(16 + dataLength);
      this.#pending.delete(cookie);
      if (error) p.reject(new NbdError(error, p.what));
      else p.resolve(all.subarray(16));
    }
  }

  #peek(n: number): Buffer {
    if ((this.#chunks[0]?.length ?? 0) < n) this.#chunks = [Buffer.concat(this.#chunks)];
    return (this.#chunks[0] as Buffer).subarray(0, n);
  }

  #take(n: number): Buffer {
    const out = Buffer.from(this.#peek(n));
    const first = this.#chunks[0] as Buffer;
    this.#chunks[0] = first.subarray(n);
    if (this.#chunks[0].length === 0) this.#chunks.shift();
    this.#buffered -= n;
    return out;
  }

  #fail(e: Error): void {
    this.#closedError ??= e;
    for (const p of this.#pending.values()) p.reject(e);
    this.#pending.clear();
  }
}
