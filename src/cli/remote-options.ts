// Owns how the CLI names where a repository lives: --repo (a directory, or s3://BUCKET[/PREFIX]) and
// how to reach an object store; the standard AWS variables (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY,
// AWS_PROFILE, AWS_REGION, AWS_ENDPOINT_URL) fill what the options leave unset.
import { BlkError } from '../errors.js';
import type { Backend } from '../repository/backend.js';
import { parseSize } from '../sizes.js';
import { backendAt, type RemoteOptions } from '../repository/backends.js';
import type { OptionSpec, ParsedOptions } from './command.js';

export const REPO: OptionSpec = { kind: 'value', help: 'the repository: a directory, or s3://BUCKET[/PREFIX]', isRequired: true };

export const REMOTE_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  's3-endpoint': { kind: 'value', help: "an S3 repository's endpoint, http(s)://HOST[:PORT] (default: $AWS_ENDPOINT_URL, else AWS)" },
  's3-region': { kind: 'value', help: 'its region (default: $AWS_REGION, else us-east-1)' },
  's3-addressing': { kind: 'value', help: 'path or virtual (bucket in the host name); default path with an endpoint, virtual on AWS' },
  's3-ca': { kind: 'value', help: 'a CA bundle (PEM) to trust for the endpoint besides the system CAs' },
  'limit-upload': { kind: 'value', help: 'upload to an S3 repository at most this many bytes a second (K, M, G suffixes), all threads together' },
  'limit-download': { kind: 'value', help: 'download from it at most this many bytes a second' },
  'cache-dir': { kind: 'value', help: 'where an S3 repository is cached and uploads are built (default $XDG_CACHE_HOME/blksnap, or /var/cache/blksnap for root)' },
};

/** The options that differ between the two repositories of backup_copy (each also given with a 'from-' or 'to-' prefix). */
export const SITE_OPTIONS: Readonly<Record<string, OptionSpec>> = {
  's3-endpoint': REMOTE_OPTIONS['s3-endpoint'] as OptionSpec,
  's3-region': REMOTE_OPTIONS['s3-region'] as OptionSpec,
  's3-ca': REMOTE_OPTIONS['s3-ca'] as OptionSpec,
};

/** The backend --repo names, with the remote options given; with a prefix, a prefixed option wins over its plain one. */
export function backendOf(o: ParsedOptions, location: string, prefix = ''): Backend {
  const options: RemoteOptions = {};
  const take = (option: string, key: 's3Endpoint' | 's3Region' | 's3Addressing' | 's3Ca' | 'cacheDir'): void => {
    const v = o.values.get(`${prefix}${option}`) ?? o.values.get(option);
    if (v !== undefined) options[key] = v;
  };
  take('s3-endpoint', 's3Endpoint');
  take('s3-region', 's3Region');
  take('s3-addressing', 's3Addressing');
  take('s3-ca', 's3Ca');
  take('cache-dir', 'cacheDir');
  for (const [option, key] of [['limit-upload', 'limitUpload'], ['limit-download', 'limitDownload']] as const) {
    const v = o.values.get(option);
    if (v === undefined) continue;
    const rate = parseSize(v.replace(/\/s$/, ''));
    if (!(rate >= 1024)) throw new BlkError('EINVAL', `--${option} takes bytes a second of at least 1K, not '${v}'`);
    options[key] = rate;
  }
  return backendAt(location, options);
}
