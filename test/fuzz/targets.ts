// Owns the fuzz targets: each takes mutated inputs into one parser of the daemon and checks what must
// hold after every input (no exception escapes, replies well formed, state bounded).
import * as fs from 'node:fs';
import * as net from 'node:net';
import * as path from 'node:path';
import { MemoryStorage } from '../../src/backing/memory-storage.js';
import { Registry } from '../../src/core/registry.js';
import { Daemon } from '../../src/daemon/daemon.js';
import { parseDaemonArgs } from '../../src/daemon/config.js';
import { Handshake, type HandshakeStep, type TlsPolicy } from '../../src/frontends/nbd/handshake.js';
import { matchContexts } from '../../src/frontends/nbd/meta-context.js';
import { Transmission } from '../../src/frontends/nbd/transmission.js';
import { FuseRequests } from '../../src/frontends/fuse/requests.js';
import { ByteQueue } from '../../src/util/byte-queue.js';
import type { Device } from '../../src/core/device.js';
import { mutate, split, type Field, type Rng } from './mutate.js';
import { REPOSITORY_TARGETS } from './repository-targets.js';
import type { FuzzTarget } from './target.js';
import { RawNbd } from '../helpers/raw-nbd.js';
import * as api from '../../src/control/protocol.js';

export type { FuzzTarget };

const DEVICE_SIZE = 1 << 20;

function fail(what: string): never {
  throw new Error(what);
}

// ---- NBD handshake ----------------------------------------------------------------------------

function nbdOption(code: number, data: Buffer = Buffer.alloc(0)): Buffer {
  const h = Buffer.alloc(16);
  h.write('IHAVEOPT', 0, 'latin1');
  h.writeUInt32BE(code, 8);
  h.writeUInt32BE(data.length, 12);
  return Buffer.concat([h, data]);
}

function lengthPrefixed(text: string, width: 2 | 4 = 4): Buffer {
  const b = Buffer.alloc(width);
  if (width === 4) b.writeUInt32BE(Buffer.byteLength(text));
  else b.writeUInt16BE(Buffer.byteLength(text));
  return Buffer.concat([b, Buffer.from(text)]);
}

function goData(name: string, infos: number[]): Buffer {
  const tail = Buffer.alloc(2 + 2 * infos.length);
  tail.writeUInt16BE(infos.length, 0);
  for (const [i, t] of infos.entries()) tail.writeUInt16BE(t, 2 + 2 * i);
  return Buffer.concat([lengthPrefixed(name), tail]);
}

function metaData(name: string, queries: string[]): Buffer {
  const count = Buffer.alloc(4);
  count.writeUInt32BE(queries.length);
  return Buffer.concat([lengthPrefixed(name), count, ...queries.map((q) => lengthPrefixed(q))]);
}

/** A valid option stream, and where its fields are: option codes, lengths, inner counts and lengths. */
function handshakeSeed(rng: Rng): { input: Buffer; fields: Field[] } {
  const options = [
    nbdOption(8),
    nbdOption(3),
    nbdOption(5),
    nbdOption(9, metaData('disk0', rng.pick([[], ['base:allocation'], ['base:'], ['qemu:dirty-bitmap:x']]))),
    nbdOption(10, metaData('disk0', ['base:allocation'])),
    nbdOption(6, goData(rng.pick(['disk0', '', 'nope']), [0, 1, 2, 3])),
    nbdOption(2),
    nbdOption(rng.u32()),
    nbdOption(rng.pick([7, 1]), rng.chance(0.5) ? goData('disk0', [3]) : Buffer.from('disk0')),
  ];
  const chosen: Buffer[] = [Buffer.from([0, 0, 0, rng.pick([1, 3, 2, 0])])];
  const fields: Field[] = [{ at: 0, width: 4, endian: 'be' }];
  let at = 4;
  for (let i = 0, n = 1 + rng.int(6); i < n; i++) {
    const o = rng.pick(options);
    fields.push({ at: at + 8, width: 4, endian: 'be' }, { at: at + 12, width: 4, endian: 'be' }, { at: at + 16, width: 4, endian: 'be' }, { at: at + 20, width: 2, endian: 'be' });
    chosen.push(o);
    at += o.length;
  }
  return { input: Buffer.concat(chosen), fields };
}

