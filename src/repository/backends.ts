// Owns finding the backend a repository lives in: from what a user gives (a directory, or
// s3://BUCKET[/PREFIX] with how to reach it), or from a spec another thread was handed.
import { BlkError } from '../errors.js';
import { newRateLimit } from '../util/rate-limit.js';
import type { Backend, BackendSpec, S3Credentials } from './backend.js';
import { LocalBackend } from './local-backend.js';
import { defaultCacheDir, parseS3Location, S3Backend } from './s3-backend.js';

/** How to reach an object store (options of the CLI; the standard AWS variables fill what is unset). */
export interface RemoteOptions {
  s3Endpoint?: string;
  s3Region?: string;
  /** 'path' (the default with an endpoint) or 'virtual' (the default on AWS). */
  s3Addressing?: string;
  s3Ca?: string;
  /** The CA as PEM text instead of a file (a daemon handed it). */
  s3CaPem?: string;
  /** Credentials instead of the AWS environment (a daemon handed its client's). */
  credentials?: S3Credentials;
  cacheDir?: string;
  /** Bytes a second, for the whole process. */
  limitUpload?: number;
  limitDownload?: number;
}

/** The backend of a repository location: a directory, or an S3 bucket and prefix. */
export function backendAt(location: string, o: RemoteOptions = {}, env: NodeJS.ProcessEnv = process.env): Backend {
  if (!location.startsWith('s3://')) return new LocalBackend(location);
  const { bucket, prefix } = parseS3Location(location);
  const endpoint = o.s3Endpoint ?? env.AWS_ENDPOINT_URL_S3 ?? env.AWS_ENDPOINT_URL ?? null;
  if (endpoint !== null && !/^https?:\/\/[^/]+\/?$/.test(endpoint)) throw new BlkError('EINVAL', `--s3-endpoint '${endpoint}' is not http(s)://HOST[:PORT]`);
  const addressing = o.s3Addressing ?? (endpoint === null ? 'virtual' : 'path');
  if (addressing !== 'path' && addressing !== 'virtual') throw new BlkError('EINVAL', `--s3-addressing takes path or virtual, not '${addressing}'`);
  return new S3Backend({
    kind: 's3',
    bucket,
    prefix,
    endpoint,
    region: o.s3Region ?? env.AWS_REGION ?? env.AWS_DEFAULT_REGION ?? 'us-east-1',
    pathStyle: addressing === 'path',
    caFile: o.s3Ca ?? null,
    caPem: o.s3CaPem ?? null,
    credentials: o.credentials ?? null,
    cacheDir: o.cacheDir ?? defaultCacheDir(env),
    uploadLimit: o.limitUpload ? newRateLimit(o.limitUpload) : null,
    downloadLimit: o.limitDownload ? newRateLimit(o.limitDownload) : null,
  });
}

/** The backend a spec names, opened again (in a worker thread, say). */
export function openBackend(spec: BackendSpec): Backend {
  return spec.kind === 'local' ? new LocalBackend(spec.dir) : new S3Backend(spec);
}
