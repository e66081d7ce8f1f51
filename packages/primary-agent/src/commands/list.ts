import type { KeyObject } from 'node:crypto';
import {
  formatBytes,
  formatDuration,
  layout,
  listSetDirs,
  loadFilesKeyFile,
  loadPrimaryConfig,
  siteOption,
  openFilestore,
  readVerifiedLatest,
  requireFilestoreMarker,
  requireString,
  type Command,
  type FilesKey,
  type Filestore,
  type Logger,
} from '@tandem/shared';
import { OBJECTS_GRACE_MS, listStoredObjects, readCommittedSetPacks } from '../retention/objects-gc.js';
import { retentionVerifyKey } from '../retention/run.js';

export interface SetListing {
  setId: string;
  createdAt: string | null;
  committed: boolean;
  latest: boolean;
  objects: number;
  bytes: number;
  /**
   * With a files key, for a committed set: stored bytes of the content objects only this set
   * references, and of those it shares with other sets (0 and 0 for a set whose files are a tar);
   * null when its references could not be read (`problem` says why).
   */
  uniqueBytes?: number | null;
  sharedBytes?: number | null;
  /** With a files key, for a committed set whose references were read: how its files are stored. */
  filesAs?: 'objects' | 'tar';
  problem?: string;
}

/** What the site takes in the filestore when its files are content objects. */
export interface StorageSummary {
  /** Stored bytes of the committed sets' own objects (manifest, dump, archives, files index). */
  setsBytes: number;
  /** Content objects the committed sets reference, each counted once (their signed sizes). */
  referencedObjects: number;
  referencedBytes: number;
  /** What the site needs: setsBytes + referencedBytes. */
  neededBytes: number;
  /** Everything stored under <site>/objects/. */
  storedObjects: number;
  storedBytes: number;
  /** Stored objects no committed set references: prune deletes them once past the grace. */
  unreferencedObjects: number;
  unreferencedBytes: number;
  /** Objects a committed set references that are not stored. */
  missingObjects: number;
  /** Leftovers of interrupted backups under sets/ (not needed). */
  uncommittedBytes: number;
  /** False when a committed set's references could not be read: the figures leave them out. */
  complete: boolean;
}

export interface SiteListing {
  sets: SetListing[];
  /** null without a files key. */
  storage: StorageSummary | null;
}

/**
 * The site's sets, oldest first (compareSets), then any directory under sets/ whose name is not a
 * set id. `latest` marks the set latest.json names only when it verifies with `verifyKey` and is
 * this site's (a latest.json that does not is reported through `logger` and marks nothing).
 */
export async function setListing(fs: Filestore, site: string, verifyKey: KeyObject, logger?: Logger): Promise<SetListing[]> {
  return (await siteListing(fs, site, verifyKey, null, logger)).sets;
}

/**
 * setListing, and with a files key what each set takes of the content objects and what the site
 * takes in all. References are read as garbage collection reads them (verified manifest, then the
 * index through it); a set whose references cannot be read is marked, not fatal.
 */
export async function siteListing(fs: Filestore, site: string, verifyKey: KeyObject, filesKey: FilesKey | null, logger?: Logger): Promise<SiteListing> {
  const { sets, strays } = await listSetDirs(fs, site);
  let latestId: string | undefined;
  try {
    latestId = (await readVerifiedLatest(fs, site, verifyKey))?.latest.setId;
  } catch (err) {
    logger?.warn({ err }, `${fs.description}/${layout.latest(site)} does not verify: no set is marked latest`);
  }
  const listed: SetListing[] = [
    ...sets.map((s) => ({ setId: s.setId, createdAt: s.time.toISOString(), committed: s.committed, latest: false, objects: s.objects.length, bytes: s.bytes })),
    ...strays.map((d) => ({ setId: d.name, createdAt: null, committed: d.committed, latest: false, objects: d.objects.length, bytes: d.bytes })),
  ].map((s) => (s.setId === latestId ? { ...s, latest: true } : s));
  if (filesKey === null) return { sets: listed, storage: null };

  const read = await readCommittedSetPacks(fs, site, sets, verifyKey, filesKey);
  /** Each referenced object: its signed size and how many sets reference it. */
  const refs = new Map<string, { size: number; sets: number }>();
  for (const r of read) {
    if (!('packs' in r) || r.packs === null) continue;
    for (const p of r.packs) {
      const ref = refs.get(p.id);
      if (ref) ref.sets++;
      else refs.set(p.id, { size: p.size, sets: 1 });
    }
  }
  const bySet = new Map(read.map((r) => [r.setId, r]));
  for (const s of listed) {
    const r = bySet.get(s.setId);
    if (!s.committed || r === undefined) continue;
    if ('problem' in r) {
      Object.assign(s, { uniqueBytes: null, sharedBytes: null, problem: r.problem });
      logger?.warn({ setId: s.setId, problem: r.problem }, 'the content objects of a set cannot be counted: its manifest or files index does not verify');
      continue;
    }
    let unique = 0;
    let shared = 0;
    for (const p of r.packs ?? []) {
      if (refs.get(p.id)!.sets > 1) shared += p.size;
      else unique += p.size;
    }
    Object.assign(s, { uniqueBytes: unique, sharedBytes: shared, filesAs: r.packs === null ? 'tar' : 'objects' });
  }

  const { objects } = await listStoredObjects(fs, site);
  const stored = new Set(objects.map((o) => o.id));
  let referencedBytes = 0;
  let missingObjects = 0;
  for (const [id, r] of refs) {
    referencedBytes += r.size;
    if (!stored.has(id)) missingObjects++;
  }
  const unreferenced = objects.filter((o) => !refs.has(o.id));
  const setsBytes = sets.filter((s) => s.committed && bySet.has(s.setId)).reduce((n, s) => n + s.bytes, 0);
  const storage: StorageSummary = {
    setsBytes,
    referencedObjects: refs.size,
    referencedBytes,
    neededBytes: setsBytes + referencedBytes,
    storedObjects: objects.length,
    storedBytes: objects.reduce((n, o) => n + o.size, 0),
    unreferencedObjects: unreferenced.length,
    unreferencedBytes: unreferenced.reduce((n, o) => n + o.size, 0),
    missingObjects,
    uncommittedBytes: [...sets, ...strays].filter((s) => !s.committed).reduce((n, s) => n + s.bytes, 0),
    complete: read.every((r) => !('problem' in r)),
  };
  return { sets: listed, storage };
}

