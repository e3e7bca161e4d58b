// Owns who this machine is to a repository: its host name (or the one a user gives) and its machine
// id, recorded in each backup's manifest and each key it adds.
import * as fs from 'node:fs';
import * as os from 'node:os';

/** Who made a backup: a host name (--host, else the hostname) and the machine's id (/etc/machine-id; '' where there is none). */
export interface BackupHost {
  name: string;
  machineId: string;
}

/** This machine as a backup records it, named `name` when given. */
export function thisHost(name?: string): BackupHost {
  let machineId = '';
  try {
    machineId = fs.readFileSync('/etc/machine-id', 'utf8').trim();
  } catch {
    // none here
  }
  return { name: name ?? os.hostname(), machineId };
}

/** Whether a backup of `host` (undefined: made before hosts were recorded) is one of `mine`: the same name. */
export function isSameHost(host: BackupHost | undefined, mine: BackupHost): boolean {
  return host === undefined || host.name === mine.name;
}
