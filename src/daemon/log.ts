// Owns the daemon's log: one timestamped line per notable event, on stderr.

export type Log = (line: string) => void;

export function createLog(stream: NodeJS.WritableStream = process.stderr): Log {
  return (line) => {
    stream.write(`${new Date().toISOString()} blksnapd: ${line}\n`);
  };
}
