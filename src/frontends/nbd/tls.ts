// Owns NBD's TLS: the server's credentials (X.509 in QEMU's cert-dir layout, or nbdkit's PSK file),
// upgrading a connection at STARTTLS, and what the handshake proved about the peer.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tls from 'node:tls';
import type { Socket } from 'node:net';
import { BlkError } from '../../errors.js';
import { distinguishedName, type ExportPolicy, OPEN_POLICY, type PeerIdentity, TlsAuthz } from './authz.js';

export interface TlsOptions {
  /** QEMU's layout: ca-cert.pem, server-cert.pem, server-key.pem (ca-crl.pem is not read). */
  certsDir?: string;
  /** nbdkit's PSK file: one `username:hexkey` a line. */
  pskFile?: string;
  /** Require a client certificate signed by the CA, unexpired (X.509 only). */
  verifyPeer: boolean;
  /** Which identity may open which export (--tls-authz FILE); none: every peer that passed TLS, everything. */
  authzFile?: string;
}

/** TLS 1.2's PSK suites; TLS 1.3 negotiates PSK with its own suites through the same callback. */
const PSK_CIPHERS = 'ECDHE-PSK-AES256-CBC-SHA384:ECDHE-PSK-AES128-CBC-SHA256:PSK-AES256-GCM-SHA384:PSK-AES128-GCM-SHA256:PSK-AES256-CBC-SHA384:PSK-AES128-CBC-SHA256';

/** Reads nbdkit's PSK file; EINVAL naming the line that is not `username:hexkey`. */
export function readPskFile(file: string): Map<string, Buffer> {
  const keys = new Map<string, Buffer>();
  const lines = fs.readFileSync(file, 'utf8').split('\n');
  lines.forEach((raw, i) => {
    const line = raw.trim();
    if (line === '' || line.startsWith('#')) return;
    const m = /^([^:]+):([0-9a-fA-F]+)$/.exec(line);
    if (!m || (m[2] as string).length % 2 !== 0) throw new BlkError('EINVAL', `${file}:${i + 1}: expected username:hexkey`);
    keys.set(m[1] as string, Buffer.from(m[2] as string, 'hex'));
  });
  if (keys.size === 0) throw new BlkError('EINVAL', `${file} holds no username:hexkey line`);
  return keys;
}

/** A finished TLS handshake: the peer admitted with a policy, or refused with the reason. */
export type PeerCheck = { policy: ExportPolicy; peer: PeerIdentity | null } | { refused: string };

/** What becomes of one upgrade: the secure socket and what the handshake proved, or why it failed. */
export interface UpgradeHandlers {
  secure(socket: tls.TLSSocket, check: PeerCheck): void;
  failed(reason: string): void;
}

/**
 * The server side of STARTTLS: credentials loaded once at start, so a bad file stops the daemon
 * there. A connection is handed to a `tls.Server` (as if it had just been accepted), because only
 * the server verifies a client certificate: a bare `TLSSocket` never does.
 */
export class TlsServer {
  readonly description: string;
  #options: TlsOptions;
  #psk: Map<string, Buffer> | null;
  #authz: TlsAuthz | null;
  #server: tls.Server;
  /** Upgrades under way, by the peer's address and port (unique among live TCP connections). */
  #pending = new Map<string, UpgradeHandlers>();
  /** The identity each PSK connection's handshake used (the callback is the only place it is told). */
  #pskIdentities = new WeakMap<tls.TLSSocket, string>();

