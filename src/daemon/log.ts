// Owns the daemon's log: one event per line on stderr, as timestamped text or as a JSON object
// (--log-format json, for journald and log shippers).

export type Log = (line: string) => void;

export function createLog(format: 'text' | 'json' = 'text', stream: NodeJS.WritableStream = process.stderr): Log {
  // A log nobody reads any more (stderr a pipe whose reader exited: EPIPE) is dropped. Unheard, its
  // error reached the uncaught-exception handler, whose report was one more log line meeting the
  // same error: the daemon spun on it and answered no request.
  let isGone = false;
  stream.on('error', () => {
    isGone = true;
  });
  const write = (text: string): void => {
    if (isGone) return;
    try {
      stream.write(text);
    } catch {
      isGone = true;
    }
  };
  if (format === 'json') return (line) => write(`${JSON.stringify({ time: new Date().toISOString(), program: 'blksnapd', message: line })}\n`);
  return (line) => write(`${new Date().toISOString()} blksnapd: ${line}\n`);
}
