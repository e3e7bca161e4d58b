// Owns the blksnap command line: picks the command, connects to the daemon, prints results and errno-named errors.
import { BlksnapClient } from '../client/connection.js';
import { defaultControlPath } from '../control/paths.js';
import { BlkError, toBlkError, toExitStatus } from '../errors.js';
import { type CommandIo, commandHelp, parseOptions } from './command.js';
import { commands } from './commands/index.js';

function mainHelp(): string {
  const width = Math.max(...commands.map((c) => c.name.length));
  return [
    'Usage: blksnap COMMAND [options]',
    '',
    'Block device snapshots with change-block tracking, through the blksnapd daemon.',
    '',
    'Commands:',
    ...commands.map((c) => `  ${c.name.padEnd(width)}  ${c.summary}`),
    '',
    'Every command takes --help, --json (one JSON document on stdout) and --control PATH',
    '(else $BLKSNAP_CONTROL, else the daemon\'s default socket).',
    '',
    'Exit status: 0 done; 1 done, and damage found (backup_verify); otherwise the errno of the',
    'error, as its message names it (22 EINVAL for a usage error: an unknown command or option,',
    'a bad value; 2 ENOENT, 13 EACCES, 16 EBUSY, ...), at most 125.',
    '',
  ].join('\n');
}

/**
 * Options before the command (`blksnap --control PATH COMMAND ...`) go with the command's own. A
 * command may be two words (`key add`).
 */
function splitLeadingOptions(argv: readonly string[]): { name: string | undefined; rest: string[] } {
  const leading: string[] = [];
  let i = 0;
  while (i < argv.length && (argv[i] === '--control' || argv[i]?.startsWith('--control=') || argv[i] === '--json')) {
    leading.push(argv[i] as string);
    if (argv[i] === '--control' && i + 1 < argv.length) leading.push(argv[++i] as string);
    i++;
  }
  const twoWords = `${argv[i]} ${argv[i + 1]}`;
  if (commands.some((c) => c.name === twoWords)) return { name: twoWords, rest: [...argv.slice(i + 2), ...leading] };
  return { name: argv[i], rest: [...argv.slice(i + 1), ...leading] };
}

async function main(argv: string[]): Promise<number> {
  const { name, rest } = splitLeadingOptions(argv);
  if (name === undefined || name === '--help' || name === '-h' || name === 'help') {
    if (name !== undefined) {
      process.stdout.write(mainHelp());
      return 0;
    }
    process.stderr.write(`blksnap: EINVAL: give a command\n\n${mainHelp()}`);
    return toExitStatus(new BlkError('EINVAL', 'no command'));
  }
  const command = commands.find((c) => c.name === name);
  if (!command) {
    process.stderr.write(`blksnap: EINVAL: unknown command '${name}'\n\n${mainHelp()}`);
    return toExitStatus(new BlkError('EINVAL', 'unknown command'));
  }
  let client: BlksnapClient | undefined;
  try {
    const options = parseOptions(command, rest);
    if (options.flags.has('help')) {
      process.stdout.write(commandHelp(command));
      return 0;
    }
    const isJson = options.flags.has('json');
    const controlPath = options.values.get('control') ?? defaultControlPath();
    const io: CommandIo = {
      exitStatus: 0,
      isJson,
      async client() {
        client ??= await BlksnapClient.connect(controlPath);
        return client;
      },
      print(json, text) {
        if (isJson) process.stdout.write(`${JSON.stringify(json, null, 2)}\n`);
        else if (text !== '') process.stdout.write(`${text}\n`);
      },
    };
    await command.run(options, io);
    return io.exitStatus;
  } catch (e) {
    const err = toBlkError(e);
    process.stderr.write(`blksnap ${name}: ${err.code}: ${err.message}\n`);
    return toExitStatus(err);
  } finally {
    await client?.close();
  }
}

main(process.argv.slice(2)).then((status) => {
  process.exitCode = status;
});