export function handshakeTarget(): FuzzTarget {
  let registry: Registry;
  return {
    name: 'nbd-handshake',
    async open() {
      registry = new Registry();
      await registry.attach(new MemoryStorage(DEVICE_SIZE, { path: '/fuzz/disk0' }));
    },
    async run(rng) {
      const { input, fields } = handshakeSeed(rng);
      const data = mutate(rng, input, fields, 256 * 1024);
      let sentBytes = 0;
      const policy: TlsPolicy = rng.chance(0.3) ? 'required' : 'none';
      const hs = new Handshake(registry, (b) => {
        sentBytes += b.length;
      }, policy);
      const queue = new ByteQueue();
      let step: HandshakeStep = { kind: 'more' };
      for (const piece of split(rng, data)) {
        queue.push(piece);
        step = hs.feed(queue);
        if (step.kind === 'starttls') {
          hs.tlsStarted();
          step = hs.feed(queue);
        }
        if (step.kind !== 'more') break;
      }
      if (!['more', 'close', 'transmission', 'starttls'].includes(step.kind)) fail(`bad step ${JSON.stringify(step)}`);
      // Replies are bounded by what was asked: at most a few hundred bytes an option.
      if (sentBytes > 1024 + data.length * 64) fail(`${sentBytes} reply bytes for ${data.length} input bytes`);
    },
    async check() {},
    async close() {},
  };
}

// ---- NBD transmission ---------------------------------------------------------------------------

/** The writes a Transmission makes, as a socket would take them, parsed back into replies. */
class ReplySink {
  chunks: Buffer[] = [];
  destroyed = false;
  writableLength = 0;
  writableNeedDrain = false;
  write(b: Buffer, cb?: (e?: Error) => void): boolean {
    this.chunks.push(Buffer.from(b));
    if (cb) queueMicrotask(() => cb());
    return true;
  }
  cork(): void {}
  uncork(): void {}
  destroy(): void {
    this.destroyed = true;
  }
  /**
   * Parses every reply of a structured connection; fails on a malformed one, or on more final
   * replies than requests (each request starts with the request magic). Returns the final replies.
   */
  verify(requestsAtMost: number): number {
    let finals = 0;
    const all = Buffer.concat(this.chunks);
    let at = 0;
    while (at < all.length) {
      const magic = all.readUInt32BE(at);
      if (magic === 0x67446698) {
        // Only commands without data get simple replies on a structured connection.
        finals++;
        at += 16;
      } else if (magic === 0x668e33ef) {
        const flags = all.readUInt16BE(at + 4);
        const length = all.readUInt32BE(at + 16);
        if (flags & 1) finals++;
        at += 20 + length;
      } else fail(`reply stream out of step at byte ${at}: magic 0x${magic.toString(16)}`);
    }
    if (at !== all.length) fail('reply stream ends inside a reply');
    if (finals > requestsAtMost) fail(`${finals} final replies to at most ${requestsAtMost} requests`);
    return finals;
  }
}

const REQUEST_MAGIC = Buffer.from([0x25, 0x60, 0x95, 0x13]);

function request(type: number, flags: number, cookie: bigint, offset: bigint, length: number, payload?: Buffer): Buffer {
  const h = Buffer.alloc(28);
  h.writeUInt32BE(0x25609513, 0);
  h.writeUInt16BE(flags, 4);
  h.writeUInt16BE(type, 6);
  h.writeBigUInt64BE(cookie, 8);
  h.writeBigUInt64BE(offset, 16);
  h.writeUInt32BE(length, 24);
  return payload ? Buffer.concat([h, payload]) : h;
}

