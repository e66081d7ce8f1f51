import { hkdfSync } from 'node:crypto';
import { parseIdentityFile, recipientFromIdentity } from '../crypto/age/index.js';
import { TandemError } from '../errors.js';
import type { Logger } from '../logger.js';
import { readTrustedFile } from '../trusted-file.js';

/**
 * The site's files key (keys.filesKeyFile, `files.agekey`, made by `tandem-primary init`): an age
 * identity held by the primary and by every standby, never by the filestore. It is two keys in one:
 * - the HMAC key that names content objects (object-id.ts), derived from it with HKDF, so that who
 *   can list the filestore cannot test whether a file they know is in it;
 * - an age identity the files index of each set is also encrypted to, so that the primary (which
 *   holds no identity of the site's recipients) can read its own earlier indexes back: that is how
 *   it rebuilds what it knows is stored (its cache) from the filestore.
 * Content objects are encrypted to the site's recipients only.
 */
export interface FilesKey {
  /** The file it came from, for messages. */
  file: string;
  /** HMAC-SHA-256 key of object ids. */
  hmacKey: Buffer;
  /** The age identity, and its recipient (the index is encrypted to it too). */
  identity: string;
  recipient: string;
}

export function filesKeyFromIdentity(identity: string, file: string): FilesKey {
  const hmacKey = Buffer.from(hkdfSync('sha256', Buffer.from(identity.trim().toUpperCase()), Buffer.from('tandem-files-v1'), Buffer.from('object-id'), 32));
  return { file, hmacKey, identity: identity.trim(), recipient: recipientFromIdentity(identity.trim()) };
}

export function loadFilesKeyFile(file: string, logger?: Logger): FilesKey {
  const text = readTrustedFile(file, {
    what: 'files key file',
    unreadableCode: 'KEY_UNREADABLE',
    hint: 'copy files.agekey made by `tandem-primary init` (the same file on the primary and on every standby), mode 0600',
    secret: true,
    logger,
  });
  const ids = parseIdentityFile(text, file);
  if (ids.length !== 1) {
    throw new TandemError('config', 'FILES_KEY_INVALID', `${file}: a files key file holds exactly one age identity, found ${ids.length}`, {
      hint: 'use the files.agekey that `tandem-primary init` made, unchanged',
    });
  }
  return filesKeyFromIdentity(ids[0]!, file);
}
