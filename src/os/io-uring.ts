// Owns one io_uring instance driven by one thread: set-up, the mapped submission and completion rings,
// URING_CMD and POLL_ADD submissions, waiting, and reaping completions, by the raw syscalls (the
// machine has no liburing; the FUSE ring needs nothing more).
import { BlkError, errnoName } from '../errors.js';
import { koffi } from './koffi.js';
import { closeUnmanaged } from './libc.js';

const libc = koffi.load('libc.so.6');
const setupFn = libc.func('long syscall(long number, unsigned int entries, void *params)');
const enterFn = libc.func('long syscall(long number, int fd, unsigned int toSubmit, unsigned int minComplete, unsigned int flags, void *arg, size_t argSize)');
const mmapFn = libc.func('void *mmap(void *address, size_t length, int protection, int flags, int fd, int64_t offset)');
const munmapFn = libc.func('int munmap(void *address, size_t length)');

const SYS_IO_URING_SETUP = 425;
const SYS_IO_URING_ENTER = 426;
const IORING_SETUP_CQSIZE = 1 << 3;
const IORING_SETUP_SQE128 = 1 << 10;
const IORING_ENTER_GETEVENTS = 1;
const IORING_OFF_SQES = 0x10000000;
const PROT_READ_WRITE = 3;
const MAP_SHARED_POPULATE = 0x01 | 0x8000;
const IORING_OP_POLL_ADD = 6;
const IORING_OP_URING_CMD = 46;
/** A big SQE: 64 bytes plus the 80-byte command area a URING_CMD carries from offset 48 on. */
const SQE_BYTES = 128;
const CQE_BYTES = 16;
const SQE_COMMAND_OFFSET = 48;

/** io_uring_params: the ring offsets the kernel fills in (io_sqring_offsets at 40, io_cqring_offsets at 80). */
const PARAMS_BYTES = 120;

export class IoUring {
  readonly fd: number;
  #ringPointer: unknown;
  #ringBytes: number;
  #sqesPointer: unknown;
  #sqesBytes: number;
  #words: Uint32Array;
  #cqes: Buffer;
  #sqes: Buffer;
  #sqTailWord: number;
  #sqMask: number;
  #cqHeadWord: number;
  #cqTailWord: number;
  #cqMask: number;
  #cqesOffset: number;
  #sqTail: number;
  #unsubmitted = 0;