  constructor(options: TlsOptions) {
    this.#options = options;
    let context: tls.SecureContextOptions;
    if (options.certsDir !== undefined) {
      const read = (name: string): Buffer => {
        const file = path.join(options.certsDir as string, name);
        try {
          return fs.readFileSync(file);
        } catch (e) {
          throw new BlkError('ENOENT', `TLS certificate directory: cannot read ${file}: ${(e as Error).message}`);
        }
      };
      context = { ca: read('ca-cert.pem'), cert: read('server-cert.pem'), key: read('server-key.pem'), minVersion: 'TLSv1.2' };
      this.#psk = null;
      this.description = `X.509 from ${options.certsDir}${options.verifyPeer ? ', client certificates required' : ''}`;
    } else if (options.pskFile !== undefined) {
      this.#psk = readPskFile(options.pskFile);
      context = { ciphers: PSK_CIPHERS, minVersion: 'TLSv1.2' };
      this.description = `PSK from ${options.pskFile} (${this.#psk.size} user${this.#psk.size === 1 ? '' : 's'})`;
    } else {
      throw new BlkError('EINVAL', 'TLS needs --tls-certs DIR or --tls-psk FILE');
    }
    if (options.authzFile !== undefined && !this.identifiesPeers) throw new BlkError('EINVAL', '--tls-authz needs peers that identify themselves: --tls-verify-peer (client certificates) or --tls-psk');
    this.#authz = options.authzFile === undefined ? null : TlsAuthz.read(options.authzFile);
    if (this.#authz) this.description += `, exports by ${this.#authz.file}`;
    const psk = this.#psk;
    this.#server = tls.createServer({
      ...context,
      // Not rejected by the server itself: checkPeer() refuses, so the log can say why.
      requestCert: psk === null && options.verifyPeer,
      rejectUnauthorized: false,
      ...(psk === null
        ? {}
        : {
            pskCallback: (s: tls.TLSSocket, identity: string) => {
              const key = psk.get(identity) ?? null;
              if (key) this.#pskIdentities.set(s, identity);
              return key;
            },
          }),
    });
    this.#server.on('secureConnection', (secure: tls.TLSSocket) => {
      const handlers = this.#take(secure);
      if (handlers) handlers.secure(secure, this.#checkPeer(secure));
      else secure.destroy();
    });
    this.#server.on('tlsClientError', (e: Error, secure: tls.TLSSocket) => {
      this.#take(secure)?.failed(`TLS handshake failed: ${e.message}`);
      secure.destroy();
    });
  }

  /** Whether the handshake proves who the peer is: client certificates required, or PSK. */
  get identifiesPeers(): boolean {
    return this.#psk !== null || this.#options.verifyPeer;
  }

  /** Starts TLS on a connection whose client asked for STARTTLS and got its ACK. */
  upgrade(socket: Socket, handlers: UpgradeHandlers): void {
    const key = `${socket.remoteAddress}:${socket.remotePort}`;
    this.#pending.set(key, handlers);
    socket.once('close', () => {
      if (this.#pending.get(key) === handlers) this.#pending.delete(key);
    });
    this.#server.emit('connection', socket);
  }

  #take(secure: tls.TLSSocket): UpgradeHandlers | undefined {
    const key = `${secure.remoteAddress}:${secure.remotePort}`;
    const handlers = this.#pending.get(key);
    this.#pending.delete(key);
    return handlers;
  }

  /** The peer as the handshake proved it, and what it may open; or why it is refused. */
  #checkPeer(secure: tls.TLSSocket): PeerCheck {
    let peer: PeerIdentity | null = null;
    if (this.#psk !== null) {
      const identity = this.#pskIdentities.get(secure);
      if (identity === undefined) return { refused: 'no PSK identity was agreed' };
      peer = { kind: 'psk', identity };
    } else if (this.#options.verifyPeer) {
      if (!secure.authorized) return { refused: `client certificate refused: ${String(secure.authorizationError ?? 'none was sent')}` };
      const certificate = secure.getPeerX509Certificate();
      if (!certificate) return { refused: 'client certificate refused: none was sent' };
      peer = { kind: 'x509', dn: distinguishedName(certificate.subject) };
    }
    return { policy: this.#authz ? this.#authz.policyFor(peer) : OPEN_POLICY, peer };
  }
}