export function transmissionTarget(): FuzzTarget {
  let registry: Registry;
  let device: Device;
  return {
    name: 'nbd-transmission',
    async open() {
      registry = new Registry();
      device = await registry.attach(new MemoryStorage(DEVICE_SIZE, { path: '/fuzz/disk0' }));
    },
    async run(rng) {
      const structured = rng.chance(0.5);
      const parts: Buffer[] = [];
      const fields: Field[] = [];
      let at = 0;
      for (let i = 0, n = 1 + rng.int(8); i < n; i++) {
        const type = rng.pick([0, 1, 3, 4, 5, 6, 7, rng.int(16)]);
        const length = rng.pick([0, 1, 512, 4096, 65536, 128 * 1024 + 7, rng.int(DEVICE_SIZE)]);
        const offset = BigInt(rng.int(DEVICE_SIZE));
        const flags = rng.pick([0, 1, 2, 4, 8, 16, 0xffff]);
        const payload = type === 1 ? rng.bytes(Math.min(length, 300 * 1024)) : undefined;
        const r = request(type, flags, BigInt(i + 1), offset, length, payload);
        fields.push({ at: at + 4, width: 2, endian: 'be' }, { at: at + 6, width: 2, endian: 'be' }, { at: at + 16, width: 8, endian: 'be' }, { at: at + 24, width: 4, endian: 'be' });
        parts.push(r);
        at += r.length;
      }
      const data = mutate(rng, Buffer.concat(parts), fields, 2 << 20);
      const sink = new ReplySink();
      let progress = (): void => undefined;
      const transmission = new Transmission(
        sink as unknown as net.Socket,
        { socketFd: -1, sendFileMinimum: 0 },
        { device, isStructured: structured, contexts: matchContexts(device, rng.pick([[], ['base:allocation'], ['base:allocation', 'x-blksnap:cbt', 'qemu:dirty-bitmap:cbt-0']]), false), transmissionFlags: 0, isReadOnly: false },
        () => progress(),
      );
      const queue = new ByteQueue();
      let closed = false;
      for (const piece of split(rng, data)) {
        queue.push(piece);
        const step = transmission.feed(queue);
        if (step.kind === 'close') {
          closed = true;
          break;
        }
      }
      // Let every request finish (a paused feed resumes on progress), within a bound.
      for (let i = 0; i < 200 && !closed; i++) {
        await new Promise((r) => setImmediate(r));
        progress = () => void transmission.feed(queue);
        if (transmission.isIdle && !transmission.isBusy) {
          transmission.feed(queue);
          if (transmission.isIdle) break;
        }
      }
      // A write whose payload the input cut short waits for the rest, as on a live connection.
      const isMidPayload = transmission.receiveTarget() !== null;
      for (let i = 0; i < 20 && !transmission.isIdle && !isMidPayload; i++) await new Promise((r) => setTimeout(r, 1));
      if (!transmission.isIdle && !isMidPayload && !closed) fail('requests still in flight after the input ended');
      transmission.dispose();
      // Simple read replies are parsed only when every read's length is still as sent.
      if (structured) {
        let magics = 0;
        for (let i = data.indexOf(REQUEST_MAGIC); i >= 0; i = data.indexOf(REQUEST_MAGIC, i + 1)) magics++;
        sink.verify(magics);
      }
      if (device.size !== DEVICE_SIZE) fail('device size changed');
    },
    async check() {},
    async close() {
      await device.close();
    },
  };
}

// ---- FUSE requests -------------------------------------------------------------------------------

const FUSE_OPCODES = [1, 3, 4, 14, 15, 16, 17, 18, 20, 25, 26, 27, 28, 29, 34, 42, 43, 44, 2, 36, 39, 50, 99];

function fuseRequest(opcode: number, unique: bigint, nodeId: bigint, body: Buffer): Buffer {
  const h = Buffer.alloc(40);
  h.writeUInt32LE(40 + body.length, 0);
  h.writeUInt32LE(opcode, 4);
  h.writeBigUInt64LE(unique, 8);
  h.writeBigUInt64LE(nodeId, 16);
  return Buffer.concat([h, body]);
}

function fuseSeed(rng: Rng): Buffer {
  const opcode = rng.pick(FUSE_OPCODES);
  const nodeId = BigInt(rng.pick([1, 2, 3, rng.u32()]));
  let body: Buffer;
  if (opcode === 15 || opcode === 16 || opcode === 28) {
    body = Buffer.alloc(40);
    body.writeBigUInt64LE(BigInt(rng.int(DEVICE_SIZE + 4096)), 8);
    body.writeUInt32LE(rng.pick([0, 1, 4096, 65536, 1 << 20]), 16);
    if (opcode === 16) body = Buffer.concat([body, rng.bytes(body.readUInt32LE(16) & 0xffff)]);
  } else if (opcode === 43) {
    body = Buffer.alloc(32);
    body.writeBigUInt64LE(BigInt(rng.int(DEVICE_SIZE)), 8);
    body.writeBigUInt64LE(BigInt(rng.int(DEVICE_SIZE)), 16);
    body.writeUInt32LE(rng.pick([0, 1, 2, 3, 0x10, 0x11]), 24);
  } else if (opcode === 26) {
    body = Buffer.alloc(16);
    body.writeUInt32LE(7, 0);
    body.writeUInt32LE(rng.pick([23, 31, 38, 40]), 4);
  } else if (opcode === 1) body = Buffer.from('disk\0');
  else body = rng.bytes(rng.int(96));
  return fuseRequest(opcode, BigInt(rng.u32()), nodeId, body);
}

