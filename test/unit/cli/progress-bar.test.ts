// The progress line of backup, restore and verify: drawn only on a terminal (and not for --json), with
// bytes, rate and time left; notes (waiting for a lock) written everywhere.
import assert from 'node:assert/strict';
import { describe, it } from 'node:test';
import { progressBar } from '../../../src/cli/progress-bar.js';

function fakeStream(isTTY: boolean): NodeJS.WriteStream & { text: string } {
  const s = { isTTY, columns: 120, text: '', write(chunk: string) { s.text += chunk; return true; } };
  return s as unknown as NodeJS.WriteStream & { text: string };
}

describe('progress bar', () => {
  it('draws phase, bytes done of total, rate and time left on a terminal; elsewhere only notes', async () => {
    for (const [stream, options] of [[fakeStream(false), {}], [fakeStream(true), { bar: false }]] as const) {
      const quiet = progressBar(stream, options);
      quiet.start('disk (full)', 100);
      quiet.advance(50);
      quiet.note('waiting for a prune');
      quiet.done();
      assert.equal(stream.text, 'waiting for a prune\n');
    }
    const tty = fakeStream(true);
    const bar = progressBar(tty);
    assert.ok(bar);
    bar.start('disk (full)', 100 * 2 ** 20);
    await new Promise((r) => setTimeout(r, 250));
    bar.advance(50 * 2 ** 20);
    bar.note('a note');
    bar.done();
    assert.match(tty.text, /disk \(full\) \[#{12}\.{12}\] 50\.0 MiB\/100\.0 MiB [\d.]+ MiB\/s ETA \d+:\d\d/);
    assert.ok(tty.text.includes('\r\x1b[Ka note\n'), 'a note clears the line and stays');
    assert.ok(tty.text.endsWith('\n'));
  });
});
