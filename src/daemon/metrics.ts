// Owns the daemon's Prometheus metrics (blksnapd --metrics): per export the NBD requests (count,
// errors, bytes, latency histogram), per device its size and CBT state, per snapshot its difference
// storage and state, the NBD connections, and the process's own figures. Served over HTTP in the
// Prometheus text format, through prom-client; values that already exist are read at scrape time.
import * as http from 'node:http';
import type { AddressInfo } from 'node:net';
import client from 'prom-client';
import type { Registry as Devices } from '../core/registry.js';
import * as w from '../nbd/wire.js';
import type { RequestObserver } from '../frontends/nbd/request-observer.js';

const COMMANDS: Record<number, string> = {
  [w.NBD_CMD_READ]: 'read',
  [w.NBD_CMD_WRITE]: 'write',
  [w.NBD_CMD_FLUSH]: 'flush',
  [w.NBD_CMD_TRIM]: 'trim',
  [w.NBD_CMD_CACHE]: 'cache',
  [w.NBD_CMD_WRITE_ZEROES]: 'write_zeroes',
  [w.NBD_CMD_BLOCK_STATUS]: 'block_status',
};

export interface MetricsOptions {
  devices: Devices;
  nbdConnections: () => number;
  /** Kernel block devices (/dev/loopN over the FUSE front end) exposed now. */
  blockDevices: () => number;
}

export class Metrics {
  readonly registry = new client.Registry();
  #requests: client.Counter<'export' | 'command'>;
  #errors: client.Counter<'export' | 'command'>;
  #bytes: client.Counter<'export' | 'command'>;
  #latency: client.Histogram<'export' | 'command'>;
  #server: http.Server | null = null;

