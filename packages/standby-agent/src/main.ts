#!/usr/bin/env node
import { TOOL_VERSION, main } from '@tandem/shared';
import { applyCommand } from './commands/apply.js';
import { decryptCommand } from './commands/decrypt.js';
import { promoteCommand } from './commands/promote.js';
import { verifyCommand } from './commands/verify.js';

main({
  bin: 'tandem-standby',
  version: TOOL_VERSION,
  description: 'keeps a standby site equal to the newest committed backup set, and promotes it',
  commands: [applyCommand, verifyCommand, decryptCommand, promoteCommand],
});
