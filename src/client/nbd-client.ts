// Owns the library's NBD client: fixed newstyle handshake (structured replies, meta contexts, optional
// STARTTLS), then pipelined read, write, write zeroes, flush and block status with many requests in
// flight. The backup repository reads snapshot images and writes restores through it.
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import * as tls from 'node:tls';
import { BlkError, errnoName } from '../errors.js';
import { adoptWithReceiver, ReceiveArena } from '../nbd/receive-socket.js';
import * as w from '../nbd/wire.js';
import { ByteQueue } from '../util/byte-queue.js';

const REPLY_TYPE_OFFSET_HOLE = 2;
const REPLY_TYPE_ERROR_BIT = 1 << 15;
/** The largest block status chunk taken: 2^21 extents (a map's worth of tracking blocks) of 8 bytes, and the context id. */
const MAXIMUM_STATUS_CHUNK = 4 + 8 * 2 ** 21;
/** The largest error chunk: errno, message length, a message of up to 4096 bytes, an offset. */
const MAXIMUM_ERROR_CHUNK = 4 + 2 + 4096 + 8;

/** How long a structured reply chunk of `type` may be for request `p`. */
function chunkBound(type: number, p: { kind: string; length: number }): number {
  if (type === w.NBD_REPLY_TYPE_OFFSET_DATA) return p.kind === 'read' ? 8 + p.length : 0;
  if (type === REPLY_TYPE_OFFSET_HOLE) return 12;
  if (type === w.NBD_REPLY_TYPE_BLOCK_STATUS) return p.kind === 'status' ? MAXIMUM_STATUS_CHUNK : 0;
  if (type === w.NBD_REPLY_TYPE_NONE) return 0;
  // Errors, and types this client does not know (skipped): room for a message.
  return MAXIMUM_ERROR_CHUNK;
}

/** A structured reply's header; a data chunk's offset follows it. */
const STRUCTURED_HEADER = 20;
/** Reads from this size on are worth a read(2) for their headers alone (see #headerBytesWanted). */
const LARGE_READ = 64 * 1024;

/** Where an NBD export is: a Unix socket or a TCP address, and the export's name. */
export interface NbdTarget {
  socketPath?: string;
  host?: string;
  port?: number;
  exportName: string;
  /** nbds:// : STARTTLS is required. */
  isTls: boolean;
}

export interface NbdTlsOptions {
  /** X.509 in QEMU's layout: ca-cert.pem, and client-cert.pem + client-key.pem when the server asks. */
  certsDir?: string;
  /** A pre-shared key, as in nbdkit's PSK file: identity and hex key. */
  psk?: { identity: string; key: string };
}

