import type { KeyObject } from 'node:crypto';
import { readFileSync, statSync } from 'node:fs';
import { parseIdentityFile, parseRecipientFile } from './crypto/age.js';
import { loadSigningKey, loadVerifyKey } from './crypto/sign.js';
import { TandemError } from './errors.js';
import type { Logger } from './logger.js';

/** Reading key files with errors that say which file and what to do. */
function readKeyFile(file: string, what: string, hint: string): string {
  try {
    return readFileSync(file, 'utf8');
  } catch (err) {
    const code = (err as NodeJS.ErrnoException).code;
    const why = code === 'ENOENT' ? 'no such file' : code === 'EACCES' ? 'permission denied' : String(err);
    throw new TandemError('config', 'KEY_UNREADABLE', `${what} ${file}: ${why}`, { hint });
  }
}

/** Private keys readable by group or others are a leak waiting to happen: say so. */
function warnIfOpen(file: string, logger?: Logger): void {
  try {
    const mode = statSync(file).mode & 0o777;
    if ((mode & 0o077) !== 0) {
      logger?.warn({ file, mode: mode.toString(8) }, 'private key file is readable by group or others; chmod 600 it');
    }
  } catch {
    /* already reported by the read */
  }
}

const INIT_HINT = 'create keys with `tandem-primary init --keys-dir DIR`';

export function loadRecipients(file: string): string[] {
  return parseRecipientFile(readKeyFile(file, 'age recipient file', INIT_HINT), file);
}

export function loadIdentities(file: string, logger?: Logger): string[] {
  const text = readKeyFile(file, 'age identity file', "copy backup.agekey from where `tandem-primary init` made it");
  warnIfOpen(file, logger);
  return parseIdentityFile(text, file);
}

export function loadSigningKeyFile(file: string, logger?: Logger): KeyObject {
  const text = readKeyFile(file, 'signing key file', INIT_HINT);
  warnIfOpen(file, logger);
  return loadSigningKey(text, file);
}

export function loadVerifyKeyFile(file: string): KeyObject {
  return loadVerifyKey(readKeyFile(file, 'verify key file', "copy signing.pub from where `tandem-primary init` made it"), file);
}
