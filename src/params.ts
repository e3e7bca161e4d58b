// Owns the tunables: blksnap's module parameters and the daemon's own limits, with defaults and bounds.

/** blksnap's CBT parameters (module/params.c). */
export const tracking = {
  /** The smallest tracking block: 2^16 bytes. */
  blockMinimumShift: 16,
  /** The tracking block doubles while the count exceeds this. */
  blockMaximumCount: 2_097_152,
  /** ... but never beyond 2^26 bytes. */
  blockMaximumShift: 26,
  /** Default write-intent region (--cbt-region): a crash marks at most this much around each write of its last save interval. */
  writeIntentRegion: 4 * 1024 * 1024,
  /** Default save interval of a written-to map (--cbt-sync-interval). */
  syncIntervalMs: 5000,
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
  /** A connection whose handshake has not reached transmission by then is closed. */
  handshakeTimeoutMs: 10_000,
  /** Connections at once per listener, by default (--max-connections); more are closed at accept. */
  maximumConnections: 256,
  /** A TCP connection past its handshake, idle (nothing in flight, nothing sent) this long, is closed (--idle-timeout). */
  idleTimeoutMs: 300_000,
} as const;

/**
 * How the NBD front end moves bytes; each value was chosen by measurement (docs/performance.md).
 */
export const nbdIo = {
  /** Below this a copy costs less than the page-cache probe and the extra system call of sendfile (--sendfile-min default). */
  sendFileMinimum: 64 * 1024,
  /** Write payloads from this size on are received straight into their own buffer. */
  directPayloadMinimum: 128 * 1024,
  /** A streamed write lands its payload in parts of at least this size (and its last part). */
  streamPartMinimum: 64 * 1024,
  /** A streamed write whose client sends nothing for this long stops streaming: it must not hold a take back. */
  streamStallMs: 1000,
  /** Writes from this size on go to the thread pool while the client has sent more requests. */
  backgroundWriteMinimum: 256 * 1024,
  /**
   * What a reply cut short by a full socket queues to learn when the socket has room again. The
   * socket wakes its writer with room for far more, so the piece only needs to be small: it is
   * the one part of the reply read and copied (docs/performance.md, design choices).
   */
  waitPieceBytes: 4 * 1024,
  /**
   * Image reads once past the page cache up to this size go disk → pipe → socket by splice, with no
   * copy in the daemon; pipes of this size are kept for them, at most `splicePipesKept`, and at most
   * `splicePipesInUse` at once (more reads go by copy: each pipe is two descriptors).
   */
  splicePipeBytes: 1024 * 1024,
  splicePipesKept: 64,
  splicePipesInUse: 256,
  /**
   * A client that sends its next request within twice this many µs of the last answer (one request
   * at a time), while no other connection is receiving, is waited for by spinning this long, not by
   * sleeping: a sleep and wake-up of the event loop cost more than the gap on a VM
   * (docs/performance.md). 0: never spin (--busy-poll-us).
   */
  busyPollMicroseconds: 50,
  /** The socket's send buffer: two maximum-size replies' worth, so large reads leave in one piece. */
  sendBufferBytes: 8 * 1024 * 1024,
  /**
   * Reads that are not payloads go into windows of one arena of this size: many small requests
   * share an allocation (a fresh 64 KiB buffer per read, kept alive by one request, costs the
   * garbage collector dearly) ...
   */
  receiveArenaBytes: 4 * 1024 * 1024,
  /** ... a read at most this large ... */
  receiveWindowBytes: 256 * 1024,
  /** ... and a new arena when less than this is left. */
  receiveSmallestWindowBytes: 16 * 1024,
} as const;

/** The in-daemon FUSE server behind /dev/loopN. */
export const fuse = {
  /** The device's size does not change while it is attached: the kernel may cache attributes long. */
  attributeValidSeconds: 60,
  /** Replies up to this size are written on the event loop; larger ones by the thread pool (the kernel's copy runs on the other core). */
  syncReplyMaximum: 64 * 1024,
  /** A ring thread answers cached READs up to this size itself; larger ones go to the daemon's thread. */
  ringCachedReadMaximum: 1024 * 1024,
  /**
   * Cached READs from this size on a reader answers by splice (file → pipe → /dev/fuse: one copy
   * less than read and write; 0 turns it off). Smaller ones cost more in the extra system calls.
   */
  readerSpliceMinimum: 64 * 1024,
  /** Each reader's pipe: as large as an unprivileged pipe may be (fs.pipe-max-size's default). */
  readerPipeBytes: 1024 * 1024,
  /**
   * Largest READ/WRITE without rings. A 1 MiB reply and its header take 257 pipe buffers, one more
   * than a 1 MiB pipe has; at 512 KiB every read can be spliced (1 MiB ones would be copied), and
   * the loop device's 1 MiB requests arrive as two, which costs nothing measurable (docs/performance.md).
   */
  readWriteTransferMaximum: 512 * 1024,
} as const;

/** Buffers and pieces. */
export const buffers = {
  /** Small buffers are cut from slabs of this size: a 4 KiB reply is over Node's own pool limit and would cost a malloc each. */
  slabBytes: 1024 * 1024,
  /** Zeroes written where a store cannot deallocate or zero a range in place, this much per write. */
  zeroPieceBytes: 1024 * 1024,
} as const;

/**
 * When a page-cache write may run synchronously on the event loop (os/writeback.ts): only while the
 * kernel is far from throttling writers, and never right after one was slow.
 */
