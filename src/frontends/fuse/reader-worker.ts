// Owns waiting on /dev/fuse: a worker thread blocks in read(2) so the event loop never does, and
// hands each request to the daemon's thread in a shared slot (no copy: the kernel writes it there).
import { parentPort, workerData } from 'node:worker_threads';
import { readRaw, waitReadable } from '../../os/libc.js';
import { SlotState, type ReaderShared, type ReaderMessage } from './slots.js';

const ENOENT = 2;
const EINTR = 4;
const EAGAIN = 11;
const ENODEV = 19;

const { fd, memory, slotCount, slotSize, firstSlot, ownSlotCount } = workerData as ReaderShared;
const control = new Int32Array(memory, 0, SlotState.headerInts + slotCount);
const slots = new Map<number, Uint8Array>();
for (let i = firstSlot; i < firstSlot + ownSlotCount; i++) slots.set(i, new Uint8Array(memory, SlotState.dataOffset + i * slotSize, slotSize));
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
  const n = readRaw(fd, slots.get(slot) as Uint8Array);
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
