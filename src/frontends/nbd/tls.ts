// Owns NBD's TLS: the server's credentials (X.509 in QEMU's cert-dir layout, or nbdkit's PSK file) and upgrading a connection at STARTTLS.
import * as fs from 'node:fs';
import * as path from 'node:path';
import * as tls from 'node:tls';
import type { Socket } from 'node:net';
import { BlkError } from '../../errors.js';

export interface TlsOptions {
  /** QEMU's layout: ca-cert.pem, server-cert.pem, server-key.pem (ca-crl.pem is not read). */
  certsDir?: string;
  /** nbdkit's PSK file: one `username:hexkey` a line. */
  pskFile?: string;
  /** Require a client certificate signed by the CA (X.509 only). */
  verifyPeer: boolean;
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

/** The server side of STARTTLS: credentials loaded once at start, so a bad file stops the daemon there. */
export class TlsServer {
  readonly description: string;
  #context: tls.SecureContext;
  #options: TlsOptions;
  #psk: Map<string, Buffer> | null;

  constructor(options: TlsOptions) {
    this.#options = options;
    if (options.certsDir !== undefined) {
      const read = (name: string): Buffer => {
        const file = path.join(options.certsDir as string, name);
        try {
          return fs.readFileSync(file);
        } catch (e) {
          throw new BlkError('ENOENT', `TLS certificate directory: cannot read ${file}: ${(e as Error).message}`);
        }
      };
      this.#context = tls.createSecureContext({ ca: read('ca-cert.pem'), cert: read('server-cert.pem'), key: read('server-key.pem'), minVersion: 'TLSv1.2' });
      this.#psk = null;
      this.description = `X.509 from ${options.certsDir}${options.verifyPeer ? ', client certificates required' : ''}`;
    } else if (options.pskFile !== undefined) {
      this.#psk = readPskFile(options.pskFile);
      this.#context = tls.createSecureContext({ ciphers: PSK_CIPHERS, minVersion: 'TLSv1.2' });
      this.description = `PSK from ${options.pskFile} (${this.#psk.size} user${this.#psk.size === 1 ? '' : 's'})`;
    } else {
      throw new BlkError('EINVAL', 'TLS needs --tls-certs DIR or --tls-psk FILE');
    }
  }

  /** Wraps a connection whose client asked for STARTTLS and got its ACK; plaintext flows through the result. */
  upgrade(socket: Socket): tls.TLSSocket {
    const psk = this.#psk;
    return new tls.TLSSocket(socket, {
      isServer: true,
      secureContext: this.#context,
      requestCert: psk === null && this.#options.verifyPeer,
      rejectUnauthorized: psk === null && this.#options.verifyPeer,
      ...(psk === null ? {} : { pskCallback: (_socket: tls.TLSSocket, identity: string) => psk.get(identity) ?? null }),
    } as tls.TLSSocketOptions);
  }
}
