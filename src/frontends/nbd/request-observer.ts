// Owns what the NBD front end tells about each request once it is answered, for metrics: its command,
// bytes, time from arrival to reply, and whether it failed. The front end knows no metrics library.

export interface RequestObserver {
  /** `type` is the NBD command; `bytes` counts only reads and writes. */
  done(type: number, bytes: number, seconds: number, isError: boolean): void;
}

/** Makes the observer of one export's requests (null: none). */
export type RequestObservers = (exportName: string) => RequestObserver | null;
