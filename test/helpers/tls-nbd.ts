// Owns a hostile NBD-over-TLS client for tests: it does STARTTLS by hand and offers whatever
// certificate it is given (GnuTLS clients such as nbdinfo only offer one the server's CA list names).
import * as net from 'node:net';
import * as tls from 'node:tls';
import { RawNbd } from './raw-nbd.js';

const OPT_STARTTLS = 5;
const REP_ACK = 1;

export interface ClientCredentials {
  /** PEM; none: no client certificate. */
  cert?: Buffer;
  key?: Buffer;
  /** PSK identity and key, instead of a certificate. */
  psk?: { identity: string; key: Buffer };
}

/** Reads exactly `n` bytes off a plain socket before TLS starts. */
function readExactly(socket: net.Socket, n: number): Promise<Buffer> {
  return new Promise((resolve, reject) => {
    let got = Buffer.alloc(0);
    const onData = (b: Buffer): void => {
      got = Buffer.concat([got, b]);
      if (got.length >= n) {
        socket.off('data', onData);
        socket.pause();
        if (got.length > n) socket.unshift(got.subarray(n));
        resolve(got.subarray(0, n));
      }
    };
    socket.on('data', onData);
    socket.once('close', () => reject(new Error('closed before STARTTLS finished')));
    socket.resume();
  });
}

/**
 * Connects to 127.0.0.1:port, sends the client flags and NBD_OPT_STARTTLS, then runs the TLS
 * handshake with these credentials (trusting any server certificate) and hands back a RawNbd over
 * the TLS socket, ready for options. Rejects when the server ends the connection at any point.
 */
export async function startTls(port: number, credentials: ClientCredentials): Promise<RawNbd> {
  const socket = await new Promise<net.Socket>((resolve, reject) => {
    const s = net.createConnection({ port, host: '127.0.0.1' }, () => resolve(s));
    s.once('error', reject);
  });
  socket.on('error', () => undefined);
  await readExactly(socket, 18); // greeting
  socket.write(Buffer.from([0, 0, 0, 1]));
  const option = Buffer.alloc(16);
  option.writeBigUInt64BE(0x49484156454f5054n, 0);
  option.writeUInt32BE(OPT_STARTTLS, 8);
  socket.write(option);
  const reply = await readExactly(socket, 20);
  if (reply.readUInt32BE(12) !== REP_ACK) throw new Error(`STARTTLS refused: 0x${reply.readUInt32BE(12).toString(16)}`);
  const secure = await new Promise<tls.TLSSocket>((resolve, reject) => {
    const s = tls.connect({
      socket,
      rejectUnauthorized: false,
      servername: 'localhost',
      ...(credentials.cert ? { cert: credentials.cert, key: credentials.key } : {}),
      ...(credentials.psk
        ? { pskCallback: () => ({ identity: (credentials.psk as { identity: string }).identity, psk: (credentials.psk as { key: Buffer }).key }), ciphers: 'PSK-AES128-GCM-SHA256', maxVersion: 'TLSv1.2' as const }
        : {}),
    });
    s.once('secureConnect', () => resolve(s));
    s.once('error', reject);
    s.once('close', () => reject(new Error('closed during the TLS handshake')));
  });
  return RawNbd.adopt(secure);
}
