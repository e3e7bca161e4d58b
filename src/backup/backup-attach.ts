// Owns backup_attach as a client asks for it: the backup checked here first (a clear ENOENT naming the
// repository), then the daemon asked to serve that device of it as a device of its own. A repository
// in a bucket is reached by the daemon with this client's access (its resolved credentials and CA),
// handed over the control socket for this attach only.
import type { BlksnapClient } from '../client/connection.js';
import * as api from '../control/protocol.js';
import type { Repository } from '../repository/repository.js';
import { S3Backend } from '../repository/s3-backend.js';

export async function attachBackup(repo: Repository, client: BlksnapClient, options: Omit<api.BackupAttachParams, 'repo'>): Promise<api.DeviceInfo> {
  await repo.manifest(options.id);
  // The daemon gets an encrypted repository's secret for this attach only, over the control socket.
  const secret = repo.cipher.secret;
  const withSecret = secret ? { secret: secret.toString('base64') } : {};
  const backend = repo.backend;
  if (backend instanceof S3Backend) {
    const { credentials, caPem } = await backend.access();
    const spec = backend.spec;
    const s3: api.S3Access = { ...(spec.endpoint ? { endpoint: spec.endpoint } : {}), region: spec.region, pathStyle: spec.pathStyle, ...(caPem ? { ca: caPem } : {}), ...credentials };
    return client.call(api.BackupAttach, { ...options, repo: repo.location, ...withSecret, s3 });
  }
  return client.call(api.BackupAttach, { ...options, repo: backend.localPath('') as string, ...withSecret });
}
