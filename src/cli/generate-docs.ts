// Writes the man pages and the bash completion into a directory laid out as /usr/share is:
// man/man8/blksnap.8, man/man8/blksnapd.8, bash-completion/completions/blksnap. Run by the build.
//   node dist/src/cli/generate-docs.js OUTDIR
import * as fs from 'node:fs';
import * as path from 'node:path';
import { fileURLToPath } from 'node:url';
import { commands } from './commands/index.js';
import { bashCompletion } from './completion.js';
import { blksnapdManPage, blksnapManPage } from './man-pages.js';

const root = path.resolve(path.dirname(fileURLToPath(import.meta.url)), '../../..');
const version = (JSON.parse(fs.readFileSync(path.join(root, 'package.json'), 'utf8')) as { version: string }).version;
const out = path.resolve(process.argv[2] ?? path.join(root, 'dist/share'));
fs.mkdirSync(path.join(out, 'man/man8'), { recursive: true });
fs.mkdirSync(path.join(out, 'bash-completion/completions'), { recursive: true });
fs.writeFileSync(path.join(out, 'man/man8/blksnap.8'), blksnapManPage(commands, version));
fs.writeFileSync(path.join(out, 'man/man8/blksnapd.8'), blksnapdManPage(version));
fs.writeFileSync(path.join(out, 'bash-completion/completions/blksnap'), bashCompletion(commands));
