// Owns a repository in an S3 bucket (any S3 API: Ceph's RADOS Gateway, MinIO, AWS): each object of
// the format is one S3 object under the prefix, written whole by PUT or in parts (multipart), read
// whole or by range. What is built in a local staging folder under the cache directory (a backup's
// folder; a copy's or prune's packs) is uploaded at commit, a backup's manifest last; a backup's
// own packs come in parts from memory (startUpload, backup/pack-uploads.ts). Restores, verify and
// attached backups read packs by range. Objects that never change once written and that planning
// reads (pack indexes, manifests, index roots) are kept in the cache when written or first read, and
// read from there while the bucket's listing still names them, so an incremental backup's requests
// follow its change, not the size of the repository; verify bypasses the cache. The prune lock is an
// object written by conditional PUTs (repository/lock-objects.ts); an acknowledged PUT is durable,
// so sync() has nothing to do.
import { createHash } from 'node:crypto';
import * as fs from 'node:fs';
import * as https from 'node:https';
import * as path from 'node:path';
import { threadId } from 'node:worker_threads';
import type { S3Client } from '@aws-sdk/client-s3';
import { BlkError } from '../errors.js';
import { backup as params } from '../params.js';
import type { Backend, ObjectStat, PartUpload, RepositoryLock, S3BackendSpec, S3Credentials } from './backend.js';
import { paced } from '../util/rate-limit.js';
import { lockWithObjects } from './lock-objects.js';
import { TEMP_MARK } from './layout.js';

let tempCounter = 0;

/** `s3://BUCKET[/PREFIX]` split; EINVAL for anything else. */
export function parseS3Location(location: string): { bucket: string; prefix: string } {
  const m = /^s3:\/\/([a-z0-9][a-z0-9.-]{1,61}[a-z0-9])(?:\/(.*))?$/.exec(location);
  if (!m) throw new BlkError('EINVAL', `'${location}' is not s3://BUCKET[/PREFIX] (a bucket name of 3-63 lower-case letters, digits, dots and dashes)`);
  const prefix = (m[2] ?? '').replace(/\/+$/, '');
  if (prefix.split('/').some((p) => p === '.' || p === '..') || prefix.startsWith('/')) throw new BlkError('EINVAL', `'${location}': the prefix may not hold empty, '.' or '..' parts`);
  return { bucket: m[1] as string, prefix: prefix === '' ? '' : `${prefix}/` };
}

/** Where a client keeps what it fetched and builds what it uploads: --cache-dir, $XDG_CACHE_HOME/blksnap, ~/.cache/blksnap, or /var/cache/blksnap for root. */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env): string {
  if (env.XDG_CACHE_HOME) return path.join(env.XDG_CACHE_HOME, 'blksnap');
  if (process.getuid?.() === 0 || !env.HOME) return '/var/cache/blksnap';
  return path.join(env.HOME, '.cache', 'blksnap');
}

type Sdk = typeof import('@aws-sdk/client-s3');
/** The SDK, loaded on first use: it is large, and a command on a local repository never needs it. */
let sdkLoading: Promise<Sdk> | null = null;
function loadSdk(): Promise<Sdk> {
  sdkLoading ??= import('@aws-sdk/client-s3');
  return sdkLoading;
}

const clients = new Map<string, Promise<S3Client>>();

/** S3 requests this thread made, by operation (GetObject, PutObject, ...): client-side metrics. */
const requests = new Map<string, number>();

/** What this thread asked of S3 so far, by operation. */
export function s3Requests(): Record<string, number> {
  return Object.fromEntries(requests);
}

/** Objects a backup needs, retained where the repository has Object Lock (sessions, locks and marks are not: they must go). */
const RETAINED = /^(config\.json|chunks\/[^/]+\.(pack|idx)|pages\/|backups\/[^/]+\/)/;
const DAY_MS = 86_400_000;

/** Objects that never change once written and that planning reads: cached. */
const CACHED = /^(chunks\/[0-9a-f]+\.idx|backups\/[^/]+\/(manifest\.json|[^/]+\.index))$/;

