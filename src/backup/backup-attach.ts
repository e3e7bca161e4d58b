// Owns backup_attach as a client asks for it: the backup checked here first (a clear ENOENT naming the
// repository), then the daemon asked to serve that device of it as a device of its own.
import type { BlksnapClient } from '../client/connection.js';
import * as api from '../control/protocol.js';
import { BlkError } from '../errors.js';
import type { Repository } from '../repository/repository.js';

export async function attachBackup(repo: Repository, client: BlksnapClient, options: Omit<api.BackupAttachParams, 'repo'>): Promise<api.DeviceInfo> {
  await repo.manifest(options.id);
  const location = repo.backend.localPath('');
  if (location === null) throw new BlkError('ENOTSUP', `backup_attach serves backups of a local repository, not of ${repo.location}`);
  // The daemon gets an encrypted repository's secret for this attach only, over the control socket.
  const secret = repo.cipher.secret;
  return client.call(api.BackupAttach, { ...options, repo: location, ...(secret ? { secret: secret.toString('base64') } : {}) });
}
