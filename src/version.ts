// Owns blksnap's version: the package's, as package.json says (beside dist/ in a checkout, in the
// npm package and in the Debian package alike).
import * as fs from 'node:fs';

function packageVersion(): string {
  try {
    const doc = JSON.parse(fs.readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version?: unknown };
    return typeof doc.version === 'string' ? doc.version : 'unknown';
  } catch {
    return 'unknown';
  }
}

export const VERSION = packageVersion();
