// Owns telling systemd about the daemon (sd_notify(3)): a datagram to $NOTIFY_SOCKET (a path, or an
// abstract name after '@') through socket(2) and sendto(2), which Node lacks for Unix datagrams.
// Without NOTIFY_SOCKET (not started by systemd, or Type= is not notify) nothing is sent.
import { BlkError, errnoName } from '../errors.js';
import { koffi } from './koffi.js';

const libc = koffi.load('libc.so.6');
const socketFn = libc.func('int socket(int domain, int type, int protocol)');
const sendtoFn = libc.func('int64_t sendto(int fd, const void *data, size_t length, int flags, const void *address, uint32_t addressLength)');
const closeFn = libc.func('int close(int fd)');

const AF_UNIX = 1;
const SOCK_DGRAM = 2;
const SOCK_CLOEXEC = 0o2000000;
/** sa_family (2 bytes) and sun_path (108). */
const SOCKADDR_UN_BYTES = 110;

/** The sockaddr_un of a NOTIFY_SOCKET value, and its length; EINVAL for one that cannot be. */
function addressOf(socketPath: string): { address: Buffer; length: number } {
  const isAbstract = socketPath.startsWith('@');
  if (!isAbstract && !socketPath.startsWith('/')) throw new BlkError('EINVAL', `NOTIFY_SOCKET '${socketPath}' is neither a path nor an abstract name`);
  const name = Buffer.from(isAbstract ? `\0${socketPath.slice(1)}` : socketPath);
  if (name.length >= SOCKADDR_UN_BYTES - 2) throw new BlkError('EINVAL', `NOTIFY_SOCKET '${socketPath}' is too long`);
  const address = Buffer.alloc(SOCKADDR_UN_BYTES);
  address.writeUInt16LE(AF_UNIX, 0);
  name.copy(address, 2);
  // An abstract name's length counts exactly its bytes; a path's its NUL too.
  return { address, length: 2 + name.length + (isAbstract ? 0 : 1) };
}

/** Sends `state` (e.g. "READY=1\nSTATUS=…") to systemd; false when there is no NOTIFY_SOCKET. */
export function sdNotify(state: string, env: NodeJS.ProcessEnv = process.env): boolean {
  const target = env.NOTIFY_SOCKET;
  if (!target) return false;
  const { address, length } = addressOf(target);
  const fd = socketFn(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0) as number;
  if (fd < 0) throw new BlkError(errnoName(koffi.errno()), `sd_notify: socket(AF_UNIX, SOCK_DGRAM) failed`);
  try {
    const data = Buffer.from(state);
    const sent = sendtoFn(fd, data, data.length, 0, address, length) as number;
    if (sent < 0) throw new BlkError(errnoName(koffi.errno()), `sd_notify: sending to ${target} failed`);
  } finally {
    closeFn(fd);
  }
  return true;
}

/** The watchdog interval systemd asks for (WATCHDOG_USEC, for this process per WATCHDOG_PID), in ms, or null. */
export function watchdogIntervalMs(env: NodeJS.ProcessEnv = process.env): number | null {
  const usec = Number(env.WATCHDOG_USEC);
  if (!(usec > 0)) return null;
  if (env.WATCHDOG_PID && Number(env.WATCHDOG_PID) !== process.pid) return null;
  return usec / 1000;
}
