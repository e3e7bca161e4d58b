// Owns waiting on /dev/fuse: a worker thread blocks in read(2) so the event loop never does, and
// hands each request to the daemon's thread in a shared slot (no copy: the kernel writes it there).
// A READ whose range is all in the page cache (for an image: in untouched or kept chunks, through
// its ImageReadGate) it answers itself: a hop to the event loop and back costs several times the read.
// Larger ones it splices from the page cache to /dev/fuse.
import * as fs from 'node:fs';
import { parentPort, workerData } from 'node:worker_threads';
import { PAGE_SIZE, readRaw, waitReadable } from '../../os/libc.js';
import { openPipe } from '../../os/splice.js';
import { readFromCache, spliceReply } from './cached-read.js';
import { SlotState, type ReaderShared, type ReaderMessage } from './slots.js';
import * as w from './wire.js';

const ENOENT = 2;
const EINTR = 4;
const EAGAIN = 11;
const ENODEV = 19;

const { fd, memory, slotCount, slotSize, firstSlot, ownSlotCount, cachedReads, spliceMinimum, pipeBytes } = workerData as ReaderShared;
/** This reader's reply buffer for cached reads: the slot keeps the request in case the daemon must serve it. */
const reply = cachedReads ? Buffer.alloc(slotSize) : null;
/** Its pipe for the larger ones; none where the kernel gives none that large. */
const opened = cachedReads && spliceMinimum > 0 ? openPipe(pipeBytes) : null;
const pipe = typeof opened === 'object' ? opened : null;
const replyHeader = Buffer.alloc(w.OUT_HEADER_LENGTH);

/** Writes a reply, unless nobody waits for it any more. */
function send(bytes: Buffer, length: number): void {
  try {
    fs.writeSync(fd, bytes, 0, length);
  } catch {
    // ENOENT: the request was interrupted meanwhile; ENODEV: the connection is gone. Nobody to answer.
  }
}

/**
 * Answers a READ by splice: the reply's header, then references to the cached pages, go into the
 * pipe, and the kernel copies them from there into the reader's pages (read and write would copy
 * each byte twice). False (having sent nothing) when it cannot.
 */
function splicedFromCache(unique: bigint, offset: number, size: number): boolean {
  if (!pipe || !cachedReads || size < spliceMinimum || w.OUT_HEADER_LENGTH + size > pipe.capacity - PAGE_SIZE) return false;
  w.writeOutHeader(replyHeader, w.OUT_HEADER_LENGTH + size, 0, unique);
  return spliceReply(cachedReads, pipe, replyHeader, offset, size, fd, reply as Buffer);
}

/** Answers a READ of the slot's request from the page cache; false (having sent nothing) when it cannot. */
function answeredFromCache(request: Buffer, length: number): boolean {
  if (!cachedReads || !reply || length < w.IN_HEADER_LENGTH + w.IO_IN_LENGTH) return false;
  const h = w.readInHeader(request);
  if (h.opcode !== w.Opcode.READ || h.length !== length) return false;
  const { offset, size } = w.readIoIn(request);
  if (w.OUT_HEADER_LENGTH + size > reply.length) return false;
  // Counted before the reply goes (and taken back if it cannot go): a client holding its reply
  // finds its read counted, as the ring threads do.
  Atomics.add(control, SlotState.answeredIndex, 1);
  Atomics.add(control, SlotState.splicedIndex, 1);
  if (splicedFromCache(h.unique, offset, size)) return true;
  Atomics.sub(control, SlotState.splicedIndex, 1);
  if (!readFromCache(cachedReads, reply.subarray(w.OUT_HEADER_LENGTH, w.OUT_HEADER_LENGTH + size), offset)) {
    Atomics.sub(control, SlotState.answeredIndex, 1);
    return false;
  }
  w.writeOutHeader(reply, w.OUT_HEADER_LENGTH + size, 0, h.unique);
  send(reply, w.OUT_HEADER_LENGTH + size);
  return true;
}

const control = new Int32Array(memory, 0, SlotState.headerInts + slotCount);
const slots = new Map<number, Buffer>();
for (let i = firstSlot; i < firstSlot + ownSlotCount; i++) slots.set(i, Buffer.from(memory, SlotState.dataOffset + i * slotSize, slotSize));
const post = (m: ReaderMessage) => parentPort?.postMessage(m);

function freeSlot(from: number): number {
  for (let k = 0; k < ownSlotCount; k++) {
    const i = firstSlot + ((from + k) % ownSlotCount);
    if (Atomics.load(control, SlotState.headerInts + i) === SlotState.free) return i;
  }
  return -1;
}

let next = 0;
while (Atomics.load(control, SlotState.stopIndex) === 0) {
  const seen = Atomics.load(control, SlotState.wakeIndex);
  const slot = freeSlot(next);
  if (slot < 0) {
    // Every slot is being served: the kernel queues further requests until one is answered.
    Atomics.wait(control, SlotState.wakeIndex, seen, 200);
    continue;
  }
  const request = slots.get(slot) as Buffer;
  const n = readRaw(fd, request);
  if (n > 0 && answeredFromCache(request, n)) continue;
  if (n > 0) {
    Atomics.store(control, SlotState.headerInts + slot, SlotState.busy);
    next = slot + 1 - firstSlot;
    post({ slot, length: n });
  } else if (n === -EAGAIN) {
    waitReadable(fd, 200); // bounded, so a stop request is seen
  } else if (n === -EINTR || n === -ENOENT) {
    // Interrupted, or the request was aborted before it was read: read again.
  } else {
    // ENODEV: the filesystem was unmounted or the connection aborted.
    post({ ended: n === -ENODEV ? 'ENODEV' : `errno ${-n}` });
    break;
  }
}