// The SDK warns on every run under Node < 22 that its releases after January 2027 will need 22; the
// version this package locks runs on 20, which the package supports, so the warning only misleads.
process.env.AWS_SDK_JS_NODE_VERSION_SUPPORT_WARNING_DISABLED ??= 'true';

/** Requests whose body goes unsigned (its Content-MD5 checked by the server). */
const UNSIGNED_BODIES = new Set(['PutObjectCommand', 'UploadPartCommand']);

function clientOf(spec: S3BackendSpec): Promise<S3Client> {
  const key = JSON.stringify([spec.endpoint, spec.region, spec.pathStyle, spec.caFile, spec.caPem ?? null, spec.credentials ?? null]);
  let client = clients.get(key);
  if (!client) {
    client = makeClient(spec);
    clients.set(key, client);
  }
  return client;
}

async function makeClient(spec: S3BackendSpec): Promise<S3Client> {
  const [{ S3Client }, { NodeHttpHandler }] = await Promise.all([loadSdk(), import('@smithy/node-http-handler')]);
  const ca = spec.caPem ? Buffer.from(spec.caPem) : spec.caFile ? await fs.promises.readFile(spec.caFile) : undefined;
  const client = new S3Client({
    ...(spec.credentials ? { credentials: spec.credentials } : {}),
    ...(spec.endpoint ? { endpoint: spec.endpoint } : {}),
    region: spec.region,
    forcePathStyle: spec.pathStyle,
    maxAttempts: params.s3Attempts,
    // Checksums only where the API requires them: trailing checksums (aws-chunked uploads) are
    // newer than many S3 servers, and each part and object is checked by its Content-MD5/ETag.
    requestChecksumCalculation: 'WHEN_REQUIRED',
    responseChecksumValidation: 'WHEN_REQUIRED',
    // No "Expect: 100-continue" before a large body: Ceph's gateway answers such a request with
    // "Connection: close", so every part paid a new connection and a round trip (209 connections for
    // a 4 GiB backup); a body refused is at most one part (s3PartBytes) sent for nothing.
    expectContinueHeader: false,
    requestHandler: new NodeHttpHandler({ ...(ca ? { httpsAgent: new https.Agent({ ca, keepAlive: true }) } : {}), connectionTimeout: 10_000, requestTimeout: 120_000 }),
  });
  client.middlewareStack.add(
    (next, context) => (args) => {
      const op = (context.commandName ?? 'request').replace(/Command$/, '');
      requests.set(op, (requests.get(op) ?? 0) + 1);
      return next(args);
    },
    { step: 'initialize', name: 'blksnapRequestCount' },
  );
  // The bulk of a backup's bytes travel with a Content-MD5 the server checks: hashing them again
  // for the signature (SHA-256, on both ends) would guard nothing more. Every other request, and
  // every header, stays signed.
  client.middlewareStack.add(
    (next, context) => (args) => {
      const request = args.request as { headers?: Record<string, string> };
      const headers = request.headers;
      if (headers && UNSIGNED_BODIES.has(context.commandName ?? '') && Object.keys(headers).some((h) => h.toLowerCase() === 'content-md5')) headers['x-amz-content-sha256'] = 'UNSIGNED-PAYLOAD';
      return next(args);
    },
    { step: 'build', name: 'blksnapUnsignedBody' },
  );
  // Sessions and the prune lock compare times written by different hosts: a host whose clock is
  // further from the server's than the margin allowed for that must not take part (the SDK would
  // quietly sign around the difference).
  client.middlewareStack.add(
    (next) => async (args) => {
      const out = await next(args);
      const date = Date.parse(String((out.response as { headers?: Record<string, string> }).headers?.date ?? ''));
      const skew = Number.isNaN(date) ? 0 : Date.now() - date;
      if (Math.abs(skew) > params.clockMarginMs) throw new BlkError('EIO', `this host's clock is ${Math.round(Math.abs(skew) / 1000)} s ${skew > 0 ? 'ahead of' : 'behind'} the clock of ${spec.endpoint ?? 'the S3 endpoint'} (at most ${params.clockMarginMs / 1000} s is allowed: hosts sharing a repository compare times); set it right (NTP)`);
      return out;
    },
    { step: 'deserialize', name: 'blksnapClockCheck' },
  );
  return client;
}

