// Owns where the daemon's sockets live by default: shared by the daemon and every client.
import * as os from 'node:os';
import * as path from 'node:path';

/**
 * $BLKSNAP_RUNTIME_DIR, else /run/blksnap for root, else $XDG_RUNTIME_DIR/blksnap, else
 * blksnap-UID in the temp directory: a name of the user's own (the daemon refuses it when another
 * user made it first).
 */
export function defaultRuntimeDir(env: NodeJS.ProcessEnv = process.env, uid: number = process.getuid?.() ?? 0): string {
  if (env.BLKSNAP_RUNTIME_DIR) return path.resolve(env.BLKSNAP_RUNTIME_DIR);
  if (uid === 0) return '/run/blksnap';
  return env.XDG_RUNTIME_DIR ? path.join(env.XDG_RUNTIME_DIR, 'blksnap') : path.join(os.tmpdir(), `blksnap-${uid}`);
}

/** The control socket a client uses: $BLKSNAP_CONTROL, else control.sock in the runtime directory. */
export function defaultControlPath(env: NodeJS.ProcessEnv = process.env): string {
  return env.BLKSNAP_CONTROL ? path.resolve(env.BLKSNAP_CONTROL) : path.join(defaultRuntimeDir(env), 'control.sock');
}
