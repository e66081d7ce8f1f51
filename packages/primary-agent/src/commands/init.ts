import { randomBytes } from 'node:crypto';
import { existsSync } from 'node:fs';
import { chmod, mkdir, stat } from 'node:fs/promises';
import { join, resolve } from 'node:path';
import {
  STANDBY_ID_PATTERN,
  TandemError,
  formatIdentityFile,
  generateAgeKeyPair,
  generateSigningKeyPair,
  loadPrimarySites,
  parseFilestoreUrl,
  requireString,
  selectSite,
  siteOption,
  writeFileAtomic,
  type Command,
} from '@tandem/shared';
import { formatFilestoreInit, initFilestore } from './init-filestore.js';

const KEY_FILES = ['backup.agekey', 'backup.agepub', 'signing.key', 'signing.pub', 'files.agekey'] as const;

/** standby-<id>.token for each --standby ID, else one standby.token. */
function standbyTokenFiles(ids: string[]): Array<{ id: string | null; file: string }> {
  if (ids.length === 0) return [{ id: null, file: 'standby.token' }];
  return ids.map((id) => ({ id, file: `standby-${id}.token` }));
}

function standbyIds(value: unknown): string[] {
  const ids = value === undefined ? [] : Array.isArray(value) ? value.map(String) : [String(value)];
  for (const id of ids) {
    if (!STANDBY_ID_PATTERN.test(id)) {
      throw new TandemError('config', 'USAGE', `tandem-primary init: --standby ${JSON.stringify(id)} is not a standby id: 1-63 letters, digits, ".", "_" or "-"`, {
        hint: "give each standby's standbyId (its standby.yml), e.g. --standby web2",
      });
    }
  }
  if (new Set(ids).size !== ids.length) throw new TandemError('config', 'USAGE', 'tandem-primary init: a --standby id is given twice');
  return ids;
}

/**
 * The keys directory 0700, whether it is new or not: every file in it is integrity-critical, and a
 * directory others can write lets them replace any of them (mkdir's mode applies only to a new one).
 */
async function keysDir(dir: string): Promise<void> {
  await mkdir(dir, { recursive: true, mode: 0o700 });
  const st = await stat(dir);
  const uid = process.geteuid?.();
  if (uid !== undefined && st.uid !== uid && st.uid !== 0) {
    throw new TandemError('config', 'KEYS_DIR_UNSAFE', `${dir} is owned by uid ${st.uid}, not by this user (uid ${uid}) or root: refusing to write keys where another user can replace them`, {
      hint: 'choose a directory of your own, e.g. /etc/tandem/keys as root',
    });
  }
  if ((st.mode & 0o7777) !== 0o700) await chmod(dir, 0o700);
}

