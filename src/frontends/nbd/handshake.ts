// Owns NBD option haggling (fixed newstyle): from the greeting to the export a client goes to transmission with.
import type { BlockDevice } from '../../core/block-device.js';
import { nbd as limits } from '../../params.js';
import type { ByteQueue } from '../../util/byte-queue.js';
import { type ExportPolicy, OPEN_POLICY } from './authz.js';
import { matchContexts, type MetaContext } from './meta-context.js';
import * as w from '../../nbd/wire.js';

export interface ExportCatalogue {
  lookupExport(name: string): BlockDevice | undefined;
  exports(): BlockDevice[];
}

/** What the handshake agreed on. */
export interface Agreement {
  device: BlockDevice;
  isStructured: boolean;
  /** The metadata contexts block status reports, in the order chosen (SET_META_CONTEXT). */
  contexts: readonly MetaContext[];
  transmissionFlags: number;
  /** Writes are refused (EPERM): the device is read-only, or this peer may only read it (--tls-authz). */
  isReadOnly: boolean;
}

export type HandshakeStep =
  | { kind: 'more' }
  | { kind: 'close'; reason: string }
  /** STARTTLS was acknowledged: the connection becomes TLS now, then the handshake goes on over it. */
  | { kind: 'starttls' }
  | { kind: 'transmission'; agreement: Agreement };

/** A listener's TLS policy: none offered, or required before anything but STARTTLS and ABORT. */
export type TlsPolicy = 'none' | 'required';


/** The transmission flags an export advertises. */
export function transmissionFlags(device: BlockDevice, isStructured: boolean, isReadOnly = device.isReadOnly): number {
  let flags = w.NBD_FLAG_HAS_FLAGS | w.NBD_FLAG_SEND_FLUSH | w.NBD_FLAG_SEND_CACHE | w.NBD_FLAG_CAN_MULTI_CONN;
  if (isReadOnly) flags |= w.NBD_FLAG_READ_ONLY;
  else {
    flags |= w.NBD_FLAG_SEND_FUA | w.NBD_FLAG_SEND_WRITE_ZEROES | w.NBD_FLAG_SEND_FAST_ZERO;
    if (device.canTrim) flags |= w.NBD_FLAG_SEND_TRIM;
  }
  if (isStructured) flags |= w.NBD_FLAG_SEND_DF;
  return flags;
}

/** A cursor over option data that reports truncation instead of throwing. */
class OptionReader {
  #data: Buffer;
  #at = 0;
  isTruncated = false;
  constructor(data: Buffer) {
    this.#data = data;
  }
  get remaining(): number {
    return this.#data.length - this.#at;
  }
  u16(): number {
    if (this.remaining < 2) return this.#truncated();
    const v = this.#data.readUInt16BE(this.#at);
    this.#at += 2;
    return v;
  }
  u32(): number {
    if (this.remaining < 4) return this.#truncated();
    const v = this.#data.readUInt32BE(this.#at);
    this.#at += 4;
    return v;
  }
  text(length: number): string {
    if (this.remaining < length) {
      this.#truncated();
      return '';
    }
    const s = this.#data.toString('utf8', this.#at, this.#at + length);
    this.#at += length;
    return s;
  }
  #truncated(): number {
    this.isTruncated = true;
    this.#at = this.#data.length;
    return 0;
  }
}

export class Handshake {
  #catalogue: ExportCatalogue;
  #send: (b: Buffer) => void;
  #hasClientFlags = false;
  #hasNoZeroes = false;
  #isStructured = false;
  #contexts: MetaContext[] = [];
  #option: w.OptionHeader | null = null;
  #tls: TlsPolicy;
  #isTlsActive = false;
  /** Which exports this peer may open, and how (TLS with --tls-authz); every one otherwise. */
  #policy: ExportPolicy = OPEN_POLICY;

  constructor(catalogue: ExportCatalogue, send: (b: Buffer) => void, tls: TlsPolicy = 'none') {
    this.#catalogue = catalogue;
    this.#send = send;
    this.#tls = tls;
    send(w.encodeGreeting());
  }

  /** The connection is TLS from here on (the server upgraded it after a 'starttls' step), with the peer's policy. */
  tlsStarted(policy: ExportPolicy = OPEN_POLICY): void {
    this.#isTlsActive = true;
    this.#policy = policy;
  }