  /** A ring of `entries` big SQEs and twice as many completions. */
  constructor(entries: number) {
    const params = Buffer.alloc(PARAMS_BYTES);
    params.writeUInt32LE(entries * 2, 4);
    params.writeUInt32LE(IORING_SETUP_SQE128 | IORING_SETUP_CQSIZE, 8);
    const fd = Number(setupFn(SYS_IO_URING_SETUP, entries, params));
    if (fd < 0) throw new BlkError(errnoName(koffi.errno()), 'io_uring_setup failed');
    this.fd = fd;
    const sqEntries = params.readUInt32LE(0);
    const cqEntries = params.readUInt32LE(4);
    const sq = (field: number): number => params.readUInt32LE(40 + 4 * field);
    const cq = (field: number): number => params.readUInt32LE(80 + 4 * field);
    // One mapping holds both rings (IORING_FEAT_SINGLE_MMAP, every kernel since 5.4).
    this.#ringBytes = Math.max(sq(6) + sqEntries * 4, cq(5) + cqEntries * CQE_BYTES);
    this.#sqesBytes = sqEntries * SQE_BYTES;
    this.#ringPointer = mmapFn(null, this.#ringBytes, PROT_READ_WRITE, MAP_SHARED_POPULATE, fd, 0);
    this.#sqesPointer = mmapFn(null, this.#sqesBytes, PROT_READ_WRITE, MAP_SHARED_POPULATE, fd, IORING_OFF_SQES);
    if (koffi.address(this.#ringPointer as ArrayBufferView) === 2n ** 64n - 1n || koffi.address(this.#sqesPointer as ArrayBufferView) === 2n ** 64n - 1n) {
      const code = errnoName(koffi.errno());
      closeUnmanaged(fd);
      throw new BlkError(code, 'mmap of the io_uring rings failed');
    }
    const ring = koffi.view(this.#ringPointer, this.#ringBytes);
    this.#words = new Uint32Array(ring);
    this.#cqes = Buffer.from(ring);
    this.#sqes = Buffer.from(koffi.view(this.#sqesPointer, this.#sqesBytes));
    this.#sqTailWord = sq(1) / 4;
    this.#sqMask = this.#words[sq(2) / 4] as number;
    this.#cqHeadWord = cq(0) / 4;
    this.#cqTailWord = cq(1) / 4;
    this.#cqMask = this.#words[cq(2) / 4] as number;
    this.#cqesOffset = cq(5);
    // The submission array maps ring slot i to SQE i, once: SQEs are filled in ring order.
    for (let i = 0; i < sqEntries; i++) this.#words[sq(6) / 4 + i] = i;
    this.#sqTail = this.#words[this.#sqTailWord] as number;
  }

  /** The submission entries; a URING_CMD's command area is where uringCommand says. */
  get sqes(): Buffer {
    return this.#sqes;
  }

  /**
   * The next SQE, zeroed, with its opcode, descriptor and user data (32 bits: its high word stays 0;
   * no BigInt per request on the FUSE rings' path); returns its offset in `sqes`.
   */
  #next(opcode: number, fd: number, userData: number): number {
    const at = (this.#sqTail & this.#sqMask) * SQE_BYTES;
    this.#sqes.fill(0, at, at + SQE_BYTES);
    this.#sqes[at] = opcode;
    this.#sqes.writeInt32LE(fd, at + 4);
    this.#sqes.writeUInt32LE(userData >>> 0, at + 32);
    this.#sqTail = (this.#sqTail + 1) >>> 0;
    this.#unsubmitted++;
    return at;
  }

  /**
   * Queues a URING_CMD on `fd` with `address` (none: 0) and `length`; returns where in `sqes` its
   * command area starts, zeroed, for the caller to fill.
   */
  uringCommand(fd: number, commandOp: number, userData: number, address: bigint | null, length: number): number {
    const at = this.#next(IORING_OP_URING_CMD, fd, userData);
    this.#sqes.writeUInt32LE(commandOp, at + 8);
    if (address !== null) this.#sqes.writeBigUInt64LE(address, at + 16);
    this.#sqes.writeUInt32LE(length, at + 24);
    return at + SQE_COMMAND_OFFSET;
  }

  /** Queues a one-shot poll of `fd` for `events`. */
  poll(fd: number, events: number, userData: number): void {
    const at = this.#next(IORING_OP_POLL_ADD, fd, userData);
    this.#sqes.writeUInt32LE(events, at + 28);
  }

  /** Submits what is queued and waits for at least one completion; 0, or minus the errno (EINTR: call again). */
  submitAndWait(): number {
    this.#words[this.#sqTailWord] = this.#sqTail;
    const r = Number(enterFn(SYS_IO_URING_ENTER, this.fd, this.#unsubmitted, 1, IORING_ENTER_GETEVENTS, null, 0));
    if (r < 0) return -koffi.errno();
    this.#unsubmitted -= Math.min(r, this.#unsubmitted);
    return 0;
  }

  /** Hands each completion (its user data's 32 bits, result) to `each`, then frees their slots. */
  reap(each: (userData: number, result: number) => void): void {
    let head = this.#words[this.#cqHeadWord] as number;
    const tail = this.#words[this.#cqTailWord] as number;
    while (head !== tail) {
      const at = this.#cqesOffset + (head & this.#cqMask) * CQE_BYTES;
      head = (head + 1) >>> 0;
      each(this.#cqes.readUInt32LE(at), this.#cqes.readInt32LE(at + 8));
    }
    this.#words[this.#cqHeadWord] = head;
  }

  close(): void {
    munmapFn(this.#sqesPointer, this.#sqesBytes);
    munmapFn(this.#ringPointer, this.#ringBytes);
    closeUnmanaged(this.fd);
  }
}

let isUsable: boolean | null = null;

/**
 * Whether this process may set up an io_uring with big SQEs (asked once): containers' seccomp
 * profiles and kernel.io_uring_disabled refuse it with EPERM, older kernels with ENOSYS or EINVAL.
 */
export function ioUringIsUsable(): boolean {
  if (isUsable === null) {
    try {
      new IoUring(2).close();
      isUsable = true;
    } catch {
      isUsable = false;
    }
  }
  return isUsable;
}
