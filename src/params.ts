// Owns the tunables: blksnap's module parameters and the daemon's own limits, with defaults and bounds.

/** blksnap's CBT parameters (module/params.c). */
export const tracking = {
  /** The smallest tracking block: 2^16 bytes. */
  blockMinimumShift: 16,
  /** The tracking block doubles while the count exceeds this. */
  blockMaximumCount: 2_097_152,
  /** ... but never beyond 2^26 bytes. */
  blockMaximumShift: 26,
} as const;

/** NBD front-end limits. */
export const nbd = {
  /** Advertised block sizes: any byte alignment works, 4 KiB is best, 32 MiB is the largest request. */
  minimumBlockSize: 1,
  preferredBlockSize: 4096,
  maximumBlockSize: 32 * 1024 * 1024,
  /** An option's data larger than this ends the handshake: no real client sends more than names. */
  maximumOptionLength: 64 * 1024,
  /** Reading from a connection pauses while this many requests or bytes are in flight. */
  maximumRequestsInFlight: 128,
  maximumBytesInFlight: 64 * 1024 * 1024,
  /** Extents returned by one BLOCK_STATUS reply at most. */
  maximumExtentsPerReply: 4096,
  /** A connection whose handshake has not reached transmission by then is closed (SPEC §10). */
  handshakeTimeoutMs: 10_000,
  /** Connections at once per server, by default (--max-connections); more are closed at accept. */
  maximumConnections: 256,
} as const;

/** Control API limits. */
export const control = {
  /** A request line longer than this closes the control connection. */
  maximumLineLength: 1024 * 1024,
  /** Control connections at once; more are closed at accept. */
  maximumConnections: 256,
  /** Largest piece of a CBT map one cbt.read returns. */
  maximumCbtReadLength: 16 * 1024 * 1024,
} as const;

/** Sector size used by blksnap's ranges (markdirtyblock, events). */
export const SECTOR_SIZE = 512;

/** blksnap's snapshot parameters (module/params.c), overridable per snapshot for tests and tuning. */
export const snapshot = {
  /** Chunks are 2^18 bytes at least ... */
  chunkMinimumShift: 18,
  /** ... doubling while a device would have more than 2^40 chunks ... */
  chunkMaximumCountShift: 40,
  /** ... but never beyond 2^26 bytes. */
  chunkMaximumShift: 26,
  /** Chunks read and waiting to be stored, at most, per device; writers wait past that. */
  chunkMaximumInQueue: 256,
  /** The difference storage file grows in steps of this many bytes. */
  diffStorageMinimum: 1024 * 1024 * 1024,
  /** Events kept per snapshot while nobody reads them; the oldest are dropped past this. */
  maximumQueuedEvents: 1024,
} as const;