/** The storage lines of `list` for people. */
export function formatStorage(t: StorageSummary): string[] {
  const lines = [
    `needs ${formatBytes(t.neededBytes)} in the filestore: ${formatBytes(t.setsBytes)} in the sets, ${formatBytes(t.referencedBytes)} in ${t.referencedObjects} content object(s) they reference${t.complete ? '' : ' (INCOMPLETE: a set\'s references could not be read)'}`,
    `content objects stored: ${t.storedObjects} (${formatBytes(t.storedBytes)}); unreferenced: ${t.unreferencedObjects} (${formatBytes(t.unreferencedBytes)}), deleted by prune once older than ${formatDuration(OBJECTS_GRACE_MS)}`,
  ];
  if (t.missingObjects > 0) lines.push(`${t.missingObjects} content object(s) the sets reference are MISSING from the filestore: a standby cannot apply those sets; make a new set`);
  if (t.uncommittedBytes > 0) lines.push(`uncommitted leftovers: ${formatBytes(t.uncommittedBytes)} (removed by retention once older than 24 h)`);
  return lines;
}

export const listCommand: Command = {
  name: 'list',
  summary: 'list the backup sets in the filestore',
  help: `Usage: tandem-primary list --config FILE [--site NAME] [--json]

Lists the site's sets, oldest first: id, creation time, stored size, and which one latest.json
names (when it verifies with the public half of keys.signingKeyFile; else a warning says so). Sets without a manifest are leftovers of interrupted backups: they are marked
"uncommitted", are never applied by a standby, and are removed by the next backup.

With keys.filesKeyFile (files as content objects), each committed set also shows the stored
bytes of the content objects only it references ("unique": what deleting it alone would free)
and of those it shares with other sets ("shared"); a set whose files are a tar has none. Then
the totals: what the site needs in the filestore (the sets' own objects plus every referenced
content object once), the content objects stored, those no set references (prune deletes them
once past the grace) and any a set references that is missing. References are read from each
set's verified manifest and files index; a set whose cannot be read is marked UNKNOWN.

A filestore without tandem-filestore.json at its root (see \`tandem-primary init --help\`) is
refused, exit 2: a missing filestore directory is never created.

Options:
  --config FILE  the primary agent's config (required)
  --site NAME    the site whose sets to list, of a config with several (sites:, sitesDir:); not
                 needed when the config holds one site
  --json         print a JSON array of {setId, createdAt, committed, latest, objects, bytes};
                 with a files key, {sets: [... with uniqueBytes, sharedBytes, filesAs], storage:
                 {setsBytes, referencedObjects, referencedBytes, neededBytes, storedObjects,
                 storedBytes, unreferencedObjects, unreferencedBytes, missingObjects,
                 uncommittedBytes, complete}}`,
  options: { config: { type: 'string', short: 'c' }, site: { type: 'string' }, json: { type: 'boolean' } },
  async run({ values, out, logger }) {
    const config = loadPrimaryConfig(requireString(values, 'config', 'tandem-primary list'), siteOption(values), 'tandem-primary list');
    const fs = openFilestore(config.filestore.location);
    try {
      await requireFilestoreMarker(fs, { url: config.filestore.url });
      const filesKey = config.keys.filesKeyFile === undefined ? null : loadFilesKeyFile(config.keys.filesKeyFile, logger);
      const { sets, storage } = await siteListing(fs, config.site, retentionVerifyKey(config, logger), filesKey, logger);
      if (values.json === true) {
        out(JSON.stringify(storage === null ? sets : { sets, storage }));
        return;
      }
      if (sets.length === 0) {
        out(`no sets for site "${config.site}" in ${fs.description}`);
      }
      for (const s of sets) {
        const state = s.committed ? (s.latest ? 'committed, latest' : 'committed') : 'UNCOMMITTED leftover';
        out(`${s.setId}  ${s.createdAt ?? '?'}  ${formatBytes(s.bytes).padStart(10)}  ${state}${storage === null ? '' : objectsColumn(s)}`);
      }
      if (storage !== null) for (const line of formatStorage(storage)) out(line);
    } finally {
      await fs.close();
    }
  },
};

function objectsColumn(s: SetListing): string {
  if (s.problem !== undefined) return `  objects UNKNOWN: ${s.problem}`;
  if (s.uniqueBytes === undefined || s.uniqueBytes === null) return '';
  if (s.filesAs === 'tar') return '  files in the set (tar), no objects';
  return `  objects: ${formatBytes(s.uniqueBytes)} unique, ${formatBytes(s.sharedBytes ?? 0)} shared`;
}