export const initCommand: Command = {
  name: 'init',
  summary: 'generate the keys and tokens for a site, and create its filestore',
  help: `Usage: tandem-primary init --keys-dir DIR [--standby ID]... [--filestore-url URL] [--force] [--json]
       tandem-primary init --filestore --config FILE [--site NAME] [--json]

The first form generates the key files and tokens of a site in DIR (made 0700, also when it
exists), each written 0600, and says which file goes where:
  backup.agekey   age identity (private): for the standby and for your safe, NOT the primary
  backup.agepub   age recipient (public): the primary encrypts to it
  signing.key     Ed25519 private key: the primary signs manifests with it
  signing.pub     Ed25519 public key: the standby verifies with it
  files.agekey    the files key (keys.filesKeyFile): on the primary AND every standby; names
                  and indexes the content objects of the files (only what changed is stored)
  control.token   the primary's control token (server.tokenFile): POST /v1/backup, /status,
                  /metrics; stays on the primary (\`tandem-primary backup\` uses it)
  read.token      the monitoring token (server.readTokenFile, on either agent): /status and
                  /metrics only; what Prometheus gets
  standby-ID.token  one per --standby ID (standby.token without --standby): that standby's own
                  token for the push channel and a switchover; the primary lists it under
                  standbys: (id, tokenFile), the standby names it as primary.tokenFile

With --filestore-url URL, and in the second form for the filestore an existing config names
(filestore.url), it creates the filestore: it writes tandem-filestore.json at its root, which
every tandem command and daemon looks for before it uses a filestore, refusing one without it.
For a file:// URL this is the one step that creates the directory itself (0700; its parent must
exist): a filestore directory that goes missing later (a file system that is not mounted, a
mistyped URL) is refused, never created again. An s3:// bucket must exist; the marker goes at
the URL's prefix (credentials as for the agent: AWS_ACCESS_KEY_ID, AWS_PROFILE, ...). A filestore
that has its marker is left as it is (and said so); one used by an earlier tandem, without a
marker, gets one the same way, its sets untouched.

Options:
  --keys-dir DIR       where to write the keys (required in the first form)
  --standby ID         a standby's standbyId (repeatable): a token file for each
  --filestore-url URL  also create the filestore at URL (file:///... or s3://bucket/prefix)
  --force              overwrite existing key files (sets made with the old keys stay
                       readable only with the old backup.agekey)
  --filestore          create the filestore that the config names (the second form)
  --config FILE        with --filestore: the primary agent's config
  --site NAME          with --filestore: a site of that config (optional: its sites share
                       the one filestore.url, said at the top level)
  --json               print what was written (the paths, the filestore) as JSON

Exit status: 0 done (also when the filestore existed); 1 failed (e.g. the filestore directory's
parent does not exist); 2 bad config or usage, key files exist (without --force), or the
filestore holds a marker that is not tandem's.`,
  options: {
    'keys-dir': { type: 'string' },
    standby: { type: 'string', multiple: true },
    'filestore-url': { type: 'string' },
    force: { type: 'boolean' },
    filestore: { type: 'boolean' },
    config: { type: 'string', short: 'c' },
    site: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run({ values, out }) {
    if (values.filestore === true) {
      const extra = ['keys-dir', 'standby', 'filestore-url', 'force'].filter((k) => values[k] !== undefined);
      if (extra.length > 0) {
        throw new TandemError('config', 'USAGE', `tandem-primary init --filestore takes --config FILE (and --json), not ${extra.map((k) => `--${k}`).join(', ')}`, {
          hint: 'create the keys first (tandem-primary init --keys-dir DIR), write the config, then run tandem-primary init --filestore --config FILE',
        });
      }
      // A config with several sites names one filestore for all of them (filestore: is said once, at
      // the top level): --site, when given, must name one of them.
      const { sites } = loadPrimarySites(requireString(values, 'config', 'tandem-primary init --filestore'));
      const site = siteOption(values);
      const config = site === undefined ? sites[0]! : selectSite(sites, site, 'tandem-primary init --filestore');
      const r = await initFilestore(config.filestore.url, config.filestore.location);
      out(values.json === true ? JSON.stringify({ filestore: r }) : formatFilestoreInit(r));
      return;
    }
    if (values.config !== undefined || values.site !== undefined) {
      throw new TandemError('config', 'USAGE', `tandem-primary init: --${values.config !== undefined ? 'config' : 'site'} goes with --filestore (tandem-primary init --filestore --config FILE)`);
    }
    const dir = resolve(requireString(values, 'keys-dir', 'tandem-primary init'));
    const standbys = standbyTokenFiles(standbyIds(values.standby));
    const url = values['filestore-url'];
    const filestoreAt = typeof url === 'string' ? { url, location: parseFilestoreUrl(url) } : undefined;
    const names = [...KEY_FILES, 'control.token', 'read.token', ...standbys.map((s) => s.file)];
    const path = (f: string) => join(dir, f);
    const existing = names.filter((f) => existsSync(path(f)));
    if (existing.length > 0 && values.force !== true) {
      throw new TandemError('config', 'KEYS_EXIST', `${dir} already holds ${existing.join(', ')}; refusing to overwrite keys`, {
        hint: 'overwriting backup.agekey makes every set encrypted to it unreadable unless you kept a copy; pass --force only if that is what you want',
      });
    }
    // The filestore before the keys: should it fail, nothing is written, and init may run again.
    const filestore = filestoreAt === undefined ? undefined : await initFilestore(filestoreAt.url, filestoreAt.location);
    await keysDir(dir);
    const age = generateAgeKeyPair();
    const sig = generateSigningKeyPair();
    const token = () => `${randomBytes(32).toString('base64url')}\n`;
    await writeFileAtomic(path('backup.agekey'), formatIdentityFile(age, new Date()));
    await writeFileAtomic(path('backup.agepub'), `${age.recipient}\n`);
    await writeFileAtomic(path('signing.key'), sig.privateKeyPem);
    await writeFileAtomic(path('signing.pub'), sig.publicKeyPem);
    await writeFileAtomic(path('files.agekey'), formatIdentityFile(generateAgeKeyPair(), new Date()));
    await writeFileAtomic(path('control.token'), token());
    await writeFileAtomic(path('read.token'), token());
    for (const s of standbys) await writeFileAtomic(path(s.file), token());
    if (values.json === true) {
      out(JSON.stringify({ keysDir: dir, recipient: age.recipient, files: Object.fromEntries(names.map((f) => [f, path(f)])), standbys: standbys.map((s) => ({ id: s.id, tokenFile: path(s.file) })), ...(filestore === undefined ? {} : { filestore }) }));
      return;
    }
    const entries = standbys.map((s) => `      - id: ${s.id ?? '<the standbyId of that standby>'}\n        tokenFile: ${path(s.file)}`).join('\n');
    out(`Keys and tokens written to ${dir} (the directory 0700, each file 0600):
  primary  keys.recipientFile:    ${path('backup.agepub')}
  primary  keys.signingKeyFile:   ${path('signing.key')}
  primary  keys.filesKeyFile:     ${path('files.agekey')}   (the same file on every standby)
  primary  server.tokenFile:      ${path('control.token')}   (control: stays on the primary)
  primary  server.readTokenFile:  ${path('read.token')}   (monitoring: give it to Prometheus)
  primary  standbys:
${entries}
  standby  keys.identityFile:     ${path('backup.agekey')}   (copy to the standby, then delete it here)
  standby  keys.verifyKeyFile:    ${path('signing.pub')}
  standby  keys.filesKeyFile:     ${path('files.agekey')}   (a copy of the primary's)
${standbys.map((s) => `  standby  primary.tokenFile:     ${path(s.file)}   (copy to ${s.id === null ? 'the standby' : `standby ${s.id}`} only)`).join('\n')}
  standby  server.readTokenFile:  ${path('read.token')}   (optional: a copy, so Prometheus scrapes both with one token)

Copy files to the standby with their mode (0600) into a directory only its agent's user can write:
the agents refuse key and token files that others can write or that another user owns.
Store a copy of backup.agekey somewhere safe and offline: every backup set is encrypted to it,
and losing it means losing the backups. The primary never needs it.
Recipient: ${age.recipient}`);
    out(
      filestore === undefined
        ? 'Next: write the primary\'s config (its filestore.url says where the backups go), then create the filestore with `tandem-primary init --filestore --config FILE`.'
        : formatFilestoreInit(filestore),
    );
  },
};
