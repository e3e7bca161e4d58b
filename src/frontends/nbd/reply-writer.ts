// Owns putting NBD replies on a connection's socket: one write per reply, corked while more are
// coming, and held back while a reply sent partly by the kernel (sendfile) is being finished or
// while the client must read what the socket holds.
import type { Socket } from 'node:net';

export class ReplyWriter {
  #socket: Socket;
  /** Whether replies completing now should wait for the end of this event-loop turn (see send). */
  #isMoreComing: () => boolean;
  #isCorked = false;
  /**
   * Replies waiting behind a read reply that is partly on the wire (its header and first bytes
   * went by sendfile, the rest is being read): nothing may come between them. Null when none waits.
   */
  #held: Array<{ reply: Buffer; sent: (() => void) | undefined }> | null = null;
  /** hold() calls not yet released: a reply being finished and a wait for the client to read may overlap. */
  #holds = 0;

  constructor(socket: Socket, isMoreComing: () => boolean) {
    this.#socket = socket;
    this.#isMoreComing = isMoreComing;
  }

  /** True while replies are held behind one being finished: the client is not reading fast enough. */
  get isHolding(): boolean {
    return this.#held !== null;
  }

  /** The kernel may write to the socket itself only when nothing of ours waits to go before it. */
  get isIdle(): boolean {
    const socket = this.#socket;
    return this.#held === null && socket.writableLength === 0 && !socket.destroyed;
  }

  /**
   * Sends one whole reply; `sent` runs once the socket no longer needs the buffer. While other
   * requests are in flight, replies that complete in the same turn of the event loop leave in one
   * writev: the socket is corked until the turn's promise jobs have run. So are replies while more
   * requests wait in the receive queue (cached reads complete as they are parsed). A lone request's
   * reply leaves at once: corking it only adds latency (docs/performance.md).
   */
  send(b: Buffer, sent?: () => void): void {
    const socket = this.#socket;
    if (socket.destroyed) return;
    if (this.#held !== null) {
      this.#held.push({ reply: b, sent });
      return;
    }
    if (!this.#isCorked && this.#isMoreComing()) {
      this.#isCorked = true;
      socket.cork();
      process.nextTick(() => {
        this.#isCorked = false;
        socket.uncork();
      });
    }
    if (sent) socket.write(b, sent);
    else socket.write(b);
  }

  /**
   * Every reply sent from now on waits until release(): a reply is being finished piece by piece,
   * or the client must read what the socket holds. Holds nest.
   */
  hold(): void {
    if (this.#holds++ === 0) this.#held = [];
  }

  /** Sends what was held, in order, once every hold is released. */
  release(): void {
    if (this.#holds === 0 || --this.#holds > 0) return;
    const held = this.#held ?? [];
    this.#held = null;
    for (const r of held) this.send(r.reply, r.sent);
  }

  /** Queues bytes of the reply being finished (past any hold); resolves when the kernel has taken them. */
  writeAndWait(b: Buffer): Promise<void> {
    return new Promise((resolve, reject) => {
      this.#socket.write(b, (e) => (e ? reject(e) : resolve()));
    });
  }
}