  constructor(options: MetricsOptions) {
    const registers = [this.registry];
    client.collectDefaultMetrics({ register: this.registry, prefix: 'blksnapd_' });
    this.#requests = new client.Counter({ name: 'blksnap_nbd_requests_total', help: 'NBD requests answered, by export and command', labelNames: ['export', 'command'], registers });
    this.#errors = new client.Counter({ name: 'blksnap_nbd_request_errors_total', help: 'NBD requests answered with an error', labelNames: ['export', 'command'], registers });
    this.#bytes = new client.Counter({ name: 'blksnap_nbd_bytes_total', help: 'bytes read and written over NBD', labelNames: ['export', 'command'], registers });
    this.#latency = new client.Histogram({
      name: 'blksnap_nbd_request_duration_seconds',
      help: 'time from a request arriving to its reply being sent',
      labelNames: ['export', 'command'],
      buckets: [0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1],
      registers,
    });
    const gauge = (name: string, help: string, labelNames: string[], collect: (g: client.Gauge) => void): void => {
      new client.Gauge({ name, help, labelNames, registers, collect() { this.reset(); collect(this); } });
    };
    const { devices } = options;
    gauge('blksnap_nbd_connections', 'NBD connections open now', [], (g) => g.set(options.nbdConnections()));
    gauge('blksnap_block_devices', 'kernel block devices (/dev/loopN) the FUSE front end serves now', [], (g) => g.set(options.blockDevices()));
    gauge('blksnap_device_size_bytes', 'size of each attached device', ['device'], (g) => {
      for (const d of devices.devices()) g.set({ device: d.name }, d.size);
    });
    gauge('blksnap_cbt_changes_number', "a device's CBT changes number (the last snapshot taken)", ['device'], (g) => {
      for (const d of devices.devices()) if (d.tracker.isTracking) g.set({ device: d.name }, d.tracker.cbt.previousNumber);
    });
    gauge('blksnap_cbt_generation_info', "a device's CBT generation and where it came from (value 1)", ['device', 'generation_id', 'origin'], (g) => {
      for (const d of devices.devices()) if (d.tracker.isTracking) g.set({ device: d.name, generation_id: d.tracker.cbt.generationId, origin: d.tracker.origin.kind }, 1);
    });
    gauge('blksnap_cbt_write_intent_regions', 'write-intent regions recorded now (what a crash would mark)', ['device'], (g) => {
      for (const d of devices.devices()) if (d.tracker.intent) g.set({ device: d.name }, d.tracker.intent.recordedCount);
    });
    gauge('blksnap_snapshot_diff_storage_used_bytes', "bytes of a snapshot's difference storage holding originals", ['snapshot'], (g) => {
      for (const s of devices.snapshots()) if (s.diffStorage) g.set({ snapshot: s.id }, s.diffStorage.used);
    });
    gauge('blksnap_snapshot_diff_storage_peak_bytes', "the most bytes a snapshot's difference storage has held", ['snapshot'], (g) => {
      for (const s of devices.snapshots()) if (s.diffStorage) g.set({ snapshot: s.id }, s.diffStorage.peak);
    });
    gauge('blksnap_snapshot_diff_storage_limit_bytes', "the limit of a snapshot's difference storage", ['snapshot'], (g) => {
      for (const s of devices.snapshots()) if (s.diffStorage) g.set({ snapshot: s.id }, s.diffStorage.limit);
    });
    gauge('blksnap_snapshot_diff_storage_low_space', "1 once a snapshot's difference storage has filled past its warning share (--low-space-warn; the low_space event)", ['snapshot'], (g) => {
      for (const s of devices.snapshots()) if (s.diffStorage) g.set({ snapshot: s.id }, s.diffStorage.isLowOnSpace ? 1 : 0);
    });
    gauge('blksnap_snapshot_state', "a snapshot's phase (value 1), and whether it is corrupted", ['snapshot', 'phase', 'corrupted'], (g) => {
      for (const s of devices.snapshots()) g.set({ snapshot: s.id, phase: s.phase, corrupted: s.error ? 'true' : 'false' }, 1);
    });
  }

  /** The observer of one export's requests: label sets made once, so a request costs a few additions. */
  observer(exportName: string): RequestObserver {
    const children = new Map<number, { requests: client.Counter.Internal; errors: client.Counter.Internal; bytes: client.Counter.Internal; latency: client.Histogram.Internal<'export' | 'command'> }>();
    return {
      done: (type, bytes, seconds, isError) => {
        let c = children.get(type);
        if (!c) {
          const labels = { export: exportName, command: COMMANDS[type] ?? `command_${type}` };
          c = { requests: this.#requests.labels(labels), errors: this.#errors.labels(labels), bytes: this.#bytes.labels(labels), latency: this.#latency.labels(labels) };
          children.set(type, c);
        }
        c.requests.inc();
        if (isError) c.errors.inc();
        if (bytes > 0) c.bytes.inc(bytes);
        c.latency.observe(seconds);
      },
    };
  }

  /** Serves GET /metrics on [HOST:]PORT (host 127.0.0.1 unless given); resolves with the address. */
  async listen(address: string): Promise<AddressInfo> {
    const colon = address.lastIndexOf(':');
    const host = colon > 0 ? address.slice(0, colon).replace(/^\[|\]$/g, '') : '127.0.0.1';
    const port = Number(colon >= 0 ? address.slice(colon + 1) : address);
    const server = http.createServer((req, res) => {
      if (req.method !== 'GET' || req.url?.split('?')[0] !== '/metrics') {
        res.writeHead(404, { 'content-type': 'text/plain' }).end('not found: try /metrics\n');
        return;
      }
      this.registry.metrics().then(
        (text) => res.writeHead(200, { 'content-type': this.registry.contentType }).end(text),
        (e: unknown) => res.writeHead(500, { 'content-type': 'text/plain' }).end(`${String(e)}\n`),
      );
    });
    await new Promise<void>((resolve, reject) => {
      server.once('error', reject);
      server.listen(port, host, () => {
        server.off('error', reject);
        resolve();
      });
    });
    this.#server = server;
    return server.address() as AddressInfo;
  }

  async close(): Promise<void> {
    const server = this.#server;
    this.#server = null;
    if (server) await new Promise<void>((resolve) => server.close(() => resolve()));
  }
}
