// Owns the library's Session (blksnap's ISession): create and take a snapshot, watch its events, destroy on close.
import * as api from '../control/protocol.js';
import type { BlksnapClient } from './connection.js';

export interface SessionOptions extends Omit<api.SnapshotCreateParams, 'devices'> {
  devices: string[];
  /** Called for every event while the session lives. */
  onEvent?: (event: api.SnapshotEventResult) => void;
}

/**
 * A taken snapshot for as long as the session lives. Events are watched in the background: a
 * `corrupted` event sets `error`, so a backup can check it before trusting what it read.
 */
export class Session {
  readonly client: BlksnapClient;
  readonly id: string;
  readonly events: api.SnapshotEventResult[] = [];
  #isClosed = false;
  #watching: Promise<void>;
  #onEvent: ((event: api.SnapshotEventResult) => void) | undefined;

  private constructor(client: BlksnapClient, id: string, onEvent: SessionOptions['onEvent']) {
    this.client = client;
    this.id = id;
    this.#onEvent = onEvent;
    this.#watching = this.#watch();
  }

  /** Creates the snapshot, takes it and starts watching its events. */
  static async create(client: BlksnapClient, options: SessionOptions): Promise<Session> {
    const { onEvent, ...params } = options;
    const { id } = await client.call(api.SnapshotCreate, params);
    try {
      await client.call(api.SnapshotTake, { id });
    } catch (e) {
      await client.call(api.SnapshotDestroy, { id }).catch(() => {});
      throw e;
    }
    return new Session(client, id, onEvent);
  }

  /** The NBD URI of a device's image. */
  async imageUri(device: string): Promise<string> {
    const info = await this.client.call(api.SnapshotGetInfo, { device });
    if (!info.image) throw new Error(`device ${device} has no image in snapshot ${this.id}`);
    return info.image.uri;
  }

  /** The first corrupted event seen, or null. */
  get error(): api.SnapshotEventResult | null {
    return this.events.find((e) => e.code === 'corrupted') ?? null;
  }

  /** Destroys the snapshot; the images go away, tracking goes on. */
  async close(): Promise<void> {
    if (this.#isClosed) return;
    this.#isClosed = true;
    await this.client.call(api.SnapshotDestroy, { id: this.id });
    await this.#watching;
  }

  async #watch(): Promise<void> {
    while (!this.#isClosed) {
      try {
        const event = await this.client.call(api.SnapshotWaitEvent, { id: this.id, timeoutMs: 1000 });
        if (event.code === 'timeout') continue;
        this.events.push(event);
        this.#onEvent?.(event);
      } catch {
        return; // destroyed (ESRCH) or the connection closed
      }
    }
  }
}
