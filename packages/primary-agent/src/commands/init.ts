import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { mkdir } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import {
  TandemError,
  formatIdentityFile,
  generateAgeKeyPair,
  generateSigningKeyPair,
  requireString,
  writeFileAtomic,
  type Command,
} from '@tandem/shared';

const FILES = ['backup.agekey', 'backup.agepub', 'signing.key', 'signing.pub', 'ws.token'] as const;

export const initCommand: Command = {
  name: 'init',
  summary: 'generate the encryption and signing keys and the daemon token for a site',
  help: `Usage: tandem-primary init --keys-dir DIR [--force]

Generates the key files of a site in DIR (created 0700), each written 0600:
  backup.agekey   age identity (private): for the standby and for your safe, NOT the primary
  backup.agepub   age recipient (public): the primary encrypts to it
  signing.key     Ed25519 private key: the primary signs manifests with it
  signing.pub     Ed25519 public key: the standby verifies with it
  ws.token        the shared secret of the daemons (push channel, /status, /metrics):
                  server.tokenFile on the primary, primary.tokenFile on the standby

Options:
  --keys-dir DIR  where to write the keys (required)
  --force         overwrite existing key files (sets made with the old keys stay
                  readable only with the old backup.agekey)
  --json          print the written paths as JSON`,
  options: { 'keys-dir': { type: 'string' }, force: { type: 'boolean' }, json: { type: 'boolean' } },
  async run({ values, out }) {
    const dir = resolve(requireString(values, 'keys-dir', 'tandem-primary init'));
    const paths = Object.fromEntries(FILES.map((f) => [f, join(dir, f)])) as Record<(typeof FILES)[number], string>;
    const existing = FILES.filter((f) => existsSync(paths[f]));
    if (existing.length > 0 && values.force !== true) {
      throw new TandemError('config', 'KEYS_EXIST', `${dir} already holds ${existing.join(', ')}; refusing to overwrite keys`, {
        hint: 'overwriting backup.agekey makes every set encrypted to it unreadable unless you kept a copy; pass --force only if that is what you want',
      });
    }
    await mkdir(dir, { recursive: true, mode: 0o700 });
    const age = generateAgeKeyPair();
    const sig = generateSigningKeyPair();
    await writeFileAtomic(paths['backup.agekey'], formatIdentityFile(age, new Date()));
    await writeFileAtomic(paths['backup.agepub'], `${age.recipient}\n`);
    await writeFileAtomic(paths['signing.key'], sig.privateKeyPem);
    await writeFileAtomic(paths['signing.pub'], sig.publicKeyPem);
    await writeFileAtomic(paths['ws.token'], `${randomBytes(32).toString('base64url')}\n`);
    if (values.json === true) {
      out(JSON.stringify({ keysDir: dir, recipient: age.recipient, files: paths }));
      return;
    }
    out(`Keys written to ${dir} (mode 0600):
  primary  keys.recipientFile:  ${paths['backup.agepub']}
  primary  keys.signingKeyFile: ${paths['signing.key']}
  standby  keys.identityFile:   ${paths['backup.agekey']}   (copy to the standby, then delete it here)
  standby  keys.verifyKeyFile:  ${paths['signing.pub']}
  both     server.tokenFile (primary), primary.tokenFile (standby): ${paths['ws.token']}   (copy to the standby)

Store a copy of backup.agekey somewhere safe and offline: every backup set is encrypted to it,
and losing it means losing the backups. The primary never needs it.
Recipient: ${age.recipient}`);
  },
};