export function fuseTarget(): FuzzTarget {
  let device: Device;
  const slot = Buffer.alloc((1 << 20) + 4096);
  return {
    name: 'fuse-requests',
    async open() {
      const registry = new Registry();
      device = await registry.attach(new MemoryStorage(DEVICE_SIZE, { path: '/fuzz/disk0' }));
    },
    async run(rng) {
      const input = mutate(rng, fuseSeed(rng), [
        { at: 0, width: 4, endian: 'le' },
        { at: 4, width: 4, endian: 'le' },
        { at: 16, width: 8, endian: 'le' },
        { at: 48, width: 8, endian: 'le' },
        { at: 56, width: 4, endian: 'le' },
        { at: 64, width: 4, endian: 'le' },
      ], slot.length);
      input.copy(slot);
      const unique = input.length >= 16 ? input.readBigUInt64LE(8) : 0n;
      let replies = 0;
      let released = 0;
      const check = (head: Buffer, bodyLength: number): void => {
        replies++;
        if (head.readUInt32LE(0) !== head.length + bodyLength) fail(`reply length field ${head.readUInt32LE(0)} for ${head.length + bodyLength} bytes`);
        if (head.readBigUInt64LE(8) !== unique) fail('reply to another request');
        const error = head.readInt32LE(4);
        if (error > 0 || error < -4095) fail(`reply error ${error}`);
      };
      const requests = new FuseRequests(device, [slot], {
        maxTransfer: 1 << 20,
        send: (_slot, head, body) => check(head, body?.length ?? 0),
        sendAsync: (_slot, reply, sent) => {
          check(reply.subarray(0, 16), reply.length - 16);
          queueMicrotask(sent);
        },
        release: () => void released++,
        log: () => undefined,
      });
      requests.serve(0, input.length);
      for (let i = 0; i < 50 && released === 0; i++) await new Promise((r) => setImmediate(r));
      if (released !== 1) fail(`slot released ${released} times`);
      if (replies > 1) fail(`${replies} replies to one request`);
    },
    async check() {},
    async close() {
      await device.close();
    },
  };
}

// ---- control protocol, against a daemon in this process ----------------------------------------

const METHODS = [api.Version, api.DeviceAttach, api.DeviceDetach, api.DeviceList, api.CbtGetInfo, api.CbtRead, api.CbtMarkDirty, api.CbtSwitch, api.SnapshotCreate, api.SnapshotAdd, api.SnapshotTake, api.SnapshotCollect, api.SnapshotGetInfo, api.SnapshotWaitEvent, api.SnapshotDestroy].map((m) => m.name);

function rssBytes(): number {
  return process.memoryUsage().rss;
}

/**
 * The daemon runs in this process with its own temp directory as the working directory, and every
 * path in a request is forced under that directory: a mutated request may name any file, and a
 * difference storage truncates the regular file it is given.
 */