/** Parses nbd+unix:///EXPORT?socket=PATH, nbd://HOST[:PORT]/EXPORT and nbds://… (TLS). */
export function parseNbdUri(uri: string): NbdTarget {
  let u: URL;
  try {
    u = new URL(uri);
  } catch {
    throw new BlkError('EINVAL', `not an NBD URI: '${uri}'`);
  }
  const exportName = decodeURIComponent(u.pathname.replace(/^\//, ''));
  switch (u.protocol) {
    case 'nbd+unix:':
    case 'nbds+unix:': {
      const socketPath = u.searchParams.get('socket');
      if (!socketPath) throw new BlkError('EINVAL', `${uri}: a Unix NBD URI needs ?socket=PATH`);
      return { socketPath, exportName, isTls: u.protocol === 'nbds+unix:' };
    }
    case 'nbd:':
    case 'nbds:':
      return { host: u.hostname.replace(/^\[|\]$/g, ''), port: Number(u.port || 10809), exportName, isTls: u.protocol === 'nbds:' };
    default:
      throw new BlkError('EINVAL', `${uri}: an NBD URI starts with nbd://, nbds://, nbd+unix:// or nbds+unix://`);
  }
}

export interface Extent {
  offset: number;
  length: number;
  flags: number;
}

interface Pending {
  kind: 'read' | 'status' | 'other';
  /** The request as errors name it: command, offset and length. */
  what: string;
  offset: number;
  length: number;
  data?: Buffer;
  /** Bytes of a structured read's answer so far (data and holes): all of it must be answered. */
  covered?: number;
  extents?: Extent[];
  contextId?: number;
  error?: BlkError;
  resolve: (v: unknown) => void;
  reject: (e: unknown) => void;
}

/** NBD's error numbers are Linux's (proto.md lists EPERM, EIO, ENOMEM, EINVAL, ENOSPC, EOVERFLOW, ENOTSUP, ESHUTDOWN). */
function nbdError(errno: number, what: string, message = ''): BlkError {
  const code = errnoName(errno);
  return new BlkError(code, `${what}: the server answered ${code}${message ? ` (${message})` : ''}`);
}

/** Where a read's data still to come goes: [at, at + remaining) of `into`, then `done`. */
interface DirectTarget {
  into: Buffer;
  at: number;
  remaining: number;
  done: () => void;
}

/** Reads handshake bytes in exact pieces. */
class HandshakeReader {
  #queue = new ByteQueue();
  #wanted: { n: number; resolve: (b: Buffer) => void; reject: (e: unknown) => void } | null = null;
  #error: Error | null = null;
  #socket: net.Socket | tls.TLSSocket;
  #onData = (b: Buffer): void => {
    this.#queue.push(b);
    this.#serve();
  };
  #onEnd = (): void => this.#fail(new BlkError('ECONNRESET', 'the NBD server closed the connection during the handshake'));
  #onError = (e: Error): void => this.#fail(e);

  constructor(socket: net.Socket | tls.TLSSocket) {
    this.#socket = socket;
    socket.on('data', this.#onData);
    socket.on('end', this.#onEnd);
    socket.on('error', this.#onError);
  }

  read(n: number): Promise<Buffer> {
    if (this.#error) return Promise.reject(this.#error);
    return new Promise((resolve, reject) => {
      this.#wanted = { n, resolve, reject };
      this.#serve();
    });
  }

  /** Stops reading; returns what came beyond the handshake. */
  detach(): ByteQueue {
    this.#socket.off('data', this.#onData);
    this.#socket.off('end', this.#onEnd);
    this.#socket.off('error', this.#onError);
    return this.#queue;
  }

  #serve(): void {
    const w = this.#wanted;
    if (!w) return;
    if (this.#queue.length < w.n) return;
    this.#wanted = null;
    w.resolve(Buffer.from(this.#queue.take(w.n)));
  }

  #fail(e: Error): void {
    this.#error = e;
    const w = this.#wanted;
    this.#wanted = null;
    w?.reject(e);
  }
}

export class NbdClient {
  readonly size: number;
  readonly transmissionFlags: number;
  /** Meta contexts the server agreed to, by name. */
  readonly contexts: ReadonlyMap<string, number>;
  #socket: net.Socket | tls.TLSSocket;
  #queue: ByteQueue;
  #pending = new Map<bigint, Pending>();
  #cookie = 1n;
  #closed: BlkError | null = null;
  /** Parsing state of a reply whose payload has not fully come. */
  #partial: { cookie: bigint; kind: 'simple-data' | 'structured'; flags: number; type: number; length: number } | null = null;
  /** A read's data still to come, received straight into the read's buffer (no copy in between). */
  #direct: DirectTarget | null = null;
  /** Whether the last buffer handed to the socket was the direct target. */
  #isReadingDirect = false;
  /** Reads in flight of LARGE_READ bytes or more: while any is, the socket is read a header at a time. */
  #largeReads = 0;

  private constructor(socket: net.Socket | tls.TLSSocket, queue: ByteQueue, size: number, flags: number, contexts: Map<string, number>) {
    this.#queue = queue;
    this.size = size;
    this.transmissionFlags = flags;
    this.contexts = contexts;
    if (socket instanceof tls.TLSSocket) {
      this.#socket = socket;
      socket.on('data', (b: Buffer) => this.#receive(b));
    } else {
      // Plain sockets read with onread: a reply's data straight into the read's buffer, the rest
      // into windows of one arena (Node's default is a fresh 64 KiB buffer per read(2)).
      const arena = new ReceiveArena();
      this.#socket = adoptWithReceiver(socket, {
        nextBuffer: () => {
          const d = this.#direct;
          // While a read's data is coming the queue is empty: #receiveInto took all of it first.
          this.#isReadingDirect = d !== null;
          if (d) return d.into.subarray(d.at, d.at + d.remaining);
          return this.#largeReads > 0 ? arena.window(this.#headerBytesWanted()) : arena.window();
        },
        received: (n) => {
          if (this.#isReadingDirect) this.#advanceDirect(n);
          else this.#queue.push(arena.filled(n));
          this.#parse();
        },
      });
    }
    socket = this.#socket;
    socket.on('close', () => this.#fail(new BlkError('ECONNRESET', 'the NBD connection closed')));
    socket.on('error', (e) => this.#fail(new BlkError('ECONNRESET', `the NBD connection failed: ${e.message}`)));
    if (queue.length > 0) this.#parse();
  }

  get isReadOnly(): boolean {
    return (this.transmissionFlags & w.NBD_FLAG_READ_ONLY) !== 0;
  }

  /** Connects and negotiates: structured replies, the given meta contexts, then GO to the export. */
  static async connect(uri: string | NbdTarget, options: { metaContexts?: readonly string[]; tls?: NbdTlsOptions } = {}): Promise<NbdClient> {
    const target = typeof uri === 'string' ? parseNbdUri(uri) : uri;
    let socket: net.Socket | tls.TLSSocket = await new Promise<net.Socket>((resolve, reject) => {
      const s = target.socketPath !== undefined ? net.connect(target.socketPath) : net.connect(target.port ?? 10809, target.host ?? 'localhost');
      s.once('connect', () => {
        s.off('error', reject);
        resolve(s);
      });
      s.once('error', (e) => reject(new BlkError((e as NodeJS.ErrnoException).code === 'ENOENT' ? 'ENOENT' : 'ECONNREFUSED', `cannot connect to NBD server ${target.socketPath ?? `${target.host}:${target.port}`}: ${e.message}`)));
    });
    socket.setNoDelay?.(true);
    try {
      let r = new HandshakeReader(socket);
      const greeting = await r.read(18);
      if (greeting.readBigUInt64BE(0) !== w.NBDMAGIC || greeting.readBigUInt64BE(8) !== w.IHAVEOPT) throw new BlkError('EPROTO', 'not a newstyle NBD server');
      const serverFlags = greeting.readUInt16BE(16);
      if (!(serverFlags & w.NBD_FLAG_FIXED_NEWSTYLE)) throw new BlkError('EPROTO', 'the NBD server is not fixed newstyle');
      const clientFlags = w.NBD_FLAG_C_FIXED_NEWSTYLE | (serverFlags & w.NBD_FLAG_NO_ZEROES ? w.NBD_FLAG_C_NO_ZEROES : 0);
      socket.write(u32(clientFlags));
      const option = async (opt: number, data: Buffer): Promise<Array<{ type: number; data: Buffer }>> => {
        const h = Buffer.alloc(16);
        h.writeBigUInt64BE(w.IHAVEOPT, 0);
        h.writeUInt32BE(opt, 8);
        h.writeUInt32BE(data.length, 12);
        socket.write(Buffer.concat([h, data]));
        const replies: Array<{ type: number; data: Buffer }> = [];
        for (;;) {
          const rh = await r.read(20);
          const type = rh.readUInt32BE(12);
          const body = await r.read(rh.readUInt32BE(16));
          replies.push({ type, data: body });
          if (type === w.NBD_REP_ERR_TLS_REQD) throw new BlkError('EACCES', 'the NBD server requires TLS: use an nbds:// URI with TLS credentials');
          if (type === w.NBD_REP_ACK || type >= 0x80000000) return replies;
        }
      };
      if (target.isTls || options.tls) {
        const reply = await option(w.NBD_OPT_STARTTLS, Buffer.alloc(0));
        if (reply.at(-1)?.type !== w.NBD_REP_ACK) throw new BlkError('EPROTO', 'the NBD server refused STARTTLS');
        const rest = r.detach();
        if (rest.length > 0) throw new BlkError('EPROTO', 'the NBD server sent data after STARTTLS');
        socket = await startTls(socket, target, options.tls ?? {});
        r = new HandshakeReader(socket);
      }
      const structured = await option(w.NBD_OPT_STRUCTURED_REPLY, Buffer.alloc(0));
      if (structured.at(-1)?.type !== w.NBD_REP_ACK) throw new BlkError('EPROTO', 'the NBD server has no structured replies');
      const contexts = new Map<string, number>();
      const wanted = options.metaContexts ?? [];
      if (wanted.length > 0) {
        const name = Buffer.from(target.exportName);
        const parts = [u32(name.length), name, u32(wanted.length)];
        for (const c of wanted) parts.push(u32(Buffer.byteLength(c)), Buffer.from(c));
        for (const rep of await option(w.NBD_OPT_SET_META_CONTEXT, Buffer.concat(parts))) {
          if (rep.type === w.NBD_REP_META_CONTEXT) contexts.set(rep.data.toString('utf8', 4), rep.data.readUInt32BE(0));
        }
      }
      const name = Buffer.from(target.exportName);
      const go = await option(w.NBD_OPT_GO, Buffer.concat([u32(name.length), name, Buffer.from([0, 0])]));
      const last = go.at(-1);
      if (!last || last.type !== w.NBD_REP_ACK) {
        const why = last ? last.data.toString('utf8') : '';
        throw new BlkError(last?.type === w.NBD_REP_ERR_UNKNOWN ? 'ENOENT' : last?.type === w.NBD_REP_ERR_TLS_REQD ? 'EACCES' : 'EPROTO', `the NBD server refused export '${target.exportName}'${why ? `: ${why}` : ''}`);
      }
      const info = go.find((g) => g.type === w.NBD_REP_INFO && g.data.readUInt16BE(0) === w.NBD_INFO_EXPORT);
      if (!info) throw new BlkError('EPROTO', 'the NBD server gave no export size');
      const queue = r.detach();
      return new NbdClient(socket, queue, Number(info.data.readBigUInt64BE(2)), info.data.readUInt16BE(10), contexts);
    } catch (e) {
      socket.destroy();
      throw e;
    }
  }

  /**
   * Reads [offset, offset+length) into the first `length` bytes of `into` (which the caller must
   * not touch until this settles), or a new buffer; holes come back as zeros.
   */
  read(offset: number, length: number, into?: Buffer): Promise<Buffer> {
    if (into && into.length < length) return Promise.reject(new BlkError('EINVAL', `a read of ${length} bytes into a buffer of ${into.length}`));
    return this.#request(w.NBD_CMD_READ, 0, offset, length, undefined, 'read', undefined, into?.subarray(0, length)) as Promise<Buffer>;
  }

  async write(offset: number, data: Uint8Array, fua = false): Promise<void> {
    await this.#request(w.NBD_CMD_WRITE, fua ? w.NBD_CMD_FLAG_FUA : 0, offset, data.length, data, 'write');
  }

  async writeZeroes(offset: number, length: number, mayTrim = true): Promise<void> {
    await this.#request(w.NBD_CMD_WRITE_ZEROES, mayTrim ? 0 : w.NBD_CMD_FLAG_NO_HOLE, offset, length, undefined, 'write zeroes');
  }

  async trim(offset: number, length: number): Promise<void> {
    await this.#request(w.NBD_CMD_TRIM, 0, offset, length, undefined, 'trim');
  }

  async flush(): Promise<void> {
    await this.#request(w.NBD_CMD_FLUSH, 0, 0, 0, undefined, 'flush');
  }

  /** Block status of [offset, offset+length) in one negotiated context; may cover less than asked. */
  blockStatus(context: string, offset: number, length: number): Promise<Extent[]> {
    const id = this.contexts.get(context);
    if (id === undefined) return Promise.reject(new BlkError('EOPNOTSUPP', `meta context ${context} was not negotiated`));
    return this.#request(w.NBD_CMD_BLOCK_STATUS, 0, offset, Math.min(length, 0xffffffff), undefined, 'block status', id) as Promise<Extent[]>;
  }

  /** Every extent of [offset, offset+length) in a context, asking again where a reply stopped short. */
  async extents(context: string, offset: number, length: number): Promise<Extent[]> {
    const out: Extent[] = [];
    let at = offset;
    const end = offset + length;
    while (at < end) {
      const got = await this.blockStatus(context, at, Math.min(end - at, 2 ** 31));
      if (got.length === 0) throw new BlkError('EPROTO', 'block status made no progress');
      for (const e of got) {
        const len = Math.min(e.length, end - at);
        if (len <= 0) break;
        out.push({ offset: at, length: len, flags: e.flags });
        at += len;
      }
    }
    return out;
  }

  get inFlight(): number {
    return this.#pending.size;
  }

  /** Ends the connection politely (NBD_CMD_DISC), or at once when it already failed. */
  async close(): Promise<void> {
    if (this.#closed) return;
    const h = w.encodeRequest(w.NBD_CMD_DISC, 0, this.#cookie++, 0, 0);
    await new Promise<void>((resolve) => {
      this.#socket.end(h, () => resolve());
      setTimeout(resolve, 1000).unref();
    });
    this.#socket.destroy();
    this.#fail(new BlkError('ESHUTDOWN', 'the NBD client was closed'));
  }

  #request(type: number, flags: number, offset: number, length: number, payload: Uint8Array | undefined, what: string, contextId?: number, into?: Buffer): Promise<unknown> {
    if (this.#closed) return Promise.reject(this.#closed);
    const cookie = this.#cookie++;
    return new Promise((resolve, reject) => {
      const kind = type === w.NBD_CMD_READ ? 'read' : type === w.NBD_CMD_BLOCK_STATUS ? 'status' : 'other';
      const p: Pending = { kind, what: `${what} ${offset}+${length}`, offset, length, resolve, reject };
      // Not zeroed (a memset of every byte read): every byte is filled by data or a hole, or the read fails.
      if (type === w.NBD_CMD_READ) {
        p.data = into ?? Buffer.allocUnsafeSlow(length);
        if (length >= LARGE_READ) this.#largeReads++;
      }
      if (type === w.NBD_CMD_BLOCK_STATUS) {
        p.extents = [];
        if (contextId !== undefined) p.contextId = contextId;
      }
      this.#pending.set(cookie, p);
      this.#socket.write(w.encodeRequest(type, flags, cookie, offset, length));
      if (payload) this.#socket.write(payload);
    });
  }

  /** Bytes from a 'data' event (TLS): the direct target's share first, the rest to the queue. */
  #receive(b: Buffer): void {
    const d = this.#direct;
    if (d) {
      const n = Math.min(b.length, d.remaining);
      b.copy(d.into, d.at, 0, n);
      this.#advanceDirect(n);
      b = b.subarray(n);
    }
    this.#queue.push(b);
    this.#parse();
  }

  #advanceDirect(n: number): void {
    const d = this.#direct as DirectTarget;
    d.at += n;
    d.remaining -= n;
    if (d.remaining > 0) return;
    this.#direct = null;
    d.done();
  }

  /** Receives `length` bytes into `into` at `at`: what is queued now, the rest as it comes; then `done`. */
  #receiveInto(into: Buffer, at: number, length: number, done: () => void): void {
    const now = Math.min(this.#queue.length, length);
    this.#queue.takeInto(into.subarray(at), now);
    if (now === length) return done();
    this.#direct = { into, at: at + now, remaining: length - now, done };
  }

  #parse(): void {
    const q = this.#queue;
    while (this.#direct === null) {
      if (this.#partial === null) {
        if (q.length < 4) return;
        const magic = q.peek(4).readUInt32BE(0);
        if (magic === w.SIMPLE_REPLY_MAGIC) {
          if (q.length < 16) return;
          const h = q.peek(16);
          const errno = h.readUInt32BE(4);
          const cookie = h.readBigUInt64BE(8);
          const p = this.#pending.get(cookie);
          if (!p) return this.#fail(new BlkError('EPROTO', `the NBD server answered an unknown request ${cookie}`));
          q.skip(16);
          if (errno !== 0 || p.kind !== 'read') {
            this.#finish(cookie, p, errno === 0 ? undefined : nbdError(errno, p.what));
            continue;
          }
          this.#partial = { cookie, kind: 'simple-data', flags: 0, type: 0, length: p.length };
        } else if (magic === w.STRUCTURED_REPLY_MAGIC) {
          if (q.length < 20) return;
          const h = q.take(20);
          this.#partial = { cookie: h.readBigUInt64BE(8), kind: 'structured', flags: h.readUInt16BE(4), type: h.readUInt16BE(6), length: h.readUInt32BE(16) };
          const p = this.#pending.get(this.#partial.cookie);
          const bound = p ? chunkBound(this.#partial.type, p) : 0;
          // A chunk is buffered whole before it is parsed: a length no request needs is refused, not awaited.
          if (this.#partial.length > bound) return this.#fail(new BlkError('EPROTO', `the NBD server claims a ${this.#partial.length}-byte reply chunk of type ${this.#partial.type} for ${p?.what ?? 'no request'}, more than the ${bound} it can need`));
        } else {
          return this.#fail(new BlkError('EPROTO', `the NBD server sent a reply with magic 0x${magic.toString(16)}`));
        }
      }
      const part = this.#partial;
      const p = this.#pending.get(part.cookie);
      if (!p) return this.#fail(new BlkError('EPROTO', `the NBD server answered an unknown request ${part.cookie}`));
      if (part.kind === 'simple-data') {
        this.#partial = null;
        this.#receiveInto(p.data as Buffer, 0, part.length, () => this.#finish(part.cookie, p));
        continue;
      }
      // A data chunk goes straight into the read's buffer once its offset is known.
      if (part.type === w.NBD_REPLY_TYPE_OFFSET_DATA && p.kind === 'read' && part.length >= 8) {
        // The offset first: waiting for the whole chunk in the queue would copy its data once more.
        if (q.length < 8) return;
        const at = Number(q.peek(8).readBigUInt64BE(0)) - p.offset;
        const n = part.length - 8;
        if (at >= 0 && at + n <= p.length) {
          q.skip(8);
          this.#partial = null;
          this.#receiveInto(p.data as Buffer, at, n, () => {
            p.covered = (p.covered ?? 0) + n;
            this.#chunkDone(part.cookie, p, part.flags);
          });
          continue;
        }
      }
      if (q.length < part.length) return;
      this.#partial = null;
      this.#chunk(p, part.type, part.length);
      this.#chunkDone(part.cookie, p, part.flags);
    }
  }

  /** After a structured reply's chunk: the reply ends with its DONE flag. */
  #chunkDone(cookie: bigint, p: Pending, flags: number): void {
    if (!(flags & w.NBD_REPLY_FLAG_DONE)) return;
    // Chunks do not overlap (proto.md), so a full count means every byte was answered.
    if (p.kind === 'read' && !p.error && (p.covered ?? 0) !== p.length) p.error = new BlkError('EPROTO', `${p.what}: the reply answered ${p.covered ?? 0} of ${p.length} bytes`);
    this.#finish(cookie, p, p.error);
  }

  /** One structured reply chunk of `length` bytes, still in the queue. */
  #chunk(p: Pending, type: number, length: number): void {
    const q = this.#queue;
    const what = p.what;
    if (type === w.NBD_REPLY_TYPE_OFFSET_DATA && p.kind === 'read' && length >= 8) {
      const at = Number(q.take(8).readBigUInt64BE(0)) - p.offset;
      const n = length - 8;
      if (at < 0 || at + n > p.length) {
        q.skip(n);
        p.error ??= new BlkError('EPROTO', `${what}: data outside the request`);
      } else {
        q.takeInto((p.data as Buffer).subarray(at), n);
        p.covered = (p.covered ?? 0) + n;
      }
    } else if (type === REPLY_TYPE_OFFSET_HOLE && p.kind === 'read' && length === 12) {
      const b = q.take(12);
      const at = Number(b.readBigUInt64BE(0)) - p.offset;
      const n = b.readUInt32BE(8);
      if (at < 0 || at + n > p.length) p.error ??= new BlkError('EPROTO', `${what}: hole outside the request`);
      else {
        (p.data as Buffer).fill(0, at, at + n);
        p.covered = (p.covered ?? 0) + n;
      }
    } else if (type === w.NBD_REPLY_TYPE_BLOCK_STATUS && p.kind === 'status' && length >= 4) {
      const b = q.take(length);
      if (b.readUInt32BE(0) === p.contextId) {
        let at = p.offset;
        for (let i = 4; i + 8 <= b.length; i += 8) {
          const n = b.readUInt32BE(i);
          (p.extents as Extent[]).push({ offset: at, length: n, flags: b.readUInt32BE(i + 4) });
          at += n;
        }
      }
    } else if (type & REPLY_TYPE_ERROR_BIT) {
      const b = q.take(length);
      const errno = length >= 4 ? b.readUInt32BE(0) : 5;
      const messageLength = length >= 6 ? b.readUInt16BE(4) : 0;
      p.error ??= nbdError(errno, what, b.toString('utf8', 6, 6 + messageLength));
    } else {
      q.skip(length);
    }
  }

  #finish(cookie: bigint, p: Pending, error?: BlkError): void {
    this.#pending.delete(cookie);
    if (p.kind === 'read' && p.length >= LARGE_READ) this.#largeReads--;
    if (error) p.reject(error);
    else p.resolve(p.kind === 'read' ? p.data : p.kind === 'status' ? p.extents : undefined);
  }

  #fail(e: BlkError): void {
    if (this.#closed) return;
    this.#closed = e;
    this.#direct = null;
    this.#socket.destroy();
    for (const p of this.#pending.values()) p.reject(e);
    this.#pending.clear();
    this.#largeReads = 0;
  }

  /**
   * The bytes that complete what the parser waits for, when that is not a read's data: a reply
   * header (with a data chunk's offset), a chunk's offset, or the rest of another chunk. A larger
   * window would take the start of a large read's data into the arena: one more copy, into pages
   * touched for the first time (half the page faults of a 4 GiB backup).
   */
  #headerBytesWanted(): number {
    const queued = this.#queue.length;
    const part = this.#partial;
    const wanted = part === null ? STRUCTURED_HEADER + 8 : part.type === w.NBD_REPLY_TYPE_OFFSET_DATA && queued < 8 ? 8 : part.length;
    return Math.max(1, wanted - queued);
  }
}

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32BE(n);
  return b;
}

/** A 28-byte NBD request header (a bigint offset lets a test send one past 2^53). */
async function startTls(socket: net.Socket, target: NbdTarget, options: NbdTlsOptions): Promise<tls.TLSSocket> {
  const base: tls.ConnectionOptions = { socket, servername: target.host && net.isIP(target.host) === 0 ? target.host : undefined };
  if (options.psk) {
    const { identity, key } = options.psk;
    Object.assign(base, { pskCallback: () => ({ identity, psk: Buffer.from(key, 'hex') }), ciphers: 'PSK', checkServerIdentity: () => undefined });
  } else {
    const dir = options.certsDir;
    if (!dir) throw new BlkError('EINVAL', 'TLS needs --tls-certs DIR (ca-cert.pem) or a PSK');
    const read = (f: string): Buffer | undefined => (fs.existsSync(path.join(dir, f)) ? fs.readFileSync(path.join(dir, f)) : undefined);
    const ca = read('ca-cert.pem');
    if (!ca) throw new BlkError('ENOENT', `${dir}/ca-cert.pem is missing`);
    const cert = read('client-cert.pem');
    const key = read('client-key.pem');
    Object.assign(base, { ca, ...(cert && key ? { cert, key } : {}), checkServerIdentity: () => undefined });
  }
  return new Promise((resolve, reject) => {
    const t = tls.connect(base, () => {
      t.off('error', reject);
      resolve(t);
    });
    t.once('error', (e) => reject(new BlkError('EACCES', `TLS with the NBD server failed: ${e.message}`)));
  });
}
