// Owns the system facts FUSE over io_uring depends on: the kernel's queue count (one per possible
// CPU) and the fuse module's enable_uring switch.
import * as fs from 'node:fs';
import { ioUringIsUsable } from '../../os/io-uring.js';

const ENABLE_URING = '/sys/module/fuse/parameters/enable_uring';

/** CPUs the kernel may ever run (cpu_possible_mask): the kernel wants one ring queue for each. */
export function possibleCpuCount(): number {
  try {
    let count = 0;
    for (const range of fs.readFileSync('/sys/devices/system/cpu/possible', 'utf8').trim().split(',')) {
      const [first, last] = range.split('-').map(Number);
      count += (last ?? (first as number)) - (first as number) + 1;
    }
    return Number.isFinite(count) ? count : 0;
  } catch {
    return 0;
  }
}

/**
 * True when the kernel will offer io_uring to FUSE servers, turning the switch on where it is off
 * (it changes nothing for a server that does not ask for io_uring at INIT). False on kernels
 * without CONFIG_FUSE_IO_URING, where this process may not use io_uring (a container's seccomp
 * profile, kernel.io_uring_disabled), or when the switch cannot be written.
 */
export function turnOnFuseRing(log: (line: string) => void): boolean {
  if (!fs.existsSync(ENABLE_URING) || !ioUringIsUsable()) return false;
  try {
    if (fs.readFileSync(ENABLE_URING, 'utf8').trim() === 'Y') return true;
    fs.writeFileSync(ENABLE_URING, 'Y');
    log('turned on FUSE over io_uring (fuse.enable_uring=Y)');
    return fs.readFileSync(ENABLE_URING, 'utf8').trim() === 'Y';
  } catch {
    return false;
  }
}