export const writebackWatch = {
  /** Sampling period of /proc/vmstat: at 2 GB/s, 200 MB can be dirtied between two looks. */
  sampleMs: 100,
  /** Synchronous writes only while dirty pages stay below this share of the freerun ceiling. */
  freerunShare: 0.5,
  /** A synchronous write slower than this was throttled or waited ... */
  slowWriteMs: 10,
  /** ... and the thread pool takes writes for this long. */
  backOffMs: 5000,
} as const;

/** The difference storage's file: image reads of kept chunks try the page cache first; copies through the page cache (--cow-copy cached) are synchronous while the kernel is far from throttling. */
export const diffStorageIo = {
  cachedReadMaximum: 1024 * 1024,
  syncWriteMaximum: 1024 * 1024,
  /**
   * Copy-on-write by splice (originals' page-cache pages through a pipe into a direct write): pipes
   * kept between copies, and at most in use at once (each is two descriptors); more copies go
   * through memory.
   */
  copyPipesKept: 16,
  copyPipesInUse: 64,
} as const;

/** Control API limits. */
export const control = {
  /** A request line longer than this closes the control connection. */
  maximumLineLength: 1024 * 1024,
  /** Control connections at once; more are closed at accept. */
  maximumConnections: 256,
  /** Requests of one connection running at once (snapshot.waitEvent may wait for a day); later lines wait. */
  maximumRequestsInFlight: 64,
  /** No new request of a connection starts while this many reply bytes wait for its client to read them. */
  maximumUnreadReplyBytes: 1024 * 1024,
  /** The longest snapshot.waitEvent. */
  maximumWaitMs: 24 * 3600 * 1000,
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
  /** Consecutive chunks one write touches are kept by one copy of up to this many bytes. */
  copyRunMaximumBytes: 1024 * 1024,
  /** The difference storage file grows in steps of this many bytes. */
  diffStorageMinimum: 1024 * 1024 * 1024,
  /** A low_space event once the difference storage fills past this share of its limit (blksnapd --low-space-warn). */
  lowSpaceShare: 0.9,
  /** Events kept per snapshot while nobody reads them; the oldest are dropped past this. */
  maximumQueuedEvents: 1024,
} as const;

/** The backup repository and attached backups. */
export const backup = {
  /** Worker threads a daemon uses to load the chunks of attached backups. */
  loadWorkers: 2,
  /** Decompressed chunks an attached backup keeps in memory. */
  cacheBytes: 64 * 1024 * 1024,
  /** An attached backup loads the chunks of one read (consecutive ones) in one worker task, up to this many bytes. */
  loadTaskBytes: 1024 * 1024,
  /** A read of an attached backup that follows the previous one starts loading this many bytes after it. */
  readAheadBytes: 4 * 1024 * 1024,
  /** NBD connections a backup reads an image over, and requests in flight on each. */
  connections: 4,
  requestsPerConnection: 8,
  /** Bytes one read request asks for at most (whole chunks). */
  readBytes: 1024 * 1024,
  /** Places in the device a backup reads at once, each through its own share (image-reader inFronts). */
  readFronts: 4,
  /**
   * Bytes of the device one restore task writes at most (whole chunks): the disk bounds a restore,
   * and fewer, larger writes keep it busier (docs/performance.md, design choices).
   */
  restoreTaskBytes: 4 * 1024 * 1024,
  /**
   * Hash-and-store workers of backup_create per core: a worker waits while its pack's 4 MiB
   * O_DIRECT writes reach the disk, and with one per core the cores idled then (docs/performance.md,
   * design choices).
   */
  createWorkersPerCore: 2,
  /**
   * zstd level by default (backup_init --compress zstd:LEVEL). On chunks of 64–256 KiB level 2 stores
   * within 2 % of level 3 (text, libraries) at 1.35–1.5× its speed (docs/performance.md).
   */
  zstdLevel: 2,
  /** Tries of one S3 request (the SDK's retries with backoff on 5xx, throttling and resets). */
  s3Attempts: 6,
  /**
   * A larger object is uploaded in parts of this size (multipart); memory per upload: one part. A
   * backup's worker sends each part of its pack as it fills, so this is also its memory for packs.
   */
  s3PartBytes: 8 * 1024 * 1024,
  /** Requests sending a backup's parts at once (a single-node gateway took no more from more). */
  s3Uploads: 4,
  /** Bytes of a backup's parts made but not yet sent before its reads wait. */
  s3UnsentBytes: 48 * 1024 * 1024,
  /**
   * A pack in a bucket is closed (and uploaded, while the backup goes on reading) at this size: a
   * worker's pack of the default 512 MiB waited for the end of most backups.
   */
  s3PackBytes: 64 * 1024 * 1024,
  /** Bytes of a pack a restore from a bucket reads with one ranged request at most. */
  s3RangeBytes: 8 * 1024 * 1024,
  /** Bytes of records a restore does not need that a ranged read still reads through (cheaper than another request). */
  s3RangeGap: 256 * 1024,
  /** A lock object not refreshed for this long no longer binds (its holder died or lost the store). */
  lockLeaseMs: 120_000,
  /** How often a holder refreshes its lock object. */
  lockRefreshMs: 30_000,
  /**
   * How far apart the clocks of hosts sharing a repository may be (NTP keeps them far closer; S3
   * refuses requests signed 15 minutes off): a session or lock counts as live this much past its lease.
   */
  clockMarginMs: 300_000,
  /** A prune deletes what it marked only after this long (backup_prune --prune-grace). */
  pruneGraceMs: 24 * 3_600_000,
  /** Pause between tries while the lock is held (randomised ±50 %, so racing clients part). */
  lockRetryMs: 1000,
} as const;
