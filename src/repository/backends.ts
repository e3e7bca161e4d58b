// Owns finding the backend a repository lives in: from what a user gives (a directory), or from a
// spec another thread was handed.
import type { Backend, BackendSpec } from './backend.js';
import { LocalBackend } from './local-backend.js';

/** The backend of a repository location: a directory. */
export function backendAt(location: string): Backend {
  return new LocalBackend(location);
}

/** The backend a spec names, opened again (in a worker thread, say). */
export function openBackend(spec: BackendSpec): Backend {
  return new LocalBackend(spec.dir);
}
