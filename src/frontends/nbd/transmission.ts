// Owns running one connection's NBD requests (handed over by its RequestReader) and their replies:
// dispatch to the device, read strategies (page cache at once, sendfile, thread pool), block status, errors.
import type { Socket } from 'node:net';
import { IoFlag, type BlockDevice, type IoFlags, type SendSink } from '../../core/block-device.js';
import { BlkError, toBlkError, toNbdErrno } from '../../errors.js';
import { nbd as limits, nbdIo } from '../../params.js';
import { bytesReadable, bytesUnread } from '../../os/libc.js';
import { writeNonBlocking } from '../../os/socket-descriptor.js';
import { drainPipe, PipePool, type SplicePipe, spliceFromPipeUntilFull } from '../../os/splice.js';
import { ioBuffers } from '../../util/buffer-pool.js';
import type { ByteQueue } from '../../util/byte-queue.js';
import type { Agreement } from './handshake.js';
import { IncomingWrite } from './incoming-write.js';
import { changeExtents } from './meta-context.js';
import { type Request, RequestReader, type TransmissionStep } from './request-reader.js';
import { ReplyWriter } from './reply-writer.js';
import type { RequestObserver } from './request-observer.js';
import * as w from '../../nbd/wire.js';

/** The daemon's pipes for spliced image reads. */
const splicePipes = new PipePool(nbdIo.splicePipeBytes, nbdIo.splicePipesKept, nbdIo.splicePipesInUse);

const EMPTY = Buffer.alloc(0);

export type { TransmissionStep } from './request-reader.js';

/** The command flags each command accepts; anything else is EINVAL. */
const ALLOWED_FLAGS: Readonly<Record<number, number>> = {
  [w.NBD_CMD_READ]: w.NBD_CMD_FLAG_DF | w.NBD_CMD_FLAG_FUA,
  [w.NBD_CMD_WRITE]: w.NBD_CMD_FLAG_FUA,
  [w.NBD_CMD_DISC]: 0,
  [w.NBD_CMD_FLUSH]: 0,
  [w.NBD_CMD_TRIM]: w.NBD_CMD_FLAG_FUA,
  [w.NBD_CMD_CACHE]: 0,
  [w.NBD_CMD_WRITE_ZEROES]: w.NBD_CMD_FLAG_FUA | w.NBD_CMD_FLAG_NO_HOLE | w.NBD_CMD_FLAG_FAST_ZERO,
  [w.NBD_CMD_BLOCK_STATUS]: w.NBD_CMD_FLAG_REQ_ONE,
};

/**
 * One connection after the handshake. Requests are dispatched as soon as they are parsed, so many
 * are in flight at once and replies may leave out of order; each reply is a single socket write,
 * so replies never interleave. Reading pauses while too many requests or bytes are in flight or
 * while the client does not read its replies: memory stays bounded whatever the client sends.
 */
export class Transmission {
  #socket: Socket;
  #device: BlockDevice;
  #agreement: Agreement;
  #reader: RequestReader;
  #requestsInFlight = 0;
  #bytesInFlight = 0;
  /** The receive queue feed() works on: replies wait (corked) while it holds more requests. */
  #queue: ByteQueue | null = null;
  /**
   * The socket as the device sees it for sendfile (its descriptor, -1 when unknown): an image asks
   * it when the client has read what was sent.
   */
  #sink: SendSink;
  #replies: ReplyWriter;
  #onProgress: () => void;

  /** Reads from this size on are sent with sendfile where the device can; 0: never. */
  #sendFileMinimum: number;

  #observer: RequestObserver | null;

