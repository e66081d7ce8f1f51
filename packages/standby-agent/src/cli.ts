import { TOOL_VERSION, main } from '@tandem/shared';
import { applyCommand } from './commands/apply.js';
import { checkCommand } from './commands/check.js';
import { decryptCommand } from './commands/decrypt.js';
import { promoteCommand } from './commands/promote.js';
import { runCommand } from './commands/run.js';
import { statusCommand } from './commands/status.js';
import { switchoverCommand } from './commands/switchover.js';
import { verifyCommand } from './commands/verify.js';
import { walFetchCommand } from './commands/wal-fetch.js';
import { rejoinCommand } from './commands/rejoin.js';

main({
  bin: 'tandem-standby',
  version: TOOL_VERSION,
  description: 'keeps a standby site equal to the newest committed backup set, and promotes it',
  commands: [runCommand, statusCommand, checkCommand, applyCommand, verifyCommand, decryptCommand, promoteCommand, switchoverCommand, rejoinCommand, walFetchCommand],
});
