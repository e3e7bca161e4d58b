// Owns a minimal NBD client for tests that must send what real clients refuse to: bad ranges, bad flags, garbage.
import * as net from 'node:net';

const IHAVEOPT = 0x49484156454f5054n;

import { encodeRequest } from '../../src/nbd/wire.js';

export { encodeRequest };

export class RawNbd {
  readonly socket: net.Socket;
  #buffer = Buffer.alloc(0);
  #waiters: Array<() => void> = [];
  isClosed = false;
  size = 0;
  transmissionFlags = 0;
  #cookie = 1n;

  private constructor(socket: net.Socket) {
    this.socket = socket;
    socket.on('data', (b: Buffer) => {
      this.#buffer = Buffer.concat([this.#buffer, b]);
      this.#wake();
    });
    socket.on('close', () => {
      this.isClosed = true;
      this.#wake();
    });
    socket.on('error', () => {});
  }

  /** Takes over a connected socket (a TLS socket after STARTTLS, for one). */
  static adopt(socket: net.Socket): RawNbd {
    return new RawNbd(socket);
  }

  /** A Unix socket path, or a TCP port on 127.0.0.1. */
  static connect(where: string | number): Promise<RawNbd> {
    return new Promise((resolve, reject) => {
      const s = typeof where === 'number' ? net.createConnection({ port: where, host: '127.0.0.1' }, () => resolve(new RawNbd(s))) : net.createConnection(where, () => resolve(new RawNbd(s)));
      s.once('error', reject);
    });
  }

  #wake(): void {
    for (const w of this.#waiters.splice(0)) w();
  }

  /** Reads exactly n bytes, or null when the server closed first. */
  async read(n: number, timeoutMs = 5000): Promise<Buffer | null> {
    const deadline = Date.now() + timeoutMs;
    while (this.#buffer.length < n) {
      if (this.isClosed) return null;
      if (Date.now() > deadline) throw new Error(`timed out waiting for ${n} bytes`);
      await new Promise<void>((r) => {
        this.#waiters.push(r);
        setTimeout(r, 50);
      });
    }
    const out = this.#buffer.subarray(0, n);
    this.#buffer = this.#buffer.subarray(n);
    return out;
  }

  /** Resolves true when the server closes the connection within the time. */
  async waitClosed(timeoutMs = 5000): Promise<boolean> {
    const deadline = Date.now() + timeoutMs;
    while (!this.isClosed && Date.now() < deadline) await new Promise((r) => setTimeout(r, 20));
    return this.isClosed;
  }

  write(b: Buffer): void {
    this.socket.write(b);
  }

  sendOption(option: number, data: Buffer = Buffer.alloc(0)): void {
    const h = Buffer.alloc(16);
    h.writeBigUInt64BE(IHAVEOPT, 0);
    h.writeUInt32BE(option, 8);
    h.writeUInt32BE(data.length, 12);
    this.write(Buffer.concat([h, data]));
  }

  /** Reads one option reply: its type and data. */
  async readOptionReply(): Promise<{ option: number; type: number; data: Buffer }> {
    const h = await this.read(20);
    if (!h) throw new Error('closed during option reply');
    const length = h.readUInt32BE(16);
    const data = length ? await this.read(length) : Buffer.alloc(0);
    return { option: h.readUInt32BE(8), type: h.readUInt32BE(12), data: data ?? Buffer.alloc(0) };
  }

  /** Greeting + client flags (unless `afterStartTls`: they went before it); then NBD_OPT_GO to `exportName`. */
  async handshake(exportName: string, options: { structured?: boolean; afterStartTls?: boolean } = {}): Promise<void> {
    if (!options.afterStartTls) {
      const greeting = await this.read(18);
      if (!greeting) throw new Error('no greeting');
      this.write(Buffer.from([0, 0, 0, 3]));
    }
    if (options.structured) {
      this.sendOption(8);
      const r = await this.readOptionReply();
      if (r.type !== 1) throw new Error('structured replies refused');
    }
    const name = Buffer.from(exportName);
    const data = Buffer.alloc(4 + name.length + 2);
    data.writeUInt32BE(name.length, 0);
    name.copy(data, 4);
    this.sendOption(7, data);
    for (;;) {
      const r = await this.readOptionReply();
      if (r.type === 3 && r.data.readUInt16BE(0) === 0) {
        this.size = Number(r.data.readBigUInt64BE(2));
        this.transmissionFlags = r.data.readUInt16BE(10);
      } else if (r.type === 1) return;
      else if (r.type !== 3) throw new Error(`NBD_OPT_GO failed: type 0x${r.type.toString(16)} ${r.data.toString()}`);
    }
  }

  /** Sends one request; returns its cookie. */
  request(type: number, offset: number | bigint, length: number, flags = 0, payload?: Buffer): bigint {
    const cookie = this.#cookie++;
    const h = encodeRequest(type, flags, cookie, offset, length);
    this.write(payload ? Buffer.concat([h, payload]) : h);
    return cookie;
  }

  /** Reads a simple reply: error number, cookie, and `dataLength` bytes of data when error is 0. */
  async simpleReply(dataLength = 0): Promise<{ error: number; cookie: bigint; data: Buffer }> {
    const h = await this.read(16);
    if (!h) throw new Error('connection closed before the reply');
    if (h.readUInt32BE(0) !== 0x67446698) throw new Error(`not a simple reply: magic 0x${h.readUInt32BE(0).toString(16)}`);
    const error = h.readUInt32BE(4);
    const data = error === 0 && dataLength > 0 ? ((await this.read(dataLength)) ?? Buffer.alloc(0)) : Buffer.alloc(0);
    return { error, cookie: h.readBigUInt64BE(8), data };
  }

  close(): void {
    this.socket.destroy();
  }
}

export const NBD = { READ: 0, WRITE: 1, DISC: 2, FLUSH: 3, TRIM: 4, CACHE: 5, WRITE_ZEROES: 6, BLOCK_STATUS: 7 } as const;
export const ERR = { EPERM: 1, EIO: 5, EINVAL: 22, ENOSPC: 28 } as const;
