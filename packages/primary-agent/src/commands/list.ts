import type { KeyObject } from 'node:crypto';
import {
  describeError,
  layout,
  isNotFound,
  loadPrimaryConfig,
  openFilestore,
  parseSetId,
  requireString,
  verifyLatest,
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
 * The site's sets. `latest` marks the set latest.json names only when it verifies with `verifyKey`
 * (a latest.json that does not is reported through `logger` and marks nothing).
 */
export async function listSets(fs: Filestore, site: string, verifyKey: KeyObject, logger?: Logger): Promise<SetListing[]> {
  const prefix = layout.sets(site);
  const sets = new Map<string, SetListing>();
  for (const o of await fs.list(prefix)) {
    const [id, name] = o.key.slice(prefix.length).split('/');
    if (!id || !name) continue;
    const s = sets.get(id) ?? {
      setId: id,
      createdAt: parseSetId(id)?.time.toISOString() ?? null,
      committed: false,
      latest: false,
      objects: 0,
      bytes: 0,
    };
    s.objects += 1;
    s.bytes += o.size;
    if (name === 'manifest.json') s.committed = true;
    sets.set(id, s);
  }
  let latestId: string | undefined;
  const where = `${fs.description}/${layout.latest(site)}`;
  try {
    const { body } = await fs.getBuffer(layout.latest(site));
    latestId = verifyLatest(body, verifyKey, where).setId;
  } catch (err) {
    if (isNotFound(err)) latestId = undefined;
    else logger?.warn({ err: describeError(err) }, `${where} does not verify: no set is marked latest`);
  }
  const latest = latestId ? sets.get(latestId) : undefined;
  if (latest) latest.latest = true;
  return [...sets.values()].sort((a, b) => a.setId.localeCompare(b.setId));
}

function human(n: number): string {
  const units = ['B', 'KiB', 'MiB', 'GiB', 'TiB'];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) {
    n /= 1024;
    i++;
  }
  return `${i === 0 ? n : n.toFixed(1)} ${units[i]}`;
}

export const listCommand: Command = {
  name: 'list',
  summary: 'list the backup sets in the filestore',
  help: `Usage: tandem-primary list --config FILE [--json]

Lists the site's sets, oldest first: id, creation time, stored size, and which one latest.json
names (when it verifies with the public half of keys.signingKeyFile; else a warning says so). Sets without a manifest are leftovers of interrupted backups: they are marked
"uncommitted", are never applied by a standby, and are removed by the next backup.

Options:
  --config FILE  the primary agent's config (required)
  --json         print a JSON array of {setId, createdAt, committed, latest, objects, bytes}`,
  options: { config: { type: 'string', short: 'c' }, json: { type: 'boolean' } },
  async run({ values, out, logger }) {
    const config = loadPrimaryConfig(requireString(values, 'config', 'tandem-primary list'));
    const fs = openFilestore(config.filestore.url);
    try {
      const sets = await listSets(fs, config.site, retentionVerifyKey(config, logger), logger);
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
        out(`${s.setId}  ${s.createdAt ?? '?'}  ${human(s.bytes).padStart(10)}  ${state}`);
      }
    } finally {
      await fs.close();
    }
  },
};
