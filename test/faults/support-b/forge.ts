/**
 * Publish a set whose named artifacts are given as already-sealed stored bytes (for artifacts too
 * large to pass as plaintext), signed with the site's key; the rest is copied from a base set.
 */
import { createHash } from 'node:crypto';
import { layout, loadSigningKeyFile, makeSetId, parseSetId, signLatest, signManifest, type ArtifactName, type Manifest } from '@tandem/shared';
import type { StandbySite } from '../../support/standby-helpers.js';

const sha256 = (b: Buffer): string => createHash('sha256').update(b).digest('hex');

export async function forgeStored(s: StandbySite, baseSetId: string, sealed: Partial<Record<ArtifactName, { stored: Buffer; plainSize: number }>>): Promise<string> {
  const fs = s.openStore();
  try {
    const base = JSON.parse((await fs.getBuffer(layout.manifest(s.site, baseSetId))).body.toString('utf8')) as Manifest & { signature?: unknown };
    delete base.signature;
    let maxSeq = 0;
    for (const obj of await fs.list(layout.sets(s.site))) {
      const p = parseSetId(obj.key.slice(layout.sets(s.site).length).split('/')[0] ?? '');
      if (p && p.seq > maxSeq) maxSeq = p.seq;
    }
    const created = new Date(Date.now() + 1000);
    const seq = maxSeq + 1;
    const setId = makeSetId(created, base.epoch, seq);
    const artifacts = [];
    for (const a of base.artifacts) {
      const given = sealed[a.name];
      const stored = given?.stored ?? (await fs.getBuffer(layout.artifact(s.site, baseSetId, a.file))).body;
      await fs.putBuffer(layout.artifact(s.site, setId, a.file), stored);
      artifacts.push({ ...a, storedSize: stored.length, storedSha256: sha256(stored), plainSize: given?.plainSize ?? a.plainSize });
    }
    const manifest: Manifest = { ...base, setId, seq, createdAt: created.toISOString(), completedAt: created.toISOString(), artifacts };
    const key = loadSigningKeyFile(s.keys.signingKeyFile);
    const raw = signManifest(manifest, key);
    await fs.putBuffer(layout.manifest(s.site, setId), raw);
    await fs.putBuffer(
      layout.latest(s.site),
      signLatest(
        { format: 'tandem-latest', version: 1, site: s.site, setId, epoch: manifest.epoch, seq, createdAt: manifest.createdAt, committedAt: new Date().toISOString(), manifestSha256: sha256(raw) },
        key,
      ),
    );
    return setId;
  } finally {
    await fs.close();
  }
}
