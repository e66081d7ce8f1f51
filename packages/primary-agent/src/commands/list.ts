import type { KeyObject } from 'node:crypto';
import {
  formatBytes,
  layout,
  listSetDirs,
  loadPrimaryConfig,
  siteOption,
  openFilestore,
  readVerifiedLatest,
  requireFilestoreMarker,
  requireString,
  type Command,
  type Filestore,
  type Logger,
} from '@tandem/shared';
import { retentionVerifyKey } from '../retention/run.js';

export interface SetListing {
  setId: string;
  createdAt: string | null;
  committed: boolean;
  latest: boolean;
  objects: number;
  bytes: number;
}

/**
 * The site's sets, oldest first (compareSets), then any directory under sets/ whose name is not a
 * set id. `latest` marks the set latest.json names only when it verifies with `verifyKey` and is
 * this site's (a latest.json that does not is reported through `logger` and marks nothing).
 */
export async function setListing(fs: Filestore, site: string, verifyKey: KeyObject, logger?: Logger): Promise<SetListing[]> {
  const { sets, strays } = await listSetDirs(fs, site);
  let latestId: string | undefined;
  try {
    latestId = (await readVerifiedLatest(fs, site, verifyKey))?.latest.setId;
  } catch (err) {
    logger?.warn({ err }, `${fs.description}/${layout.latest(site)} does not verify: no set is marked latest`);
  }
  return [
    ...sets.map((s) => ({ setId: s.setId, createdAt: s.time.toISOString(), committed: s.committed, latest: false, objects: s.objects.length, bytes: s.bytes })),
    ...strays.map((d) => ({ setId: d.name, createdAt: null, committed: d.committed, latest: false, objects: d.objects.length, bytes: d.bytes })),
  ].map((s) => (s.setId === latestId ? { ...s, latest: true } : s));
}

export const listCommand: Command = {
  name: 'list',
  summary: 'list the backup sets in the filestore',
  help: `Usage: tandem-primary list --config FILE [--site NAME] [--json]

Lists the site's sets, oldest first: id, creation time, stored size, and which one latest.json
names (when it verifies with the public half of keys.signingKeyFile; else a warning says so). Sets without a manifest are leftovers of interrupted backups: they are marked
"uncommitted", are never applied by a standby, and are removed by the next backup.

A filestore without tandem-filestore.json at its root (see \`tandem-primary init --help\`) is
refused, exit 2: a missing filestore directory is never created.

Options:
  --config FILE  the primary agent's config (required)
  --site NAME    the site whose sets to list, of a config with several (sites:, sitesDir:); not
                 needed when the config holds one site
  --json         print a JSON array of {setId, createdAt, committed, latest, objects, bytes}`,
  options: { config: { type: 'string', short: 'c' }, site: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, out, logger }) {
    const config = loadPrimaryConfig(requireString(values, 'config', 'tandem-primary list'), siteOption(values), 'tandem-primary list');
    const fs = openFilestore(config.filestore.location);
    try {
      await requireFilestoreMarker(fs, { url: config.filestore.url });
      const sets = await setListing(fs, config.site, retentionVerifyKey(config, logger), logger);
      if (values.json === true) {
        out(JSON.stringify(sets));
        return;
      }
      if (sets.length === 0) {
        out(`no sets for site "${config.site}" in ${fs.description}`);
        return;
      }
      for (const s of sets) {
        const state = s.committed ? (s.latest ? 'committed, latest' : 'committed') : 'UNCOMMITTED leftover';
        out(`${s.setId}  ${s.createdAt ?? '?'}  ${formatBytes(s.bytes).padStart(10)}  ${state}`);
      }
    } finally {
      await fs.close();
    }
  },
};
