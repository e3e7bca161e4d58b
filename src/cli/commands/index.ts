// Owns the list of the tool's commands, in the order --help, the man page and the completion give them.
import type { Command } from '../command.js';
import { backupCommands } from './backup.js';
import { cbtCommands } from './cbt.js';
import { deviceCommands } from './device.js';
import { jobCommands } from './job.js';
import { keyCommands } from './key.js';
import { snapshotCommands } from './snapshot.js';

export const commands: readonly Command[] = [...deviceCommands, ...cbtCommands, ...snapshotCommands, ...backupCommands, ...keyCommands, ...jobCommands];
