// Owns the daemon's command line and defaults: where the sockets and the state live, what to attach at start.
import * as fs from 'node:fs';
import * as path from 'node:path';
import { defaultRuntimeDir } from '../control/paths.js';
import type { LoopRoute } from './loop-devices.js';
import type { TlsOptions } from '../frontends/nbd/tls.js';
import { nbd as nbdLimits, nbdIo, snapshot as snapshotLimits, tracking } from '../params.js';
import { parseSize } from '../sizes.js';
import { DAEMON_HELP } from '../blksnapd-help.js';

export { DAEMON_HELP };

export interface DaemonConfig {
  controlPath: string;
  nbdPath: string;
  listen?: string;
  stateDir: string;
  attach: Array<{ path: string; name?: string }>;
  cachedReadMaximum: number;
  /** NBD reads from this size on leave by sendfile when cached; 0: never. */
  sendFileMinimum: number;
  busyPollMicroseconds: number;
  syncWriteMaximum: number;
  /** Every attached device also gets a kernel block device. */
  loopAll: boolean;
  /** How kernel block devices reach the devices. */
  loopRoute: LoopRoute;
  /** The in-daemon FUSE server takes requests through io_uring where the kernel offers it. */
  fuseIoUring: boolean;
  /** How copy-on-write writes a chunk's original to the difference storage: past the page cache, or through it. */
  cowCopy: 'direct' | 'cached';
  /** TLS of the TCP listener: null with --tls off (or without --listen). */
  tls: TlsOptions | null;
  /** NBD connections at once on each listener; more are closed at accept. */
  maximumConnections: number;
  /** A TCP connection idle this long after its handshake is closed; 0: never. */
  idleTimeoutMs: number;
  /** Share of a difference storage's limit past which a low_space event comes (--low-space-warn PERCENT). */
  lowSpaceShare: number;
  /** Application-consistency hooks run at each take (--hooks-dir), and how long each may take (--hook-timeout). */
  hooksDir: string;
  hookTimeoutMs: number;
  /** Members of this group may use the control socket too (mode 0660); null: root and the daemon's user only. */
  controlGroup: string | null;
  /** An NBD handshake not finished by then closes the connection. */
  handshakeTimeoutMs: number;
  /** Bytes one write-intent bit stands for (--cbt-region). */
  cbtRegionSize: number;
  /** How often a written-to CBT map is saved (--cbt-sync-interval). */
  cbtSyncIntervalMs: number;
  /** One line of text per event, or one JSON object (for journald and log shippers). */
  logFormat: 'text' | 'json';
  /** Also log each connection's life. */
  isVerbose: boolean;
  /** Shut down when the process that started the daemon exits (--exit-with-parent). */
  exitWithParent: boolean;
  /** [HOST:]PORT of the Prometheus endpoint (host 127.0.0.1 unless given); none: no metrics. */
  metrics?: string;
}