export function controlTarget(): FuzzTarget {
  let dir = '';
  let daemon: Daemon;
  let socket: net.Socket;
  let rssAtStart = 0;
  let pending = 0;
  let received = '';
  let previousCwd = '';
  const valueFor = (rng: Rng, key: string): unknown => {
    switch (key) {
      case 'path':
      case 'diffStorage':
      case 'file':
        return rng.pick([path.join(dir, 'dev0'), path.join(dir, 'dev1'), dir, path.join(dir, 'missing'), 'relative', '', '/', '..', `${dir}/dev0\0x`]);
      case 'device':
        return rng.pick(['dev0', 'dev1', path.join(dir, 'dev0'), 'dev0-image', '', 'x'.repeat(300)]);
      case 'id':
        return rng.pick(['00000000-0000-0000-0000-000000000000', 'not-a-uuid', '']);
      default:
        return rng.pick<unknown>([0, -1, 1.5, 2 ** 53, 2 ** 64, '1', null, true, [], {}, [{ sector: 0, count: 1 }], 'x', 4096, 16 << 20]);
    }
  };
  const keys = ['path', 'name', 'device', 'devices', 'offset', 'length', 'ranges', 'diffStorage', 'limit', 'id', 'timeoutMs', 'readOnly', 'loop', 'file', 'chunkMinimumShift', 'diffStorageMinimum', 'chunkMaximumInQueue', 'tracking'];
  const line = (rng: Rng): Buffer => {
    const params: Record<string, unknown> = {};
    for (let i = 0, n = rng.int(5); i < n; i++) {
      const key = rng.pick(keys);
      params[key] = key === 'devices' ? [valueFor(rng, 'device'), valueFor(rng, 'device')] : valueFor(rng, key);
    }
    if (params.timeoutMs !== undefined) params.timeoutMs = 0; // a long wait would only slow the fuzzer
    params.loop = false;
    const request: Record<string, unknown> = { jsonrpc: '2.0', id: rng.pick<unknown>([rng.int(1000), 'a', null, {}, 1.5]), method: rng.chance(0.95) ? rng.pick(METHODS) : 'x', params: rng.chance(0.95) ? params : rng.pick<unknown>([[], 5, 'p', null]) };
    let text: Buffer = Buffer.from(JSON.stringify(request));
    if (rng.chance(0.3)) text = mutate(rng, text, [], 64 * 1024);
    return Buffer.concat([text.filter((c) => c !== 10), Buffer.from('\n')]);
  };
  /** Only paths inside the fuzz directory survive: anything else becomes the missing file there. */
  const contain = (b: Buffer): Buffer => {
    let doc: unknown;
    try {
      doc = JSON.parse(b.toString('utf8'));
    } catch {
      return b; // not JSON: refused before any handler runs
    }
    const params = (doc as { params?: Record<string, unknown> } | null)?.params;
    if (params && typeof params === 'object' && !Array.isArray(params)) {
      for (const key of ['path', 'diffStorage', 'file']) {
        const p = params[key];
        if (typeof p === 'string' && !(`${path.resolve(dir, p)}/`).startsWith(`${dir}/`)) params[key] = path.join(dir, 'missing');
      }
      params.loop = false;
      if (params.timeoutMs !== undefined) params.timeoutMs = 0;
      // A difference storage grows by real allocation: keep what a fuzzed snapshot may take small.
      if (params.limit !== undefined) params.limit = 16 << 20;
      delete params.diffStorageMinimum;
      return Buffer.from(`${JSON.stringify(doc)}\n`);
    }
    return b;
  };
  return {
    name: 'control',
    async open() {
      dir = fs.mkdtempSync('/tmp/blksnap-fuzz-');
      previousCwd = process.cwd();
      process.chdir(dir);
      for (const name of ['dev0', 'dev1']) {
        fs.writeFileSync(path.join(dir, name), '');
        fs.truncateSync(path.join(dir, name), 4 << 20);
      }
      const config = parseDaemonArgs(['--control', path.join(dir, 'c.sock'), '--nbd', path.join(dir, 'n.sock'), '--state-dir', path.join(dir, 'state'), '--attach', path.join(dir, 'dev0')]);
      if (!config) fail('no config');
      daemon = new Daemon(config, () => undefined);
      await daemon.start();
      socket = net.createConnection(path.join(dir, 'c.sock'));
      await new Promise((r) => socket.once('connect', r));
      socket.setEncoding('utf8');
      socket.on('data', (d: string) => {
        received += d;
        for (let i = received.indexOf('\n'); i >= 0; i = received.indexOf('\n')) {
          received = received.slice(i + 1);
          pending--;
        }
      });
      rssAtStart = rssBytes();
    },
    async run(rng) {
      const b = contain(line(rng));
      // A blank line is no request (JSON-RPC over lines skips it) and gets no reply.
      if (b.toString('utf8').trim() !== '') pending++;
      if (!socket.write(b)) await new Promise((r) => socket.once('drain', r));
      // A line the server cannot frame ends the connection: connect again.
      if (socket.destroyed) fail('control connection closed');
      if (pending > 64) {
        for (let i = 0; i < 2000 && pending > 16; i++) await new Promise((r) => setTimeout(r, 1));
        if (pending > 16) fail(`${pending} requests unanswered`);
      }
    },
    async check() {
      // Another connection is served; memory stays bounded.
      const other = net.createConnection(path.join(dir, 'c.sock'));
      const answer = await new Promise<string>((resolve, reject) => {
        let text = '';
        other.setEncoding('utf8');
        other.on('data', (d: string) => {
          text += d;
          if (text.includes('\n')) resolve(text);
        });
        other.on('error', reject);
        other.write('{"jsonrpc":"2.0","id":1,"method":"version"}\n');
        setTimeout(() => reject(new Error('version not answered within 5 s')), 5000).unref();
      });
      other.destroy();
      if (!answer.includes('"version"')) fail(`version: ${answer}`);
      if (rssBytes() - rssAtStart > 512 << 20) fail(`RSS grew by ${((rssBytes() - rssAtStart) >> 20)} MiB`);
    },
    async close() {
      socket.destroy();
      await daemon.stop();
      process.chdir(previousCwd);
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

// ---- NBD over a real socket, against a daemon in this process --------------------------------------

/**
 * Whole sessions over the daemon's Unix socket: a valid handshake (or a mutated one), then mutated
 * requests, cut anywhere, the client gone right after. This drives what the in-process targets
 * cannot: the connection class, reads into payload buffers (`onread`), sendfile replies.
 */
export function nbdSocketTarget(): FuzzTarget {
  let dir = '';
  let daemon: Daemon;
  let rssAtStart = 0;
  const nbdPath = (): string => path.join(dir, 'n.sock');
  const go = Buffer.concat([Buffer.from([0, 0, 0, 3]), nbdOption(8), nbdOption(10, metaData('dev0', ['base:allocation'])), nbdOption(7, goData('dev0', []))]);
  return {
    name: 'nbd-socket',
    async open() {
      dir = fs.mkdtempSync('/tmp/blksnap-fuzz-');
      fs.writeFileSync(path.join(dir, 'dev0'), Buffer.alloc(DEVICE_SIZE, 1));
      const config = parseDaemonArgs(['--control', path.join(dir, 'c.sock'), '--nbd', nbdPath(), '--state-dir', path.join(dir, 'state'), '--attach', path.join(dir, 'dev0'), '--handshake-timeout', '2']);
      if (!config) fail('no config');
      daemon = new Daemon(config, () => undefined);
      await daemon.start();
      rssAtStart = rssBytes();
    },
    async run(rng) {
      const parts: Buffer[] = [];
      const fields: Field[] = [];
      let at = go.length;
      for (let i = 0, n = 1 + rng.int(6); i < n; i++) {
        const type = rng.pick([0, 1, 3, 4, 5, 6, 7, rng.int(16)]);
        const length = rng.pick([1, 512, 4096, 65536, 128 * 1024 + 7, 1 << 20]);
        const r = request(type, rng.pick([0, 1, 2, 4, 8, 16]), BigInt(i + 1), BigInt(rng.int(DEVICE_SIZE)), length, type === 1 ? rng.bytes(length) : undefined);
        fields.push({ at: at + 4, width: 2, endian: 'be' }, { at: at + 6, width: 2, endian: 'be' }, { at: at + 16, width: 8, endian: 'be' }, { at: at + 24, width: 4, endian: 'be' });
        parts.push(r);
        at += r.length;
      }
      const session = Buffer.concat([go, ...parts]);
      const data = mutate(rng, session, fields, 4 << 20).subarray(0, rng.chance(0.3) ? rng.int(session.length + 1) : undefined);
      const socket = net.createConnection(nbdPath());
      socket.on('error', () => undefined);
      socket.on('data', () => undefined);
      await new Promise((r) => socket.once('connect', r));
      await new Promise<void>((resolve) => socket.write(data, () => resolve()));
      // Give the server a moment to act on it, then vanish (or see it close first).
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, rng.int(3));
        socket.once('close', () => {
          clearTimeout(timer);
          resolve();
        });
      });
      socket.destroy();
    },
    async check() {
      // A well-behaved session still works: handshake, a read.
      const c = await RawNbd.connect(nbdPath());
      try {
        await c.handshake('dev0');
        if (c.size !== DEVICE_SIZE) fail(`export size ${c.size}`);
        c.request(0, 0, 4096);
        const r = await c.simpleReply(4096);
        if (r.error !== 0 || r.data.length !== 4096) fail(`read after fuzzing: error ${r.error}`);
      } finally {
        c.close();
      }
      if (daemon.registry.devices().length !== 1 || daemon.registry.devices()[0]?.size !== DEVICE_SIZE) fail('the device changed');
      if (rssBytes() - rssAtStart > 512 << 20) fail(`RSS grew by ${((rssBytes() - rssAtStart) >> 20)} MiB`);
    },
    async close() {
      await daemon.stop();
      fs.rmSync(dir, { recursive: true, force: true });
    },
  };
}

export const ALL_TARGETS = [handshakeTarget, transmissionTarget, fuseTarget, controlTarget, nbdSocketTarget, ...REPOSITORY_TARGETS];
