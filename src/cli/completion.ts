// Owns the bash completion of blksnap, made from the command table: commands, each command's
// options, attached device names after --device (asked of the running daemon), paths after options
// that take one. A command may be two words (key add): the second is completed after the first.
import { type Command, commandOptions } from './command.js';

/** Options whose value is a path on this machine. */
const PATH_OPTIONS = ['file', 'repo', 'to', 'diff-storage', 'control', 'password-file', 'key-file', 'new-password-file', 'new-key-file'];

export function bashCompletion(commands: readonly Command[]): string {
  const cases = commands.map((c) => `    "${c.name}") opts="${commandOptions(c).map(([n]) => `--${n}`).join(' ')}" ;;`);
  const firstWords = [...new Set(commands.map((c) => c.name.split(' ')[0] as string))];
  const groups = firstWords.filter((w) => commands.some((c) => c.name.startsWith(`${w} `)));
  const groupCases = groups.map((g) => `    ${g}) words="${commands.filter((c) => c.name.startsWith(`${g} `)).map((c) => c.name.slice(g.length + 1)).join(' ')}" ;;`);
  return `# bash completion for blksnap (made from its command table)
_blksnap() {
  local cur="\${COMP_WORDS[COMP_CWORD]}" prev="\${COMP_WORDS[COMP_CWORD-1]}" opts=""
  if [ "$COMP_CWORD" -eq 1 ]; then
    COMPREPLY=( $(compgen -W "${firstWords.join(' ')} --help" -- "$cur") )
    return
  fi
  local command="\${COMP_WORDS[1]}" words=""
  case "$command" in
${groupCases.join('\n')}
  esac
  if [ -n "$words" ]; then
    if [ "$COMP_CWORD" -eq 2 ]; then
      COMPREPLY=( $(compgen -W "$words" -- "$cur") )
      return
    fi
    command="$command \${COMP_WORDS[2]}"
  fi
  case "$prev" in
    ${PATH_OPTIONS.map((o) => `--${o}`).join('|')})
      COMPREPLY=( $(compgen -f -- "$cur") )
      return ;;
    --device)
      if [ "\${COMP_WORDS[1]}" = attach ]; then
        COMPREPLY=( $(compgen -f -- "$cur") )
      else
        COMPREPLY=( $(compgen -W "$(blksnap list --json 2>/dev/null | sed -n 's/^ *"name": "\\(.*\\)",\\{0,1\\}$/\\1/p')" -- "$cur") )
      fi
      return ;;
  esac
  case "$command" in
${cases.join('\n')}
  esac
  COMPREPLY=( $(compgen -W "$opts" -- "$cur") )
}
complete -F _blksnap blksnap
`;
}