interface S3Failure {
  name?: string;
  Code?: string;
  message?: string;
  $metadata?: { httpStatusCode?: number };
}

export class S3Backend implements Backend {
  readonly requestsAtOnce = 32;
  readonly spec: S3BackendSpec;
  readonly location: string;
  readonly packBytes = params.s3PackBytes;
  #client: Promise<S3Client> | null = null;
  /** This repository's folder in the cache directory. */
  readonly cacheDir: string;
  /** Every read from the bucket, none from the cache (verify). */
  #bypass = false;
  /** What this client knows of objects' retention (ms since the epoch): what it wrote or extended, or read from the cache. */
  #retained = new Map<string, number>();
  #retentionLoaded = false;

  constructor(spec: S3BackendSpec) {
    this.spec = spec;
    this.location = `s3://${spec.bucket}/${spec.prefix}`.replace(/\/$/, '');
    const tag = createHash('sha256').update(JSON.stringify([spec.endpoint ?? '', spec.bucket, spec.prefix])).digest('hex').slice(0, 16);
    this.cacheDir = path.join(spec.cacheDir, `${spec.bucket}-${tag}`);
  }

  /**
   * The client and the SDK's commands, loaded on first use: a worker thread that only builds objects
   * for another thread to upload never pays for the SDK (a third of a second of CPU each).
   */
  async #s3(): Promise<{ client: S3Client; sdk: Sdk }> {
    this.#client ??= clientOf(this.spec);
    const [client, sdk] = await Promise.all([this.#client, loadSdk()]);
    return { client, sdk };
  }

  #key(name: string): string {
    return `${this.spec.prefix}${name}`;
  }

