// Owns the question whether a process id names a running process (pid files, held backups, test dirs).

/** Whether `pid` runs: signal 0 reaches it, or it exists but belongs to another user (EPERM). */
export function isProcessRunning(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}
