/**
 * The filestore invariants of the fault suites, checked from outside the agents: every set with a
 * manifest is committed and whole (the manifest verifies with the site's public key, every artifact
 * is there with the signed size and SHA-256), and latest.json verifies and names a committed set by
 * the exact bytes of its manifest. Sets without a manifest are leftovers that nobody may treat as
 * committed; they are listed so that a test can demand that the next run removes them.
 */
import { createHash } from 'node:crypto';
import { readdir } from 'node:fs/promises';
import { join } from 'node:path';
import { ARTIFACT_NAMES, isNotFound, layout, loadVerifyKeyFile, verifyLatest, verifyManifest, type Filestore } from '@tandem/shared';

/** Committed sets already hashed in full, for checkStore() (see there). */
export type VerifiedSets = Map<string, { manifestSha256: string; sizes: Record<string, number> }>;

export interface StoreReport {
  /** Set ids with a manifest, oldest first; each verified in full. */
  committed: string[];
  /** Set ids with objects but no manifest (leftovers of interrupted backups). */
  uncommitted: string[];
  /** The set latest.json names, null if there is no latest.json. */
  latest: string | null;
  /** Every broken invariant, as a sentence; empty when the store is sound. */
  problems: string[];
  /** Stored bytes hashed to check the committed sets. */
  bytesChecked: number;
}

async function sha256Of(fs: Filestore, key: string): Promise<{ sha256: string; bytes: number }> {
  const { body } = await fs.get(key);
  const h = createHash('sha256');
  let bytes = 0;
  for await (const chunk of body) {
    h.update(chunk as Buffer);
    bytes += (chunk as Buffer).length;
  }
  return { sha256: h.digest('hex'), bytes };
}

/**
 * Checks every set of `site` in `fs` (opened directly on the store, never through a fault proxy).
 * `verified` caches sets already hashed in full (committed sets are immutable), to keep a long
 * crash run fast: for those, each later call checks that the manifest is byte for byte the one
 * verified and that every artifact is still listed with its signed size. Pass the same map to
 * successive calls.
 */
export async function checkStore(
  fs: Filestore,
  site: string,
  verifyKeyFile: string,
  verified: VerifiedSets = new Map(),
): Promise<StoreReport> {
  const key = loadVerifyKeyFile(verifyKeyFile);
  const report: StoreReport = { committed: [], uncommitted: [], latest: null, problems: [], bytesChecked: 0 };
  const prefix = layout.sets(site);
  const bySet = new Map<string, Map<string, number>>();
  for (const o of await fs.list(prefix)) {
    const [id, name] = o.key.slice(prefix.length).split('/');
    if (!id || !name) continue;
    if (!bySet.has(id)) bySet.set(id, new Map());
    bySet.get(id)!.set(name, o.size);
  }
  const manifestSha = new Map<string, string>();
  for (const [id, objects] of [...bySet].sort(([a], [b]) => (a < b ? -1 : 1))) {
    if (!objects.has('manifest.json')) {
      report.uncommitted.push(id);
      continue;
    }
    report.committed.push(id);
    const raw = (await fs.getBuffer(layout.manifest(site, id))).body;
    const sha = createHash('sha256').update(raw).digest('hex');
    manifestSha.set(id, sha);
    const known = verified.get(id);
    if (known !== undefined) {
      if (known.manifestSha256 !== sha) report.problems.push(`set ${id}: its manifest changed after it was verified`);
      for (const [file, size] of Object.entries(known.sizes)) {
        if (objects.get(file) !== size) report.problems.push(`set ${id}: ${file} is ${objects.get(file) ?? 'gone'}, was ${size} bytes when verified`);
      }
      continue;
    }
    let m;
    try {
      m = verifyManifest(raw, key, `manifest of ${id}`);
    } catch (err) {
      report.problems.push(`set ${id}: manifest does not verify: ${(err as Error).message}`);
      continue;
    }
    if (m.setId !== id) report.problems.push(`set ${id}: manifest names set ${m.setId}`);
    if (m.artifacts.length !== ARTIFACT_NAMES.length) report.problems.push(`set ${id}: manifest lists ${m.artifacts.length} artifacts`);
    let whole = true;
    for (const a of m.artifacts) {
      if (!objects.has(a.file)) {
        report.problems.push(`set ${id}: committed without its ${a.name} artifact (${a.file})`);
        whole = false;
        continue;
      }
      const got = await sha256Of(fs, layout.artifact(site, id, a.file));
      report.bytesChecked += got.bytes;
      if (got.bytes !== a.storedSize || got.sha256 !== a.storedSha256) {
        report.problems.push(`set ${id}: ${a.name} artifact is ${got.bytes} bytes sha256 ${got.sha256}, the manifest says ${a.storedSize} bytes ${a.storedSha256}`);
        whole = false;
      }
    }
    if (whole) verified.set(id, { manifestSha256: sha, sizes: Object.fromEntries(m.artifacts.map((a) => [a.file, a.storedSize])) });
  }
  try {
    const raw = (await fs.getBuffer(layout.latest(site))).body;
    const latest = verifyLatest(raw, key, 'latest.json');
    report.latest = latest.setId;
    const sha = manifestSha.get(latest.setId);
    if (sha === undefined) report.problems.push(`latest.json names ${latest.setId}, which is not a committed set`);
    else if (sha !== latest.manifestSha256) report.problems.push(`latest.json names ${latest.setId} with another manifest's SHA-256`);
  } catch (err) {
    if (!isNotFound(err)) report.problems.push(`latest.json: ${(err as Error).message}`);
  }
  return report;
}

/** Temporary files (".tmp-") anywhere under a directory store's root: what a killed writer leaves. */
export async function tempFiles(root: string): Promise<string[]> {
  const out: string[] = [];
  async function walk(dir: string): Promise<void> {
    let entries;
    try {
      entries = await readdir(dir, { withFileTypes: true });
    } catch {
      return;
    }
    for (const e of entries) {
      const p = join(dir, e.name);
      if (e.isDirectory()) await walk(p);
      else if (e.name.includes('.tmp-')) out.push(p.slice(root.length + 1));
    }
  }
  await walk(root);
  return out.sort();
}
