// Owns the package's face (import ... from 'blksnap'): the client library, as blksnap's C++ library has
// it (Service, Cbt, Session), the NBD client, and the backup repository with its programs.
export { BlksnapClient } from './client/connection.js';
export { Cbt } from './client/cbt.js';
export { Service } from './client/service.js';
export { Session, type SessionOptions } from './client/session.js';
export { NbdClient, parseNbdUri, type Extent, type NbdTarget, type NbdTlsOptions } from './client/nbd-client.js';
export { defaultControlPath } from './control/paths.js';
export type { AttachParams, BackupAttachParams, CbtInfo, DeviceInfo, ImageInfo, SectorRange, SnapshotEventResult, SnapshotInfo, VersionResult } from './control/protocol.js';
export { BlkError, type Errno } from './errors.js';
export { Repository, parseCompression, type BackupSummary, type RepositoryConfig } from './repository/repository.js';
export { createBackup, type CreateOptions, type CreateResult } from './backup/backup-create.js';
export { restoreBackup, type RestoreOptions, type RestoreResult } from './backup/backup-restore.js';
export { verifyRepository, type VerifyOptions, type VerifyResult } from './backup/backup-verify.js';
export { pruneRepository, type PruneOptions, type PruneResult } from './backup/backup-prune.js';
export { attachBackup } from './backup/backup-attach.js';
export type { Progress } from './backup/progress.js';
