// Owns blksnapd's --help text: the daemon prints it, and the man page and the config file's option names are made from it.

export const DAEMON_HELP = `Usage: blksnapd [options]

The blksnap daemon: owns attached devices, tracks their changes (CBT), serves them over NBD,
and answers the control API that the blksnap tool and library use.

Options:
  --control PATH       control socket (default: $RUNTIME/control.sock, mode 0600)
  --nbd PATH           NBD Unix socket (default: $RUNTIME/nbd.sock, mode 0600)
  --listen HOST:PORT   also serve NBD over TCP (off unless given); needs TLS (--tls-certs or
                       --tls-psk) unless --tls off is given
  --tls on|off         TLS on the TCP listener (default on: a client must STARTTLS first)
  --tls-certs DIR      X.509 credentials in QEMU's layout: ca-cert.pem, server-cert.pem,
                       server-key.pem
  --tls-psk FILE       pre-shared keys in nbdkit's format: one username:hexkey a line
  --tls-verify-peer    with --tls-certs: require a client certificate signed by ca-cert.pem
                       and unexpired; any other is refused before the first option
  --tls-authz FILE     which client may open which export over TLS: JSON rules
                       {"rules": [{"dn": SUBJECT | "psk": IDENTITY, "exports": [GLOB...],
                       "access": "ro" | "rw"}]}, the first match decides; everything else
                       is refused (NBD_REP_ERR_POLICY). Needs --tls-verify-peer or --tls-psk
  --max-connections N  NBD connections at once on each listener (the Unix socket and TCP
                       each have their own); more are closed at once (default 256)
  --handshake-timeout SECONDS
                       an NBD client that has not finished its handshake by then is
                       disconnected (default 10)
  --idle-timeout SECONDS
                       a TCP client with no request in flight that sends nothing for this
                       long after its handshake is disconnected (default 300; 0: never)
  --low-space-warn PERCENT
                       a snapshot gets a low_space event when its difference storage fills
                       past this share of its limit, before no_space (default 90)
  --hooks-dir DIR      application-consistency hooks: its executables run in name order with
                       'freeze' before each take's filesystem freeze and in reverse order with
                       'thaw' after it; BLKSNAP_SNAPSHOT_ID, BLKSNAP_DEVICES and
                       BLKSNAP_BLOCK_DEVICES say what is taken. A freeze hook that fails aborts
                       the take (those frozen are thawed). Default /etc/blksnap/hooks.d
  --hook-timeout SECONDS
                       a hook running longer is killed and counts as failed (default 30)
  --control-group GROUP
                       members of GROUP may use the control socket too (mode 0660); without
                       it only root and the daemon's own user may
  --state-dir DIR      where the daemon keeps its state: the attached devices and their change
                       tracking, which come back at the next start, and its pid file
                       (default: $RUNTIME)
  --cbt-region SIZE    a write-intent region: before the first write into a region since the
                       last save, the region is recorded durably; after a crash every recorded
                       region is marked as changed (default 4M; N[K|M|G])
  --cbt-sync-interval SECONDS
                       how often a written-to CBT map is saved, so that regions not written
                       since leave the write-intent record (default 5)
  --attach PATH[=NAME] attach a file or block device at start; may be repeated
  --loop               give every attached device (and its snapshot images) a Linux block
                       device /dev/loopN, as attach --loop does
  --loop-via fuse|nbdfuse
                       how /dev/loopN reaches a device: fuse (default) serves the loop
                       device's file from the daemon's own FUSE server; nbdfuse runs
                       Debian's nbdfuse over the daemon's NBD export (one hop more)
  --fuse-io-uring on|off
                       on (default): the FUSE server takes the kernel's requests through
                       io_uring (Linux 6.14+ with CONFIG_FUSE_IO_URING; turns the fuse
                       module's enable_uring on); off, or where the kernel or a seccomp
                       profile refuses io_uring: read(2) and write(2) on /dev/fuse, cached
                       reads of 64 KiB and more spliced from the page cache
  --cow-copy direct|cached
                       how copy-on-write keeps a chunk's original in the difference storage:
                       direct (default) writes it with O_DIRECT, past the page cache, as
                       blksnap's module does (no new page-cache pages per copy; kept chunks
                       are read back from the disk the first time); cached copies it page
                       cache to page cache (copy_file_range). Where a filesystem refuses
                       O_DIRECT, cached
  --cached-read-max BYTES
                       reads up to this size are first served from the page cache on the
                       event loop (preadv2 RWF_NOWAIT: never waits for a disk) (default 1048576)
  --sendfile-min BYTES NBD reads of this size and more from an attached device whose range is
                       in the page cache are sent by the kernel (sendfile: no copy in the
                       daemon; a snapshot image's untouched chunks on a Unix socket too), and
                       a snapshot image's untouched chunks not in the page cache (up to 1 MiB)
                       go from the disk through a pipe (splice) (default 65536; 0 turns both off)
  --busy-poll-us N     an NBD client sending one request at a time is waited for by spinning
                       up to N µs after each answer instead of sleeping, while its requests come
                       that quickly and no other client is sending (default 50; 0 turns it off)
  --sync-write-max BYTES
                       writes up to this size use a synchronous pwrite on the event loop
                       instead of the thread pool, while the kernel's dirty pages stay far
                       below the point where it throttles writers (default 1048576; 0 turns
                       it off; see docs/performance.md)
  --config FILE        options from a file, one per line: "option = value" or "option" for a
                       flag, # starts a comment; the command line wins (default
                       /etc/blksnap/blksnapd.conf when it exists)
  --log-format text|json
                       one line of text per event (default), or one JSON object per line
                       with time, program and message
  --verbose            also log each NBD and control connection as it opens and closes
  --exit-with-parent   shut down, as on SIGTERM, when the process that started blksnapd exits
                       (as nbdkit's option: a test harness or script that dies, even by
                       kill -9, leaves no daemon, mount or loop device behind)
  --metrics [HOST:]PORT
                       serve Prometheus metrics at http://HOST:PORT/metrics: NBD requests,
                       bytes and latency per export, CBT and snapshot state, connections
                       (host 127.0.0.1 unless given: loopback only by default)
  --help               this text

$RUNTIME is $BLKSNAP_RUNTIME_DIR, else /run/blksnap for root, else $XDG_RUNTIME_DIR/blksnap.
The daemon exits cleanly on SIGTERM and SIGINT.
`;
