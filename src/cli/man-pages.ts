// Owns the man pages blksnap(8) and blksnapd(8), made from the definitions --help prints (the command
// table and the daemon's help text), so the two never drift apart.
import { DAEMON_HELP } from '../blksnapd-help.js';
import { type Command, commandOptions, commandUsage, optionSynopsis } from './command.js';

/** roff-safe text: backslashes doubled, hyphens of options kept as minus signs, no line opening with a dot. */
function roff(text: string): string {
  return text
    .replace(/\\/g, '\\e')
    .replace(/-/g, '\\-')
    .split('\n')
    .map((l) => (l.startsWith('.') || l.startsWith("'") ? `\\&${l}` : l))
    .join('\n');
}

function header(name: string, version: string): string[] {
  return [`.TH ${name.toUpperCase()} 8 "" "blksnap ${version}" "System Administration"`];
}

export function blksnapManPage(commands: readonly Command[], version: string): string {
  const out = [
    ...header('blksnap', version),
    '.SH NAME',
    'blksnap \\- block device snapshots, change tracking and backups through the blksnapd daemon',
    '.SH SYNOPSIS',
    '.B blksnap',
    '.I COMMAND',
    '[options]',
    '.SH DESCRIPTION',
    roff('blksnap talks to blksnapd over its control socket. Every command takes --help, --json (exactly one JSON document on stdout) and --control PATH (else $BLKSNAP_CONTROL, else the daemon\'s default socket). Errors are one line on stderr naming the errno, with a non-zero exit status.'),
    '.SH COMMANDS',
  ];
  for (const c of commands) {
    out.push('.SS', `.B ${c.name}`, roff(c.summary), '.PP', `Usage: ${roff(commandUsage(c))}`);
    for (const [name, o] of commandOptions(c)) out.push('.TP', `.B ${roff(optionSynopsis(name, o))}`, roff(`${o.help}${o.isRequired ? ' (required)' : ''}`));
  }
  out.push('.SH ENVIRONMENT', '.TP', '.B BLKSNAP_CONTROL', 'the control socket when --control is not given', '.SH SEE ALSO', '.BR blksnapd (8)', '');
  return out.join('\n');
}

/** The daemon's options as its --help lists them: name with argument, and the help text. */
export function daemonOptions(help: string = DAEMON_HELP): Array<{ synopsis: string; help: string }> {
  const lines = help.slice(help.indexOf('Options:') + 'Options:'.length, help.search(/\n\n\$RUNTIME/)).split('\n').filter((l) => l.trim() !== '');
  const out: Array<{ synopsis: string; help: string }> = [];
  for (const line of lines) {
    // The argument is in capitals (PATH[=NAME], HOST:PORT) or a choice (on|off); the help follows.
    const m = /^ {2}(--[a-z0-9-]+(?: (?:\[?[A-Z][A-Z0-9:[\]=.]*|[a-z]+(?:\|[a-z]+)+))?)(?: +(.*))?$/.exec(line);
    if (m) out.push({ synopsis: m[1] as string, help: m[2] ?? '' });
    else if (out.length > 0) {
      const last = out[out.length - 1] as { help: string };
      last.help = `${last.help} ${line.trim()}`.trim();
    }
  }
  return out;
}

export function blksnapdManPage(version: string, help: string = DAEMON_HELP): string {
  const description = help.slice(help.indexOf('\n\n') + 2, help.indexOf('Options:')).trim();
  const closing = help.slice(help.search(/\n\n\$RUNTIME/)).trim();
  const out = [...header('blksnapd', version), '.SH NAME', 'blksnapd \\- the blksnap daemon', '.SH SYNOPSIS', '.B blksnapd', '[options]', '.SH DESCRIPTION', roff(description.replace(/\n/g, ' ')), '.SH OPTIONS'];
  for (const o of daemonOptions(help)) out.push('.TP', `.B ${roff(o.synopsis)}`, roff(o.help));
  out.push('.SH NOTES', roff(closing.replace(/\n/g, ' ')), '.SH FILES', '.TP', '.B /etc/blksnap/blksnapd.conf', 'options read at start (see \\-\\-config)', '.SH SEE ALSO', '.BR blksnap (8)', '');
  return out.join('\n');
}