  #error(e: unknown, what: string): BlkError {
    if (e instanceof BlkError) return e;
    const f = e as S3Failure;
    const status = f.$metadata?.httpStatusCode;
    const code = f.name ?? f.Code ?? '';
    const detail = `${what} in ${this.location}: ${code || 'error'}${status ? ` (HTTP ${status})` : ''}${f.message && f.message !== code ? `: ${f.message}` : ''}`;
    if (status === 404 || code === 'NoSuchKey' || code === 'NotFound') return new BlkError('ENOENT', code === 'NoSuchBucket' ? `${detail}; make the bucket first` : `${what} in ${this.location}: not there`);
    if (status === 403 || code === 'AccessDenied' || code === 'InvalidAccessKeyId' || code === 'SignatureDoesNotMatch') return new BlkError('EACCES', `${detail} (check AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY or AWS_PROFILE)`);
    if (code === 'RequestTimeTooSkewed') return new BlkError('EIO', `${detail}: this host's clock differs from the server's; set it right (NTP)`);
    const net = (e as NodeJS.ErrnoException).code;
    if (net && /CERT|SELF_SIGNED|UNABLE_TO_VERIFY|ERR_TLS/.test(net)) return new BlkError('EPROTO', `${what}: the certificate of ${this.spec.endpoint ?? 'the S3 endpoint'} is not trusted (${net}: ${f.message ?? ''}); give --s3-ca FILE with the CA that signed it`);
    if (net === 'ECONNREFUSED' || net === 'ENOTFOUND' || net === 'ETIMEDOUT' || net === 'ECONNRESET') return new BlkError('EHOSTUNREACH', `${what}: ${this.spec.endpoint ?? 'the S3 endpoint'} does not answer (${net})`);
    return new BlkError('EIO', detail);
  }

  #cached(name: string): string {
    return path.join(this.cacheDir, 'objects', name);
  }

  async read(name: string): Promise<Buffer> {
    const { client, sdk } = await this.#s3();
    const isCached = CACHED.test(name);
    if (isCached && !this.#bypass) {
      const kept = await fs.promises.readFile(this.#cached(name)).catch(() => null);
      if (kept) return kept;
    }
    let data: Buffer;
    try {
      const r = await client.send(new sdk.GetObjectCommand({ Bucket: this.spec.bucket, Key: this.#key(name) }));
      data = Buffer.from(await (r.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray());
    } catch (e) {
      throw this.#error(e, name);
    }
    await paced(this.spec.downloadLimit, data.length);
    if (isCached && !this.#bypass) await this.#keep(name, data);
    return data;
  }

  /** Puts a copy of an unchanging object in the cache (whole or not at all); a cache that cannot take it is no error. */
  async #keep(name: string, data: Uint8Array): Promise<void> {
    const file = this.#cached(name);
    const temp = `${file}${TEMP_MARK}${process.pid}.${threadId}.${tempCounter++}`;
    try {
      await fs.promises.mkdir(path.dirname(file), { recursive: true, mode: 0o700 });
      await fs.promises.writeFile(temp, data, { mode: 0o600 });
      await fs.promises.rename(temp, file);
    } catch {
      await fs.promises.rm(temp, { force: true });
    }
  }

  bypassCache(): void {
    this.#bypass = true;
  }

  async readRange(name: string, offset: number, into: Uint8Array): Promise<number> {
    const { client, sdk } = await this.#s3();
    if (into.length === 0) return 0;
    await paced(this.spec.downloadLimit, into.length);
    try {
      // One request: the server cuts a range that runs past the end, and refuses (416) one that starts there.
      const r = await client.send(new sdk.GetObjectCommand({ Bucket: this.spec.bucket, Key: this.#key(name), Range: `bytes=${offset}-${offset + into.length - 1}` }));
      let done = 0;
      for await (const piece of r.Body as AsyncIterable<Uint8Array>) {
        if (done + piece.length > into.length) throw new BlkError('EIO', `${name} in ${this.location}: the server sent more than the range asked`);
        into.set(piece, done);
        done += piece.length;
      }
      return done;
    } catch (e) {
      if ((e as S3Failure).$metadata?.httpStatusCode === 416) return 0;
      throw this.#error(e, name);
    }
  }

  async write(name: string, data: Uint8Array, options: { inExistingFolder?: boolean; md5?: string } = {}): Promise<void> {
    const { client, sdk } = await this.#s3();
    if (options.inExistingFolder) {
      const folder = name.slice(0, name.lastIndexOf('/') + 1);
      if ((await this.list(folder)).length === 0) throw new BlkError('ENOENT', `${folder} in ${this.location}: not there`);
    }
    await paced(this.spec.uploadLimit, data.length);
    try {
      await client.send(new sdk.PutObjectCommand({ Bucket: this.spec.bucket, Key: this.#key(name), Body: data, ContentLength: data.length, ContentMD5: options.md5 ?? md5(data), ...this.#retention(name) }));
    } catch (e) {
      throw this.#error(e, name);
    }
    if (CACHED.test(name)) await this.#keep(name, data);
  }

  async list(folder: string): Promise<string[]> {
    const { client, sdk } = await this.#s3();
    const prefix = this.#key(folder);
    const out: string[] = [];
    let token: string | undefined;
    try {
      do {
        const r = await client.send(new sdk.ListObjectsV2Command({ Bucket: this.spec.bucket, Prefix: prefix, Delimiter: '/', ...(token ? { ContinuationToken: token } : {}) }));
        for (const o of r.Contents ?? []) if (o.Key && o.Key !== prefix) out.push(o.Key.slice(prefix.length));
        for (const p of r.CommonPrefixes ?? []) if (p.Prefix) out.push(p.Prefix.slice(prefix.length));
        token = r.IsTruncated ? r.NextContinuationToken : undefined;
      } while (token);
    } catch (e) {
      throw this.#error(e, folder === '' ? 'the repository' : folder);
    }
    return out.sort();
  }

  async size(name: string): Promise<number | null> {
    return (await this.stat(name))?.size ?? null;
  }

  async totalBytes(): Promise<number> {
    const { client, sdk } = await this.#s3();
    let total = 0;
    let token: string | undefined;
    try {
      do {
        const r = await client.send(new sdk.ListObjectsV2Command({ Bucket: this.spec.bucket, Prefix: this.spec.prefix, ...(token ? { ContinuationToken: token } : {}) }));
        for (const o of r.Contents ?? []) total += o.Size ?? 0;
        token = r.IsTruncated ? r.NextContinuationToken : undefined;
      } while (token);
    } catch (e) {
      throw this.#error(e, 'the repository');
    }
    return total;
  }

  async stat(name: string): Promise<ObjectStat | null> {
    const { client, sdk } = await this.#s3();
    try {
      const r = await client.send(new sdk.HeadObjectCommand({ Bucket: this.spec.bucket, Key: this.#key(name) }));
      return { size: r.ContentLength ?? 0, modified: r.LastModified?.getTime() ?? 0, retainedUntil: r.ObjectLockRetainUntilDate?.getTime() ?? null };
    } catch (e) {
      const err = this.#error(e, name);
      if (err.code === 'ENOENT') return null;
      throw err;
    }
  }

  /**
   * What a daemon needs to read this repository for its client (backup_attach): the credentials this
   * client resolved (environment, profile, role) and the CA it trusts, as text.
   */
  async access(): Promise<{ credentials: S3Credentials; caPem: string | null }> {
    const { client } = await this.#s3();
    let c: S3Credentials;
    try {
      const resolved = await client.config.credentials();
      c = { accessKeyId: resolved.accessKeyId, secretAccessKey: resolved.secretAccessKey, ...(resolved.sessionToken ? { sessionToken: resolved.sessionToken } : {}) };
    } catch (e) {
      throw new BlkError('EACCES', `no S3 credentials for ${this.location} (${(e as Error).message}): set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE`);
    }
    const caPem = this.spec.caPem ?? (this.spec.caFile ? await fs.promises.readFile(this.spec.caFile, 'utf8') : null);
    return { credentials: c, caPem };
  }

  /** A conditional PUT: the new ETag, or null when the condition failed (412). */
  async #putIf(name: string, data: Uint8Array, condition: { IfNoneMatch: string } | { IfMatch: string }): Promise<string | null> {
    const { client, sdk } = await this.#s3();
    try {
      const r = await client.send(new sdk.PutObjectCommand({ Bucket: this.spec.bucket, Key: this.#key(name), Body: data, ContentLength: data.length, ContentMD5: md5(data), ...condition }));
      return r.ETag ?? '';
    } catch (e) {
      const f = e as S3Failure;
      if (f.$metadata?.httpStatusCode === 412 || f.name === 'PreconditionFailed') return null;
      if (f.$metadata?.httpStatusCode === 501) throw new BlkError('ENOTSUP', `${name} in ${this.location}: the server offers no conditional writes (If-None-Match, If-Match), which the prune lock needs`);
      throw this.#error(e, name);
    }
  }

  createIfAbsent(name: string, data: Uint8Array): Promise<string | null> {
    return this.#putIf(name, data, { IfNoneMatch: '*' });
  }

  async replaceIfMatch(name: string, data: Uint8Array, etag: string): Promise<string | null> {
    // AWS matches the quoted ETag as it gives it; Ceph's gateway matches the bare digest. A server
    // that matched the quoted form refuses the bare one too, so the second try never wins wrongly.
    const quoted = await this.#putIf(name, data, { IfMatch: etag });
    if (quoted !== null || !etag.startsWith('"')) return quoted;
    return this.#putIf(name, data, { IfMatch: etag.replace(/^"|"$/g, '') });
  }

  async readTagged(name: string): Promise<{ data: Buffer; etag: string } | null> {
    const { client, sdk } = await this.#s3();
    try {
      const r = await client.send(new sdk.GetObjectCommand({ Bucket: this.spec.bucket, Key: this.#key(name) }));
      return { data: Buffer.from(await (r.Body as { transformToByteArray(): Promise<Uint8Array> }).transformToByteArray()), etag: r.ETag ?? '' };
    } catch (e) {
      const err = this.#error(e, name);
      if (err.code === 'ENOENT') return null;
      throw err;
    }
  }

  async remove(name: string): Promise<void> {
    const { client, sdk } = await this.#s3();
    // A folder is named with its '/' (as list() gives it): only then is there anything to list. A
    // bucket with Object Lock keeps versions: each is removed, or the object's bytes stay behind a delete marker.
    const keys: Array<{ Key: string; VersionId?: string }> = this.spec.objectLock ? await this.#versionsOf(name) : (name.endsWith('/') ? await this.#allUnder(name) : [this.#key(name)]).map((Key) => ({ Key }));
    for (let i = 0; i < keys.length; i += 1000) {
      const batch = keys.slice(i, i + 1000);
      try {
        const r = await client.send(new sdk.DeleteObjectsCommand({ Bucket: this.spec.bucket, Delete: { Objects: batch, Quiet: true } }));
        const failed = (r.Errors ?? []).filter((f) => f.Code !== 'NoSuchKey');
        if (failed.length > 0) throw new BlkError('EIO', `removing ${name} from ${this.location}: ${failed[0]?.Key}: ${failed[0]?.Code} ${failed[0]?.Message ?? ''}`.trim());
      } catch (e) {
        throw this.#error(e, name);
      }
    }
    await fs.promises.rm(path.join(this.cacheDir, 'objects', name), { force: true, recursive: true });
  }

  /** Every version (and delete marker) of an object, or of everything under a folder. */
  async #versionsOf(name: string): Promise<Array<{ Key: string; VersionId?: string }>> {
    const { client, sdk } = await this.#s3();
    const key = this.#key(name);
    const out: Array<{ Key: string; VersionId?: string }> = [];
    let keyMarker: string | undefined;
    let versionMarker: string | undefined;
    try {
      do {
        const r = await client.send(new sdk.ListObjectVersionsCommand({ Bucket: this.spec.bucket, Prefix: key, ...(keyMarker ? { KeyMarker: keyMarker, VersionIdMarker: versionMarker } : {}) }));
        for (const v of [...(r.Versions ?? []), ...(r.DeleteMarkers ?? [])]) {
          if (!v.Key || (!name.endsWith('/') && v.Key !== key)) continue;
          out.push({ Key: v.Key, ...(v.VersionId ? { VersionId: v.VersionId } : {}) });
        }
        keyMarker = r.IsTruncated ? r.NextKeyMarker : undefined;
        versionMarker = r.NextVersionIdMarker;
      } while (keyMarker);
    } catch (e) {
      throw this.#error(e, name);
    }
    return out;
  }

  /** The retention an object written now gets, where the repository has Object Lock. */
  #retention(name: string): { ObjectLockMode?: 'COMPLIANCE' | 'GOVERNANCE'; ObjectLockRetainUntilDate?: Date } {
    const lock = this.spec.objectLock;
    if (!lock || !RETAINED.test(name)) return {};
    const until = Date.now() + lock.days * DAY_MS;
    this.#retained.set(name, until);
    return { ObjectLockMode: lock.mode === 'compliance' ? 'COMPLIANCE' : 'GOVERNANCE', ObjectLockRetainUntilDate: new Date(until) };
  }

  /**
   * Extends the retention of objects a new backup needs to at least its own: what this client knows
   * of each (the cache's retention.json, and what it wrote) spares a request; an object whose
   * retention must grow gets half a period more than needed, so the next backups need not touch it.
   */
  async extendRetention(objects: string[]): Promise<number> {
    const lock = this.spec.objectLock;
    if (!lock) return 0;
    const { client, sdk } = await this.#s3();
    const file = path.join(this.cacheDir, 'retention.json');
    if (!this.#retentionLoaded) {
      this.#retentionLoaded = true;
      try {
        for (const [name, until] of Object.entries(JSON.parse(await fs.promises.readFile(file, 'utf8')) as Record<string, number>)) if (Number.isFinite(until)) this.#retained.set(name, Math.max(until, this.#retained.get(name) ?? 0));
      } catch {
        // No record yet (or a damaged one): asked of the store.
      }
    }
    const needed = Date.now() + lock.days * DAY_MS;
    let extended = 0;
    for (const name of objects) {
      if ((this.#retained.get(name) ?? 0) >= needed) continue;
      const now = (await this.stat(name))?.retainedUntil ?? null;
      if (now !== null && now >= needed) {
        this.#retained.set(name, now);
        continue;
      }
      const until = needed + (lock.days * DAY_MS) / 2;
      try {
        await client.send(new sdk.PutObjectRetentionCommand({ Bucket: this.spec.bucket, Key: this.#key(name), Retention: { Mode: lock.mode === 'compliance' ? 'COMPLIANCE' : 'GOVERNANCE', RetainUntilDate: new Date(until) } }));
      } catch (e) {
        throw this.#error(e, `extending the retention of ${name}`);
      }
      this.#retained.set(name, until);
      extended++;
    }
    await fs.promises.mkdir(this.cacheDir, { recursive: true, mode: 0o700 });
    await fs.promises.writeFile(file, JSON.stringify(Object.fromEntries(this.#retained)), { mode: 0o600 });
    return extended;
  }

  async checkObjectLock(): Promise<void> {
    const { client, sdk } = await this.#s3();
    let enabled = false;
    try {
      enabled = (await client.send(new sdk.GetObjectLockConfigurationCommand({ Bucket: this.spec.bucket }))).ObjectLockConfiguration?.ObjectLockEnabled === 'Enabled';
    } catch (e) {
      const f = e as S3Failure;
      if (f.name !== 'ObjectLockConfigurationNotFoundError' && f.$metadata?.httpStatusCode !== 404) throw this.#error(e, 'the bucket\'s Object Lock configuration');
    }
    if (!enabled) throw new BlkError('ENOTSUP', `bucket ${this.spec.bucket} was not made with S3 Object Lock, so --object-lock cannot keep anything (make a bucket with Object Lock enabled)`);
  }

  async listTree(folder: string): Promise<string[]> {
    const prefix = this.#key(folder);
    try {
      return (await this.#allUnder(folder)).map((k) => k.slice(prefix.length)).sort();
    } catch (e) {
      throw this.#error(e, folder === '' ? 'the repository' : folder);
    }
  }

  /** Every key under `folder`, at any depth. */
  async #allUnder(folder: string): Promise<string[]> {
    const { client, sdk } = await this.#s3();
    const out: string[] = [];
    let token: string | undefined;
    do {
      const r = await client.send(new sdk.ListObjectsV2Command({ Bucket: this.spec.bucket, Prefix: this.#key(folder), ...(token ? { ContinuationToken: token } : {}) }));
      for (const o of r.Contents ?? []) if (o.Key) out.push(o.Key);
      token = r.IsTruncated ? r.NextContinuationToken : undefined;
    } while (token);
    return out;
  }

  stagingPath(name: string): string {
    return path.join(this.cacheDir, 'staging', `${name.replace(/\/$/, '')}${TEMP_MARK}${process.pid}.${threadId}`);
  }

  /** Uploads what was built at stagingPath(name): a file, or a folder's files with its manifest last; the local copy goes. */
  async commit(name: string): Promise<void> {
    const staged = this.stagingPath(name);
    const st = await fs.promises.stat(staged);
    if (st.isDirectory()) {
      const files = (await fs.promises.readdir(staged)).sort((a, b) => Number(a === 'manifest.json') - Number(b === 'manifest.json') || a.localeCompare(b));
      const folder = name.endsWith('/') ? name : `${name}/`;
      for (const f of files) await this.#upload(path.join(staged, f), `${folder}${f}`);
    } else await this.#upload(staged, name);
    await fs.promises.rm(staged, { recursive: true, force: true });
  }

  /** A local file uploaded as `name`: one PUT when small, else a multipart upload of parts read in turn (memory: one part). */
  async #upload(file: string, name: string): Promise<void> {
    const size = (await fs.promises.stat(file)).size;
    const partBytes = params.s3PartBytes;
    const handle = await fs.promises.open(file, 'r');
    try {
      if (size <= partBytes) {
        const data = Buffer.allocUnsafe(size);
        await handle.read(data, 0, size, 0);
        await this.write(name, data);
        return;
      }
      const upload = await this.startUpload(name);
      try {
        const data = Buffer.allocUnsafe(partBytes);
        for (let at = 0, n = 1; at < size; at += partBytes, n++) {
          const length = Math.min(partBytes, size - at);
          const { bytesRead } = await handle.read(data, 0, length, at);
          if (bytesRead !== length) throw new BlkError('EIO', `${file} changed while it was uploaded`);
          const body = data.subarray(0, length);
          await upload.part(n, body, md5(body));
        }
        await upload.complete();
      } catch (e) {
        await upload.abort();
        throw e;
      }
    } finally {
      await handle.close();
    }
  }

  async startUpload(name: string): Promise<PartUpload> {
    const { client, sdk } = await this.#s3();
    const key = this.#key(name);
    let uploadId: string | undefined;
    try {
      uploadId = (await client.send(new sdk.CreateMultipartUploadCommand({ Bucket: this.spec.bucket, Key: key, ...this.#retention(name) }))).UploadId;
    } catch (e) {
      throw this.#error(e, name);
    }
    if (!uploadId) throw new BlkError('EIO', `${name} in ${this.location}: the server gave no upload id`);
    const id = uploadId;
    const parts: Array<{ ETag: string; PartNumber: number }> = [];
    return {
      part: async (n, data, md5) => {
        await paced(this.spec.uploadLimit, data.length);
        try {
          const r = await client.send(new sdk.UploadPartCommand({ Bucket: this.spec.bucket, Key: key, UploadId: id, PartNumber: n, Body: data, ContentLength: data.length, ContentMD5: md5 }));
          if (!r.ETag) throw new BlkError('EIO', `${name} in ${this.location}: part ${n} has no ETag`);
          parts.push({ ETag: r.ETag, PartNumber: n });
        } catch (e) {
          throw this.#error(e, `${name} (part ${n})`);
        }
      },
      complete: async () => {
        try {
          await client.send(new sdk.CompleteMultipartUploadCommand({ Bucket: this.spec.bucket, Key: key, UploadId: id, MultipartUpload: { Parts: parts.sort((a, b) => a.PartNumber - b.PartNumber) } }));
        } catch (e) {
          throw this.#error(e, name);
        }
      },
      abort: async () => {
        await client.send(new sdk.AbortMultipartUploadCommand({ Bucket: this.spec.bucket, Key: key, UploadId: id })).catch(() => undefined);
      },
    };
  }

  async sync(): Promise<void> {}

  async abortUploads(before: number): Promise<number> {
    const { client, sdk } = await this.#s3();
    let aborted = 0;
    let keyMarker: string | undefined;
    let idMarker: string | undefined;
    try {
      do {
        const r = await client.send(new sdk.ListMultipartUploadsCommand({ Bucket: this.spec.bucket, Prefix: this.spec.prefix, ...(keyMarker ? { KeyMarker: keyMarker, UploadIdMarker: idMarker } : {}) }));
        for (const u of r.Uploads ?? []) {
          if (!u.Key || !u.UploadId || (u.Initiated?.getTime() ?? 0) >= before) continue;
          await client.send(new sdk.AbortMultipartUploadCommand({ Bucket: this.spec.bucket, Key: u.Key, UploadId: u.UploadId }));
          aborted++;
        }
        keyMarker = r.IsTruncated ? r.NextKeyMarker : undefined;
        idMarker = r.NextUploadIdMarker;
      } while (keyMarker);
    } catch (e) {
      throw this.#error(e, 'unfinished uploads');
    }
    return aborted;
  }

  lock(onWait?: (holder: string) => void): Promise<RepositoryLock> {
    return lockWithObjects(this, onWait);
  }

  /** None: every object of a bucket is read by request (whole, or by range). */
  localPath(): null {
    return null;
  }
}

export function md5(data: Uint8Array): string {
  return createHash('md5').update(data).digest('base64');
}