/** Parses argv; throws an Error with a usage message on bad input, returns null for --help. */
export function parseDaemonArgs(argv: readonly string[], env: NodeJS.ProcessEnv = process.env): DaemonConfig | null {
  const runtime = defaultRuntimeDir(env);
  const config: DaemonConfig = {
    controlPath: path.join(runtime, 'control.sock'),
    nbdPath: path.join(runtime, 'nbd.sock'),
    stateDir: runtime,
    attach: [],
    cachedReadMaximum: 1024 * 1024,
    sendFileMinimum: 64 * 1024,
    busyPollMicroseconds: nbdIo.busyPollMicroseconds,
    syncWriteMaximum: 1024 * 1024,
    loopAll: false,
    loopRoute: 'fuse',
    fuseIoUring: true,
    cowCopy: 'direct',
    tls: null,
    maximumConnections: nbdLimits.maximumConnections,
    idleTimeoutMs: nbdLimits.idleTimeoutMs,
    lowSpaceShare: snapshotLimits.lowSpaceShare,
    controlGroup: null,
    hooksDir: '/etc/blksnap/hooks.d',
    hookTimeoutMs: 30_000,
    handshakeTimeoutMs: nbdLimits.handshakeTimeoutMs,
    cbtRegionSize: tracking.writeIntentRegion,
    cbtSyncIntervalMs: tracking.syncIntervalMs,
    logFormat: 'text',
    isVerbose: false,
    exitWithParent: false,
  };
  let tlsMode: 'on' | 'off' | undefined;
  let certsDir: string | undefined;
  let pskFile: string | undefined;
  let verifyPeer = false;
  let authzFile: string | undefined;
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (arg === '--help' || arg === '-h') return null;
    const value = (): string => {
      const v = argv[++i];
      if (v === undefined) throw new Error(`${arg} needs a value`);
      return v;
    };
    switch (arg) {
      case '--control': config.controlPath = path.resolve(value()); break;
      case '--nbd': config.nbdPath = path.resolve(value()); break;
      case '--listen': config.listen = value(); break;
      case '--state-dir': config.stateDir = path.resolve(value()); break;
      case '--loop':
        config.loopAll = true;
        break;
      case '--loop-via':
        config.loopRoute = oneOf(arg, value(), ['fuse', 'nbdfuse'] as const);
        break;
      case '--fuse-io-uring':
        config.fuseIoUring = oneOf(arg, value(), ['on', 'off'] as const) === 'on';
        break;
      case '--cow-copy':
        config.cowCopy = oneOf(arg, value(), ['direct', 'cached'] as const);
        break;
      case '--attach': {
        const v = value();
        const eq = v.lastIndexOf('=');
        config.attach.push(eq > 0 ? { path: v.slice(0, eq), name: v.slice(eq + 1) } : { path: v });
        break;
      }
      case '--sendfile-min':
        config.sendFileMinimum = byteCount(arg, value());
        break;
      case '--busy-poll-us': {
        const v = value();
        const n = Number(v);
        if (!(Number.isSafeInteger(n) && n >= 0 && n <= 1000)) throw new Error(`--busy-poll-us takes microseconds from 0 to 1000, not '${v}'`);
        config.busyPollMicroseconds = n;
        break;
      }
      case '--cached-read-max':
        config.cachedReadMaximum = byteCount(arg, value());
        break;
      case '--sync-write-max':
        config.syncWriteMaximum = byteCount(arg, value());
        break;
      case '--tls': {
        const v = value();
        if (v !== 'on' && v !== 'off') throw new Error(`--tls takes on or off, not '${v}'`);
        tlsMode = v;
        break;
      }
      case '--tls-certs': certsDir = path.resolve(value()); break;
      case '--tls-psk': pskFile = path.resolve(value()); break;
      case '--tls-verify-peer': verifyPeer = true; break;
      case '--tls-authz': authzFile = path.resolve(value()); break;
      case '--idle-timeout': {
        const seconds = Number(value());
        if (!(seconds >= 0 && seconds <= 86400)) throw new Error('--idle-timeout takes seconds, from 0 (never) to 86400');
        config.idleTimeoutMs = seconds * 1000;
        break;
      }
      case '--low-space-warn': {
        const percent = Number(value().replace(/%$/, ''));
        if (!(percent > 0 && percent <= 100)) throw new Error('--low-space-warn takes a percentage above 0, at most 100');
        config.lowSpaceShare = percent / 100;
        break;
      }
      case '--hooks-dir': config.hooksDir = path.resolve(value()); break;
      case '--hook-timeout': {
        const seconds = Number(value());
        if (!(seconds > 0 && seconds <= 3600)) throw new Error('--hook-timeout takes seconds, above 0, at most 3600');
        config.hookTimeoutMs = seconds * 1000;
        break;
      }
      case '--control-group': {
        const v = value();
        if (!/^[A-Za-z0-9_][A-Za-z0-9_.-]*\$?$/.test(v)) throw new Error(`--control-group takes a group name or number, not '${v}'`);
        config.controlGroup = v;
        break;
      }
      case '--max-connections': {
        const n = byteCount(arg, value());
        if (n < 1) throw new Error('--max-connections takes 1 or more');
        config.maximumConnections = n;
        break;
      }
      case '--handshake-timeout': {
        const seconds = Number(value());
        if (!(seconds > 0 && seconds <= 3600)) throw new Error('--handshake-timeout takes seconds, more than 0 and at most 3600');
        config.handshakeTimeoutMs = seconds * 1000;
        break;
      }
      case '--config':
        value(); // read by withConfigFile() before this
        break;
      case '--log-format':
        config.logFormat = oneOf(arg, value(), ['text', 'json'] as const);
        break;
      case '--exit-with-parent':
        config.exitWithParent = true;
        break;
      case '--verbose':
        config.isVerbose = true;
        break;
      case '--metrics': {
        const v = value();
        if (!/^(?:\S+:)?\d{1,5}$/.test(v) || Number(v.slice(v.lastIndexOf(':') + 1)) > 65535) throw new Error(`--metrics takes [HOST:]PORT, not '${v}'`);
        config.metrics = v;
        break;
      }
      case '--cbt-region': {
        const v = value();
        let size: number;
        try {
          size = parseSize(v);
        } catch {
          throw new Error(`--cbt-region takes a size N[K|M|G], not '${v}'`);
        }
        if (size < 4096 || size % 4096 !== 0) throw new Error('--cbt-region takes a multiple of 4K');
        config.cbtRegionSize = size;
        break;
      }
      case '--cbt-sync-interval': {
        const seconds = Number(value());
        if (!(seconds >= 0.05 && seconds <= 3600)) throw new Error('--cbt-sync-interval takes seconds, from 0.05 to 3600');
        config.cbtSyncIntervalMs = seconds * 1000;
        break;
      }
      default:
        throw new Error(`unknown option '${arg}'`);
    }
  }
  const hasCredentials = certsDir !== undefined || pskFile !== undefined;
  if (certsDir !== undefined && pskFile !== undefined) throw new Error('give --tls-certs or --tls-psk, not both');
  if (verifyPeer && certsDir === undefined) throw new Error('--tls-verify-peer needs --tls-certs');
  if (authzFile !== undefined && !verifyPeer && pskFile === undefined) throw new Error('--tls-authz needs peers that identify themselves: --tls-verify-peer (client certificates) or --tls-psk');
  if (config.listen === undefined) {
    if (hasCredentials || tlsMode !== undefined) throw new Error('--tls options apply to the TCP listener: give --listen HOST:PORT');
  } else if (tlsMode === 'off') {
    if (hasCredentials) throw new Error('--tls off and TLS credentials contradict each other');
  } else {
    if (!hasCredentials) throw new Error('--listen serves NBD over the network and needs TLS: give --tls-certs DIR or --tls-psk FILE, or --tls off to serve it in the clear');
    config.tls = { ...(certsDir === undefined ? {} : { certsDir }), ...(pskFile === undefined ? {} : { pskFile }), ...(authzFile === undefined ? {} : { authzFile }), verifyPeer };
  }
  return config;
}

