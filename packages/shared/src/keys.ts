import type { KeyObject } from 'node:crypto';
import { parseIdentityFile, parseRecipientFile } from './crypto/age/index.js';
import { loadSigningKey, loadVerifyKey } from './crypto/sign.js';
import type { Logger } from './logger.js';
import { readTrustedFile } from './trusted-file.js';

/**
 * Reading key files with errors that say which file and what to do. Every key file, public or
 * private, must be one only this agent's user (or root) can change (readTrustedFile): a replaced
 * public key is as bad as a stolen private one.
 */
function readKeyFile(file: string, what: string, hint: string, secret: boolean, logger?: Logger): string {
  return readTrustedFile(file, { what, unreadableCode: 'KEY_UNREADABLE', hint, secret, logger });
}

const INIT_HINT = 'create keys with `tandem-primary init --keys-dir DIR`';

export function loadRecipients(file: string): string[] {
  return parseRecipientFile(readKeyFile(file, 'age recipient file', INIT_HINT, false), file);
}

export function loadIdentities(file: string, logger?: Logger): string[] {
  return parseIdentityFile(readKeyFile(file, 'age identity file', "copy backup.agekey from where `tandem-primary init` made it", true, logger), file);
}

export function loadSigningKeyFile(file: string, logger?: Logger): KeyObject {
  return loadSigningKey(readKeyFile(file, 'signing key file', INIT_HINT, true, logger), file);
}

export function loadVerifyKeyFile(file: string): KeyObject {
  return loadVerifyKey(readKeyFile(file, 'verify key file', "copy signing.pub from where `tandem-primary init` made it", false), file);
}
