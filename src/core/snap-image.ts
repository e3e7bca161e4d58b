// Owns a snapshot image: the read-write block device showing a device as it was at the take.
import { buffers } from '../params.js';
import type { Extent } from '../backing/storage.js';
import { type BlockDevice, type BlockDeviceFastPaths, type ChangeMap, type IoFlags, isIncomingParts, type SendSink, type WriteData } from './block-device.js';
import { gathered } from './incoming-parts.js';
import type { Device } from './device.js';
import { RequestGate } from './request-gate.js';
import type { DiffArea } from './diff-area.js';
import type { DiffStorage } from './diff-storage.js';
import type { SplicePipe } from '../os/splice.js';

/**
 * blksnap's snapimage. Reads come from the kept originals and the device; writes land on the kept
 * copy in the difference storage (never on the device) and mark both CBT maps of the device, so
 * the next backup copies what was changed in the image too.
 */
export class SnapImage implements BlockDevice {
  readonly name: string;
  readonly size: number;
  readonly isReadOnly = false;
  /** A trim discards whole chunks (a backup letting go of what it read: backup_create --discard-after-read). */
  readonly canTrim = true;
  /**
   * Image reads may answer at once, or go by sendfile from untouched chunks (a write to those waits
   * until the client has read them: an image's bytes never change once read); its writes land on
   * kept copies, never as a stream.
   */
  readonly fast: BlockDeviceFastPaths = {
    readNow: (offset, into) => this.readNow(offset, into),
    sendTo: (sink, prefix, offset, length) => this.sendTo(sink, prefix, offset, length),
    spliceTo: (pipe, offset, length) => this.spliceTo(pipe, offset, length),
    sharedReads: () => {
      const origin = this.device.sharedReads();
      return origin ? { fd: origin.fd, image: this.#area.readGate } : null;
    },
  };
  readonly device: Device;
  #area: DiffArea;
  #diff: DiffStorage;
  #gate: RequestGate;
  readonly onClose: RequestGate['onClose'];

  constructor(name: string, device: Device, area: DiffArea, diff: DiffStorage) {
    this.name = name;
    this.device = device;
    this.size = area.chunks.capacity;
    this.#area = area;
    this.#diff = diff;
    this.#gate = new RequestGate(() => `the snapshot image of ${device.name}`, () => this.size, () => false);
    this.onClose = this.#gate.onClose;
  }

  read(offset: number, into: Uint8Array): Promise<void> {
    return this.#gate.around('image read', offset, into.length, () => this.#area.readImage(offset, into));
  }

  readNow(offset: number, into: Uint8Array): boolean {
    return this.#gate.during('image read', offset, into.length, () => this.#area.readImageNow(offset, into));
  }

  sendTo(sink: SendSink, prefix: Uint8Array, offset: number, length: number): number | null {
    return this.#gate.during('image read', offset, length, () => this.#area.sendImageNow(sink, prefix, offset, length));
  }

  spliceTo(pipe: SplicePipe, offset: number, length: number): Promise<void> | null {
    return this.#gate.aroundUnlessDeclined('image read', offset, length, () => this.#area.spliceImage(offset, length, pipe));
  }

  /** Lands on kept copies: whole data at once, pieces joined, parts gathered first. */
  write(offset: number, data: WriteData, flags: IoFlags): Promise<void> {
    if (isIncomingParts(data) || Array.isArray(data)) return gathered(data).then((whole) => this.write(offset, whole, flags));
    return this.#writeWhole(offset, data as Uint8Array);
  }

  #writeWhole(offset: number, data: Uint8Array): Promise<void> {
    this.#gate.enterWrite('image write', offset, data.length);
    let recorded: Promise<void> | undefined;
    try {
      recorded = this.device.tracker.markBoth(offset, data.length);
    } catch (e) {
      this.#gate.leave();
      throw e;
    }
    // The block now differs from what a backup of this image read: recorded as changed before the write is answered.
    const written = this.#area.writeImage(offset, data);
    return (recorded ? Promise.all([recorded, written]).then(() => undefined) : written).finally(() => this.#gate.leave());
  }

  async zero(offset: number, length: number, _flags: IoFlags): Promise<void> {
    const zeroes = new Uint8Array(Math.min(length, buffers.zeroPieceBytes));
    for (let done = 0; done < length; done += zeroes.length) {
      await this.#writeWhole(offset + done, zeroes.subarray(0, Math.min(zeroes.length, length - done)));
    }
  }

  /**
   * Discards the whole chunks of the range: their kept originals' space goes back to the difference
   * storage, untouched ones will never be copied, and both read as zeros from now on. It is a release,
   * not a change: the CBT maps are not marked (a backup discards what it has read, and the next
   * backup need not read it again).
   */
  trim(offset: number, length: number): Promise<void> {
    return this.#gate.around('image trim', offset, length, () => this.#area.discardImage(offset, length));
  }

  flush(): Promise<void> {
    return this.#gate.around('image flush', 0, 0, () => this.#diff.flush());
  }

  extents(offset: number, length: number, maximumCount: number): Promise<Extent[]> {
    return this.#gate.around('image block status', offset, length, () => this.#area.imageExtents(offset, length, maximumCount));
  }

  async cache(offset: number, length: number): Promise<void> {
    this.#gate.enter('image cache', offset, length);
    this.#gate.leave();
  }

  /** The read map: the device's changes as they stood at the take. */
  changes(): ChangeMap | null {
    const tracker = this.device.tracker;
    return tracker.isTracking ? tracker.cbt.changeMap('read') : null;
  }

  /** Refuses new I/O, waits for what is in flight (the store's descriptor must outlive it), tells front ends. */
  async close(): Promise<void> {
    await this.#gate.close();
  }
}
