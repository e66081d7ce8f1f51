#!/usr/bin/env node
import { TOOL_VERSION, main } from '@tandem/shared';
import { backupCommand } from './commands/backup.js';
import { checkCommand } from './commands/check.js';
import { initCommand } from './commands/init.js';
import { listCommand } from './commands/list.js';
import { pruneCommand } from './commands/prune.js';
import { runCommand } from './commands/run.js';
import { walPushCommand } from './commands/wal-push.js';

main({
  bin: 'tandem-primary',
  version: TOOL_VERSION,
  description: 'makes encrypted, signed backup sets of a site and uploads them to a filestore',
  commands: [initCommand, checkCommand, backupCommand, listCommand, runCommand, pruneCommand, walPushCommand],
});
