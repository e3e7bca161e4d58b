// Owns a backup's manifest (backups/ID/manifest.json): what it holds, readable by a person, checked
// by the SHA-256 of its body. Written last: a backup exists only once its manifest does.
import { BlkError } from '../errors.js';
import type { Backend } from './backend.js';
import { aadOf, type ObjectCipher } from './cipher.js';
import { sha256 } from './digest.js';
import type { BackupHost } from './host.js';
import { isDeviceName, names } from './layout.js';

export interface ManifestDevice {
  name: string;
  size: number;
  /** The chunk size: the device's CBT block size at the backup. */
  chunkSize: number;
  mode: 'full' | 'incremental';
  generationId: string;
  /** The snapshot number of the backup's take: the next incremental reads blocks with CBT byte > this. */
  changesNumber: number;
  readBytes: number;
  storedBytes: number;
  /** The index root, beside the manifest. */
  index: string;
}

export interface Manifest {
  version: 1;
  id: string;
  time: string;
  /** Absent in backups made before hosts were recorded: they count as any host's. */
  host?: BackupHost;
  devices: ManifestDevice[];
}


export function encodeManifest(m: Manifest): Buffer {
  const body = JSON.stringify(m, null, 2);
  return Buffer.from(JSON.stringify({ manifest: m, sha256: sha256(Buffer.from(body)).toString('hex') }, null, 2));
}

/** Backup `id`'s manifest, checked; ENOENT when the backup does not exist, EIO naming what is wrong when it is damaged. */
export async function readManifest(backend: Backend, id: string, cipher: ObjectCipher): Promise<Manifest> {
  let bytes: Buffer;
  try {
    bytes = await backend.read(names.manifest(id));
  } catch (e) {
    if ((e as BlkError).code === 'ENOENT') throw new BlkError('ENOENT', `no backup ${id} in ${backend.location}`);
    throw new BlkError('EIO', `manifest of backup ${id} in ${backend.location} cannot be read: ${(e as Error).message}`);
  }
  const where = `${backend.location}/${names.manifest(id)}`;
  return decodeManifest(cipher.open(bytes, aadOf('manifest', names.manifest(id)), `manifest ${where}`), where);
}

/** The largest manifest taken: thousands of devices' worth; a larger file is not one this program wrote. */
const MAXIMUM_MANIFEST = 16 * 1024 * 1024;

/** A manifest's bytes, checked (JSON, checksum, every field's shape); EIO naming `file` and what is wrong. */
export function decodeManifest(bytes: Buffer, file: string): Manifest {
  if (bytes.length > MAXIMUM_MANIFEST) throw new BlkError('EIO', `manifest ${file} is ${bytes.length} bytes, more than any manifest`);
  let doc: { manifest: Manifest; sha256: string };
  try {
    doc = JSON.parse(bytes.toString('utf8')) as { manifest: Manifest; sha256: string };
  } catch {
    throw new BlkError('EIO', `manifest ${file} is not JSON`);
  }
  if (typeof doc !== 'object' || doc === null || typeof doc.manifest !== 'object' || doc.manifest === null) throw new BlkError('EIO', `manifest ${file} holds no manifest`);
  if (sha256(Buffer.from(JSON.stringify(doc.manifest, null, 2))).toString('hex') !== doc.sha256) {
    throw new BlkError('EIO', `manifest ${file} fails its checksum`);
  }
  const wrong = shapeError(doc.manifest);
  if (wrong) throw new BlkError('EIO', `manifest ${file}: ${wrong}`);
  return doc.manifest;
}

/** What in a parsed manifest is not as this program writes it (its checksum is in the file itself), or null. */
function shapeError(m: Manifest): string | null {
  const isCount = (v: unknown): boolean => Number.isSafeInteger(v) && (v as number) >= 0;
  if (m.version !== 1) return `version ${JSON.stringify(m.version)} is not 1`;
  if (typeof m.id !== 'string' || typeof m.time !== 'string') return 'id and time must be strings';
  if (m.host !== undefined && (typeof m.host !== 'object' || m.host === null || typeof m.host.name !== 'string' || typeof m.host.machineId !== 'string')) return 'host must be {name, machineId} of strings';
  if (!Array.isArray(m.devices)) return 'devices is not a list';
  for (const [i, d] of m.devices.entries()) {
    const at = `devices[${i}]`;
    if (typeof d !== 'object' || d === null) return `${at} is not an object`;
    if (typeof d.name !== 'string' || typeof d.generationId !== 'string') return `${at}: name and generationId must be strings`;
    if (!isDeviceName(d.name)) return `${at}.name ${JSON.stringify(d.name)} is not a device name`;
    // The index root lies beside the manifest: a bare file name, never a path elsewhere.
    if (typeof d.index !== 'string' || d.index === '' || d.index.includes('/') || d.index.startsWith('.')) return `${at}.index ${JSON.stringify(d.index)} is not a file name`;
    if (d.mode !== 'full' && d.mode !== 'incremental') return `${at}.mode ${JSON.stringify(d.mode)} is not full or incremental`;
    for (const k of ['size', 'chunkSize', 'changesNumber', 'readBytes', 'storedBytes'] as const) {
      if (!isCount(d[k])) return `${at}.${k} ${JSON.stringify(d[k])} is not a byte count`;
    }
  }
  return null;
}
