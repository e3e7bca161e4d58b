// Owns who a local peer is: a group's id by name, and the groups a process holds, for the control
// socket's access check (SO_PEERCRED gives the peer's uid, gid and pid).
import * as fs from 'node:fs';
import { BlkError } from '../errors.js';

/** A group's id from its name (as /etc/group lists it) or its number; ENOENT naming it when there is none. */
export function groupId(nameOrNumber: string, groupFile = '/etc/group'): number {
  if (/^\d+$/.test(nameOrNumber)) return Number(nameOrNumber);
  let text = '';
  try {
    text = fs.readFileSync(groupFile, 'utf8');
  } catch (e) {
    throw new BlkError('ENOENT', `cannot read ${groupFile} to find group ${nameOrNumber}: ${(e as NodeJS.ErrnoException).code ?? String(e)}`);
  }
  for (const line of text.split('\n')) {
    const [name, , gid] = line.split(':');
    if (name === nameOrNumber && gid !== undefined && /^\d+$/.test(gid)) return Number(gid);
  }
  throw new BlkError('ENOENT', `no group named ${nameOrNumber} in ${groupFile}`);
}

/** The supplementary groups process `pid` holds now (/proc/PID/status, in memory: no disk is waited for). */
export function processGroups(pid: number): number[] {
  try {
    const status = fs.readFileSync(`/proc/${pid}/status`, 'utf8');
    const line = /^Groups:\s*(.*)$/m.exec(status)?.[1] ?? '';
    return line.split(/\s+/).filter((g) => g !== '').map(Number);
  } catch {
    return [];
  }
}