  /** The export a client names, as this peer may see it: refused (POLICY) before its existence is told. */
  #lookup(name: string): { device: BlockDevice; isReadOnly: boolean } | 'refused' | 'unknown' {
    const access = this.#policy(name);
    if (access === null) return 'refused';
    const device = this.#catalogue.lookupExport(name);
    if (!device) return 'unknown';
    return { device, isReadOnly: device.isReadOnly || access === 'ro' };
  }

  /** Replies the error a failed #lookup stands for. */
  #lookupError(option: number, name: string, failure: 'refused' | 'unknown'): void {
    if (failure === 'refused') this.#error(option, w.NBD_REP_ERR_POLICY, `export '${name}' is not permitted to this client`);
    else this.#error(option, w.NBD_REP_ERR_UNKNOWN, `no export named '${name}'`);
  }

  feed(queue: ByteQueue): HandshakeStep {
    if (!this.#hasClientFlags) {
      if (queue.length < 4) return { kind: 'more' };
      const flags = queue.take(4).readUInt32BE(0);
      if (flags & ~(w.NBD_FLAG_C_FIXED_NEWSTYLE | w.NBD_FLAG_C_NO_ZEROES)) {
        return { kind: 'close', reason: `unknown client flags 0x${flags.toString(16)}` };
      }
      this.#hasNoZeroes = (flags & w.NBD_FLAG_C_NO_ZEROES) !== 0;
      this.#hasClientFlags = true;
    }
    for (;;) {
      if (this.#option === null) {
        if (queue.length < w.OPTION_HEADER_LENGTH) return { kind: 'more' };
        const header = w.decodeOptionHeader(queue.take(w.OPTION_HEADER_LENGTH));
        if (!header.isMagicValid) return { kind: 'close', reason: 'bad option magic' };
        if (header.length > limits.maximumOptionLength) {
          return { kind: 'close', reason: `option ${header.option} carries ${header.length} bytes, more than ${limits.maximumOptionLength}` };
        }
        this.#option = header;
      }
      if (queue.length < this.#option.length) return { kind: 'more' };
      const { option, length } = this.#option;
      this.#option = null;
      const step = this.#handle(option, queue.take(length));
      if (step?.kind === 'starttls' && queue.length > 0) {
        // The client must wait for the ACK: bytes sent before it would be taken as plaintext.
        return { kind: 'close', reason: 'data after NBD_OPT_STARTTLS before its reply' };
      }
      if (step) return step;
    }
  }

  #reply(option: number, type: number, data?: Buffer): void {
    this.#send(w.encodeOptionReply(option, type, data));
  }

  #error(option: number, type: number, message: string): void {
    this.#reply(option, type, Buffer.from(message, 'utf8'));
  }

  #handle(option: number, data: Buffer): HandshakeStep | null {
    if (this.#tls === 'required' && !this.#isTlsActive && option !== w.NBD_OPT_STARTTLS && option !== w.NBD_OPT_ABORT) {
      // Nothing but STARTTLS before TLS: no export names, sizes or data in the clear.
      if (option === w.NBD_OPT_EXPORT_NAME) return { kind: 'close', reason: 'NBD_OPT_EXPORT_NAME without TLS on a TLS listener' };
      this.#error(option, w.NBD_REP_ERR_TLS_REQD, 'this server requires TLS: send NBD_OPT_STARTTLS first');
      return null;
    }
    switch (option) {
      case w.NBD_OPT_EXPORT_NAME: {
        const name = data.toString('utf8');
        const found = this.#lookup(name);
        if (found === 'refused') return { kind: 'close', reason: `export '${name}' is not permitted to this client` };
        if (found === 'unknown') return { kind: 'close', reason: `unknown export '${name}'` };
        const flags = transmissionFlags(found.device, this.#isStructured, found.isReadOnly);
        this.#send(w.encodeExportNameReply(found.device.size, flags, this.#hasNoZeroes));
        return this.#agree(found.device, flags, found.isReadOnly);
      }
      case w.NBD_OPT_ABORT:
        this.#reply(option, w.NBD_REP_ACK);
        return { kind: 'close', reason: 'client aborted the handshake' };
      case w.NBD_OPT_LIST:
        if (data.length !== 0) this.#error(option, w.NBD_REP_ERR_INVALID, 'NBD_OPT_LIST takes no data');
        else {
          const permitted = this.#catalogue.exports().filter((d) => this.#policy(d.name) !== null);
          if (permitted.length === 0 && this.#policy !== OPEN_POLICY) {
            this.#error(option, w.NBD_REP_ERR_POLICY, 'no export is permitted to this client');
            return null;
          }
          for (const device of permitted) this.#reply(option, w.NBD_REP_SERVER, w.encodeLengthPrefixed(device.name));
          this.#reply(option, w.NBD_REP_ACK);
        }
        return null;
      case w.NBD_OPT_STARTTLS:
        if (this.#tls === 'none') {
          this.#error(option, w.NBD_REP_ERR_UNSUP, 'TLS is not offered on this listener');
          return null;
        }
        if (this.#isTlsActive || data.length !== 0) {
          this.#error(option, w.NBD_REP_ERR_INVALID, this.#isTlsActive ? 'TLS is already active' : 'NBD_OPT_STARTTLS takes no data');
          return null;
        }
        this.#reply(option, w.NBD_REP_ACK);
        return { kind: 'starttls' };
      case w.NBD_OPT_INFO:
      case w.NBD_OPT_GO:
        return this.#infoOrGo(option, data);
      case w.NBD_OPT_STRUCTURED_REPLY:
        if (data.length !== 0) this.#error(option, w.NBD_REP_ERR_INVALID, 'NBD_OPT_STRUCTURED_REPLY takes no data');
        else {
          this.#isStructured = true;
          this.#reply(option, w.NBD_REP_ACK);
        }
        return null;
      case w.NBD_OPT_LIST_META_CONTEXT:
      case w.NBD_OPT_SET_META_CONTEXT:
        this.#metaContext(option, data);
        return null;
      default:
        this.#error(option, w.NBD_REP_ERR_UNSUP, `option ${option} is not supported`);
        return null;
    }
  }

  #infoOrGo(option: number, data: Buffer): HandshakeStep | null {
    const r = new OptionReader(data);
    const name = r.text(r.u32());
    const count = r.u16();
    const requests: number[] = [];
    for (let i = 0; i < count && !r.isTruncated; i++) requests.push(r.u16());
    if (r.isTruncated || r.remaining !== 0) {
      this.#error(option, w.NBD_REP_ERR_INVALID, 'malformed NBD_OPT_INFO/GO data');
      return null;
    }
    const found = this.#lookup(name);
    if (typeof found === 'string') {
      this.#lookupError(option, name, found);
      return null;
    }
    const { device, isReadOnly } = found;
    const flags = transmissionFlags(device, this.#isStructured, isReadOnly);
    this.#reply(option, w.NBD_REP_INFO, w.encodeInfoExport(device.size, flags));
    if (requests.includes(w.NBD_INFO_NAME)) this.#reply(option, w.NBD_REP_INFO, w.encodeInfoString(w.NBD_INFO_NAME, device.name));
    if (requests.includes(w.NBD_INFO_DESCRIPTION)) {
      this.#reply(option, w.NBD_REP_INFO, w.encodeInfoString(w.NBD_INFO_DESCRIPTION, `blksnap export ${device.name}`));
    }
    // The protocol lets a server send block sizes unasked; every client then knows 4 KiB is best.
    this.#reply(option, w.NBD_REP_INFO, w.encodeInfoBlockSize(limits.minimumBlockSize, limits.preferredBlockSize, limits.maximumBlockSize));
    this.#reply(option, w.NBD_REP_ACK);
    return option === w.NBD_OPT_GO ? this.#agree(device, flags, isReadOnly) : null;
  }

  #metaContext(option: number, data: Buffer): void {
    const isSet = option === w.NBD_OPT_SET_META_CONTEXT;
    if (isSet && !this.#isStructured) {
      this.#error(option, w.NBD_REP_ERR_INVALID, 'NBD_OPT_SET_META_CONTEXT needs structured replies first');
      return;
    }
    const r = new OptionReader(data);
    const name = r.text(r.u32());
    const count = r.u32();
    const queries: string[] = [];
    for (let i = 0; i < count && !r.isTruncated; i++) queries.push(r.text(r.u32()));
    if (r.isTruncated || r.remaining !== 0) {
      this.#error(option, w.NBD_REP_ERR_INVALID, 'malformed meta context request');
      return;
    }
    const found = this.#lookup(name);
    if (typeof found === 'string') {
      this.#lookupError(option, name, found);
      return;
    }
    const contexts = matchContexts(found.device, queries, !isSet);
    if (isSet) this.#contexts = contexts;
    // A LIST reply's context id means nothing (0); a SET reply's is the one block status will carry.
    for (const c of contexts) this.#reply(option, w.NBD_REP_META_CONTEXT, w.encodeMetaContext(isSet ? c.id : 0, c.name));
    this.#reply(option, w.NBD_REP_ACK);
  }

  #agree(device: BlockDevice, flags: number, isReadOnly: boolean): HandshakeStep {
    return {
      kind: 'transmission',
      agreement: { device, isStructured: this.#isStructured, contexts: this.#contexts, transmissionFlags: flags, isReadOnly },
    };
  }
}
