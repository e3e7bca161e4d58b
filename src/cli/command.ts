// Owns the shape of a CLI command and its option parsing: blksnap's --long options, --help, --json.
import * as path from 'node:path';
import { BlkError } from '../errors.js';
import type { BlksnapClient } from '../client/connection.js';

export interface OptionSpec {
  /** 'value': takes one value; 'list': takes one or more values; 'flag': no value. */
  kind: 'value' | 'list' | 'flag';
  help: string;
  isRequired?: boolean;
}

export type ParsedOptions = {
  values: Map<string, string>;
  lists: Map<string, string[]>;
  flags: Set<string>;
};

export interface CommandIo {
  client(): Promise<BlksnapClient>;
  /** --json was given: print nothing but the one document. */
  isJson: boolean;
  /** Prints a result: the JSON document with --json, else the text. */
  print(json: unknown, text: string): void;
  /** The command ends with this exit status though it printed its result (a verify that found damage). */
  exitStatus: number;
}

export interface Command {
  name: string;
  summary: string;
  options: Readonly<Record<string, OptionSpec>>;
  /** The option a bare argument gives (`blksnap job run NAME`: --name NAME). */
  positional?: string;
  run(options: ParsedOptions, io: CommandIo): Promise<void>;
}

/** A command's options and the ones every command takes: what --help, the man page and the completion list. */
export function commandOptions(c: Command): Array<[string, OptionSpec]> {
  return [
    ...Object.entries(c.options),
    ['json', { kind: 'flag', help: 'print exactly one JSON document on stdout' }],
    ['control', { kind: 'value', help: 'control socket of the daemon (default: $BLKSNAP_CONTROL, else the runtime directory)' }],
    ['help', { kind: 'flag', help: 'this text' }],
  ];
}

/** `--name VALUE`, `--name VALUE...` or `--name`. */
export function optionSynopsis(name: string, o: OptionSpec): string {
  return `--${name}${o.kind === 'flag' ? '' : o.kind === 'list' ? ' VALUE...' : ' VALUE'}`;
}

export function commandUsage(c: Command): string {
  const required = Object.entries(c.options).map(([n, o]) => (o.isRequired ? (n === c.positional ? ` ${n.toUpperCase()}` : ` --${n}${o.kind === 'flag' ? '' : ' VALUE'}`) : '')).join('');
  return `blksnap ${c.name}${required} [options]`;
}

export function commandHelp(c: Command): string {
  const lines = [`Usage: ${commandUsage(c)}`, '', c.summary, '', 'Options:'];
  for (const [name, o] of commandOptions(c)) lines.push(`  ${optionSynopsis(name, o).padEnd(24)} ${o.help}${o.isRequired ? ' (required)' : ''}`);
  return `${lines.join('\n')}\n`;
}

const COMMON: Readonly<Record<string, OptionSpec>> = {
  json: { kind: 'flag', help: '' },
  help: { kind: 'flag', help: '' },
  control: { kind: 'value', help: '' },
};

/** Parses `--name value`, `--name=value`, list options taking every value up to the next option. */
export function parseOptions(c: Command, argv: readonly string[]): ParsedOptions {
  const parsed: ParsedOptions = { values: new Map(), lists: new Map(), flags: new Set() };
  for (let i = 0; i < argv.length; i++) {
    const arg = argv[i] as string;
    if (!arg.startsWith('--')) {
      if (c.positional === undefined || parsed.values.has(c.positional)) throw new BlkError('EINVAL', `${c.name}: unexpected argument '${arg}'`);
      parsed.values.set(c.positional, arg);
      continue;
    }
    const eq = arg.indexOf('=');
    const name = arg.slice(2, eq < 0 ? undefined : eq);
    const spec = c.options[name] ?? COMMON[name];
    if (!spec) throw new BlkError('EINVAL', `${c.name}: unknown option --${name} (see blksnap ${c.name} --help)`);
    if (spec.kind === 'flag') {
      if (eq >= 0) throw new BlkError('EINVAL', `${c.name}: --${name} takes no value`);
      parsed.flags.add(name);
      continue;
    }
    const values: string[] = eq >= 0 ? [arg.slice(eq + 1)] : [];
    if (eq < 0) {
      while (i + 1 < argv.length && !(argv[i + 1] as string).startsWith('--')) {
        values.push(argv[++i] as string);
        if (spec.kind === 'value') break;
      }
    }
    if (values.length === 0) throw new BlkError('EINVAL', `${c.name}: --${name} needs a value`);
    if (spec.kind === 'value') parsed.values.set(name, values[0] as string);
    else parsed.lists.set(name, [...(parsed.lists.get(name) ?? []), ...values]);
  }
  if (!parsed.flags.has('help')) {
    for (const [name, spec] of Object.entries(c.options)) {
      if (spec.isRequired && !parsed.values.has(name) && !parsed.lists.has(name)) {
        throw new BlkError('EINVAL', `${c.name}: --${name} is required (see blksnap ${c.name} --help)`);
      }
    }
  }
  return parsed;
}

/**
 * An attached device as the daemon takes it: a name (no '/'), or a path (anything with a '/', e.g.
 * ./disk.img) made absolute here, since the daemon's working directory is not the caller's.
 */
export function deviceRef(text: string): string {
  return text.includes('/') ? path.resolve(text) : text;
}

/** --device of a command that takes one attached device: deviceRef of its value. */
export function deviceOption(o: ParsedOptions): string {
  return deviceRef(value(o, 'device'));
}

export function value(o: ParsedOptions, name: string): string {
  const v = o.values.get(name);
  if (v === undefined) throw new BlkError('EINVAL', `--${name} is required`);
  return v;
}

/** A whole-number option (0 or more), or undefined when absent; EINVAL naming it otherwise. */
export function wholeNumber(o: ParsedOptions, name: string): number | undefined {
  const v = o.values.get(name);
  if (v === undefined) return undefined;
  const n = Number(v);
  if (!Number.isSafeInteger(n) || n < 0) throw new BlkError('EINVAL', `--${name} takes a whole number, not '${v}'`);
  return n;
}
