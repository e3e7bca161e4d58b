// Owns the daemon's log: one event per line on stderr, as timestamped text or as a JSON object
// (--log-format json, for journald and log shippers).

export type Log = (line: string) => void;

export function createLog(format: 'text' | 'json' = 'text', stream: NodeJS.WritableStream = process.stderr): Log {
  if (format === 'json') return (line) => stream.write(`${JSON.stringify({ time: new Date().toISOString(), program: 'blksnapd', message: line })}\n`);
  return (line) => {
    stream.write(`${new Date().toISOString()} blksnapd: ${line}\n`);
  };
}
