// Owns how long repository work reports where it is: a phase with a byte total, bytes done, notes.
// The CLI draws it as a bar on a terminal (cli/progress-bar.ts); the library's callers may ignore it.

export interface Progress {
  /** A phase begins: `label`, `total` bytes to go through. */
  start(label: string, total: number): void;
  advance(bytes: number): void;
  /** Something the user should know, said once (a wait, a fallback to a full read). */
  note(text: string): void;
  /** The phase is over. */
  done(): void;
}
