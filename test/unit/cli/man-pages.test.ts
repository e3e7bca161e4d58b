// The man pages and the bash completion come from the definitions --help prints: every command and
// option is in them, groff renders the pages without a warning, and completion offers what exists.
import assert from 'node:assert/strict';
import * as fs from 'node:fs';
import * as path from 'node:path';
import { describe, it } from 'node:test';
import { commandOptions, optionSynopsis } from '../../../src/cli/command.js';
import { commands } from '../../../src/cli/commands/index.js';
import { bashCompletion } from '../../../src/cli/completion.js';
import { blksnapdManPage, blksnapManPage, daemonOptions } from '../../../src/cli/man-pages.js';
import { daemonOptionNames } from '../../../src/daemon/config.js';
import { check, missing, run, tempDir } from '../../helpers/tools.js';

/** The page as man shows it: roff minus signs back to hyphens. */
function text(page: string): string {
  return page.replace(/\\-/g, '-').replace(/\\e/g, '\\');
}

describe('man pages and completion', () => {
  it('blksnap(8) has every command with its usage and every option; blksnapd(8) every daemon option', () => {
    const tool = text(blksnapManPage(commands, '9.9.9'));
    for (const c of commands) {
      assert.ok(tool.includes(`.B ${c.name}`), c.name);
      for (const [name, o] of commandOptions(c)) assert.ok(tool.includes(`.B ${optionSynopsis(name, o)}`), `${c.name} ${name}`);
    }
    const daemon = text(blksnapdManPage('9.9.9'));
    const listed = daemonOptions().map((o) => o.synopsis.split(' ')[0]);
    assert.deepEqual(listed.sort(), daemonOptionNames().map((n) => `--${n}`).sort(), 'the page lists exactly the options --help lists');
    for (const o of daemonOptions()) assert.ok(daemon.includes(`.B ${o.synopsis}`) && daemon.includes(o.help.slice(0, 30)), o.synopsis);
  });

  it('groff renders both pages without a warning', { skip: missing('groff') }, async () => {
    const { dir, remove } = tempDir('blksnap-man-');
    try {
      for (const [name, page] of [['blksnap.8', blksnapManPage(commands, '1')], ['blksnapd.8', blksnapdManPage('1')]] as const) {
        fs.writeFileSync(path.join(dir, name), page);
        const r = await run('groff', ['-man', '-Tutf8', '-ww', '-z', path.join(dir, name)]);
        assert.equal(`${r.code} ${r.stderr}`, '0 ', `${name}: ${r.stderr}`);
      }
    } finally {
      remove();
    }
  });

  it('bash completes commands and their options', { skip: missing('bash') }, async () => {
    const { dir, remove } = tempDir('blksnap-completion-');
    try {
      const file = path.join(dir, 'blksnap');
      fs.writeFileSync(file, bashCompletion(commands));
      const complete = (...words: string[]): Promise<string> =>
        check('bash', ['-c', `source ${file}; COMP_WORDS=(${words.map((w) => `'${w}'`).join(' ')}); COMP_CWORD=${words.length - 1}; _blksnap; echo "\${COMPREPLY[@]}"`]);
      assert.equal((await complete('blksnap', 'snapshot_t')).trim(), 'snapshot_take');
      assert.deepEqual((await complete('blksnap', 'backup_')).trim().split(' ').sort(), commands.filter((c) => c.name.startsWith('backup_')).map((c) => c.name).sort());
      assert.equal((await complete('blksnap', 'backup_prune', '--keep-')).trim(), '--keep-last --keep-hourly --keep-daily --keep-weekly --keep-monthly --keep-yearly --keep-within');
      assert.equal((await complete('blksnap', 'ke')).trim(), 'key');
      assert.equal((await complete('blksnap', 'key', 'pa')).trim(), 'passwd');
      assert.equal((await complete('blksnap', 'key', 'add', '--new-k')).trim(), '--new-key-file');
      assert.match(await complete('blksnap', 'backup_create', '--repo', dir.slice(0, -3)), new RegExp(path.basename(dir)));
    } finally {
      remove();
    }
  });
});
