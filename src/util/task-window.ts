// Owns a bounded window of tasks in flight: a producer adds work and waits while the window is full,
// so memory stays bounded however much work there is; the first failure comes back to the producer.

export class TaskWindow {
  #limit: number;
  #running = new Set<Promise<void>>();

  constructor(limit: number) {
    this.#limit = Math.max(1, limit);
  }

  /** Adds a task; resolves once there is room for the next one, rejects with a task's failure. */
  async add(task: Promise<void>): Promise<void> {
    this.#running.add(task);
    void task.then(() => this.#running.delete(task), () => undefined);
    while (this.#running.size >= this.#limit) await Promise.race(this.#running);
  }

  /** Resolves when every task added is done; rejects with the first failure. */
  async drain(): Promise<void> {
    await Promise.all(this.#running);
  }
}
