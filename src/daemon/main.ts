// Owns the blksnapd process: arguments, signals, and turning start-up failures into a clear exit.
import { toBlkError } from '../errors.js';
import { terminateWithParent } from '../os/libc.js';
import { DAEMON_HELP, parseDaemonArgs, withConfigFile } from './config.js';
import { Daemon } from './daemon.js';
import { createLog } from './log.js';

async function main(): Promise<void> {
  let config: ReturnType<typeof parseDaemonArgs>;
  try {
    config = parseDaemonArgs(withConfigFile(process.argv.slice(2)));
  } catch (e) {
    process.stderr.write(`blksnapd: EINVAL: ${(e as Error).message}\n${DAEMON_HELP}`);
    process.exit(2);
  }
  if (config === null) {
    process.stdout.write(DAEMON_HELP);
    return;
  }
  const log = createLog(config.logFormat);
  let daemon: Daemon;
  try {
    daemon = new Daemon(config, log);
  } catch (e) {
    log(`cannot start: ${toBlkError(e).toString()}`);
    process.exit(1);
  }
  // A bug in one request must not take every attached device down with it.
  process.on('uncaughtException', (e) => log(`BUG: uncaught exception: ${e.stack ?? String(e)}`));
  process.on('unhandledRejection', (e) => log(`BUG: unhandled rejection: ${e instanceof Error ? e.stack : String(e)}`));
  let isStopping = false;
  const stop = (signal: string): void => {
    if (isStopping) return;
    isStopping = true;
    log(`${signal}: shutting down`);
    daemon.stop().then(
      () => process.exit(0),
      (e: unknown) => {
        log(`shutdown failed: ${String(e)}`);
        process.exit(1);
      },
    );
  };
  process.on('SIGTERM', () => stop('SIGTERM'));
  process.on('SIGINT', () => stop('SIGINT'));
  if (config.exitWithParent && !terminateWithParent()) {
    log('--exit-with-parent: the process that started blksnapd has already exited');
    process.exit(1);
  }
  try {
    await daemon.start();
  } catch (e) {
    const err = toBlkError(e);
    log(`cannot start: ${err.toString()}`);
    await daemon.stop().catch(() => {});
    process.exit(1);
  }
}

void main();
