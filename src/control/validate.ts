// Owns the type guards that turn untrusted control parameters into typed values, or EINVAL with a reason.
import { BlkError } from '../errors.js';

export type Params = Readonly<Record<string, unknown>>;

export function asParams(value: unknown, method: string): Params {
  if (value === undefined || value === null) return {};
  if (typeof value !== 'object' || Array.isArray(value)) throw new BlkError('EINVAL', `${method}: params must be an object`);
  return value as Params;
}

export function requireString(p: Params, key: string, method: string): string {
  const v = p[key];
  if (typeof v !== 'string' || v === '') throw new BlkError('EINVAL', `${method}: '${key}' must be a non-empty string`);
  if (v.length > 4096 || v.includes('\0')) throw new BlkError('EINVAL', `${method}: '${key}' is not a valid string`);
  return v;
}

export function optionalString(p: Params, key: string, method: string): string | undefined {
  return p[key] === undefined ? undefined : requireString(p, key, method);
}

export function optionalBoolean(p: Params, key: string, method: string): boolean | undefined {
  const v = p[key];
  if (v === undefined) return undefined;
  if (typeof v !== 'boolean') throw new BlkError('EINVAL', `${method}: '${key}' must be true or false`);
  return v;
}

export function requireInteger(p: Params, key: string, method: string, minimum = 0, maximum = Number.MAX_SAFE_INTEGER): number {
  const v = p[key];
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < minimum || v > maximum) {
    throw new BlkError('EINVAL', `${method}: '${key}' must be an integer from ${minimum} to ${maximum}, not ${JSON.stringify(v)}`);
  }
  return v;
}

export function requireArray(p: Params, key: string, method: string, maximumLength: number): unknown[] {
  const v = p[key];
  if (!Array.isArray(v)) throw new BlkError('EINVAL', `${method}: '${key}' must be an array`);
  if (v.length > maximumLength) throw new BlkError('EINVAL', `${method}: '${key}' has more than ${maximumLength} entries`);
  return v;
}