  constructor(socket: Socket, replies: { socketFd: number; sendFileMinimum: number; observer?: RequestObserver | null }, agreement: Agreement, onProgress: () => void) {
    this.#observer = replies.observer ?? null;
    this.#socket = socket;
    this.#replies = new ReplyWriter(socket, () => this.#requestsInFlight > 1 || (this.#queue?.length ?? 0) >= w.REQUEST_HEADER_LENGTH);
    const fd = replies.socketFd;
    this.#sink = {
      fd,
      // A Unix socket frees a sent buffer once its peer has read it; TCP only tells what was acknowledged.
      knowsWhenRead: fd >= 0 && typeof socket.remoteAddress !== 'string',
      // A closed socket's number may already name another one: never ask it then.
      isRead: () => socket.destroyed || bytesUnread(fd) <= 0,
      whenRead: () => this.#whenRead(),
    };
    this.#sendFileMinimum = replies.sendFileMinimum > 0 ? replies.sendFileMinimum : Infinity;
    this.#agreement = agreement;
    this.#device = agreement.device;
    this.#onProgress = onProgress;
    this.#reader = new RequestReader((h) => this.#checkWrite(h));
  }

  get isIdle(): boolean {
    return this.#requestsInFlight === 0;
  }

  get isDisconnecting(): boolean {
    return this.#reader.isDisconnecting;
  }

  get isBusy(): boolean {
    return (
      this.#requestsInFlight >= limits.maximumRequestsInFlight ||
      this.#bytesInFlight >= limits.maximumBytesInFlight ||
      this.#socket.writableNeedDrain ||
      // The client is not reading fast enough: replies are waiting behind one cut short.
      this.#replies.isHolding
    );
  }

  /** Runs every whole request the queue holds, until it holds no more or too much is in flight. */
  feed(queue: ByteQueue): TransmissionStep {
    this.#queue = queue;
    for (;;) {
      if (this.#reader.isAtHeader && this.isBusy) return { kind: 'paused' };
      const step = this.#reader.next(queue);
      if (step.kind !== 'request') return step;
      this.#dispatch(step.request);
    }
  }

  /** See RequestReader.receiveTarget. */
  receiveTarget(): Buffer | null {
    return this.#reader.receiveTarget();
  }

  received(n: number): void {
    this.#reader.received(n);
  }

  /** The connection is gone: a payload under way gives back its buffer (a streamed write ends with what landed). */
  dispose(): void {
    this.#reader.dispose();
  }

  /** A write's header is in: null when it may go on, else the error its reply carries (its payload is skipped). */
  #checkWrite(h: w.RequestHeader): BlkError | null {
    if (h.length > limits.maximumBlockSize) return new BlkError('EINVAL', `write of ${h.length} bytes exceeds the maximum block size ${limits.maximumBlockSize}`);
    return this.#validate(h);
  }

  /**
   * What the NBD wire adds to the device's own checks (range, read-only, closing: its
   * RequestGate): known commands and flags, no empty requests, the advertised maximum size.
   */
  #validate(h: w.RequestHeader): BlkError | null {
    const allowed = ALLOWED_FLAGS[h.type];
    if (allowed === undefined) return new BlkError('EINVAL', `unknown command ${h.type}`);
    if (h.flags & ~allowed) return new BlkError('EINVAL', `flags 0x${h.flags.toString(16)} are not valid for command ${h.type}`);
    if (h.type === w.NBD_CMD_FLUSH) return null;
    if (this.#agreement.isReadOnly && (h.type === w.NBD_CMD_WRITE || h.type === w.NBD_CMD_TRIM || h.type === w.NBD_CMD_WRITE_ZEROES)) {
      return new BlkError('EPERM', `export ${this.#device.name} is read-only to this client`);
    }
    if (h.length === 0) return new BlkError('EINVAL', `command ${h.type} with length 0`);
    if (h.type === w.NBD_CMD_READ && h.length > limits.maximumBlockSize) {
      return new BlkError('EINVAL', `read of ${h.length} bytes exceeds the maximum block size ${limits.maximumBlockSize}`);
    }
    if (h.type === w.NBD_CMD_BLOCK_STATUS && this.#agreement.contexts.length === 0) {
      return new BlkError('EINVAL', 'block status needs a meta context (base:allocation, qemu:dirty-bitmap:cbt-J, x-blksnap:cbt)');
    }
    return null;
  }

  #dispatch(request: Request): void {
    const { header: h, payload } = request;
    const observer = this.#observer;
    if (h.type === w.NBD_CMD_DISC) return this.#onProgress();
    const startedAt = observer ? performance.now() : 0;
    // A write was checked as its header came (its payload may have been skipped); the rest here.
    const error = request.refused ?? (h.type === w.NBD_CMD_WRITE ? null : this.#validate(h));
    if (error) {
      observer?.done(h.type, 0, 0, true);
      return this.#replyError(h, error);
    }
    this.#requestsInFlight++;
    const weight = h.type === w.NBD_CMD_READ || h.type === w.NBD_CMD_WRITE ? h.length : 0;
    this.#bytesInFlight += weight;
    let isError = false;
    const done = (): void => {
      this.#requestsInFlight--;
      this.#bytesInFlight -= weight;
      observer?.done(h.type, weight, (performance.now() - startedAt) / 1000, isError);
      this.#onProgress();
    };
    const failed = (e: unknown): void => {
      isError = true;
      this.#replyError(h, toBlkError(e));
      done();
    };
    let work: Promise<void> | undefined;
    try {
      work = this.#run(h, payload);
    } catch (e) {
      return failed(e);
    }
    if (work === undefined) done();
    else work.then(done, failed);
  }

  /**
   * Runs a validated request; the returned promise settles after its reply is sent, or it returns
   * nothing when the reply was sent at once.
   */
  #run(h: w.RequestHeader, payload: Request['payload']): Promise<void> | undefined {
    const device = this.#device;
    let base: IoFlags = h.flags & w.NBD_CMD_FLAG_FUA ? IoFlag.Fua : IoFlag.None;
    if (h.type === w.NBD_CMD_WRITE && h.length >= nbdIo.backgroundWriteMinimum && this.#hasMoreRequests()) base |= IoFlag.Background;
    switch (h.type) {
      case w.NBD_CMD_READ:
        return this.#read(h);
      case w.NBD_CMD_WRITE:
        return this.#write(h, payload as NonNullable<Request['payload']>, base);
      case w.NBD_CMD_FLUSH:
        return device.flush().then(() => this.#replyOk(h));
      case w.NBD_CMD_TRIM:
        return device.trim(h.offset, h.length, base).then(() => this.#replyOk(h));
      case w.NBD_CMD_CACHE:
        return device.cache(h.offset, h.length).then(() => this.#replyOk(h));
      case w.NBD_CMD_WRITE_ZEROES: {
        let flags = base;
        if (!(h.flags & w.NBD_CMD_FLAG_NO_HOLE)) flags |= IoFlag.MayTrim;
        if (h.flags & w.NBD_CMD_FLAG_FAST_ZERO) flags |= IoFlag.FastZero;
        return device.zero(h.offset, h.length, flags).then(() => this.#replyOk(h));
      }
      default:
        return this.#blockStatus(h);
    }
  }

  /**
   * A write, whatever form its payload came in: whole, in the pieces it arrived in, or still
   * arriving (its parts reach the device as they come). The device chooses its fastest way; its
   * buffers go back once it has landed.
   */
  #write(h: w.RequestHeader, payload: NonNullable<Request['payload']>, flags: IoFlags): Promise<void> | undefined {
    const release = (): void => {
      if (payload instanceof IncomingWrite) payload.release();
      else if (Array.isArray(payload)) for (const c of payload) ioBuffers.release(c);
      else ioBuffers.release(payload);
    };
    const written = payload instanceof IncomingWrite ? payload.writeTo(this.#device, flags) : this.#device.write(h.offset, payload, flags);
    if (written === undefined) {
      release();
      this.#replyOk(h);
      return undefined;
    }
    return written.then(
      () => {
        release();
        this.#replyOk(h);
      },
      (e: unknown) => {
        release();
        throw e;
      },
    );
  }

  /**
   * Whether the client has sent more than this request: then a large write goes to the thread pool
   * so its copy overlaps the event loop's reading of the next ones; a client waiting for this reply
   * is served quicker by a synchronous copy (both measured: docs/performance.md). Requests in
   * flight are no sign: synchronous writes leave none.
   */
  #hasMoreRequests(): boolean {
    return this.#requestsInFlight > 1 || (this.#queue?.length ?? 0) > 0 || (this.#sink.fd >= 0 && bytesReadable(this.#sink.fd) > 0);
  }

  #read(h: w.RequestHeader): Promise<void> | undefined {
    const prefixLength = this.#agreement.isStructured ? w.OFFSET_DATA_PREFIX_LENGTH : w.SIMPLE_REPLY_HEADER_LENGTH;
    const fast = this.#device.fast;
    if (fast && h.length >= this.#sendFileMinimum && this.#canSendDirectly()) {
      const prefix = Buffer.allocUnsafe(prefixLength);
      this.#writeReadPrefix(prefix, h);
      const sent = fast.sendTo(this.#sink, prefix, h.offset, h.length);
      if (sent !== null && sent > 0) {
        if (sent < prefixLength + h.length) return this.#finishSentRead(h, prefix, sent);
        return undefined;
      }
    }
    if (fast?.spliceTo && h.length >= this.#sendFileMinimum && h.length <= splicePipes.capacity && this.#sink.fd >= 0) {
      const pipe = splicePipes.acquire();
      if (pipe) {
        let splicing: Promise<void> | null;
        try {
          splicing = fast.spliceTo(pipe, h.offset, h.length);
        } catch (e) {
          splicePipes.release(pipe); // refused at the gate: nothing went into it
          throw e;
        }
        if (splicing) {
          // A failed splice says nothing of why (its errno stays in the thread pool) and may be
          // the splice's own failure: the plain read then serves the request, or fails with the errno.
          return splicing.then(() => this.#sendSpliced(h, pipe, prefixLength), () => {
            splicePipes.discard(pipe);
            return this.#readAndSend(h, prefixLength);
          });
        }
        splicePipes.release(pipe);
      }
    }
    return this.#readAndSend(h, prefixLength);
  }

  /** The plain read: into a buffer, then sent. */
  #readAndSend(h: w.RequestHeader, prefixLength: number): Promise<void> | undefined {
    const fast = this.#device.fast;
    // Header and data share one buffer: one allocation and one socket write per reply. The data
    // begins on an aligned address, so a read past the page cache (O_DIRECT) goes straight into it.
    const reply = ioBuffers.acquire(prefixLength + h.length, prefixLength);
    let reading: Promise<void>;
    try {
      if (fast?.readNow(h.offset, reply.subarray(prefixLength))) return this.#sendRead(reply, h);
      reading = this.#device.read(h.offset, reply.subarray(prefixLength));
    } catch (e) {
      ioBuffers.release(reply); // refused at the device's gate (a range past the end)
      throw e;
    }
    return reading.then(() => this.#sendRead(reply, h), (e: unknown) => {
      ioBuffers.release(reply);
      throw e;
    });
  }

  /**
   * Sends a read reply whose data a pipe holds: by splice into the socket when nothing of ours waits
   * on it, else (or for what a full socket left) as a copy out of the pipe.
   */
  #sendSpliced(h: w.RequestHeader, pipe: SplicePipe, prefixLength: number): Promise<void> | undefined {
    if (!this.#canSendDirectly()) {
      const reply = ioBuffers.acquire(prefixLength + h.length, prefixLength);
      drainPipe(pipe, reply.subarray(prefixLength));
      splicePipes.release(pipe);
      return this.#sendRead(reply, h);
    }
    const prefix = Buffer.allocUnsafe(prefixLength);
    this.#writeReadPrefix(prefix, h);
    const fd = this.#sink.fd;
    const prefixSent = writeNonBlocking(fd, prefix);
    const dataSent = prefixSent === prefixLength ? spliceFromPipeUntilFull(pipe, fd, h.length) : 0;
    if (dataSent === h.length) {
      splicePipes.release(pipe);
      return undefined;
    }
    return this.#finishSplicedRead(prefix.subarray(prefixSent), pipe, h.length - dataSent);
  }

  /**
   * The socket filled up during a spliced reply. The rest of the prefix, or a small piece out of the
   * pipe, is queued through the socket; then the splice goes on. (The pipe's pages are its own:
   * holding them while the client reads changes nothing.)
   */
  #finishSplicedRead(prefixLeft: Buffer, pipe: SplicePipe, rest: number): Promise<void> {
    const fd = this.#sink.fd;
    let left = rest;
    return this.#finishCutShort(async () => {
      try {
        if (prefixLeft.length > 0) await this.#replies.writeAndWait(prefixLeft);
        for (;;) {
          left -= spliceFromPipeUntilFull(pipe, fd, left);
          if (left === 0) break;
          const piece = Buffer.allocUnsafe(Math.min(nbdIo.waitPieceBytes, left));
          drainPipe(pipe, piece);
          left -= piece.length;
          await this.#replies.writeAndWait(piece);
        }
      } finally {
        if (left > 0) splicePipes.discard(pipe);
        else splicePipes.release(pipe);
      }
    });
  }

  /**
   * Finishes a read reply the socket took only part of. Every other reply waits behind it (nothing
   * may come between its bytes); each piece is queued through the socket, whose write callback tells
   * that the kernel has room again. A failure now cannot be told to the client (part of the reply is
   * on the wire): it ends the connection.
   */
  async #finishCutShort(finish: () => Promise<void>): Promise<void> {
    this.#replies.hold();
    try {
      await finish();
    } catch (e) {
      this.#socket.destroy(new Error(`read reply cut short: ${toBlkError(e).message}`));
    } finally {
      this.#replies.release();
    }
  }

  /** Sends a read reply whose data is in place after its prefix; the pool gets the buffer back once sent. */
  #sendRead(reply: Buffer, h: w.RequestHeader): undefined {
    this.#writeReadPrefix(reply, h);
    this.#replies.send(reply, ioBuffers.isPooled(reply) ? () => ioBuffers.release(reply) : undefined);
    return undefined;
  }

  #writeReadPrefix(b: Buffer, h: w.RequestHeader): void {
    if (this.#agreement.isStructured) {
      w.writeStructuredHeader(b, 0, w.NBD_REPLY_FLAG_DONE, w.NBD_REPLY_TYPE_OFFSET_DATA, h.cookie, 8 + h.length);
      w.writeOffset(b, w.STRUCTURED_HEADER_LENGTH, h.offset);
    } else {
      w.writeSimpleReplyHeader(b, 0, 0, h.cookie);
    }
  }

  /**
   * Resolves once the client has read everything on the socket. Replies are held meanwhile, so the
   * wait ends after one socket's worth however busy the connection is; a closed socket ends it.
   */
  async #whenRead(): Promise<void> {
    const fd = this.#sink.fd;
    if (bytesUnread(fd) <= 0) return;
    this.#replies.hold();
    try {
      for (let pause = 0; !this.#socket.destroyed && bytesUnread(fd) > 0; pause = Math.min(pause + 1, 10)) {
        await new Promise((resolve) => setTimeout(resolve, pause));
      }
    } finally {
      this.#replies.release();
      // Reading requests paused while replies were held; nothing else of this connection may wake it.
      this.#onProgress();
    }
  }

  /** Sendfile where the device can and nothing of ours waits on the socket. */
  #canSendDirectly(): boolean {
    return this.#sink.fd >= 0 && this.#replies.isIdle;
  }

  /** The socket filled up after `sent` bytes of a read reply went by sendfile: one piece is queued, then sendfile goes on. */
  #finishSentRead(h: w.RequestHeader, prefix: Buffer, sent: number): Promise<void> {
    const device = this.#device;
    const total = prefix.length + h.length;
    return this.#finishCutShort(async () => {
      let done = sent;
      while (done < total) {
        let piece = prefix.subarray(done);
        if (done >= prefix.length) {
          const at = done - prefix.length;
          piece = Buffer.allocUnsafe(Math.min(nbdIo.waitPieceBytes, h.length - at));
          if (!device.fast?.readNow(h.offset + at, piece)) await device.read(h.offset + at, piece);
        }
        await this.#replies.writeAndWait(piece);
        done += piece.length;
        if (done === total) break;
        const at = done - prefix.length;
        const n = device.fast?.sendTo(this.#sink, EMPTY, h.offset + at, h.length - at) ?? null;
        if (n === null) {
          // No longer all cached: the rest goes as a copy.
          const rest = ioBuffers.acquire(h.length - at);
          await device.read(h.offset + at, rest);
          await this.#replies.writeAndWait(rest).finally(() => ioBuffers.release(rest));
          break;
        }
        done += n;
      }
    });
  }

  /** One block-status chunk per chosen context, the last one flagged done. */
  async #blockStatus(h: w.RequestHeader): Promise<void> {
    const maximum = h.flags & w.NBD_CMD_FLAG_REQ_ONE ? 1 : limits.maximumExtentsPerReply;
    const contexts = this.#agreement.contexts;
    const chunks: Buffer[] = [];
    for (const [i, context] of contexts.entries()) {
      let descriptors: Array<{ length: number; flags: number }>;
      if (context.kind === 'allocation') {
        const extents = await this.#device.extents(h.offset, h.length, maximum);
        descriptors = extents.slice(0, maximum).map((e) => ({
          length: Math.min(e.length, h.offset + h.length - e.offset),
          flags: (e.isHole ? w.NBD_STATE_HOLE : 0) | (e.isZero ? w.NBD_STATE_ZERO : 0),
        }));
      } else {
        descriptors = changeExtents(context, this.#device.changes(), h.offset, h.length, maximum);
      }
      chunks.push(w.encodeBlockStatus(h.cookie, context.id, descriptors, i === contexts.length - 1));
    }
    // One socket write: the chunks of one reply never interleave with another reply's.
    this.#replies.send(chunks.length === 1 ? (chunks[0] as Buffer) : Buffer.concat(chunks));
  }

  #replyOk(h: w.RequestHeader): void {
    const reply = Buffer.allocUnsafe(w.SIMPLE_REPLY_HEADER_LENGTH);
    w.writeSimpleReplyHeader(reply, 0, 0, h.cookie);
    this.#replies.send(reply);
  }

  #replyError(h: w.RequestHeader, error: BlkError): void {
    const errno = toNbdErrno(error);
    // Structured replies must answer READ and BLOCK_STATUS; the message reaches the client's log.
    if (this.#agreement.isStructured && (h.type === w.NBD_CMD_READ || h.type === w.NBD_CMD_BLOCK_STATUS)) {
      this.#replies.send(w.encodeStructuredError(h.cookie, errno, error.toString()));
      return;
    }
    const reply = Buffer.allocUnsafe(w.SIMPLE_REPLY_HEADER_LENGTH);
    w.writeSimpleReplyHeader(reply, 0, errno, h.cookie);
    this.#replies.send(reply);
  }
}