/** `text` when it is one of `choices`; else an error naming the option and what it takes. */
function oneOf<T extends string>(option: string, text: string, choices: readonly T[]): T {
  if (!(choices as readonly string[]).includes(text)) throw new Error(`${option} takes ${choices.join(' or ')}, not '${text}'`);
  return text as T;
}

function byteCount(option: string, text: string): number {
  const n = Number(text);
  if (!Number.isSafeInteger(n) || n < 0) throw new Error(`${option} takes a byte count, not '${text}'`);
  return n;
}

export const DEFAULT_CONFIG_FILE = '/etc/blksnap/blksnapd.conf';

/** The daemon's options, as --help lists them: the names a config file may use. */
export function daemonOptionNames(): string[] {
  return [...DAEMON_HELP.matchAll(/^ {2}--([a-z][a-z0-9-]*)/gm)].map((m) => m[1] as string);
}

/** A config file's lines as command-line arguments; an Error naming file and line on a bad one. */
export function configFileArgs(text: string, file: string): string[] {
  const known = new Set(daemonOptionNames());
  const out: string[] = [];
  text.split('\n').forEach((raw, i) => {
    const line = raw.replace(/(^|\s)#.*$/, '').trim();
    if (line === '') return;
    const m = /^([a-z][a-z0-9-]*)\s*(?:=\s*(.*))?$/.exec(line);
    if (!m) throw new Error(`${file}:${i + 1}: expected "option = value" or "option", not '${raw.trim()}'`);
    const name = m[1] as string;
    if (!known.has(name) || name === 'config' || name === 'help') throw new Error(`${file}:${i + 1}: unknown option '${name}' (see blksnapd --help)`);
    out.push(`--${name}`, ...(m[2] === undefined ? [] : [m[2].trim()]));
  });
  return out;
}

/**
 * The arguments parseDaemonArgs reads: a config file's (--config FILE, else `defaultFile` when it
 * exists) first, then the command line's, so the command line wins.
 */
export function withConfigFile(argv: readonly string[], defaultFile: string = DEFAULT_CONFIG_FILE): string[] {
  const at = argv.indexOf('--config');
  if (at >= 0 && argv[at + 1] === undefined) throw new Error('--config needs a value');
  const file = at >= 0 ? (argv[at + 1] as string) : fs.existsSync(defaultFile) ? defaultFile : null;
  if (file === null) return [...argv];
  let text: string;
  try {
    text = fs.readFileSync(file, 'utf8');
  } catch (e) {
    throw new Error(`cannot read config file ${file}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  return [...configFileArgs(text, file), ...argv];
}
