// Owns one FUSE io_uring ring thread. The kernel has a queue per possible CPU and puts each request
// issued on a CPU into a free entry registered for that CPU's queue; this thread's entries are spread
// over all queues, so a busy CPU's requests are taken by every ring thread. The kernel writes the
// request straight into the entry and takes the reply back with the next fetch: one io_uring_enter
// per round instead of a read(2) and a write(2) per request. A READ found in the page cache is
// answered here, into the entry's payload; the rest is relayed to the daemon's thread in place (the
// payload is not copied) and committed when it has replied. Not pinned to a CPU: the submitting
// task and the ring's copies would share one core.
import { parentPort, workerData } from 'node:worker_threads';
import { koffi } from '../../os/koffi.js';
import { IoUring } from '../../os/io-uring.js';
import { readRaw } from '../../os/libc.js';
import { fuse as fuseParams } from '../../params.js';
import { readFromCache } from './cached-read.js';
import { RingEntry, ringEntryViews, type RingEntryViews, type RingMessage, type RingShared } from './slots.js';
import * as w from './wire.js';

const EINTR = 4;
const EAGAIN = 11;
const POLLIN = 1;
/** User data of the wake-up poll; entries use their index. */
const WAKE = 0xffffffff;

const shared = workerData as RingShared;
const { fd, queueCount, entryBase, maxTransfer, firstEntry, entryCount, firstSlot, wakeFd, cachedReads } = shared;
const control = new Int32Array(shared.control);
const post = (m: RingMessage) => parentPort?.postMessage(m);

const entries = Array.from({ length: entryCount }, (_, e) => ringEntryViews(shared.memory, entryBase, maxTransfer, firstEntry + e));
/** Each entry's commit id as two 32-bit words, copied from its request header to its next commit. */
const commitIds = new Uint32Array(2 * entryCount);
// The two buffers each entry registers, kept alive for the ring's life.
const iovecs = Buffer.alloc(entryCount * 32);
const memoryAddress = koffi.address(new Uint8Array(shared.memory));
entries.forEach((entry, e) => {
  iovecs.writeBigUInt64LE(memoryAddress + BigInt(entry.headerOffset), e * 32);
  iovecs.writeBigUInt64LE(BigInt(entry.header.length), e * 32 + 8);
  iovecs.writeBigUInt64LE(memoryAddress + BigInt(entry.payloadOffset), e * 32 + 16);
  iovecs.writeBigUInt64LE(BigInt(entry.payload.length), e * 32 + 24);
});
const iovecsAddress = koffi.address(iovecs);

const ring = new IoUring(entryCount + 2);

function command(e: number, op: number): void {
  const isRegister = op === w.Ring.commandRegister;
  const c = ring.uringCommand(fd, op, e, isRegister ? iovecsAddress + BigInt(e * 32) : null, isRegister ? 2 : 0);
  // fuse_uring_cmd_req: flags, commit_id (none to register), qid.
  const sqes = ring.sqes;
  if (!isRegister) {
    sqes.writeUInt32LE(commitIds[2 * e] as number, c + 8);
    sqes.writeUInt32LE(commitIds[2 * e + 1] as number, c + 12);
  }
  sqes.writeUInt16LE((firstEntry + e) % queueCount, c + 16);
}

/** Answers from the page cache, or rebuilds the request as the daemon's thread reads it and relays it. */
function take(e: number): void {
  const { header: h, request, payload } = entries[e] as RingEntryViews;
  commitIds[2 * e] = h.readUInt32LE(w.Ring.commitIdOffset);
  commitIds[2 * e + 1] = h.readUInt32LE(w.Ring.commitIdOffset + 4);
  const opcode = h.readUInt32LE(4);
  const payloadLength = h.readUInt32LE(w.Ring.payloadSizeOffset);
  if (opcode === w.Opcode.READ && cachedReads) {
    const { offset, size } = w.readIoIn(h, w.Ring.opInOffset);
    if (size <= fuseParams.ringCachedReadMaximum && readFromCache(cachedReads, payload.subarray(0, size), offset)) {
      // The out header sits where the in header was; `unique` is at the same place in both.
      h.writeUInt32LE(w.OUT_HEADER_LENGTH + size, 0);
      h.writeInt32LE(0, 4);
      h.writeUInt32LE(size, w.Ring.payloadSizeOffset);
      Atomics.add(control, RingEntry.answeredIndex, 1);
      return command(e, w.Ring.commandCommitAndFetch);
    }
  }
  // In header, first argument, then the payload right after it, as read(2) on /dev/fuse gives them.
  const opLength = w.opInLength(opcode);
  const argumentsAt = w.IN_HEADER_LENGTH;
  const payloadAt = RingEntry.payloadAt - RingEntry.requestAt;
  if (argumentsAt + opLength !== payloadAt) request.copyWithin(argumentsAt + opLength, payloadAt, payloadAt + payloadLength);
  h.copy(request, 0, 0, w.IN_HEADER_LENGTH);
  h.copy(request, argumentsAt, w.Ring.opInOffset, w.Ring.opInOffset + opLength);
  const length = argumentsAt + opLength + payloadLength;
  request.writeUInt32LE(length, 0);
  Atomics.store(control, RingEntry.stateIndex + firstEntry + e, RingEntry.relayed);
  relayed.push(firstSlot + e, length);
}

// Requests to relay from one wake, sent together: a message each cost the daemon's thread a wake-up
// and a dispatch per request.
let relayed: number[] = [];

const wakeCount = Buffer.alloc(8);
for (let e = 0; e < entryCount; e++) command(e, w.Ring.commandRegister);
ring.poll(wakeFd, POLLIN, WAKE);
let ended = 0;
let firstError = 0;
post({ ready: true });
while (Atomics.load(control, RingEntry.stopIndex) === 0 && ended < entryCount) {
  const r = ring.submitAndWait();
  if (r === -EINTR) continue;
  if (r < 0) {
    post({ ended: `io_uring_enter: errno ${-r}` });
    break;
  }
  let isWoken = false;
  ring.reap((e, result) => {
    if (e === WAKE) isWoken = true;
    else if (result === 0) take(e);
    else if (result === -EINTR || result === -EAGAIN) command(e, w.Ring.commandRegister);
    else {
      ended++; // ENOTCONN: the connection is gone; anything else ends the entry too
      firstError ||= -result;
    }
  });
  if (relayed.length > 0) {
    post({ relayed });
    relayed = [];
  }
  if (isWoken) {
    readRaw(wakeFd, wakeCount);
    ring.poll(wakeFd, POLLIN, WAKE);
    for (let e = 0; e < entryCount; e++) {
      const state = RingEntry.stateIndex + firstEntry + e;
      if (Atomics.load(control, state) !== RingEntry.replied) continue;
      Atomics.store(control, state, RingEntry.inRing);
      command(e, w.Ring.commandCommitAndFetch);
    }
  }
}
if (ended >= entryCount) post({ ended: firstError === 107 ? 'ENOTCONN' : `errno ${firstError}` });
ring.close();
